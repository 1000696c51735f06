/* rs_thread.c - facts about the calling thread that Lua's C stack use depends on.
 * pthread_getattr_np needs _GNU_SOURCE, which Swift's Glibc module does not define. */
#define _GNU_SOURCE
#include "rs_thread.h"

#include <pthread.h>

size_t rs_current_thread_stack_bytes(void) {
    pthread_attr_t attributes;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attributes) != 0) return 0;
    if (pthread_attr_getstacksize(&attributes, &size) != 0) size = 0;
    pthread_attr_destroy(&attributes);
    return size;
}
