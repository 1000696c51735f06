/*
 * rs_state.c - a sandboxed Lua state: capped allocator, instruction/deadline
 * guard with a sticky kill, diagnostics and the text buffer.
 */
#define _GNU_SOURCE
#include "rs_state.h"

#include <lualib.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char rs_key_decls = 0;
const char rs_key_pending = 0;
const char rs_key_base = 0;
const char rs_key_flag_index = 0;
const char rs_key_twins = 0;

#define DEFAULT_MEMORY_LIMIT (64ull << 20)
#define DEFAULT_LOAD_INSTRUCTIONS 50000000ull
#define DEFAULT_LOAD_TIMEOUT_NS 2000000000ull
#define DEFAULT_EVAL_INSTRUCTIONS 1000000ull
#define DEFAULT_EVAL_TIMEOUT_NS 50000000ull
#define DEFAULT_CONTEXT_DEPTH 32
#define DEFAULT_CONTEXT_VALUES 10000
#define DEFAULT_LOG_LINES 8
#define DEFAULT_LOG_BYTES 512

uint64_t rs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct rs_cancel {
    atomic_int requested;
};

rs_cancel *rs_cancel_new(void) {
    rs_cancel *C = malloc(sizeof *C);
    if (C != NULL) atomic_init(&C->requested, 0);
    return C;
}

void rs_cancel_request(rs_cancel *C) { atomic_store_explicit(&C->requested, 1, memory_order_relaxed); }

int rs_cancel_requested(const rs_cancel *C) {
    return atomic_load_explicit(&((rs_cancel *)C)->requested, memory_order_relaxed);
}

void rs_cancel_free(rs_cancel *C) { free(C); }

void rs_state_set_cancel(rs_state *S, const rs_cancel *C) { S->cancel = C; }

/* Whether the host asked the load in progress to stop: one relaxed load, so cheap enough for every hook. */
static bool load_cancelled(const rs_state *S) {
    return S->phase == RS_PHASE_LOAD && S->cancel != NULL && rs_cancel_requested(S->cancel);
}

/*
 * The allocator enforces the state's byte cap. Once a rule has been killed it
 * refuses all growth, which turns allocating C loops (which the count hook
 * cannot interrupt) into a memory error at the moment of the kill.
 *
 * Large allocations also check the deadline. One VM instruction can copy
 * megabytes (s .. "x" on a huge string), so a thousand of them between two
 * count hooks overran a 50 ms deadline by more than a second; an allocation of
 * that size costs far more than reading the clock, and refusing it past the
 * deadline ends such loops on time.
 */
#define RS_DEADLINE_CHECK_BYTES (64u << 10)

/* States under this size start an evaluation's clock at its first check (rs_arm). */
#define RS_LAZY_CLOCK_BYTES (1u << 20)

/*
 * Small blocks that Lua frees are kept, per state, for its next allocations of the same size class. Every context
 * value unique to a request (a user id) is a new string, and a collection frees hundreds of them at once: far more
 * than glibc's per-thread cache holds (seven blocks a size), so most went through its slower bins both ways, about
 * 200 instructions per string made and collected (3% of a flag evaluation). A free list per class, bounded in bytes,
 * takes them back in a few instructions. The classes are the chunk sizes glibc would use for the same requests, so
 * no block takes more memory than it did; only the state itself touches its lists (one owner, no locks).
 */
#define RS_SMALL_MAX 120                   /* the largest size served from the lists */
#define RS_SMALL_KEEP_BYTES (64u << 10)    /* what a state keeps at most */

static inline unsigned small_class(size_t n) { return n <= 24 ? 0 : (unsigned)((n - 9) >> 4); }
static inline size_t small_class_bytes(unsigned c) { return 24 + 16 * (size_t)c; }
_Static_assert((RS_SMALL_MAX - 9) >> 4 == RS_SMALL_CLASSES - 1, "the classes cover the small sizes");

