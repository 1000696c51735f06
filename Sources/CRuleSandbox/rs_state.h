/*
 * rs_state.h - the private layout of a sandboxed state and the helpers the
 * sandbox's own files share (not used by rs_pattern.c / rs_helpers.c, which only
 * need rs_internal.h).
 */
#ifndef RULESD_RS_STATE_H
#define RULESD_RS_STATE_H

#include "rs_internal.h"
#include "rule_sandbox.h"

#include <stdbool.h>

enum rs_phase {
    RS_PHASE_SETUP = 0, /* building the environment: no user code runs */
    RS_PHASE_LOAD,      /* running a rule file's chunk */
    RS_PHASE_HOST,      /* host work between user code (validation, freezing) */
    RS_PHASE_EVAL,      /* running a rule for a request */
};

enum rs_kill {
    RS_KILL_NONE = 0,
    RS_KILL_INSTRUCTIONS,
    RS_KILL_DEADLINE,
    RS_KILL_MEMORY,
    RS_KILL_REFUSED, /* a bounded library function refused its input */
    RS_KILL_CANCELLED, /* the host asked loading to stop (rs_cancel) */
};

/* Longest error text kept for one outcome. */
#define RS_MESSAGE_CAP_BYTES 480
/* Longest route target accepted. */
#define RS_TARGET_CAP 1024

/* Deepest chain of flag_value() prerequisites. */
#define RS_MAX_FLAG_DEPTH 16

typedef struct rs_diag_entry {
    char *file;
    int32_t line;
    char *message;
} rs_diag_entry;

typedef struct rs_variant_entry {
    char *name;
    size_t name_len;
    char *json;
    size_t json_len;
    const void *interned; /* the name as a Lua string of the state (its name map keeps it alive); NULL: none */
} rs_variant_entry;

typedef struct rs_flag_entry {
    char *key;
    size_t key_len;
    char *description;
    char *file;
    int32_t line;
    int32_t seq;
    bool enabled;
    int rule_ref;      /* registry reference of the rule function, LUA_NOREF when static */
    int variants_ref;  /* registry: table variant name -> index (1-based) */
    int values_ref;    /* registry: sequence of variant values (Lua values, frozen) by index */
    int32_t default_variant; /* -1: none (`default = false`): answers carry no value, callers use their own */
    int32_t variant_count;
    rs_variant_entry *variants;
    char *metadata_json; /* `metadata`, as canonical JSON text; NULL when absent */
    char *invalid;       /* `invalid`: why the definition cannot be evaluated (PARSE_ERROR); NULL normally */
    size_t metadata_json_len;
    int32_t override_variant; /* 1-based: the variant an override forces for flag_value(); 0 when none */
    uint16_t shape;           /* what its evaluation may leave out: RS_SHAPE_* (rs_freeze.c) */
    uint64_t context_keys;    /* a sealed rule's reads: RS_CONTEXT_KEYS_KNOWN and its keys' bits; 0: not known */
} rs_flag_entry;

/*
 * The shape of a rule function, from its compiled code (rs_shape_rules): what an evaluation may leave out without
 * any difference a rule could observe.
 *  - RS_SHAPE_STRAIGHT_MASK: its number of instructions (1-255) when the function is straight: no loop, no backward
 *    jump, and every call is to a helper that runs no Lua code (rs_helper_runs_no_lua). Each instruction then runs
 *    at most once per call, so while that number is below the count hook's interval the hook cannot fire during the
 *    call: the evaluation runs it unhooked, which saves the hook's test on every instruction (about a tenth of a
 *    flag evaluation), and every budget is charged exactly as before.
 *  - RS_SHAPE_SEALED: its first parameter (the context) is only ever indexed, never compared, passed, returned,
 *    captured or assigned. Reading the context's storage then answers exactly what reading its read-only proxy
 *    would, and nothing can write through it or keep it: the evaluation passes the storage itself.
 */
