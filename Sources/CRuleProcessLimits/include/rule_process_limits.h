#ifndef RULE_PROCESS_LIMITS_H
#define RULE_PROCESS_LIMITS_H

#include <stdint.h>

/// Limits a rule process applies to itself before it evaluates anything. Each function returns 0, or a
/// negative errno value naming what failed.

/// `PR_SET_NO_NEW_PRIVS`, and `PR_SET_PDEATHSIG` with SIGKILL (the process ends with its parent).
int rpl_set_no_new_privileges_and_parent_death_signal(void);

/// `RLIMIT_AS` (bytes), `RLIMIT_CPU` (seconds; the soft limit sends SIGXCPU, the hard one a second later
/// SIGKILL), `RLIMIT_NOFILE` and `RLIMIT_CORE` 0. A zero argument leaves that limit alone.
int rpl_set_resource_limits(uint64_t address_space_bytes, uint64_t cpu_seconds, uint64_t open_files);

/// Closes every descriptor from `first` on (the ones inherited by mistake).
void rpl_close_descriptors_from(int first);

/// Installs the rule process's seccomp filter on every thread of the process: input and output only on
/// `channel` (and output on stdout/stderr), memory management, futexes, clocks, signals to itself and
/// exiting. Every other system call fails with EPERM; a call from another architecture kills the process.
int rpl_install_seccomp_filter(int channel);

#endif