static void small_release(rs_state *S, void *p, size_t size) {
    unsigned c = small_class(size);
    size_t bytes = small_class_bytes(c);
    if (S->small_kept_bytes + bytes > RS_SMALL_KEEP_BYTES) {
        free(p);
        return;
    }
    *(void **)p = S->small_free[c];
    S->small_free[c] = p;
    S->small_kept_bytes += bytes;
}

static void *small_take(rs_state *S, size_t size) {
    unsigned c = small_class(size);
    void *p = S->small_free[c];
    if (p == NULL) return malloc(small_class_bytes(c));
    S->small_free[c] = *(void **)p;
    S->small_kept_bytes -= small_class_bytes(c);
    return p;
}

static void release_block(rs_state *S, void *p, size_t size) {
    if (size <= RS_SMALL_MAX) small_release(S, p, size);
    else free(p);
}

/* Frees the small blocks a state kept (once its Lua state is closed). */
static void free_kept_blocks(rs_state *S) {
    for (unsigned c = 0; c < RS_SMALL_CLASSES; c++) {
        for (void *p = S->small_free[c], *next; p != NULL; p = next) {
            next = *(void **)p;
            free(p);
        }
        S->small_free[c] = NULL;
    }
    S->small_kept_bytes = 0;
}

/* Whether the running transaction is out of time. An evaluation whose clock has not started starts it now. */
static bool past_deadline(rs_state *S) {
    uint64_t now = rs_now_ns();
    if (S->deadline_ns != RS_DEADLINE_UNSTARTED) return now > S->deadline_ns;
    S->deadline_ns = now + S->timeout_ns;
    return false;
}

static void *rs_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    rs_state *S = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        if (ptr != NULL) release_block(S, ptr, old);
        S->memory_in_use -= old;
        return NULL;
    }
    if (nsize > old) {
        uint64_t growth = nsize - old;
        if (S->killed != RS_KILL_NONE && S->phase != RS_PHASE_HOST && S->phase != RS_PHASE_SETUP) return NULL;
        if (S->memory_in_use + growth > S->memory_limit) return NULL;
        if (growth >= RS_DEADLINE_CHECK_BYTES && (S->phase == RS_PHASE_LOAD || S->phase == RS_PHASE_EVAL) &&
            past_deadline(S)) {
            S->killed = RS_KILL_DEADLINE; /* sticky, like a kill from the hook; reported as the deadline */
            return NULL;
        }
    }
    void *p;
    if (ptr != NULL && old <= RS_SMALL_MAX && nsize <= RS_SMALL_MAX && small_class(old) == small_class(nsize)) {
        p = ptr; /* the block already has room */
    } else if (nsize <= RS_SMALL_MAX || (ptr != NULL && old <= RS_SMALL_MAX)) {
        /* Into a small block, or out of one: a new block and a copy. A block that cannot shrink into a new small
         * one stays as it is; being larger than its class, it serves that class as well as any. */
        p = nsize <= RS_SMALL_MAX ? small_take(S, nsize) : malloc(nsize);
        if (p == NULL) {
            if (ptr == NULL || nsize > old) return NULL;
            p = ptr;
        } else if (ptr != NULL) {
            memcpy(p, ptr, old < nsize ? old : nsize);
            release_block(S, ptr, old);
        }
    } else {
        p = realloc(ptr, nsize);
        if (p == NULL) return NULL;
    }
    S->memory_in_use = S->memory_in_use - old + nsize;
    return p;
}

static int rs_panic(lua_State *L) {
    /* An error outside any protected call: every entry point uses lua_pcall, so this means a bug
     * in the sandbox. Continuing with the state (or returning into Swift) would be unsafe. */
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error object is not a string)";
    fprintf(stderr, "rulesd: fatal: unprotected Lua error: %s\n", msg);
    fflush(stderr);
    abort();
}

const char *rs_kill_message(int kill) {
    switch (kill) {
    case RS_KILL_INSTRUCTIONS: return "resource limit: instruction budget exhausted";
    case RS_KILL_DEADLINE: return "resource limit: time limit exceeded";
    case RS_KILL_MEMORY: return "resource limit: memory limit exceeded";
    case RS_KILL_REFUSED: return "resource limit: input too large for a bounded function";
    case RS_KILL_CANCELLED: return "loading cancelled";
    default: return "resource limit";
    }
}