#define RS_SHAPE_STRAIGHT_MASK 0xFFu
#define RS_SHAPE_SEALED 0x100u

/*
 * The context members a sealed rule can read, when its code names them all: it indexes the context only with
 * constant string keys (GETFIELD), so no other member can make a difference to it. Each key a rule set's rules read
 * so gets a number from 1 to RS_CONTEXT_KEY_NAMES (rs_context_key_number), in the state's list of such keys; a
 * rule's set is a mask with bit n - 1 for key n, and RS_CONTEXT_KEYS_KNOWN (so that a rule reading no member has a
 * set too). A rule whose keys did not all get a number has none. Converting its context leaves the other members out
 * (rs_json.c), after checking them exactly as converting them would.
 */
#define RS_CONTEXT_KEY_NAMES 63
#define RS_CONTEXT_KEY_MAX_LEN 31
#define RS_CONTEXT_KEYS_KNOWN (1ull << 63)

typedef struct rs_context_key_name {
    uint8_t len;
    char bytes[RS_CONTEXT_KEY_MAX_LEN];
} rs_context_key_name;

/* The variants of every boolean flag ("off" false, "on" true): shared, never freed. */
extern rs_variant_entry rs_boolean_variants[2];

typedef struct rs_route_entry {
    char *name;
    size_t name_len;
    char *description;
    char *file;
    int32_t line;
    int32_t seq;
    int64_t priority;
    int match_ref;     /* LUA_NOREF: matches everything */
    int target_ref;    /* function target, LUA_NOREF when static */
    int32_t match_pred; /* the match compiled to a predicate (rs_dispatch.c), -1 when Lua decides */
    char *static_target;
} rs_route_entry;

typedef struct rs_config_entry {
    char *key;
    char *file;
    int32_t line;
    char *json;
    size_t json_len;
} rs_config_entry;

/* A rule test as declared: its definition table as canonical JSON, run by the host after validation; or, for a
 * function test, its function (json NULL), run by rs_run_test. */
typedef struct rs_test_entry {
    char *name;
    char *file;
    int32_t line;
    char *json;
    size_t json_len;
    int func_ref; /* registry reference of the test function, LUA_NOREF for a declarative test */
} rs_test_entry;

typedef struct rs_log_entry {
    int32_t level;
    char *key;
    char *text;
} rs_log_entry;

/* The stock library functions that the sandbox's wrappers delegate to. */
typedef struct rs_originals {
    lua_CFunction setmetatable, rawget, rawset, rawlen, next;
    lua_CFunction rep, pack, byte;
    /* Charged for the bytes of their string arguments that they touch (rs_env.c). */
    lua_CFunction tonumber, upper, lower, reverse, sub, format, packsize, sunpack;
    lua_CFunction utf8_len, utf8_offset, utf8_codepoint, utf8_codes;
    lua_CFunction concat, insert, remove, move, sort, unpack;
    lua_CFunction create, resume;
} rs_originals;

/* Size classes of the small blocks a state keeps (rs_state.c): 24, 40, ..., 120 usable bytes. */
#define RS_SMALL_CLASSES 7

/* A block of the state's string arena (rs_keep_string). */
typedef struct rs_string_block {
    struct rs_string_block *next;
    size_t used, cap;
    char data[];
} rs_string_block;

struct rs_state {
    lua_State *L;
    rs_limits limits;
    rs_originals orig;

    /* Allocator accounting. */
    uint64_t memory_in_use;
    uint64_t memory_limit;
    /* Small blocks freed by Lua, kept for its next allocations of their size class (rs_alloc). */
    void *small_free[RS_SMALL_CLASSES];
    size_t small_kept_bytes;

