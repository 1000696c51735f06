#ifndef RULESD_CEVENTPOLL_SHIM_H
#define RULESD_CEVENTPOLL_SHIM_H
// epoll and eventfd, which Swift's Glibc module does not export. The helpers keep Swift away
// from struct epoll_event, which is packed on x86-64.
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

static inline int rulesd_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

static inline int rulesd_epoll_control(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event;
    event.events = events;
    event.data.u64 = token;
    return epoll_ctl(epfd, op, fd, &event);
}

/// Waits for up to `capacity` events; fills `tokens` and `events` side by side.
static inline int rulesd_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms) {
    struct epoll_event ready[64];
    if (capacity > 64) capacity = 64;
    int count = epoll_wait(epfd, ready, capacity, timeout_ms);
    for (int i = 0; i < count; i++) {
        tokens[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return count;
}

static inline int rulesd_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

static const uint32_t RULESD_EPOLLIN = EPOLLIN;
static const uint32_t RULESD_EPOLLOUT = EPOLLOUT;
static const uint32_t RULESD_EPOLLERR = EPOLLERR;
static const uint32_t RULESD_EPOLLHUP = EPOLLHUP;
static const uint32_t RULESD_EPOLLRDHUP = EPOLLRDHUP;
static const int RULESD_EPOLL_CTL_ADD = EPOLL_CTL_ADD;
static const int RULESD_EPOLL_CTL_MOD = EPOLL_CTL_MOD;
static const int RULESD_EPOLL_CTL_DEL = EPOLL_CTL_DEL;
#endif