static void rs_hook(lua_State *L, lua_Debug *ar);

int rs_raise_kill(lua_State *L) {
    rs_state *S = rs_state_of(L);
    lua_sethook(L, rs_hook, LUA_MASKCOUNT, 1);
    lua_pushstring(L, rs_kill_message(S->killed));
    return lua_error(L);
}

/* The deepest stack level searched for the loading file's line when a load is killed. */
#define RS_KILL_LINE_LEVELS 64

/* The line of the loading file that was running when the guard stopped it: the innermost frame of a function
 * defined in that file. Found once, at the kill, so that the diagnostic can point at the loop that ran away. */
static int32_t loading_line(lua_State *L, const char *file) {
    lua_Debug ar;
    for (int level = 0; level < RS_KILL_LINE_LEVELS && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0) continue;
        if (ar.source[0] == '@' && strcmp(ar.source + 1, file) == 0) return ar.currentline;
    }
    return 0;
}

void rs_mark_killed(lua_State *L, int reason) {
    rs_state *S = rs_state_of(L);
    if (S->killed == RS_KILL_NONE) {
        S->killed = reason;
        /* current_file is set while a file loads and while a function test of it runs (rs_tests.c). */
        if (S->current_file != NULL) S->kill_line = loading_line(L, S->current_file);
    }
    /* From now on every instruction of this thread re-raises, so nothing can catch the kill and
     * carry on; the pcall/xpcall/coroutine wrappers re-raise when control comes back to them. */
    lua_sethook(L, rs_hook, LUA_MASKCOUNT, 1);
}

/*
 * How many instructions run between two hook calls. Some single instructions cost time in proportion to
 * the size of their operands (comparing or hashing two huge strings), which the instruction budget cannot
 * see; such operands need memory, so the bigger the state, the more often the hook looks at the clock.
 * Ordinary rule sets stay well under the first threshold and keep the cheap interval.
 */
static int hook_interval_for(const rs_state *S) {
    if (S->memory_in_use > (16u << 20)) return 10;
    if (S->memory_in_use > (4u << 20)) return 100;
    return RS_HOOK_INTERVAL;
}

static void rs_hook(lua_State *L, lua_Debug *ar) {
    if (ar->event == LUA_HOOKLINE) {
        rs_trace_line(L, ar);
        return;
    }
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_LOAD && S->phase != RS_PHASE_EVAL) return;
    if (S->killed == RS_KILL_NONE) {
        S->budget_left -= S->hook_interval;
        if (S->budget_left < 0) rs_mark_killed(L, RS_KILL_INSTRUCTIONS);
        else if (load_cancelled(S)) rs_mark_killed(L, RS_KILL_CANCELLED);
        else if (past_deadline(S)) rs_mark_killed(L, RS_KILL_DEADLINE);
        else {
            int interval = hook_interval_for(S);
            if (interval != S->hook_interval) {
                S->hook_interval = interval;
                lua_sethook(L, rs_hook, LUA_MASKCOUNT | rs_trace_mask(S), interval);
            }
            return;
        }
    }
    rs_mark_killed(L, S->killed);
    rs_raise_kill(L);
}

/* The wall clock is read at least once per this many charged steps (and by the hook every
 * RS_HOOK_INTERVAL instructions); a step is a few nanoseconds, so the deadline is checked often enough. */
#define RS_CLOCK_CHECK_STEPS 4096

void rs_charge(lua_State *L, uint64_t steps) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_LOAD && S->phase != RS_PHASE_EVAL) return;
    if (S->killed == RS_KILL_NONE) {
        if (steps > (uint64_t)INT64_MAX || (S->budget_left -= (int64_t)steps) < 0) {
            rs_mark_killed(L, RS_KILL_INSTRUCTIONS);
        } else {
            S->steps_since_clock += steps;
            if (S->steps_since_clock < RS_CLOCK_CHECK_STEPS) return;
            S->steps_since_clock = 0;
            if (load_cancelled(S)) rs_mark_killed(L, RS_KILL_CANCELLED);
            else if (!past_deadline(S)) return;
            else rs_mark_killed(L, RS_KILL_DEADLINE);
        }
    }
    rs_mark_killed(L, S->killed);
    rs_raise_kill(L);
}

