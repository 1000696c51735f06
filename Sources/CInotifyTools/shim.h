#ifndef RULESD_CINOTIFYTOOLS_SHIM_H
#define RULESD_CINOTIFYTOOLS_SHIM_H
#include <sys/inotify.h>
#include <inotifytools/inotifytools.h>

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// A timer that interrupts the calling thread's blocking read in libinotifytools. The library waits in select()
// with a timeout in whole seconds; a watcher waiting for the queue to fall quiet needs a shorter wait. A signal
// with a handler installed without SA_RESTART makes select() fail with EINTR, which the library reports like a
// timeout. SIGURG is used because its default action is to be ignored: a stray one can never end the process.

static inline void rulesd_wake_handler(int signo) { (void)signo; }

/// Installs the do-nothing handler for SIGURG (without SA_RESTART); 0 on success.
static inline int rulesd_install_wake_handler(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = rulesd_wake_handler;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGURG, &action, NULL);
}

/// Unblocks SIGURG in the calling thread and creates a timer delivering it to that thread only, into `timer` (the first timer's id is 0, so it
/// may read as NULL); 0 on success.
static inline int rulesd_thread_timer_create(void **timer) {
    // A thread starts with its creator's signal mask, and executor threads block most signals.
    sigset_t urgent;
    sigemptyset(&urgent);
    sigaddset(&urgent, SIGURG);
    if (pthread_sigmask(SIG_UNBLOCK, &urgent, NULL) != 0) return -1;
    struct sigevent event;
    memset(&event, 0, sizeof event);
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = SIGURG;
    event._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    timer_t created;
    if (timer_create(CLOCK_MONOTONIC, &event, &created) != 0) return -1;
    *timer = (void *)created;
    return 0;
}

/// Arms the timer to fire once after `nanoseconds` (0 disarms it); 0 on success.
static inline int rulesd_thread_timer_arm(void *timer, int64_t nanoseconds) {
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    spec.it_value.tv_sec = (time_t)(nanoseconds / 1000000000);
    spec.it_value.tv_nsec = (long)(nanoseconds % 1000000000);
    return timer_settime((timer_t)timer, 0, &spec, NULL);
}

static inline void rulesd_thread_timer_delete(void *timer) { timer_delete((timer_t)timer); }
#endif
