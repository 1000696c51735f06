/*
 * rule_sandbox.h - the C face of one sandboxed Lua state holding a rule set.
 *
 * Every function here is one complete, protected transaction with Lua: it may
 * fail, but a Lua error never escapes it (and so never unwinds a Swift frame).
 * An rs_state is not thread-safe: one thread uses it at a time.
 */
#ifndef RULESD_RULE_SANDBOX_H
#define RULESD_RULE_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rs_state rs_state;

/**
 * A request to stop loading, shared between the loading thread and any other thread (atomic). A
 * state that has one checks it between Lua steps while a file loads: once requested, the file's
 * chunk stops with "loading cancelled".
 */
typedef struct rs_cancel rs_cancel;

/** Budgets of one state. Zero means "use the built-in default". */
typedef struct rs_limits {
    /** Bytes the Lua allocator may hand out to this state. */
    uint64_t memory_limit;
    /** VM instructions (and equivalent C work) per file load. */
    uint64_t load_instruction_limit;
    /** Wall-clock budget of one file load, in nanoseconds. */
    uint64_t load_timeout_ns;
    /** VM instructions (and equivalent C work) per evaluation. */
    uint64_t eval_instruction_limit;
    /** Wall-clock budget of one evaluation, in nanoseconds. */
    uint64_t eval_timeout_ns;
    /** Deepest nesting accepted in a context or request. */
    uint32_t max_context_depth;
    /** Most values (scalars, arrays, objects) accepted in one context or request. */
    uint32_t max_context_values;
    /** Lines a rule may log per evaluation, and bytes per line. */
    uint32_t log_lines_per_eval;
    uint32_t log_line_bytes;
} rs_limits;

/** Outcome of an evaluation. */
typedef enum rs_status {
    /** The rule returned a variant (flags) or a route matched (routes). */
    RS_OK = 0,
    /** The rule returned nil (flags), or no route matched (routes). */
    RS_NO_DECISION = 1,
    /** The flag has no rule (reason STATIC). */
    RS_STATIC = 2,
    /** The flag is disabled (reason DISABLED). */
    RS_DISABLED = 3,
    /** The rule raised an error (code GENERAL). */
    RS_ERR_GENERAL = 10,
    /** An instruction, time or memory budget ran out (code RESOURCE_LIMIT). */
    RS_ERR_RESOURCE_LIMIT = 11,
    /** The rule returned something that is not a variant / target (code TYPE_MISMATCH). */
    RS_ERR_TYPE_MISMATCH = 12,
    /** The context or request could not be converted (code INVALID_CONTEXT). */
    RS_ERR_INVALID_CONTEXT = 13,
    /** Misuse of this API (an index out of range, a state that failed to load). */
    RS_ERR_INTERNAL = 14,
    /** The flag is declared `invalid` (a flagd definition that did not translate): code PARSE_ERROR. */
    RS_ERR_PARSE = 15,
} rs_status;

/**
 * Result of one evaluation. Texts (error messages, route targets) live in the state's text
 * buffer (rs_text_buffer), valid until the next evaluation on the state.
 */
typedef struct rs_outcome {
    int32_t status;          /**< an rs_status */
    int32_t index;           /**< flags: variant index (variants sorted by name), -1 when none;
                                  routes: index of the matching or failing route (priority order), -1 when none */
    uint32_t message_offset; /**< error text: escaped, truncated, not NUL-terminated */
    uint32_t message_length;
    uint32_t target_offset;  /**< routes: the target */
    uint32_t target_length;
} rs_outcome;

/** One problem found while loading (a compile error, a failing chunk, a validation error). */
typedef struct rs_diagnostic {
    const char *file;    /**< relative path, NUL-terminated; valid until the state is freed */
    int32_t line;        /**< 0 when unknown */
    const char *message; /**< NUL-terminated, escaped */
} rs_diagnostic;