int rs_resource_error(lua_State *L, const char *what) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_LOAD && S->phase != RS_PHASE_EVAL) return luaL_error(L, "%s", what);
    rs_mark_killed(L, RS_KILL_REFUSED);
    return luaL_error(L, "resource limit: %s", what);
}

const char *rs_current_key(lua_State *L, size_t *len) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_EVAL || S->current_key == NULL) return NULL;
    if (len) *len = S->current_key_len;
    return S->current_key;
}

void rs_arm(rs_state *S, int phase, uint64_t instructions, uint64_t timeout_ns, unsigned straight) {
    S->phase = phase;
    S->killed = RS_KILL_NONE;
    S->kill_line = 0;
    S->budget_left = instructions > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)instructions;
    S->steps_since_clock = 0;
    S->timeout_ns = timeout_ns;
    /*
     * Most evaluations end within a few dozen instructions, and reading the clock took 3% of one (23 ns of a
     * ~700 ns flag evaluation). In a small state, an evaluation therefore starts its clock at its first check: the
     * hook's first call, after RS_FIRST_HOOK_INTERVAL instructions, a charge that reads the clock, or a large
     * allocation, whichever comes first. What runs before it is bounded: that many instructions, on operands a
     * state under RS_LAZY_CLOCK_BYTES can hold, with no allocation large enough to check the clock (a few
     * milliseconds at worst, against a 50 ms deadline). Larger states, and loads, start the clock when armed.
     */
    bool lazy_clock = phase == RS_PHASE_EVAL && S->memory_in_use < RS_LAZY_CLOCK_BYTES;
    S->deadline_ns = lazy_clock ? RS_DEADLINE_UNSTARTED : rs_now_ns() + timeout_ns;
    /* Re-arming resets the hook's countdown, so a previous run's partial count is not carried over. */
    S->hook_interval = lazy_clock ? RS_FIRST_HOOK_INTERVAL : hook_interval_for(S);
    S->hook_off = straight != 0 && (int)straight < S->hook_interval && !S->trace && !S->user_metatables;
    if (S->hook_off) lua_sethook(S->L, NULL, 0, 0);
    else lua_sethook(S->L, rs_hook, LUA_MASKCOUNT | rs_trace_mask(S), S->hook_interval);
}

void rs_disarm(rs_state *S) {
    /* The hook as armed is the host's one already (a count hook at the first interval of an evaluation in a small
     * state) unless the evaluation ran past that interval, a kill made it fire at every instruction, the interval was
     * set for a large state, or an explain traced lines: all of which the hook itself shows. Left as it is, it fires
     * in the host phase and returns at once; the next arming restarts its count. */
    bool rehook = S->hook_off || lua_gethook(S->L) != rs_hook || lua_gethookmask(S->L) != LUA_MASKCOUNT ||
                  lua_gethookcount(S->L) != RS_FIRST_HOOK_INTERVAL;
    S->hook_off = false;
    S->phase = RS_PHASE_HOST;
    S->killed = RS_KILL_NONE;
    S->bare_context = false; /* a conversion that failed left it set */
    S->context_filter = 0;
    S->current_key = NULL;
    S->current_key_len = 0;
    S->flag_depth = 0;
    S->hook_interval = RS_FIRST_HOOK_INTERVAL;
    if (rehook) lua_sethook(S->L, rs_hook, LUA_MASKCOUNT, RS_FIRST_HOOK_INTERVAL);
}

char *rs_strndup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d == NULL) abort(); /* host memory exhausted: nothing sensible is left to do */
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* Arena blocks hold this much at least; a longer string takes a block of its own. */
#define RS_STRING_BLOCK_BYTES 8192