    /* The running transaction's guard. */
    int phase;
    int killed;
    int64_t budget_left;
    /* Instructions between two calls of the count hook on the running thread (see hook_interval_for). */
    int hook_interval;
    bool hook_off; /* armed with the count hook off, for a straight rule (rs_arm) */
    /* Steps charged since the wall clock was last read: reading it on every charge would cost more than
     * most of the work charged (helpers charge a few steps per call). */
    uint64_t steps_since_clock;
    /* When the running transaction is out of time; RS_DEADLINE_UNSTARTED until its clock starts (rs_arm). */
    uint64_t deadline_ns;
    uint64_t timeout_ns;
    /* Checked by the hook and by rs_charge while a file loads; NULL when loading cannot be cancelled. */
    const rs_cancel *cancel;
    const char *current_key;
    size_t current_key_len;
    const char *current_file; /* while loading */
    int32_t kill_line;        /* while loading: the line of current_file running when the guard killed it, or 0 */
    double now;
    int flag_depth;
    int32_t flag_stack[RS_MAX_FLAG_DEPTH];
    /* A function test's own code is running (not a rule it queries): flag, route and config answer queries. */
    bool in_test;
    /* Where those queries go instead of this state's rules (rs_set_test_answers); NULL: here. */
    rs_ask_fn ask;
    void *ask_context;
    uint32_t log_lines_this_eval;
    uint32_t log_lines_dropped;

    /* Registry references of the variant name map and value list that every boolean flag shares, LUA_NOREF until
     * the first boolean flag. */
    int boolean_variants_ref, boolean_values_ref;
    const void *boolean_interned[2]; /* "off" and "on" as Lua strings of the state (see rs_variant_entry) */

    /* Pooled proxies of nested context objects handed out since the last evaluation began (rs_env.c): an
     * evaluation entry point resets it, so a proxy is reused only once the evaluation that had it is over. */
    uint32_t nested_proxies_used;

    /* The top-level context object of every conversion reuses one storage table, proxy and metatable (rs_env.c):
     * their registry references, and the storage the metatable points at now (kept alive by it). */
    int context_proxy_ref, context_meta_ref, context_storage_ref;
    const void *context_target;
    /* The cache of top-level context keys (rs_json.c), and its registry reference. */
    struct key_cache *key_cache;
    int key_cache_ref;
    /* The running conversion hands over the context's storage rather than its proxy (RS_SHAPE_SEALED). */
    bool bare_context;
    /* The running conversion converts only these members (RS_CONTEXT_KEYS_KNOWN set; 0: all of them). */
    uint64_t context_filter;
    /* The context keys that sealed rules read, numbered from 1 (rs_context_key_number). */
    rs_context_key_name context_key_names[RS_CONTEXT_KEY_NAMES];
    uint8_t context_key_count;
    uint64_t context_key_hashes[4]; /* a filter of their hashes: bit h & 255 of each (rs_json.c) */
    /* setmetatable has been called in this state: metamethods may be Lua functions, so no rule runs unhooked. */
    bool user_metatables;
    /* While loading finishes: the shapes of the closures rs_check_closure inspected, by closure (open addressing). */
    struct rs_shape_slot *shapes;
    size_t shape_cap, shape_count;
    /* How contexts are converted (RS_CONTEXTS_*), mirrored from the lazy reader's settings so that a context
     * converted whole does not look the reader up. */
    int context_mode;

    /* Loading. */
    int32_t next_seq;
    bool finished;
    bool usable; /* finished without diagnostics */

    rs_diag_entry *diags;
    size_t diag_count, diag_cap;

    rs_flag_entry *flags;
    size_t flag_count;
    rs_route_entry *routes;
    size_t route_count;
    rs_config_entry *configs;
    /* The names, keys, descriptions and files of the flags, routes and configs (and the variants' names): copied
     * into blocks the state frees together, rather than one allocation each (at 10,000 flags, 30,000 blocks of
     * malloc headers and rounding per state); `kept_file` is the last file name kept, which its declarations share. */
    rs_string_block *strings;
    const char *kept_file;
    size_t config_count;