/** A flag as declared, after validation. Strings stay valid until the state is freed. */
typedef struct rs_flag_info {
    const char *key;
    const char *description;   /**< NULL when absent */
    const char *file;
    int32_t line;
    int32_t enabled;
    int32_t has_rule;
    int32_t default_variant;   /**< index into variants; -1 when the flag has none (`default = false`) */
    int32_t variant_count;
    const char *metadata_json; /**< `metadata` as canonical JSON text; NULL when absent */
    size_t metadata_json_len;
} rs_flag_info;

typedef struct rs_variant_info {
    const char *name;
    const char *json;          /**< the value, as canonical JSON text */
    size_t json_len;
} rs_variant_info;

typedef struct rs_route_info {
    const char *name;
    const char *description;   /**< NULL when absent */
    const char *file;
    int32_t line;
    int64_t priority;
    int32_t has_match;         /**< 0: matches every request */
    const char *static_target; /**< NULL when the target is a function */
} rs_route_info;

typedef struct rs_config_info {
    const char *key;
    const char *file;
    int32_t line;
    const char *json;          /**< the value, as canonical JSON text */
    size_t json_len;
} rs_config_info;

/** A rule test as declared with test "name" { ... }. Strings stay valid until the state is freed. */
typedef struct rs_test_info {
    const char *name;
    const char *file;
    int32_t line;
    const char *json;          /**< the definition table, as canonical JSON text; NULL for a function test */
    size_t json_len;
    int32_t is_function;       /**< declared as test "name" (function() ... end): run it with rs_run_test */
} rs_test_info;

/** Outcome of one function test. Texts live in the state's text buffer, valid until the next evaluation. */
typedef struct rs_test_outcome {
    int32_t passed;
    int32_t out_of_budget;     /**< a budget (instructions, time, memory) stopped the test */
    int32_t line;              /**< where it failed: the failing assertion's line, 0 when unknown */
    uint32_t file_offset;      /**< the failing assertion's file (relative path), not NUL-terminated */
    uint32_t file_length;
    uint32_t message_offset;   /**< what was expected and what came back */
    uint32_t message_length;
} rs_test_outcome;

/** A line logged by a rule with log(level, message). */
typedef struct rs_log_line {
    int32_t level;             /**< 0 debug, 1 info, 2 warning, 3 error */
    const char *key;           /**< flag or route being evaluated, NULL at load */
    const char *text;          /**< escaped, truncated, NUL-terminated */
} rs_log_line;

/**
 * Creates an empty sandboxed state.
 * @return NULL when the state cannot be created (out of memory); `error` then holds the reason.
 */
rs_state *rs_state_new(const rs_limits *limits, char *error, size_t error_cap);

/** A new, unrequested cancellation; NULL when out of memory. */
rs_cancel *rs_cancel_new(void);
/** Requests cancellation (any thread, any number of times). */
void rs_cancel_request(rs_cancel *C);
/** Whether cancellation was requested (any thread). */
int rs_cancel_requested(const rs_cancel *C);
/** Frees it; no state may still refer to it. */
void rs_cancel_free(rs_cancel *C);
/** Makes loading into `S` stop when `C` is requested (NULL: never); `C` must outlive its use by `S`. */
void rs_state_set_cancel(rs_state *S, const rs_cancel *C);

/**
 * Closes the Lua state and frees everything it owns. Closing a state of RS_RETURN_MEMORY_BYTES or more also hands
 * the allocator's free pages back to the system (rs_return_free_memory).
 */
void rs_state_free(rs_state *S);

/** A state holding at least this many bytes returns the freed memory to the system when it closes. */
#define RS_RETURN_MEMORY_BYTES (4u << 20)

/**
 * Hands the process allocator's free pages back to the system (malloc_trim): loading and closing states free
 * megabytes in small pieces between live ones, which the allocator keeps otherwise.
 */
void rs_return_free_memory(void);

/** How many times free memory was handed back since the process started. */
uint64_t rs_free_memory_returns(void);