char *rs_keep_string(rs_state *S, const char *s, size_t n) {
    rs_string_block *b = S->strings;
    if (b == NULL || b->cap - b->used < n + 1) {
        size_t cap = n + 1 > RS_STRING_BLOCK_BYTES ? n + 1 : RS_STRING_BLOCK_BYTES;
        rs_string_block *fresh = malloc(sizeof *fresh + cap);
        if (fresh == NULL) abort(); /* host memory exhausted, as for rs_strndup */
        fresh->used = 0;
        fresh->cap = cap;
        /* A block taken by one long string goes behind the current one, which keeps filling. */
        if (b != NULL && cap > RS_STRING_BLOCK_BYTES) {
            fresh->next = b->next;
            b->next = fresh;
        } else {
            fresh->next = b;
            S->strings = fresh;
        }
        b = fresh;
    }
    char *d = b->data + b->used;
    memcpy(d, s, n);
    d[n] = '\0';
    b->used += n + 1;
    return d;
}

char *rs_keep_file(rs_state *S, const char *file) {
    if (S->kept_file == NULL || strcmp(S->kept_file, file) != 0) S->kept_file = rs_keep_string(S, file, strlen(file));
    return (char *)S->kept_file;
}

char *rs_strdup(const char *s) { return s ? rs_strndup(s, strlen(s)) : NULL; }

/* Length of the valid UTF-8 sequence starting at p (1..4), or 0 when invalid. */
static size_t utf8_sequence(const unsigned char *p, size_t left) {
    unsigned c = p[0];
    size_t n;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, min = 0x10000;
    else return 0;
    if (left < n) return 0;
    unsigned cp = c & (0x7F >> n);
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

size_t rs_escape_text(char *dst, size_t cap, const char *src, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0) return 0;
    const size_t limit = cap > 4 ? cap - 4 : 0; /* room for "..." and the NUL */
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)src[i];
        char esc[5];
        size_t n = 0;
        size_t consumed = 1;
        if (c == '\n') esc[0] = '\\', esc[1] = 'n', n = 2;
        else if (c == '\t') esc[0] = '\\', esc[1] = 't', n = 2;
        else if (c == '\r') esc[0] = '\\', esc[1] = 'r', n = 2;
        else if (c < 0x20 || c == 0x7F) esc[0] = '\\', esc[1] = 'x', esc[2] = hex[c >> 4], esc[3] = hex[c & 15], n = 4;
        else if (c < 0x80) esc[0] = (char)c, n = 1;
        else {
            size_t seq = utf8_sequence((const unsigned char *)src + i, len - i);
            if (seq == 0) esc[0] = '\\', esc[1] = 'x', esc[2] = hex[c >> 4], esc[3] = hex[c & 15], n = 4;
            else {
                memcpy(esc, src + i, seq);
                n = seq;
                consumed = seq;
            }
        }
        if (o + n > limit) {
            memcpy(dst + o, "...", 3);
            o += 3;
            dst[o] = 0;
            return o;
        }
        memcpy(dst + o, esc, n);
        o += n;
        i += consumed;
    }
    dst[o] = 0;
    return o;
}

void rs_add_diag(rs_state *S, const char *file, int32_t line, const char *fmt, ...) {
    char raw[1024], clean[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof raw) n = sizeof raw - 1;
    rs_escape_text(clean, sizeof clean, raw, (size_t)n);
    if (S->diag_count == S->diag_cap) {
        size_t cap = S->diag_cap ? S->diag_cap * 2 : 8;
        rs_diag_entry *d = realloc(S->diags, cap * sizeof *d);
        if (d == NULL) abort();
        S->diags = d;
        S->diag_cap = cap;
    }
    rs_diag_entry *d = &S->diags[S->diag_count++];
    d->file = rs_strdup(file ? file : "");
    d->line = line;
    d->message = rs_strdup(clean);
}