    rs_test_entry *tests;
    size_t test_count, test_cap;

    rs_log_entry *logs;
    size_t log_count, log_cap;

    /* The explain in progress or last done (rs_trace.c); NULL until the first explain. */
    rs_trace *trace;
    /* Data files offered to `data "name"` and the data sets built from them (rs_data.c); NULL when none. */
    struct rs_data_table *data;
    /* Route files' texts while loading, then the compiled match predicates (rs_dispatch.c); NULL when none. */
    struct rs_dispatch *dispatch;

    /* Texts that outcomes point into. */
    char *text;
    size_t text_len, text_cap;

    /* Host memory reused by one step of loading (the compiled code of each closure checked, rs_freeze.c); NULL
     * between steps. */
    char *scratch;
    size_t scratch_len, scratch_cap;
};

/* Registry keys (addresses of these statics are unique light userdata). */
extern const char rs_key_decls;     /* sequence of declaration records */
extern const char rs_key_pending;   /* declarations still waiting for their table */
extern const char rs_key_base;      /* the frozen base environment */
extern const char rs_key_flag_index;/* flag key -> flag index (0-based) */
extern const char rs_key_twins;     /* frozen table -> metatable twin */

uint64_t rs_now_ns(void);

/* Arms the guard for user code: budget, deadline, fresh hook count. `straight`: the length of the straight rule about
 * to run (RS_SHAPE_STRAIGHT_MASK), or 0; shorter than the hook's interval, it cannot reach the hook, which is then
 * set off until rs_disarm. */
void rs_arm(rs_state *S, int phase, uint64_t instructions, uint64_t timeout_ns, unsigned straight);
/* Back to host work: no budget applies, a kill is forgotten. */
void rs_disarm(rs_state *S);
/* Marks the running rule as killed (sticky) for `reason`, without raising. */
void rs_mark_killed(lua_State *L, int reason);
/* Raises the sticky error for the current kill reason. */
int rs_raise_kill(lua_State *L);
const char *rs_kill_message(int kill);