/**
 * Compiles (text mode only) and runs one rule file's chunk in its own environment.
 * @return 0 on success; otherwise the problem is appended to the diagnostics, and the result is 2 when a
 *         budget (instructions, time, memory) or a cancellation stopped the chunk, 1 for anything else.
 */
int rs_load_file(rs_state *S, const char *relative_path, const char *source, size_t length);

/**
 * Validates the whole rule set once every file is loaded, then freezes all
 * load-time data. After a 0 return the state only evaluates.
 * @return the number of diagnostics (0 on success).
 */
int rs_finish_loading(rs_state *S);

size_t rs_diagnostic_count(const rs_state *S);
rs_diagnostic rs_diagnostic_at(const rs_state *S, size_t index);

size_t rs_flag_count(const rs_state *S);
rs_flag_info rs_flag_at(const rs_state *S, size_t index);
rs_variant_info rs_flag_variant_at(const rs_state *S, size_t flag, size_t variant);
/** Makes flag_value() answer `variant` (an index) for `flag`, as an override does; -1 ends that. */
void rs_set_override(rs_state *S, size_t flag, int32_t variant);
size_t rs_route_count(const rs_state *S);
rs_route_info rs_route_at(const rs_state *S, size_t index);
size_t rs_config_count(const rs_state *S);
rs_config_info rs_config_at(const rs_state *S, size_t index);

/** Rule tests, in declaration order (files in load order); not part of the rule set's flags. */
size_t rs_test_count(const rs_state *S);
rs_test_info rs_test_at(const rs_state *S, size_t index);

/**
 * Runs the function test at `index` (one with is_function set) in this state, under the evaluation instruction
 * budget and `timeout_ns` of wall-clock time; `now()` and the test's queries see `now`.
 */
void rs_run_test(rs_state *S, size_t index, double now, uint64_t timeout_ns, rs_test_outcome *outcome);

/**
 * Where function tests' flag(), route() and config() questions go instead of this state's rules (rulesctl test
 * --live): `ask` gets one protocol request (a JSON object, no newline) and returns the answer line, which must
 * stay valid until its next call; NULL when there is no answer. A NULL `ask` makes the state answer again.
 */
typedef const char *(*rs_ask_fn)(void *context, const char *request, size_t request_length, size_t *answer_length);
void rs_set_test_answers(rs_state *S, rs_ask_fn ask, void *context);

/**
 * The names of the globals every rule file sees (the sandbox's base environment), unordered.
 * @return how many there are; at most `cap` are stored into `names` (valid until the state is freed).
 */
size_t rs_global_names(rs_state *S, const char **names, size_t cap);

/** Bytes the state's allocator currently holds. */
uint64_t rs_memory_in_use(const rs_state *S);

/**
 * Evaluates one flag (index from rs_flag_at) for a context given as JSON text (an object).
 * @param now seconds since the epoch that `now()` returns during this evaluation.
 */
void rs_eval_flag(rs_state *S, size_t flag, const char *context_json, size_t context_length, double now,
                  rs_outcome *outcome);

/**
 * Evaluates every flag for one context, converted once. `outcomes` has room for rs_flag_count() entries.
 * @return RS_OK, or RS_ERR_INVALID_CONTEXT (`context_error` then describes the problem; outcomes untouched).
 */
int32_t rs_eval_all_flags(rs_state *S, const char *context_json, size_t context_length, double now,
                          rs_outcome *outcomes, rs_outcome *context_error);

/** Routes one request given as JSON text (an object). */
void rs_eval_route(rs_state *S, const char *request_json, size_t request_length, double now, rs_outcome *outcome);

/**
 * Whether routing decides the route at `index` without calling its match function: the function is a test of the
 * request's top-level fields against constants (==, ~=, starts_with, ends_with, and, or, not), compiled when the
 * rule set was finished. The answers are the same either way; only the cost differs.
 */
int rs_route_match_compiled(const rs_state *S, size_t index);

/** Turns compiled matches off (0) or on again (1, the default): with them off, routing calls every match function,
 * as the reference the compiled ones are tested against. */