uint32_t rs_text_append(rs_state *S, const char *src, size_t len, bool escape, uint32_t *out_len) {
    size_t need = escape ? (len * 4 + 8 < RS_MESSAGE_CAP_BYTES ? len * 4 + 8 : RS_MESSAGE_CAP_BYTES) : len + 1;
    if (S->text_len + need > S->text_cap) {
        size_t cap = S->text_cap ? S->text_cap : 1024;
        while (cap < S->text_len + need) cap *= 2;
        char *t = realloc(S->text, cap);
        if (t == NULL) abort();
        S->text = t;
        S->text_cap = cap;
    }
    uint32_t offset = (uint32_t)S->text_len;
    size_t n;
    if (escape) n = rs_escape_text(S->text + offset, need, src, len);
    else {
        memcpy(S->text + offset, src, len);
        S->text[offset + len] = 0;
        n = len;
    }
    S->text_len += n + 1;
    *out_len = (uint32_t)n;
    return offset;
}

size_t rs_error_text(lua_State *L, int idx, char *dst, size_t cap) {
    /* Only strings are read: calling __tostring on a hostile error object could raise or loop. */
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        return rs_escape_text(dst, cap, s, len);
    }
    int n = snprintf(dst, cap, "(error object is a %s value)", luaL_typename(L, idx));
    return n < 0 ? 0 : ((size_t)n >= cap ? cap - 1 : (size_t)n);
}

/* ---- state lifetime ---------------------------------------------------------------------- */

typedef struct setup_args {
    rs_state *S;
} setup_args;

static int setup_tx(lua_State *L) {
    /* The standard libraries are opened into the real globals table, which user code never sees:
     * rs_build_base_env copies the allowed functions (and the sandbox's wrappers) into a new,
     * frozen environment and drops everything else. */
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
    luaL_requiref(L, LUA_COLIBNAME, luaopen_coroutine, 1);
    lua_settop(L, 0);
    rs_build_base_env(L);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rs_key_decls);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rs_key_pending);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rs_key_twins);
    rs_create_context_proxy(L);
    rs_create_key_cache(L);
    return 0;
}

rs_state *rs_state_new(const rs_limits *limits, char *error, size_t error_cap) {
    rs_state *S = calloc(1, sizeof *S);
    if (S == NULL) {
        snprintf(error, error_cap, "out of memory");
        return NULL;
    }
    if (limits) S->limits = *limits;
    S->boolean_variants_ref = S->boolean_values_ref = LUA_NOREF;
    rs_limits *l = &S->limits;
    if (!l->memory_limit) l->memory_limit = DEFAULT_MEMORY_LIMIT;
    if (!l->load_instruction_limit) l->load_instruction_limit = DEFAULT_LOAD_INSTRUCTIONS;
    if (!l->load_timeout_ns) l->load_timeout_ns = DEFAULT_LOAD_TIMEOUT_NS;
    if (!l->eval_instruction_limit) l->eval_instruction_limit = DEFAULT_EVAL_INSTRUCTIONS;
    if (!l->eval_timeout_ns) l->eval_timeout_ns = DEFAULT_EVAL_TIMEOUT_NS;
    if (!l->max_context_depth) l->max_context_depth = DEFAULT_CONTEXT_DEPTH;
    if (!l->max_context_values) l->max_context_values = DEFAULT_CONTEXT_VALUES;
    if (!l->log_lines_per_eval) l->log_lines_per_eval = DEFAULT_LOG_LINES;
    if (!l->log_line_bytes) l->log_line_bytes = DEFAULT_LOG_BYTES;
    if (l->log_line_bytes < 16) l->log_line_bytes = 16;
    S->memory_limit = l->memory_limit;
    S->phase = RS_PHASE_SETUP;
    S->L = lua_newstate(rs_alloc, S);
    if (S->L == NULL) {
        snprintf(error, error_cap, "cannot create a Lua state within %llu bytes",
                 (unsigned long long)S->memory_limit);
        free(S);
        return NULL;
    }
    *(rs_state **)lua_getextraspace(S->L) = S; /* rs_state_of; before any thread is made, so that each copies it */
    lua_atpanic(S->L, rs_panic);
    /* Generational collection suits the workload: every evaluation makes short-lived garbage
     * (the context tables) while the rule set itself never changes. */
    lua_gc(S->L, LUA_GCGEN, 0, 0);
    lua_pushcfunction(S->L, setup_tx);
    int status = lua_pcall(S->L, 0, 0, 0);
    if (status != LUA_OK) {
        rs_error_text(S->L, -1, error, error_cap);
        lua_close(S->L);
        free_kept_blocks(S);
        rs_trace_free(S);
        free(S);
        return NULL;
    }
    lua_settop(S->L, 0);
    rs_disarm(S);
    return S;
}