/* Diagnostics and texts. */
void rs_add_diag(rs_state *S, const char *file, int32_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Copies `len` bytes of untrusted text into dst (cap bytes), escaping control and invalid
 * UTF-8 bytes and truncating with "..."; always NUL-terminates. Returns the length written. */
size_t rs_escape_text(char *dst, size_t cap, const char *src, size_t len);
/* Appends escaped text to the state's text buffer; returns its offset. */
uint32_t rs_text_append(rs_state *S, const char *src, size_t len, bool escape, uint32_t *out_len);
/* A message for the error object at the top of the stack (strings only; other types by name). */
size_t rs_error_text(lua_State *L, int idx, char *dst, size_t cap);
char *rs_strdup(const char *s);
char *rs_strndup(const char *s, size_t n);
/* n bytes of s and a NUL in the state's string arena: valid until rs_state_free, never freed alone. */
char *rs_keep_string(rs_state *S, const char *s, size_t n);
/* The file name `file` in the arena, shared with the declaration before when it is the same file. */
char *rs_keep_file(rs_state *S, const char *file);

/* Environment (rs_env.c). */
int rs_build_base_env(lua_State *L);
bool rs_is_frozen(lua_State *L, int idx);
/* Pushes the storage table of the frozen table at idx. */
void rs_push_storage(lua_State *L, int idx);
/* Raw get that sees through frozen tables: pushes t[k] for the key on top (popped). */
void rs_rawget_any(lua_State *L, int idx);

/* Freezing (rs_freeze.c): turns the table at idx into a read-only proxy in place. */
void rs_freeze_table(lua_State *L, int idx);
/* Wraps a fresh table at the top as read-only (nested objects of contexts): replaces it by its proxy, one of a pool
 * that each evaluation reuses (see nested_proxies_used). */
void rs_make_readonly(lua_State *L);
/* Like rs_make_readonly for the top-level context object, but reuses one proxy and metatable per state:
 * nothing can hold on to the proxy from one evaluation to the next (every place a rule could store it is
 * frozen), so re-pointing it at each evaluation's storage is unobservable and saves two tables. */
void rs_make_readonly_context(lua_State *L);
/* Creates the reusable context proxy and storage (at setup). */
void rs_create_context_proxy(lua_State *L);
/* Creates the cache of interned top-level context keys (at setup); rs_free_key_cache frees its host memory (before
 * the Lua state, which holds the cache itself, is closed). */
void rs_create_key_cache(lua_State *L);
void rs_free_key_cache(rs_state *S);
/* The set of the key cache that a key of at most 31 bytes belongs to, of 64 (for tests that fill one). */
unsigned rs_key_cache_set(const char *key, size_t len);
/* The number (1 to RS_CONTEXT_KEY_NAMES) of context key s of n bytes in S's list of keys that rules read; with
 * `add`, a key not listed yet is added while there is room. 0: not listed. */
unsigned rs_context_key_number(rs_state *S, const char *s, size_t n, bool add);
/* Renumbers the keys the cache holds after keys were added to S's list (rs_shape_rules). */
void rs_renumber_cached_keys(rs_state *S);
/* Pushes the context's proxy, then the reusable storage of the top-level context for a conversion to fill (`empty`:
 * emptied first; otherwise the conversion removes what it does not replace); once the storage (at the top) is
 * filled, rs_end_context_fill points the proxy at it and pops it, which leaves the proxy. With S->bare_context, no
 * proxy is pushed and the filled storage is left. */
void rs_begin_context_fill(lua_State *L, rs_state *S, bool empty);
void rs_end_context_fill(lua_State *L, rs_state *S);
/* The kinds of declaration records (rs_rules.c), which are also roots of rs_freeze_reachable. */
enum rs_decl_kind { DECL_FLAG = 1, DECL_ROUTE = 2, DECL_CONFIG = 3 };

/* Freezes everything reachable from the `value` of each record in the sequence at idx; reports what cannot be
 * frozen as diagnostics against the record's `file`/`line`, naming it by `what`, or for a declaration record by
 * its `kind` and `key`. A flag's or route's value is its definition table, which rules never see: its contents
 * are frozen, the table itself is not. */
void rs_freeze_reachable(rs_state *S, lua_State *L, int roots_idx);
/* Checks the compiled code of the Lua function at idx (a load-time closure): reports each
 * assignment to a load-time variable. Returns the number of problems reported. */
int rs_check_closure(rs_state *S, lua_State *L, int idx);
/* Frees the scratch buffer that checking closures filled. */
void rs_release_scratch(rs_state *S);
/* Sets the shape (RS_SHAPE_*) of every flag's rule from what rs_check_closure found, then forgets the closures. */
void rs_shape_rules(rs_state *S, lua_State *L);
/* Frees what rs_check_closure remembered (rs_shape_rules does, and freeing a state). */
void rs_forget_shapes(rs_state *S);

/* JSON (rs_json.c). */
/* Pushes a read-only table built from a JSON object; raises on invalid input. */
void rs_push_json_object(lua_State *L, const char *json, size_t len, uint32_t max_depth, uint32_t max_values);
/* Like rs_push_json_object for the context of an evaluation: checks the whole text at once (the same errors), but
 * converts a top-level member only when it is first read. Returns whether it did so (small contexts are converted
 * whole): then `json` must stay valid until rs_context_end. */
bool rs_push_json_context(lua_State *L, const char *json, size_t len, uint32_t max_depth, uint32_t max_values);
/* Converts the members not read yet into the storage table at idx, if it is a context's (a no-op otherwise): for
 * whatever walks a storage rather than indexing it. rs_push_storage does it. */
void rs_complete_context(lua_State *L, int idx);
/* Pushes the storage of the read-only view at idx as it is (members not read yet absent: see rs_context_rawget). */
void rs_push_context_storage(lua_State *L, int idx);
/* lua_rawget on a storage table that converts a context's member on first read. */
int rs_context_rawget(lua_State *L, int storage);
/* The evaluation whose context text was read lazily is over. Never raises. */
void rs_context_end(lua_State *L);
/* A Lua C function: argument 1 is the RS_CONTEXTS_* mode of the state's evaluations. */
int rs_set_context_mode(lua_State *L);
/* Serialises the Lua value at idx to canonical JSON into a luaL_Buffer-backed string pushed on the
 * stack; on failure pushes nil and an error message instead. */
bool rs_to_json(lua_State *L, int idx);

/* The ro metamethods, compared by identity to recognise frozen tables. */
int rs_ro_newindex(lua_State *L);

/* Explain (rs_trace.c). */
void rs_trace_start(rs_state *S, size_t max_entries);
void rs_trace_stop(rs_state *S);
void rs_trace_free(rs_state *S);
/* LUA_MASKLINE while a trace records, else 0: or-ed into the count hook's mask. */
int rs_trace_mask(const rs_state *S);
/* The line hook's part. */
void rs_trace_line(lua_State *L, lua_Debug *ar);
/* Opens a record whose own steps follow one level deeper (a prerequisite, a route); returns its handle. */
ptrdiff_t rs_trace_open(lua_State *L, int kind, const char *name, const char *file, int32_t line);
/* Closes it, with its detail (a JSON object). */
void rs_trace_close(lua_State *L, ptrdiff_t opened, const char *detail);
void rs_trace_close_outcome(lua_State *L, ptrdiff_t opened, const char *variant, const char *reason);
/* Makes the context view at idx record the fields read through it. */
void rs_trace_context(lua_State *L, int idx);

/* Rule API (rs_rules.c): registers flag, route, config, flag_value, log and now into the table on top. */
void rs_open_rule_api(lua_State *L);
/* The flag's index (0-based) for a key, or -1 (rs_rules.c). */
int rs_find_flag(lua_State *L, const char *key, size_t len);
/* Checks a rule's return value at the top against flag f and pops it: the variant index, -1 for no decision, or -2
 * with the reason in `why` (rs_rules.c). */
int rs_flag_result(lua_State *L, rs_flag_entry *f, char *why, size_t why_cap);

/* Function tests (rs_tests.c): flag(key, ctx), route(request), config(key) and expect(value) while a test runs. */
int rs_test_flag(lua_State *L);
int rs_test_route(lua_State *L);
int rs_test_config(lua_State *L);
int rs_api_expect(lua_State *L);

/* Data files (rs_data.c): the `data` function of the rule API, the check that lets data objects through the
 * freeze (they are read-only by construction), and the clean-up of a state's offers. */
int rs_api_data(lua_State *L);
bool rs_is_data_object(lua_State *L, int idx);
void rs_data_drop_sources(rs_state *S);
void rs_data_state_free(rs_state *S);

/* Compiled routing (rs_dispatch.c). While loading, route files' texts are kept; once the rule set is frozen,
 * rs_dispatch_compile turns the match functions of common shapes into predicates and drops the texts. During a
 * routing decision, rs_dispatch_begin starts a request and rs_dispatch_match evaluates a route's predicate
 * against the request's storage table at `storage`. */
typedef struct rs_dispatch rs_dispatch;
void rs_dispatch_keep_source(rs_state *S, const char *path, const char *text, size_t len);
void rs_dispatch_compile(rs_state *S, lua_State *L);
bool rs_dispatch_usable(const rs_state *S);
void rs_dispatch_begin(rs_state *S);
bool rs_dispatch_match(rs_state *S, lua_State *L, int storage, int32_t pred);
void rs_dispatch_free(rs_state *S);

#endif
