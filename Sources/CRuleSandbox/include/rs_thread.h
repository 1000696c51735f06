#ifndef RULESD_RS_THREAD_H
#define RULESD_RS_THREAD_H
#include <stddef.h>

/** Stack size of the calling thread in bytes, or 0 when it cannot be determined. */
size_t rs_current_thread_stack_bytes(void);

#endif