void rs_log_clear(rs_state *S) {
    for (size_t i = 0; i < S->log_count; i++) {
        free(S->logs[i].key);
        free(S->logs[i].text);
    }
    S->log_count = 0;
}

static atomic_uint_fast64_t free_memory_returns;

void rs_return_free_memory(void) {
    malloc_trim(0);
    atomic_fetch_add_explicit(&free_memory_returns, 1, memory_order_relaxed);
}

uint64_t rs_free_memory_returns(void) {
    return (uint64_t)atomic_load_explicit(&free_memory_returns, memory_order_relaxed);
}

void rs_state_free(rs_state *S) {
    if (S == NULL) return;
    /* A large state is freed in hundreds of thousands of small blocks that sit between live ones (the next
     * generation's states were built meanwhile), so the allocator would keep most of its pages: with 10,000 flags
     * and two workers, about 9 MiB stayed resident after every reload. */
    bool return_memory = S->memory_in_use >= RS_RETURN_MEMORY_BYTES;
    /* Finalizers are refused by the sandbox (setmetatable rejects __gc), so closing runs no user code. */
    S->phase = RS_PHASE_HOST;
    rs_free_key_cache(S);
    lua_close(S->L);
    free_kept_blocks(S);
    rs_trace_free(S);
    rs_forget_shapes(S); /* left by a rule set whose loading failed before its rules were shaped */
    for (size_t i = 0; i < S->diag_count; i++) {
        free(S->diags[i].file);
        free(S->diags[i].message);
    }
    free(S->diags);
    for (size_t i = 0; i < S->flag_count; i++) {
        rs_flag_entry *f = &S->flags[i];
        free(f->metadata_json);
        free(f->invalid);
        if (f->variants != rs_boolean_variants) {
            for (int32_t v = 0; v < f->variant_count; v++) {
                free(f->variants[v].json);
            }
            free(f->variants);
        }
    }
    free(S->flags);
    for (size_t i = 0; i < S->route_count; i++) {
        free(S->routes[i].static_target);
    }
    free(S->routes);
    for (size_t i = 0; i < S->test_count; i++) {
        free(S->tests[i].name);
        free(S->tests[i].file);
        free(S->tests[i].json);
    }
    free(S->tests);
    for (size_t i = 0; i < S->config_count; i++) {
        free(S->configs[i].json);
    }
    free(S->configs);
    for (rs_string_block *b = S->strings, *next; b != NULL; b = next) {
        next = b->next;
        free(b);
    }
    rs_data_state_free(S);
    rs_dispatch_free(S);
    rs_log_clear(S);
    free(S->logs);
    free(S->text);
    rs_release_scratch(S);
    free(S);
    if (return_memory) rs_return_free_memory();
}

uint64_t rs_memory_in_use(const rs_state *S) { return S->memory_in_use; }

size_t rs_diagnostic_count(const rs_state *S) { return S->diag_count; }

rs_diagnostic rs_diagnostic_at(const rs_state *S, size_t index) {
    rs_diagnostic d = {"", 0, ""};
    if (index < S->diag_count) {
        d.file = S->diags[index].file;
        d.line = S->diags[index].line;
        d.message = S->diags[index].message;
    }
    return d;
}

size_t rs_log_count(const rs_state *S) { return S->log_count; }

rs_log_line rs_log_at(const rs_state *S, size_t index) {
    rs_log_line l = {0, NULL, ""};
    if (index < S->log_count) {
        l.level = S->logs[index].level;
        l.key = S->logs[index].key;
        l.text = S->logs[index].text;
    }
    return l;
}

const char *rs_text_buffer(const rs_state *S) { return S->text ? S->text : ""; }
