// The kernel-enforced limits of a rule process (`isolation = process`).
//
// The seccomp filter is written by hand as classic BPF: libseccomp is not one of the libraries the product
// builds on, and the filter is small and fixed (an allow-list checked against one descriptor), so a library's
// rule compiler would add a dependency without removing any difficulty.
#define _GNU_SOURCE
#include "rule_process_limits.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define RPL_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define RPL_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "rule process limits: seccomp architecture not known for this target"
#endif

int rpl_set_no_new_privileges_and_parent_death_signal(void) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) return -errno;
    return 0;
}

static int set_limit(int resource, rlim_t soft, rlim_t hard) {
    struct rlimit limit = {.rlim_cur = soft, .rlim_max = hard};
    return setrlimit(resource, &limit) == 0 ? 0 : -errno;
}

int rpl_set_resource_limits(uint64_t address_space_bytes, uint64_t cpu_seconds, uint64_t open_files) {
    int result;
    if (address_space_bytes > 0 && (result = set_limit(RLIMIT_AS, address_space_bytes, address_space_bytes)) != 0)
        return result;
    if (cpu_seconds > 0 && (result = set_limit(RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)) != 0) return result;
    if (open_files > 0 && (result = set_limit(RLIMIT_NOFILE, open_files, open_files)) != 0) return result;
    return set_limit(RLIMIT_CORE, 0, 0);
}

void rpl_close_descriptors_from(int first) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)first, ~0U, 0) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (int fd = first; fd < (max > 0 ? max : 1024); fd++) close(fd);
}

// Helpers for the filter below. `nr` is in the accumulator after LOAD_NR.
#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define LOAD_ARG0 BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]))
#define LOAD_ARG0_HIGH BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]) + 4)
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define DENY BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))
#define KILL BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)
// If nr == `call`, allow; otherwise fall through.
#define ALLOW_CALL(call) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (call), 0, 1), ALLOW

int rpl_install_seccomp_filter(int channel) {
    // Layout: architecture check; the calls checked by descriptor jump to `by_descriptor`; the rest are a plain
    // allow-list; anything else is denied.
    pid_t self = getpid();
    struct sock_filter filter[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RPL_AUDIT_ARCH, 1, 0),
        /* 2 */ KILL,
        /* 3 */ LOAD_NR,
#if defined(__x86_64__)
        // The x32 ABI shares the architecture value; its calls have bit 30 set.
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),
        KILL,
#endif
        // Input and output: only on the channel to the daemon (output also on stdout and stderr, for logs).
        // The jumps skip to the descriptor checks at the end (counted from the end of this block).
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_read, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched below: to `channel_only`
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_recvmsg, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched: `channel_only`
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_recvfrom, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched: `channel_only`
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendmsg, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched: `channel_only`
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendto, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched: `channel_only`
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_write, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched: `channel_or_logs`
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_writev, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched: `channel_or_logs`
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_tgkill, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),  // patched: `self_only` (abort() signals itself)
        // Memory.
        ALLOW_CALL(SYS_brk),
        ALLOW_CALL(SYS_mmap),
        ALLOW_CALL(SYS_munmap),
        ALLOW_CALL(SYS_mremap),
        ALLOW_CALL(SYS_mprotect),
        ALLOW_CALL(SYS_madvise),
        // Threads' waits, clocks, identity, randomness for hashing.
        ALLOW_CALL(SYS_futex),
        ALLOW_CALL(SYS_clock_gettime),
        ALLOW_CALL(SYS_clock_getres),
        ALLOW_CALL(SYS_gettimeofday),
        ALLOW_CALL(SYS_clock_nanosleep),
        ALLOW_CALL(SYS_nanosleep),
        ALLOW_CALL(SYS_sched_yield),
        ALLOW_CALL(SYS_getpid),
        ALLOW_CALL(SYS_gettid),
        ALLOW_CALL(SYS_getppid),
        ALLOW_CALL(SYS_getrandom),
        // Signals and the end.
        ALLOW_CALL(SYS_rt_sigreturn),
        ALLOW_CALL(SYS_rt_sigprocmask),
        ALLOW_CALL(SYS_sigaltstack),
        ALLOW_CALL(SYS_close),
        ALLOW_CALL(SYS_exit),
        ALLOW_CALL(SYS_exit_group),
        DENY,
        // channel_or_logs:
        LOAD_ARG0_HIGH,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        DENY,
        LOAD_ARG0,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 1, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 2, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)channel, 0, 1),
        ALLOW,
        DENY,
        // channel_only:
        LOAD_ARG0_HIGH,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        DENY,
        LOAD_ARG0,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)channel, 0, 1),
        ALLOW,
        DENY,
        // self_only: tgkill(tgid, tid, sig) with tgid == this process.
        LOAD_ARG0,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)self, 0, 1),
        ALLOW,
        DENY,
    };
    const size_t count = sizeof(filter) / sizeof(filter[0]);
    // Where the three checks begin, counted from the end of the program.
    const size_t self_only = count - 4;
    const size_t channel_only = self_only - 7;
    const size_t channel_or_logs = channel_only - 9;
    // Patch the unconditional jumps: each is the instruction after a JEQ on one of the checked calls.
    for (size_t i = 0; i + 1 < count; i++) {
        if (filter[i].code != (BPF_JMP | BPF_JA)) continue;
        uint32_t nr = filter[i - 1].k;
        size_t target;
        if (nr == SYS_write || nr == SYS_writev) target = channel_or_logs;
        else if (nr == SYS_tgkill) target = self_only;
        else target = channel_only;
        filter[i].k = (uint32_t)(target - (i + 1));
    }
    struct sock_fprog program = {.len = (unsigned short)count, .filter = filter};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program) == 0) return 0;
    // A service manager's own filter may refuse seccomp(2) itself (systemd's @system-service does not list
    // it); prctl(2) then installs the same filter on the calling thread, the one that runs every rule.
    if (errno != EPERM && errno != ENOSYS && errno != EACCES) return -errno;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) != 0) return -errno;
    return 0;
}
