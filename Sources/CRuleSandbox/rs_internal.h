/*
 * rs_internal.h - what the pieces of the rule sandbox share inside the C target.
 *
 * Everything that touches the Lua API lives in this target; Swift only sees
 * include/rule_sandbox.h, whose functions each run one protected transaction.
 * Code in this target may raise Lua errors (luaL_error) freely: every entry
 * point from Swift runs under lua_pcall, so an error never unwinds a Swift frame.
 */
#ifndef RULESD_RS_INTERNAL_H
#define RULESD_RS_INTERNAL_H

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef LUA_VERSION_NUM
#error "rule sandbox needs the Lua 5.4 headers (Debian: liblua5.4-dev)"
#endif
#if LUA_VERSION_NUM != 504
#error "rule sandbox is written for Lua 5.4 exactly"
#endif

/*
 * Budget accounting.
 *
 * One budget counter is shared by the Lua VM (a count hook charges
 * RS_HOOK_INTERVAL instructions each time it fires) and by every library
 * function written in C that can do unbounded work on its own (pattern
 * matching, string.rep, table.concat, ...): such functions call rs_charge()
 * with an estimate of the steps they are about to take, or have taken.
 *
 * rs_charge() raises a Lua error when the budget is exhausted or the wall-clock
 * deadline has passed. The breach is sticky: the sandbox marks the state as
 * killed, so pcall/xpcall/coroutines cannot swallow it, and the host reports
 * RESOURCE_LIMIT. Callers must not hold resources that need freeing when they
 * call rs_charge() (it may longjmp), or must free them first.
 */
#define RS_HOOK_INTERVAL 1000

/* An evaluation in a small state starts its wall clock at its first check rather than when it is armed (rs_arm):
 * the deadline then means "this long after the first RS_FIRST_HOOK_INTERVAL instructions". */
#define RS_DEADLINE_UNSTARTED UINT64_MAX
#define RS_FIRST_HOOK_INTERVAL 50

void rs_charge(lua_State *L, uint64_t steps);

/* The sandbox state that the Lua state L belongs to. It is kept in the Lua state's extra space, which every thread
 * (coroutine) copies from the main one when created, so that finding it is one load: asking for the allocator's user
 * data instead was a call into the Lua library, several times an evaluation. */
struct rs_state;
_Static_assert(LUA_EXTRASPACE >= sizeof(void *), "the Lua state's extra space holds a pointer");
static inline struct rs_state *rs_state_of(lua_State *L) { return *(struct rs_state **)lua_getextraspace(L); }

/* Raise the sticky resource-limit error directly (e.g. a C function refusing an
 * input whose processing could not be bounded). `what` is a short reason. */
int rs_resource_error(lua_State *L, const char *what);

/* The key of the flag or route whose rule is being evaluated (the default seed
 * of split/rollout), or NULL outside an evaluation (at load time). */
const char *rs_current_key(lua_State *L, size_t *len);

/* Explain (rs_trace.c). rs_tracing() is NULL unless an explain is running, so helpers pay one test. After a
 * helper has pushed its result at `result`, rs_trace_call records its `nargs` arguments, the result and
 * `extra` (JSON members without braces, or NULL). */
typedef struct rs_trace rs_trace;
rs_trace *rs_tracing(lua_State *L);
void rs_trace_call(lua_State *L, const char *name, int nargs, int result, const char *extra);

/* Registers the native helper functions (split, rollout, semver, ip,
 * starts_with, ends_with) into the table at the top of the stack. Implemented
 * in rs_helpers.c. */
void rs_open_helpers(lua_State *L);

/* Whether f is one of those helpers. None of them calls a Lua function: the metamethods they may meet (reading a
 * table of buckets) are the sandbox's own C ones unless rules set metatables (see RS_SHAPE_STRAIGHT_MASK). */
bool rs_helper_runs_no_lua(lua_CFunction f);

/* Pattern functions with a step budget, replacing string.find, string.match,
 * string.gmatch and string.gsub; same semantics as Lua 5.4's. Implemented in
 * rs_pattern.c. */
int rs_str_find(lua_State *L);
int rs_str_match(lua_State *L);
int rs_str_gmatch(lua_State *L);
int rs_str_gsub(lua_State *L);

#endif