void rs_set_compiled_routing(rs_state *S, int enabled);

/** How evaluations turn their context's JSON into what rules read. The answers are the same either way; only the
 * cost differs, and the whole conversion is the reference the lazy one is tested against. */
typedef enum rs_context_conversion {
    RS_CONTEXTS_BY_SIZE = 0, /**< the default: small contexts whole, larger ones lazily */
    RS_CONTEXTS_WHOLE = 1,   /**< every member converted before the rule runs */
    RS_CONTEXTS_LAZY = 2,    /**< the text checked whole, each top-level member converted on its first read */
} rs_context_conversion;
void rs_set_context_conversion(rs_state *S, int mode);

/** What one record of an explained evaluation is. */
typedef enum rs_trace_kind {
    /** A rule-file line ran (`count` times when a loop repeated it). */
    RS_TRACE_LINE = 1,
    /** A helper (split, rollout, semver.*, ip.in_cidr, starts_with, ends_with) was called: `name`, and in
        `detail` a JSON object with its "args", its "result" and, for split/rollout, the bucket. */
    RS_TRACE_CALL = 2,
    /** flag_value(`name`, ...): the prerequisite's own records follow one level deeper; `detail` holds its
        "variant" and "reason". */
    RS_TRACE_FLAG = 3,
    /** A route was tried (`name`, declared at file:line): its match lines follow one level deeper; `detail`
        holds "matched". */
    RS_TRACE_ROUTE = 4,
    /** A context field was read (`name` is its path, `detail` says whether it was present, and its value). */
    RS_TRACE_FIELD = 5,
} rs_trace_kind;

/** One record of an explained evaluation. Strings stay valid until the next explain on the state. */
typedef struct rs_trace_entry {
    int32_t kind;       /**< an rs_trace_kind */
    int32_t depth;      /**< 0 for the rule itself, one more inside each prerequisite or route */
    uint32_t count;     /**< times the record repeated (loops folded); for fields, times read */
    int32_t line;       /**< 0 when unknown */
    const char *file;   /**< NULL when unknown */
    const char *name;   /**< helper, flag key, route name or field path; NULL for lines */
    const char *detail; /**< a JSON object, or NULL */
} rs_trace_entry;

/**
 * rs_eval_flag, recording a trace of what the rule does (lines run, helper calls, prerequisites, context
 * fields read). Only this call pays for tracing: the line hook is removed before it returns.
 * @param max_entries most records kept (records and fields together); 0 means 1,000.
 */
void rs_explain_flag(rs_state *S, size_t flag, const char *context_json, size_t context_length, double now,
                     size_t max_entries, rs_outcome *outcome);

/** rs_eval_route, recording a trace that also lists every route tried, in priority order, up to the winner. */
void rs_explain_route(rs_state *S, const char *request_json, size_t request_length, double now,
                      size_t max_entries, rs_outcome *outcome);

/** The records of the last explain, in execution order. */
size_t rs_trace_count(const rs_state *S);
rs_trace_entry rs_trace_at(const rs_state *S, size_t index);
/** The context fields the last explain read, in first-read order, each once. */
size_t rs_trace_field_count(const rs_state *S);
rs_trace_entry rs_trace_field_at(const rs_state *S, size_t index);
/** Whether the last explain's trace was cut at its cap. */
int rs_trace_truncated(const rs_state *S);
/** The Lua hook mask in force on the state's main thread (a line hook only ever runs inside an explain). */
int rs_hook_mask(const rs_state *S);

/** The texts that outcomes point into; valid until the next evaluation. */
const char *rs_text_buffer(const rs_state *S);

/** Lines logged by rules since the last call; the pointers stay valid until the next evaluation. */
size_t rs_log_count(const rs_state *S);
rs_log_line rs_log_at(const rs_state *S, size_t index);
/** Forgets the logged lines. */
void rs_log_clear(rs_state *S);

#ifdef __cplusplus
}
#endif
#endif
