/*
 * rs_rules.c - the rule-file API (flag, route, config, flag_value, log, now),
 * whole-rule-set validation, and the evaluation transactions.
 */
#include "rs_state.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *kind_name(int kind) {
    return kind == DECL_FLAG ? "flag" : kind == DECL_ROUTE ? "route" : "config";
}

#define MAX_KEY_BYTES 256
#define MAX_VARIANTS 10000

/* ---- declarations ------------------------------------------------------------------------ */

static void check_key(lua_State *L, int kind, const char *key, size_t len) {
    if (len == 0) luaL_error(L, "%s name must not be empty", kind_name(kind));
    if (len > MAX_KEY_BYTES) luaL_error(L, "%s name is longer than %d bytes", kind_name(kind), MAX_KEY_BYTES);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c <= 0x20 || c == 0x7F) luaL_error(L, "%s name must not contain spaces or control characters", kind_name(kind));
    }
}

/* flag "key" { ... }: the second call. Upvalues: kind, key, line, token. */
static int decl_body(lua_State *L) {
    rs_state *S = rs_state_of(L);
    int kind = (int)lua_tointeger(L, lua_upvalueindex(1));
    const char *key = lua_tostring(L, lua_upvalueindex(2));
    if (S->phase != RS_PHASE_LOAD) return luaL_error(L, "%s declarations are only allowed while a rule file loads", kind_name(kind));
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_pending);
    lua_pushvalue(L, lua_upvalueindex(4));
    lua_rawget(L, -2);
    bool pending = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!pending) return luaL_error(L, "%s '%s' was already given its definition", kind_name(kind), key);
    if (lua_gettop(L) < 2 || lua_isnil(L, 1)) {
        if (kind == DECL_CONFIG) return luaL_error(L, "config '%s' needs a value: config \"%s\" (value)", key, key);
        return luaL_error(L, "%s '%s' needs a definition table: %s \"%s\" { ... }", kind_name(kind), key,
                          kind_name(kind), key);
    }
    if (kind != DECL_CONFIG && lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L, "%s '%s' needs a definition table, got a %s", kind_name(kind), key, luaL_typename(L, 1));
    lua_pushvalue(L, lua_upvalueindex(4));
    lua_pushnil(L);
    lua_rawset(L, -3); /* no longer pending */
    lua_pop(L, 1);
    lua_createtable(L, 0, 6);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_setfield(L, -2, "kind");
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_setfield(L, -2, "key");
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "value");
    lua_pushstring(L, S->current_file);
    lua_setfield(L, -2, "file");
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_setfield(L, -2, "line");
    lua_pushinteger(L, S->next_seq++);
    lua_setfield(L, -2, "seq");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_decls);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
}

static int caller_line(lua_State *L) {
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) return ar.currentline;
    return 0;
}

static int decl_start(lua_State *L, int kind) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_LOAD) return luaL_error(L, "%s declarations are only allowed while a rule file loads", kind_name(kind));
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    check_key(L, kind, key, len);
    int line = caller_line(L);
    lua_pushinteger(L, kind);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, line);
    lua_newtable(L); /* token identifying this declaration while it waits for its table */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_pending);
    lua_pushvalue(L, -2);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "key");
    lua_pushstring(L, S->current_file);
    lua_setfield(L, -2, "file");
    lua_pushinteger(L, line);
    lua_setfield(L, -2, "line");
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_pushcclosure(L, decl_body, 4);
    return 1;
}

/* While a function test's own code runs, the declaration functions answer queries instead (rs_tests.c). */
static int api_flag(lua_State *L) { return rs_state_of(L)->in_test ? rs_test_flag(L) : decl_start(L, DECL_FLAG); }
static int api_route(lua_State *L) { return rs_state_of(L)->in_test ? rs_test_route(L) : decl_start(L, DECL_ROUTE); }
static int api_config(lua_State *L) {
    return rs_state_of(L)->in_test ? rs_test_config(L) : decl_start(L, DECL_CONFIG);
}

/* test "name" { ... } or test "name" (function() ... end): the second call. Upvalues: name, line. A definition
 * table is kept as JSON text at once: it holds data only, and the host runs it against the finished rule set. A
 * function is kept in the registry (frozen with the rule data) and runs only when the host runs the tests. */
static int test_body(lua_State *L) {
    rs_state *S = rs_state_of(L);
    const char *name = lua_tostring(L, lua_upvalueindex(1));
    if (S->phase != RS_PHASE_LOAD) return luaL_error(L, "test declarations are only allowed while a rule file loads");
    bool is_function = lua_type(L, 1) == LUA_TFUNCTION;
    if (!is_function && lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L,
                          "test '%s' needs a definition table or a function: test \"%s\" { flag = ..., expect = ... } "
                          "or test \"%s\" (function() ... end)",
                          name, name, name);
    const char *json = NULL;
    size_t len = 0;
    if (!is_function) {
        if (!rs_to_json(L, 1)) return luaL_error(L, "test '%s': %s", name, lua_tostring(L, -1));
        json = lua_tolstring(L, -1, &len);
    }
    if (S->test_count == S->test_cap) {
        size_t cap = S->test_cap ? S->test_cap * 2 : 16;
        rs_test_entry *grown = realloc(S->tests, cap * sizeof *grown);
        if (!grown) return luaL_error(L, "not enough memory for test '%s'", name);
        S->tests = grown;
        S->test_cap = cap;
    }
    rs_test_entry *t = &S->tests[S->test_count++];
    t->name = rs_strndup(name, strlen(name));
    t->file = rs_strndup(S->current_file, strlen(S->current_file));
    t->line = (int32_t)lua_tointeger(L, lua_upvalueindex(2));
    t->json = json ? rs_strndup(json, len) : NULL;
    t->json_len = len;
    t->func_ref = LUA_NOREF;
    if (is_function) {
        lua_pushvalue(L, 1);
        t->func_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

static int api_test(lua_State *L) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_LOAD) return luaL_error(L, "test declarations are only allowed while a rule file loads");
    size_t len;
    luaL_checklstring(L, 1, &len);
    if (len == 0) return luaL_error(L, "test name must not be empty");
    if (len > MAX_KEY_BYTES) return luaL_error(L, "test name is longer than %d bytes", MAX_KEY_BYTES);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, caller_line(L));
    lua_pushcclosure(L, test_body, 2);
    return 1;
}

/* ---- functions available to rules while they run ----------------------------------------- */

static int api_now(lua_State *L) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_EVAL) return luaL_error(L, "now() is only available while a rule is evaluated");
    if (S->now == floor(S->now) && fabs(S->now) < 9.0e15) lua_pushinteger(L, (lua_Integer)S->now);
    else lua_pushnumber(L, S->now);
    return 1;
}

static int api_log(lua_State *L) {
    rs_state *S = rs_state_of(L);
    int n = lua_gettop(L);
    int level = 1, msg = 1;
    if (n >= 2) {
        const char *l = luaL_checkstring(L, 1);
        if (strcmp(l, "debug") == 0) level = 0;
        else if (strcmp(l, "info") == 0) level = 1;
        else if (strcmp(l, "warn") == 0 || strcmp(l, "warning") == 0) level = 2;
        else if (strcmp(l, "error") == 0) level = 3;
        else return luaL_argerror(L, 1, "level must be debug, info, warn or error");
        msg = 2;
    }
    if (S->log_lines_this_eval >= S->limits.log_lines_per_eval) {
        S->log_lines_dropped++;
        return 0;
    }
    S->log_lines_this_eval++;
    size_t len = 0;
    const char *text;
    char small[64];
    switch (lua_type(L, msg)) {
    case LUA_TSTRING:
    case LUA_TNUMBER: text = lua_tolstring(L, msg, &len); break;
    case LUA_TBOOLEAN: text = lua_toboolean(L, msg) ? "true" : "false"; len = strlen(text); break;
    default:
        snprintf(small, sizeof small, "(%s)", luaL_typename(L, msg));
        text = small;
        len = strlen(text);
    }
    rs_charge(L, len / 16 + 1);
    char *clean = malloc(S->limits.log_line_bytes);
    if (clean == NULL) abort();
    rs_escape_text(clean, S->limits.log_line_bytes, text, len);
    if (S->log_count == S->log_cap) {
        size_t cap = S->log_cap ? S->log_cap * 2 : 8;
        rs_log_entry *logs = realloc(S->logs, cap * sizeof *logs);
        if (logs == NULL) abort();
        S->logs = logs;
        S->log_cap = cap;
    }
    rs_log_entry *e = &S->logs[S->log_count++];
    e->level = level;
    if (S->phase == RS_PHASE_EVAL && S->current_key) e->key = rs_strndup(S->current_key, S->current_key_len);
    else e->key = rs_strdup(S->current_file ? S->current_file : "");
    e->text = clean;
    return 0;
}

static int find_flag(lua_State *L, const char *key, size_t len) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_flag_index);
    lua_pushlstring(L, key, len);
    lua_rawget(L, -2);
    int idx = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : -1;
    lua_pop(L, 2);
    return idx;
}

/* Checks a rule's return value at the top against flag f; replaces it with nothing on success
 * and returns the variant index (-1: no decision), or raises a type-mismatch message. */
static int variant_of_result(lua_State *L, rs_flag_entry *f, char *why, size_t why_cap) {
    /* A rule returns one of its variant names as a constant of its code, which is the very string the flag's name map
     * holds when the name is short (Lua interns short strings): the same object is the same name. (The type is asked
     * on a match only, for a light userdata's address could equal a string's.) */
    const void *result = lua_topointer(L, -1);
    if (result != NULL) {
        const void *const *booleans = rs_state_of(L)->boolean_interned;
        bool boolean = f->variants == rs_boolean_variants;
        for (int i = 0; i < f->variant_count; i++) {
            if ((boolean ? booleans[i] : f->variants[i].interned) == result && lua_type(L, -1) == LUA_TSTRING) {
                lua_pop(L, 1);
                return i;
            }
        }
    }
    int t = lua_type(L, -1);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return -1;
    }
    if (t == LUA_TSTRING) {
        /* A few variants are compared in place, cheaper than a lookup in the name map; a miss asks the map. */
        if (f->variant_count <= 4) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            for (int i = 0; i < f->variant_count; i++) {
                const rs_variant_entry *v = &f->variants[i];
                if (v->name_len == len && memcmp(v->name, s, len) == 0) {
                    lua_pop(L, 1);
                    return i;
                }
            }
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, f->variants_ref);
        lua_pushvalue(L, -2);
        lua_rawget(L, -2);
        int idx = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) - 1 : -2;
        lua_pop(L, 2);
        if (idx >= 0) {
            lua_pop(L, 1);
            return idx;
        }
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        char clean[128];
        rs_escape_text(clean, sizeof clean, s, len);
        snprintf(why, why_cap, "rule returned '%s', which is not a variant of flag '%s'", clean, f->key);
    } else {
        snprintf(why, why_cap, "rule returned a %s; a rule returns a variant name of flag '%s' or nil",
                 lua_typename(L, t), f->key);
    }
    lua_pop(L, 1);
    return -2;
}

int rs_find_flag(lua_State *L, const char *key, size_t len) { return find_flag(L, key, len); }

int rs_flag_result(lua_State *L, rs_flag_entry *f, char *why, size_t why_cap) {
    return variant_of_result(L, f, why, why_cap);
}

typedef struct nested_call {
    rs_flag_entry *f;
} nested_call;

/* flag_value(key, ctx) -> variant, value: another flag's decision, for prerequisites. */
static int api_flag_value(lua_State *L) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_EVAL) return luaL_error(L, "flag_value() is only available while a rule is evaluated");
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    luaL_checktype(L, 2, LUA_TTABLE);
    int idx = find_flag(L, key, len);
    if (idx < 0) return luaL_error(L, "flag_value: no flag named '%s'", key);
    rs_flag_entry *f = &S->flags[idx];
    for (int i = 0; i < S->flag_depth; i++) {
        if (S->flag_stack[i] == idx) return luaL_error(L, "flag_value: prerequisite cycle through flag '%s'", f->key);
    }
    if (S->flag_depth >= RS_MAX_FLAG_DEPTH)
        return luaL_error(L, "flag_value: prerequisites nested deeper than %d flags", RS_MAX_FLAG_DEPTH);
    if (f->override_variant > 0) { /* an override decides for the flags that depend on this one too */
        int forced = f->override_variant - 1;
        if (S->trace)
            rs_trace_close_outcome(L, rs_trace_open(L, RS_TRACE_FLAG, f->key, NULL, 0), f->variants[forced].name,
                                   "OVERRIDE");
        lua_pushstring(L, f->variants[forced].name);
        lua_rawgeti(L, LUA_REGISTRYINDEX, f->values_ref);
        lua_rawgeti(L, -1, forced + 1);
        lua_remove(L, -2);
        return 2;
    }
    int variant = f->default_variant;
    if (f->enabled && f->invalid != NULL) return luaL_error(L, "flag_value('%s'): %s", f->key, f->invalid);
    const char *reason = !f->enabled ? "DISABLED" : f->rule_ref == LUA_NOREF ? "STATIC" : "DEFAULT";
    ptrdiff_t traced = S->trace ? rs_trace_open(L, RS_TRACE_FLAG, f->key, NULL, 0) : -1;
    if (f->enabled && f->rule_ref != LUA_NOREF) {
        const char *saved_key = S->current_key;
        size_t saved_len = S->current_key_len;
        S->flag_stack[S->flag_depth++] = idx;
        S->current_key = f->key;
        S->current_key_len = f->key_len;
        lua_rawgeti(L, LUA_REGISTRYINDEX, f->rule_ref);
        lua_pushvalue(L, 2);
        int status = lua_pcall(L, 1, 1, 0);
        S->flag_depth--;
        S->current_key = saved_key;
        S->current_key_len = saved_len;
        if (status == LUA_ERRMEM && S->killed == RS_KILL_NONE) rs_mark_killed(L, RS_KILL_MEMORY);
        if (S->trace && (status != LUA_OK || S->killed != RS_KILL_NONE))
            rs_trace_close(L, traced, "{\"reason\":\"ERROR\"}");
        if (S->killed != RS_KILL_NONE) return rs_raise_kill(L);
        if (status != LUA_OK) {
            char msg[RS_MESSAGE_CAP_BYTES];
            rs_error_text(L, -1, msg, sizeof msg);
            return luaL_error(L, "flag_value('%s'): %s", f->key, msg);
        }
        char why[300];
        int v = variant_of_result(L, f, why, sizeof why);
        if (v == -2) {
            if (S->trace) rs_trace_close(L, traced, "{\"reason\":\"ERROR\"}");
            return luaL_error(L, "flag_value('%s'): %s", f->key, why);
        }
        if (v >= 0) {
            variant = v;
            reason = "TARGETING_MATCH";
        }
    }
    if (S->trace) rs_trace_close_outcome(L, traced, variant < 0 ? NULL : f->variants[variant].name, reason);
    if (variant < 0) { /* no default variant (`default = false`) and no decision: no variant, no value */
        lua_pushnil(L);
        lua_pushnil(L);
        return 2;
    }
    lua_pushstring(L, f->variants[variant].name);
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->values_ref);
    lua_rawgeti(L, -1, variant + 1);
    lua_remove(L, -2);
    return 2;
}

void rs_open_rule_api(lua_State *L) {
    static const luaL_Reg api[] = {
        {"flag", api_flag}, {"route", api_route}, {"config", api_config}, {"flag_value", api_flag_value},
        {"log", api_log},   {"now", api_now},     {"test", api_test},     {"expect", rs_api_expect},
        {"data", rs_api_data},
        {NULL, NULL},
    };
    luaL_setfuncs(L, api, 0);
}

/* ---- loading ----------------------------------------------------------------------------- */

typedef struct load_args {
    rs_state *S;
    const char *path;
    const char *source;
    size_t length;
    int stage; /* 0 compile, 1 run */
} load_args;

/* Registry key of the metatable every file's environment shares: lookups fall through to the base. */
static const char env_meta_key = 0;

static int load_tx(lua_State *L) {
    load_args *a = lua_touserdata(L, 1);
    rs_state *S = a->S;
    char chunkname[4200];
    snprintf(chunkname, sizeof chunkname, "@%s", a->path);
    /* Text mode only: a binary chunk saved as x.lua is refused ("attempt to load a binary chunk"). */
    if (luaL_loadbufferx(L, a->source, a->length, chunkname, "t") != LUA_OK) return lua_error(L);
    /* The file's own environment: its globals are its own, library lookups fall through to the
     * frozen base environment. Per-file cost matters at 100,000 files: the table starts with room for
     * `_G` only (it grows with the file's globals), and all files share one metatable. The environment
     * is not kept on any list: rules reach it only through the functions the file declares, and the
     * freeze after loading follows those (an environment nothing reaches is garbage). */
    lua_createtable(L, 0, 1);
    int env = lua_gettop(L);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &env_meta_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_base);
        lua_setfield(L, -2, "__index");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &env_meta_key);
    }
    lua_setmetatable(L, env);
    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");
    lua_setupvalue(L, env - 1, 1);
    a->stage = 1;
    S->current_file = a->path;
    S->log_lines_this_eval = 0;
    rs_arm(S, RS_PHASE_LOAD, S->limits.load_instruction_limit, S->limits.load_timeout_ns, 0);
    lua_call(L, 0, 0);
    return 0;
}

/* Splits Lua's "path:line: message" into its parts when the prefix names `path`. */
static void add_lua_error(rs_state *S, const char *path, const char *msg) {
    size_t plen = strlen(path);
    if (strncmp(msg, path, plen) == 0 && msg[plen] == ':') {
        char *end;
        long line = strtol(msg + plen + 1, &end, 10);
        if (end != msg + plen + 1 && *end == ':') {
            rs_add_diag(S, path, (int32_t)line, "%s", end[1] == ' ' ? end + 2 : end + 1);
            return;
        }
    }
    rs_add_diag(S, path, 0, "%s", msg);
}

int rs_load_file(rs_state *S, const char *relative_path, const char *source, size_t length) {
    lua_State *L = S->L;
    if (S->finished) {
        rs_add_diag(S, relative_path, 0, "the rule set is already complete");
        return 1;
    }
    load_args a = {S, relative_path, source, length, 0};
    rs_dispatch_keep_source(S, relative_path, source, length);
    lua_settop(L, 0);
    lua_pushcfunction(L, load_tx);
    lua_pushlightuserdata(L, &a);
    int status = lua_pcall(L, 1, 0, 0);
    int killed = S->killed;
    int32_t kill_line = S->kill_line;
    rs_disarm(S);
    S->current_file = NULL;
    if (status == LUA_OK) {
        lua_settop(L, 0);
        return 0;
    }
    char msg[RS_MESSAGE_CAP_BYTES];
    if (killed != RS_KILL_NONE || status == LUA_ERRMEM) {
        rs_add_diag(S, relative_path, killed != RS_KILL_NONE ? kill_line : 0, "loading stopped: %s",
                    rs_kill_message(killed != RS_KILL_NONE ? killed : RS_KILL_MEMORY));
        lua_settop(L, 0);
        return 2;
    }
    rs_error_text(L, -1, msg, sizeof msg);
    add_lua_error(S, relative_path, msg);
    lua_settop(L, 0);
    return 1;
}

/* ---- validation -------------------------------------------------------------------------- */

typedef struct decl_view {
    int kind;
    const char *key;
    size_t key_len;
    const char *file;
    int32_t line;
    int32_t seq;
    lua_Integer record; /* index in the decls sequence */
} decl_view;

/* Pushes the table to iterate for a definition: its storage if it is frozen. */
static int iterable(lua_State *L, int idx) {
    if (rs_is_frozen(L, idx)) rs_push_storage(L, idx);
    else lua_pushvalue(L, idx);
    return lua_gettop(L);
}

static bool field_name(lua_State *L, rs_state *S, decl_view *d, char *name, size_t cap) {
    if (lua_type(L, -2) != LUA_TSTRING) {
        rs_add_diag(S, d->file, d->line, "%s '%s': field names must be strings (found a %s key)", kind_name(d->kind),
                    d->key, luaL_typename(L, -2));
        return false;
    }
    size_t len;
    const char *k = lua_tolstring(L, -2, &len);
    rs_escape_text(name, cap, k, len);
    return true;
}

static char *json_or_diag(lua_State *L, rs_state *S, decl_view *d, int idx, const char *what, size_t *len) {
    if (!rs_to_json(L, idx)) {
        rs_add_diag(S, d->file, d->line, "%s '%s': %s %s", kind_name(d->kind), d->key, what, lua_tostring(L, -1));
        lua_pop(L, 2);
        return NULL;
    }
    const char *s = lua_tolstring(L, -1, len);
    char *copy = rs_strndup(s, *len);
    lua_pop(L, 1);
    return copy;
}

typedef struct variant_tmp {
    const char *name;
    size_t len;
} variant_tmp;

static int variant_cmp(const void *a, const void *b) {
    const variant_tmp *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len < y->len ? -1 : (x->len > y->len));
}

/* The fields a flag definition may have, with the type each must be. */
static const char *const flag_field_names[] = {"description", "variants", "default", "enabled",
                                               "rule",        "metadata", "invalid"};
static const char *const flag_field_types[] = {"a string",   "a table", "a string", "a boolean",
                                               "a function", "a table", "a string"};
static const int flag_field_lua_types[] = {LUA_TSTRING,   LUA_TTABLE, LUA_TSTRING, LUA_TBOOLEAN,
                                           LUA_TFUNCTION, LUA_TTABLE, LUA_TSTRING};
#define FLAG_FIELD_COUNT 7

/* Phase 1: reads the definition's fields (key at -2, value at -1 during the walk). Description and enabled go
 * straight into the entry; variants, default and rule are collected by name into the table at `fields` for the
 * phases below. Reports unknown and mistyped fields; returns false when there was any. */
static bool read_flag_fields(lua_State *L, rs_state *S, decl_view *d, int def, int fields, rs_flag_entry *f) {
    bool ok = true;
    int t = iterable(L, def);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        char name[80];
        if (!field_name(L, S, d, name, sizeof name)) {
            ok = false;
            lua_pop(L, 1);
            continue;
        }
        int field = 0;
        while (field < FLAG_FIELD_COUNT && strcmp(name, flag_field_names[field]) != 0) field++;
        int vt = lua_type(L, -1);
        if (field == FLAG_FIELD_COUNT) {
            rs_add_diag(S, d->file, d->line,
                        "flag '%s': unknown field '%s' (a flag has description, variants, default, enabled, rule, "
                        "metadata, invalid)",
                        d->key, name);
            ok = false;
        } else if (strcmp(name, "default") == 0 && vt == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            /* `default = false`: no default variant; collected as false and resolved to index -1 below. */
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
            lua_rawset(L, fields);
        } else if (vt != flag_field_lua_types[field]) {
            rs_add_diag(S, d->file, d->line, "flag '%s': '%s' must be %s, not a %s", d->key, name,
                        flag_field_types[field], luaL_typename(L, -1));
            ok = false;
        } else if (vt == LUA_TBOOLEAN) {
            f->enabled = lua_toboolean(L, -1);
        } else if (strcmp(name, "description") == 0) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            f->description = rs_keep_string(S, s, len);
        } else if (strcmp(name, "invalid") == 0) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            f->invalid = rs_strndup(s, len);
        } else {
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
            lua_rawset(L, fields);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1); /* t */
    return ok;
}

/* Records one variant: its JSON in the entry, its value in `values`, its index in `vmap` (name -> index).
 * The variant's name and value are at -2 and -1 and are popped. Returns false (reported) when the value cannot
 * be expressed as JSON. */
static bool add_variant(lua_State *L, rs_state *S, decl_view *d, rs_flag_entry *f, const variant_tmp *name,
                        int vmap, int values) {
    char label[MAX_KEY_BYTES + 32];
    char clean[MAX_KEY_BYTES + 8];
    rs_escape_text(clean, sizeof clean, name->name, name->len);
    snprintf(label, sizeof label, "variant '%s'", clean);
    size_t jlen;
    char *json = json_or_diag(L, S, d, lua_gettop(L), label, &jlen);
    if (json == NULL) {
        lua_pop(L, 2);
        return false;
    }
    rs_variant_entry *v = &f->variants[f->variant_count];
    v->name = rs_keep_string(S, name->name, name->len);
    v->name_len = name->len;
    v->json = json;
    v->json_len = jlen;
    v->interned = lua_topointer(L, -2);
    f->variant_count++;
    lua_rawseti(L, values, f->variant_count); /* the value */
    lua_pushinteger(L, f->variant_count);
    lua_rawset(L, vmap); /* name -> index */
    return true;
}

/* Phase 2a: the flag's own variants from the table at `variants`, sorted by name. Returns false (reported) when
 * the table is empty, too large, or holds a bad name or value. */
static bool read_variants(lua_State *L, rs_state *S, decl_view *d, int variants, int vmap, int values,
                          rs_flag_entry *f) {
    int top = lua_gettop(L);
    bool ok = true;
    int vt = iterable(L, variants);
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, vt)) {
        count++;
        lua_pop(L, 1);
    }
    if (count == 0) {
        rs_add_diag(S, d->file, d->line, "flag '%s': variants must not be empty", d->key);
        ok = false;
        goto done;
    }
    if (count > MAX_VARIANTS) {
        rs_add_diag(S, d->file, d->line, "flag '%s': more than %d variants", d->key, MAX_VARIANTS);
        ok = false;
        goto done;
    }
    variant_tmp *names = lua_newuserdatauv(L, count * sizeof *names, 0);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, vt)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            rs_add_diag(S, d->file, d->line, "flag '%s': variant names must be strings (found a %s)", d->key,
                        luaL_typename(L, -2));
            ok = false;
        } else {
            names[n].name = lua_tolstring(L, -2, &names[n].len);
            if (names[n].len == 0 || names[n].len > MAX_KEY_BYTES) {
                rs_add_diag(S, d->file, d->line, "flag '%s': a variant name is empty or too long", d->key);
                ok = false;
            } else {
                n++;
            }
        }
        lua_pop(L, 1);
    }
    qsort(names, n, sizeof *names, variant_cmp);
    f->variants = calloc(n ? n : 1, sizeof *f->variants);
    if (f->variants == NULL) abort();
    for (size_t i = 0; i < n; i++) {
        lua_pushlstring(L, names[i].name, names[i].len);
        lua_pushvalue(L, -1);
        lua_rawget(L, vt);
        if (!add_variant(L, S, d, f, &names[i], vmap, values)) ok = false;
    }
done:
    lua_settop(L, top);
    return ok;
}

/* Phase 2b: a flag without variants is a boolean flag: "off" (false) and "on" (true). Every boolean flag shares one
 * variant array (C) and one name map and value list (Lua): a rule set of 10,000 such flags would otherwise hold
 * 10,000 copies of each, about 500 bytes a flag. */
rs_variant_entry rs_boolean_variants[2] = {{(char *)"off", 3, (char *)"false", 5, NULL},
                                          {(char *)"on", 2, (char *)"true", 4, NULL}};

static void use_boolean_variants(lua_State *L, rs_state *S, rs_flag_entry *f) {
    f->variants = rs_boolean_variants;
    f->variant_count = 2;
    if (S->boolean_variants_ref != LUA_NOREF) return;
    lua_createtable(L, 0, 2);
    lua_createtable(L, 2, 0);
    for (int i = 0; i < 2; i++) {
        lua_pushboolean(L, i);
        lua_rawseti(L, -2, i + 1);
        lua_pushstring(L, rs_boolean_variants[i].name);
        S->boolean_interned[i] = lua_topointer(L, -1);
        lua_pushinteger(L, i + 1);
        lua_rawset(L, -4);
    }
    S->boolean_values_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    S->boolean_variants_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Phase 3: the default variant's index, from the name at `deflt` (0: none given). A missing default is only
 * reported by the caller's earlier phases; an unknown one is reported here when nothing else went wrong yet (its
 * variants may simply have failed to load). Returns false when reported. */
static bool resolve_default(lua_State *L, rs_state *S, decl_view *d, int deflt, bool has_variants, int vmap,
                            bool report, rs_flag_entry *f) {
    f->default_variant = -1;
    if (!deflt) {
        if (!has_variants) f->default_variant = 0; /* "off" */
        return true;
    }
    if (lua_isboolean(L, deflt)) return true; /* `default = false`: none */
    bool ok = true;
    lua_pushvalue(L, deflt);
    lua_rawget(L, vmap);
    if (lua_isinteger(L, -1)) {
        f->default_variant = (int32_t)lua_tointeger(L, -1) - 1;
    } else if (report) {
        char clean[MAX_KEY_BYTES + 8];
        size_t len;
        const char *s = lua_tolstring(L, deflt, &len);
        rs_escape_text(clean, sizeof clean, s, len);
        rs_add_diag(S, d->file, d->line, "flag '%s': default '%s' is not one of its variants", d->key, clean);
        ok = false;
    }
    lua_pop(L, 1);
    return ok;
}

/* Phase 4: keeps what evaluation needs in the registry: the name -> index map, the values, the rule. */
static void keep_flag_references(lua_State *L, rs_state *S, int vmap, int values, int rule, rs_flag_entry *f) {
    if (f->variants == rs_boolean_variants) {
        f->variants_ref = S->boolean_variants_ref;
        f->values_ref = S->boolean_values_ref;
    } else {
        lua_pushvalue(L, vmap);
        f->variants_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_pushvalue(L, values);
        f->values_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    if (rule) {
        lua_pushvalue(L, rule);
        f->rule_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

/* Pushes fields[name]; returns its stack index, or 0 (with the nil left on the stack) when absent. */
static int collected_field(lua_State *L, int fields, const char *name) {
    lua_getfield(L, fields, name);
    return lua_isnil(L, -1) ? 0 : lua_gettop(L);
}

static void validate_flag(lua_State *L, rs_state *S, decl_view *d, int def, rs_flag_entry *f) {
    int top = lua_gettop(L);
    lua_createtable(L, 0, 3); /* variants, default and rule, collected by name */
    int fields = lua_gettop(L);
    f->enabled = true;
    bool ok = read_flag_fields(L, S, d, def, fields, f);
    int variants = collected_field(L, fields, "variants");
    int deflt = collected_field(L, fields, "default");
    int rule = collected_field(L, fields, "rule");
    int metadata = collected_field(L, fields, "metadata");
    if (metadata) {
        f->metadata_json = json_or_diag(L, S, d, metadata, "metadata", &f->metadata_json_len);
        if (f->metadata_json == NULL) ok = false;
    }
    if (variants) {
        lua_newtable(L);
        lua_newtable(L);
    } else {
        use_boolean_variants(L, S, f);
        lua_rawgeti(L, LUA_REGISTRYINDEX, S->boolean_variants_ref);
        lua_rawgeti(L, LUA_REGISTRYINDEX, S->boolean_values_ref);
    }
    int vmap = lua_gettop(L) - 1;
    int values = lua_gettop(L);
    if (variants) {
        if (!read_variants(L, S, d, variants, vmap, values, f)) ok = false;
        if (!deflt) {
            rs_add_diag(S, d->file, d->line, "flag '%s': 'default' is required when 'variants' are given", d->key);
            ok = false;
        }
    }
    if (!resolve_default(L, S, d, deflt, variants != 0, vmap, ok, f)) ok = false;
    if (ok) keep_flag_references(L, S, vmap, values, rule, f);
    lua_settop(L, top);
}

static void validate_route(lua_State *L, rs_state *S, decl_view *d, int def, rs_route_entry *r) {
    int top = lua_gettop(L);
    int t = iterable(L, def);
    bool ok = true, has_target = false;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        char name[80];
        if (!field_name(L, S, d, name, sizeof name)) {
            ok = false;
            lua_pop(L, 1);
            continue;
        }
        int vt = lua_type(L, -1);
        if (strcmp(name, "description") == 0 && vt == LUA_TSTRING) {
            size_t len;
            const char *text = lua_tolstring(L, -1, &len);
            r->description = rs_keep_string(S, text, len);
        } else if (strcmp(name, "priority") == 0 && vt == LUA_TNUMBER) {
            lua_Integer p;
            if (lua_isinteger(L, -1)) p = lua_tointeger(L, -1);
            else {
                double v = lua_tonumber(L, -1);
                if (v != floor(v) || fabs(v) > 9.0e15) {
                    rs_add_diag(S, d->file, d->line, "route '%s': priority must be an integer", d->key);
                    ok = false;
                }
                p = (lua_Integer)(v == v && fabs(v) <= 9.0e15 ? v : 0);
            }
            r->priority = p;
        } else if (strcmp(name, "match") == 0 && vt == LUA_TFUNCTION) {
            lua_pushvalue(L, -1);
            r->match_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        } else if (strcmp(name, "target") == 0 && (vt == LUA_TFUNCTION || vt == LUA_TSTRING)) {
            has_target = true;
            if (vt == LUA_TSTRING) {
                size_t len;
                const char *s = lua_tolstring(L, -1, &len);
                if (len == 0 || len >= RS_TARGET_CAP) {
                    rs_add_diag(S, d->file, d->line, "route '%s': target must be a non-empty string under %d bytes",
                                d->key, RS_TARGET_CAP);
                    ok = false;
                } else {
                    r->static_target = rs_strndup(s, len);
                }
            } else {
                lua_pushvalue(L, -1);
                r->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
            }
        } else if (strcmp(name, "description") == 0 || strcmp(name, "priority") == 0 || strcmp(name, "match") == 0 ||
                   strcmp(name, "target") == 0) {
            const char *expected = strcmp(name, "description") == 0 ? "a string"
                                   : strcmp(name, "priority") == 0  ? "an integer"
                                   : strcmp(name, "match") == 0     ? "a function"
                                                                    : "a string or a function";
            rs_add_diag(S, d->file, d->line, "route '%s': '%s' must be %s, not a %s", d->key, name, expected,
                        luaL_typename(L, -1));
            ok = false;
        } else {
            rs_add_diag(S, d->file, d->line,
                        "route '%s': unknown field '%s' (a route has description, priority, match, target)", d->key,
                        name);
            ok = false;
        }
        lua_pop(L, 1);
    }
    if (!has_target && ok) rs_add_diag(S, d->file, d->line, "route '%s': 'target' is required", d->key);
    lua_settop(L, top);
}

static int decl_cmp(const void *a, const void *b) {
    const decl_view *x = a, *y = b;
    if (x->kind != y->kind) return x->kind - y->kind;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
    c = strcmp(x->file, y->file);
    if (c) return c;
    return x->seq - y->seq;
}

static int route_cmp(const void *a, const void *b) {
    const rs_route_entry *x = a, *y = b;
    if (x->priority != y->priority) return x->priority > y->priority ? -1 : 1;
    int c = strcmp(x->file, y->file);
    if (c) return c;
    return x->seq - y->seq;
}

static int diag_cmp(const void *a, const void *b) {
    const rs_diag_entry *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    if (c) return c;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    return strcmp(x->message, y->message);
}

typedef struct finish_args {
    rs_state *S;
} finish_args;

/* Phase 1: declarations left waiting for their table. `flag "x"` alone does nothing and is a mistake. */
static void report_pending_declarations(lua_State *L, rs_state *S) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_pending);
    int pending = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, pending)) {
        lua_getfield(L, -1, "kind");
        lua_getfield(L, -2, "key");
        lua_getfield(L, -3, "file");
        lua_getfield(L, -4, "line");
        int kind = (int)lua_tointeger(L, -4);
        /* The hint shows the form the kind takes: a config's value goes in parentheses, not braces. */
        rs_add_diag(S, lua_tostring(L, -2), (int32_t)lua_tointeger(L, -1),
                    "%s '%s' is declared without a definition (write %s \"%s\" %s)", kind_name(kind),
                    lua_tostring(L, -3), kind_name(kind), lua_tostring(L, -3),
                    kind == DECL_CONFIG ? "(value)" : "{ ... }");
        lua_pop(L, 5);
    }
    lua_pop(L, 1);
}

/* Phase 2: a view of every declaration record in the sequence at `decls`, sorted by kind, key, file and order.
 * The views live in a userdata pushed on the stack; their strings stay alive in the records. */
static decl_view *collect_declarations(lua_State *L, int decls, size_t *count) {
    size_t n = lua_rawlen(L, decls);
    decl_view *views = lua_newuserdatauv(L, (n ? n : 1) * sizeof *views, 0);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, decls, (lua_Integer)i + 1);
        lua_getfield(L, -1, "kind");
        views[i].kind = (int)lua_tointeger(L, -1);
        lua_getfield(L, -2, "key");
        views[i].key = lua_tolstring(L, -1, &views[i].key_len);
        lua_getfield(L, -3, "file");
        views[i].file = lua_tostring(L, -1);
        lua_getfield(L, -4, "line");
        views[i].line = (int32_t)lua_tointeger(L, -1);
        lua_getfield(L, -5, "seq");
        views[i].seq = (int32_t)lua_tointeger(L, -1);
        views[i].record = (lua_Integer)i + 1;
        lua_pop(L, 6);
    }
    qsort(views, n, sizeof *views, decl_cmp);
    *count = n;
    return views;
}

static bool same_declaration(const decl_view *a, const decl_view *b) {
    return a->kind == b->kind && a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
}

/* Phase 3: reports every declaration of a name already declared (the sorted views put them side by side, the
 * first declaration first) and marks it to be skipped (negative kind); sizes the entry arrays for the rest. */
static void reject_duplicates_and_allocate(rs_state *S, decl_view *views, size_t n) {
    size_t nflags = 0, nroutes = 0, nconfigs = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && same_declaration(&views[i], &views[first])) {
            rs_add_diag(S, views[i].file, views[i].line, "duplicate %s '%s' (first declared at %s:%d)",
                        kind_name(views[i].kind), views[i].key, views[first].file, views[first].line);
            views[i].kind = -views[i].kind; /* skip it below */
            continue;
        }
        first = i;
        if (views[i].kind == DECL_FLAG) nflags++;
        else if (views[i].kind == DECL_ROUTE) nroutes++;
        else nconfigs++;
    }
    S->flags = calloc(nflags ? nflags : 1, sizeof *S->flags);
    S->routes = calloc(nroutes ? nroutes : 1, sizeof *S->routes);
    S->configs = calloc(nconfigs ? nconfigs : 1, sizeof *S->configs);
    if (!S->flags || !S->routes || !S->configs) abort();
}

static void add_flag(lua_State *L, rs_state *S, decl_view *d, int def, int flag_index) {
    rs_flag_entry *f = &S->flags[S->flag_count++];
    f->key = rs_keep_string(S, d->key, d->key_len);
    f->key_len = d->key_len;
    f->file = rs_keep_file(S, d->file);
    f->line = d->line;
    f->seq = d->seq;
    f->rule_ref = f->variants_ref = f->values_ref = LUA_NOREF;
    validate_flag(L, S, d, def, f);
    lua_pushlstring(L, d->key, d->key_len);
    lua_pushinteger(L, (lua_Integer)S->flag_count - 1);
    lua_rawset(L, flag_index);
}

static void add_route(lua_State *L, rs_state *S, decl_view *d, int def) {
    rs_route_entry *r = &S->routes[S->route_count++];
    r->name = rs_keep_string(S, d->key, d->key_len);
    r->name_len = d->key_len;
    r->file = rs_keep_file(S, d->file);
    r->line = d->line;
    r->seq = d->seq;
    r->match_ref = r->target_ref = LUA_NOREF;
    validate_route(L, S, d, def, r);
}

static void add_config(lua_State *L, rs_state *S, decl_view *d, int def) {
    rs_config_entry *c = &S->configs[S->config_count++];
    c->key = rs_keep_string(S, d->key, d->key_len);
    c->file = rs_keep_file(S, d->file);
    c->line = d->line;
    size_t len = 0;
    c->json = json_or_diag(L, S, d, def, "value", &len);
    if (c->json == NULL) c->json = rs_strdup("null");
    c->json_len = c->json ? strlen(c->json) : 0;
    if (len) c->json_len = len;
}

/* Phase 4: validates each declaration (duplicates skipped) into its entry; publishes the flag key -> index map
 * that flag_value() uses; puts routes in priority order. */
static void build_entries(lua_State *L, rs_state *S, int decls, decl_view *views, size_t n) {
    lua_newtable(L);
    int flag_index = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        decl_view *d = &views[i];
        if (d->kind < 0) continue;
        lua_rawgeti(L, decls, d->record);
        lua_getfield(L, -1, "value");
        int def = lua_gettop(L);
        if (d->kind == DECL_FLAG) add_flag(L, S, d, def, flag_index);
        else if (d->kind == DECL_ROUTE) add_route(L, S, d, def);
        else add_config(L, S, d, def);
        lua_pop(L, 2);
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rs_key_flag_index);
    qsort(S->routes, S->route_count, sizeof *S->routes, route_cmp);
}

/* Phase 5: freezes everything the rules can reach (every file's environment and every declared value), checking
 * closures on the way; each root carries the file, line and description its problems are reported against. */
static void freeze_rule_data(lua_State *L, rs_state *S, int decls) {
    lua_newtable(L);
    int roots = lua_gettop(L);
    lua_Integer nroots = 0;
    size_t n = lua_rawlen(L, decls);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, decls, (lua_Integer)i);
        /* A scalar value (most configs) holds no state and reaches nothing: no root needed, which saves a
         * record per declaration when a rule set has a hundred thousand of them. */
        lua_getfield(L, -1, "value");
        int value_type = lua_type(L, -1);
        lua_pop(L, 1);
        if (value_type != LUA_TTABLE && value_type != LUA_TFUNCTION && value_type != LUA_TUSERDATA &&
            value_type != LUA_TTHREAD) {
            lua_pop(L, 1);
            continue;
        }
        /* The declaration record is the root as it is (kind, key, value, file, line): no copy per declaration. */
        lua_rawseti(L, roots, ++nroots);
    }
    /* Test functions may not change what rules see either (nor keep state from one test to the next). */
    for (size_t i = 0; i < S->test_count; i++) {
        rs_test_entry *t = &S->tests[i];
        if (t->func_ref == LUA_NOREF) continue;
        lua_createtable(L, 0, 4);
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->func_ref);
        lua_setfield(L, -2, "value");
        lua_pushstring(L, t->file);
        lua_setfield(L, -2, "file");
        lua_pushinteger(L, t->line);
        lua_setfield(L, -2, "line");
        lua_pushfstring(L, "test '%s'", t->name);
        lua_setfield(L, -2, "what");
        lua_rawseti(L, roots, ++nroots);
    }
    rs_freeze_reachable(S, L, roots);
    lua_pop(L, 1);
}

/* Phase 6: nothing below may be reached by rules, and loading is over: drop the load-time bookkeeping. */
static void drop_load_bookkeeping(lua_State *L) {
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rs_key_decls);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rs_key_pending);
}

/* The whole-rule-set validation, one transaction: the phases above, in order. */
static int finish_tx(lua_State *L) {
    rs_state *S = ((finish_args *)lua_touserdata(L, 1))->S;
    lua_settop(L, 0);
    /* Loading leaves garbage (each file's chunk, each declaration's pending token and closure); collecting
     * it before validation lowers the peak, which is what hits the memory limit with many files. */
    lua_gc(L, LUA_GCCOLLECT);
    report_pending_declarations(L, S);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_decls);
    int decls = lua_gettop(L);
    size_t n;
    decl_view *views = collect_declarations(L, decls, &n);
    reject_duplicates_and_allocate(S, views, n);
    build_entries(L, S, decls, views, n);
    freeze_rule_data(L, S, decls);
    drop_load_bookkeeping(L);
    rs_dispatch_compile(S, L);
    rs_shape_rules(S, L);
    return 0;
}

int rs_finish_loading(rs_state *S) {
    lua_State *L = S->L;
    if (!S->finished) {
        S->finished = true;
        finish_args a = {S};
        lua_settop(L, 0);
        lua_pushcfunction(L, finish_tx);
        lua_pushlightuserdata(L, &a);
        S->phase = RS_PHASE_HOST;
        int status = lua_pcall(L, 1, 0, 0);
        if (status != LUA_OK) {
            char msg[RS_MESSAGE_CAP_BYTES];
            if (status == LUA_ERRMEM) snprintf(msg, sizeof msg, "%s", rs_kill_message(RS_KILL_MEMORY));
            else rs_error_text(L, -1, msg, sizeof msg);
            rs_add_diag(S, "", 0, "validating the rule set failed: %s", msg);
        }
        lua_settop(L, 0);
        rs_disarm(S);
        /* Stable order, one line per problem (a shared helper reached twice reports once). */
        if (S->diag_count > 1) qsort(S->diags, S->diag_count, sizeof *S->diags, diag_cmp);
        size_t w = 0;
        for (size_t i = 0; i < S->diag_count; i++) {
            if (w > 0 && diag_cmp(&S->diags[w - 1], &S->diags[i]) == 0) {
                free(S->diags[i].file);
                free(S->diags[i].message);
                continue;
            }
            S->diags[w++] = S->diags[i];
        }
        S->diag_count = w;
        S->usable = S->diag_count == 0;
        /* The raw bytes of data files were needed only while files loaded. */
        rs_data_drop_sources(S);
        lua_gc(L, LUA_GCCOLLECT);
    }
    return (int)S->diag_count;
}

/* ---- model -------------------------------------------------------------------------------- */

size_t rs_flag_count(const rs_state *S) { return S->usable ? S->flag_count : 0; }

rs_flag_info rs_flag_at(const rs_state *S, size_t index) {
    rs_flag_info info;
    memset(&info, 0, sizeof info);
    if (!S->usable || index >= S->flag_count) return info;
    const rs_flag_entry *f = &S->flags[index];
    info.key = f->key;
    info.description = f->description;
    info.file = f->file;
    info.line = f->line;
    info.enabled = f->enabled;
    info.has_rule = f->rule_ref != LUA_NOREF;
    info.default_variant = f->default_variant;
    info.variant_count = f->variant_count;
    info.metadata_json = f->metadata_json;
    info.metadata_json_len = f->metadata_json_len;
    return info;
}

void rs_set_override(rs_state *S, size_t flag, int32_t variant) {
    if (!S->usable || flag >= S->flag_count) return;
    rs_flag_entry *f = &S->flags[flag];
    f->override_variant = variant >= 0 && variant < f->variant_count ? variant + 1 : 0;
}

rs_variant_info rs_flag_variant_at(const rs_state *S, size_t flag, size_t variant) {
    rs_variant_info info = {"", "null", 4};
    if (!S->usable || flag >= S->flag_count || variant >= (size_t)S->flags[flag].variant_count) return info;
    const rs_variant_entry *v = &S->flags[flag].variants[variant];
    info.name = v->name;
    info.json = v->json;
    info.json_len = v->json_len;
    return info;
}

size_t rs_route_count(const rs_state *S) { return S->usable ? S->route_count : 0; }

rs_route_info rs_route_at(const rs_state *S, size_t index) {
    rs_route_info info;
    memset(&info, 0, sizeof info);
    if (!S->usable || index >= S->route_count) return info;
    const rs_route_entry *r = &S->routes[index];
    info.name = r->name;
    info.description = r->description;
    info.file = r->file;
    info.line = r->line;
    info.priority = r->priority;
    info.has_match = r->match_ref != LUA_NOREF;
    info.static_target = r->static_target;
    return info;
}

size_t rs_test_count(const rs_state *S) { return S->usable ? S->test_count : 0; }

rs_test_info rs_test_at(const rs_state *S, size_t index) {
    rs_test_info info;
    memset(&info, 0, sizeof info);
    if (!S->usable || index >= S->test_count) return info;
    const rs_test_entry *t = &S->tests[index];
    info.name = t->name;
    info.file = t->file;
    info.line = t->line;
    info.json = t->json;
    info.json_len = t->json_len;
    info.is_function = t->func_ref != LUA_NOREF;
    return info;
}

size_t rs_config_count(const rs_state *S) { return S->usable ? S->config_count : 0; }

rs_config_info rs_config_at(const rs_state *S, size_t index) {
    rs_config_info info;
    memset(&info, 0, sizeof info);
    if (!S->usable || index >= S->config_count) return info;
    const rs_config_entry *c = &S->configs[index];
    info.key = c->key;
    info.file = c->file;
    info.line = c->line;
    info.json = c->json;
    info.json_len = c->json_len;
    return info;
}

/* ---- evaluation --------------------------------------------------------------------------- */

enum eval_stage { STAGE_CONTEXT, STAGE_RULE, STAGE_RESULT };

typedef struct eval_args {
    rs_state *S;
    const char *json;
    size_t json_len;
    size_t flag;
    rs_outcome *outcome;
    rs_outcome *outcomes; /* all flags */
    int stage;
    int route;
    bool lazy_context; /* the context is read lazily: rs_context_end when the evaluation is over */
    char why[300];
} eval_args;

static void set_message(rs_state *S, rs_outcome *o, const char *msg, size_t len) {
    o->message_offset = rs_text_append(S, msg, len, true, &o->message_length);
}

/* Classifies a failed protected call of user code (error object on top). */
static void classify_failure(rs_state *S, lua_State *L, int status, rs_outcome *o) {
    char msg[RS_MESSAGE_CAP_BYTES];
    if (S->killed != RS_KILL_NONE || status == LUA_ERRMEM) {
        o->status = RS_ERR_RESOURCE_LIMIT;
        const char *m = rs_kill_message(S->killed != RS_KILL_NONE ? S->killed : RS_KILL_MEMORY);
        set_message(S, o, m, strlen(m));
        return;
    }
    o->status = RS_ERR_GENERAL;
    size_t len = rs_error_text(L, -1, msg, sizeof msg);
    set_message(S, o, msg, len);
}

static void begin_rule(rs_state *S, const char *key, size_t key_len, unsigned straight) {
    rs_arm(S, RS_PHASE_EVAL, S->limits.eval_instruction_limit, S->limits.eval_timeout_ns, straight);
    S->current_key = key;
    S->current_key_len = key_len;
    S->flag_depth = 0;
    S->log_lines_this_eval = 0;
}

/* Arms the evaluation of flag f's rule. A straight rule shorter than the hook's interval cannot reach the hook
 * (RS_SHAPE_STRAIGHT_MASK): it runs with the hook off, which rs_disarm sets back (rs_arm). */
static void begin_flag_rule(rs_state *S, const rs_flag_entry *f) {
    begin_rule(S, f->key, f->key_len, f->shape & RS_SHAPE_STRAIGHT_MASK);
}

/* Runs one flag's rule with the context at `ctx`; fills the outcome. Never raises. */
static void run_flag(rs_state *S, lua_State *L, size_t index, int ctx, rs_outcome *o) {
    rs_flag_entry *f = &S->flags[index];
    o->index = f->default_variant;
    if (!f->enabled) {
        o->status = RS_DISABLED;
        return;
    }
    if (f->invalid != NULL) {
        o->status = RS_ERR_PARSE;
        set_message(S, o, f->invalid, strlen(f->invalid));
        return;
    }
    if (f->rule_ref == LUA_NOREF) {
        o->status = RS_STATIC;
        return;
    }
    begin_flag_rule(S, f);
    S->flag_stack[S->flag_depth++] = (int32_t)index;
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->rule_ref);
    lua_pushvalue(L, ctx);
    int status = lua_pcall(L, 1, 1, 0);
    if (status != LUA_OK) {
        classify_failure(S, L, status, o);
        lua_pop(L, 1);
        rs_disarm(S);
        return;
    }
    rs_disarm(S);
    char why[300];
    int v = variant_of_result(L, f, why, sizeof why);
    if (v == -2) {
        o->status = RS_ERR_TYPE_MISMATCH;
        set_message(S, o, why, strlen(why));
    } else if (v == -1) {
        o->status = RS_NO_DECISION;
    } else {
        o->status = RS_OK;
        o->index = v;
    }
}

/* The evaluation's context: converted on first read, or whole for an explain (whose trace walks all of it). */
static void push_context(rs_state *S, lua_State *L, eval_args *a) {
    uint32_t depth = S->limits.max_context_depth, values = S->limits.max_context_values;
    if (S->trace) rs_push_json_object(L, a->json, a->json_len, depth, values);
    else a->lazy_context = rs_push_json_context(L, a->json, a->json_len, depth, values);
}

/* One flag with a rule (the caller handles disabled and static flags). The rule runs unprotected inside
 * this transaction: its errors unwind to the transaction's own protected call, which classifies them by
 * stage, so a single evaluation costs one setjmp instead of two. */
static int eval_flag_tx(lua_State *L) {
    eval_args *a = lua_touserdata(L, 1);
    rs_state *S = a->S;
    rs_flag_entry *f = &S->flags[a->flag];
    a->stage = STAGE_CONTEXT;
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->rule_ref); /* below its argument, so that nothing needs moving */
    S->bare_context = (f->shape & RS_SHAPE_SEALED) && !S->trace;
    S->context_filter = S->bare_context ? f->context_keys : 0;
    push_context(S, L, a);
    S->bare_context = false;
    S->context_filter = 0;
    if (S->trace) rs_trace_context(L, -1);
    a->stage = STAGE_RULE;
    begin_flag_rule(S, f);
    S->flag_stack[S->flag_depth++] = (int32_t)a->flag;
    lua_call(L, 1, 1);
    rs_disarm(S);
    a->stage = STAGE_RESULT;
    rs_outcome *o = a->outcome;
    o->index = f->default_variant;
    int v = variant_of_result(L, f, a->why, sizeof a->why);
    if (v == -2) {
        o->status = RS_ERR_TYPE_MISMATCH;
        set_message(S, o, a->why, strlen(a->why));
    } else if (v == -1) {
        o->status = RS_NO_DECISION;
    } else {
        o->status = RS_OK;
        o->index = v;
    }
    return 0;
}

static void reset_outcome(rs_outcome *o) { memset(o, 0, sizeof *o); }

void rs_eval_flag(rs_state *S, size_t flag, const char *context_json, size_t context_length, double now,
                  rs_outcome *outcome) {
    lua_State *L = S->L;
    S->nested_proxies_used = 0;
    reset_outcome(outcome);
    S->text_len = 0;
    if (!S->usable || flag >= S->flag_count) {
        outcome->status = RS_ERR_INTERNAL;
        outcome->index = -1;
        set_message(S, outcome, "no such flag in this rule set", 29);
        return;
    }
    rs_flag_entry *f = &S->flags[flag];
    if (f->enabled && f->invalid != NULL) {
        outcome->status = RS_ERR_PARSE;
        outcome->index = f->default_variant;
        set_message(S, outcome, f->invalid, strlen(f->invalid));
        return;
    }
    if (!f->enabled || f->rule_ref == LUA_NOREF) {
        /* No rule runs, so the context is not even converted. */
        outcome->status = f->enabled ? RS_STATIC : RS_DISABLED;
        outcome->index = f->default_variant;
        return;
    }
    S->now = now;
    eval_args a;
    a.S = S;
    a.lazy_context = false;
    a.json = context_json;
    a.json_len = context_length;
    a.flag = flag;
    a.outcome = outcome;
    lua_settop(L, 0);
    lua_pushcfunction(L, eval_flag_tx);
    lua_pushlightuserdata(L, &a);
    int status = lua_pcall(L, 1, 0, 0);
    if (status != LUA_OK) {
        outcome->index = f->default_variant;
        if (a.stage == STAGE_CONTEXT && status != LUA_ERRMEM) {
            char msg[RS_MESSAGE_CAP_BYTES];
            size_t len = rs_error_text(L, -1, msg, sizeof msg);
            outcome->status = RS_ERR_INVALID_CONTEXT;
            set_message(S, outcome, msg, len);
        } else {
            classify_failure(S, L, status, outcome);
        }
        rs_disarm(S); /* a transaction that completed disarmed itself */
    }
    if (a.lazy_context) rs_context_end(L);
    lua_settop(L, 0);
}

static int eval_all_tx(lua_State *L) {
    eval_args *a = lua_touserdata(L, 1);
    rs_state *S = a->S;
    a->stage = STAGE_CONTEXT;
    push_context(S, L, a);
    a->stage = STAGE_RULE;
    int ctx = lua_gettop(L);
    for (size_t i = 0; i < S->flag_count; i++) {
        reset_outcome(&a->outcomes[i]);
        run_flag(S, L, i, ctx, &a->outcomes[i]);
        lua_settop(L, ctx);
    }
    return 0;
}

int32_t rs_eval_all_flags(rs_state *S, const char *context_json, size_t context_length, double now,
                          rs_outcome *outcomes, rs_outcome *context_error) {
    lua_State *L = S->L;
    S->nested_proxies_used = 0;
    reset_outcome(context_error);
    S->text_len = 0;
    if (!S->usable) {
        context_error->status = RS_ERR_INTERNAL;
        return RS_ERR_INTERNAL;
    }
    S->now = now;
    eval_args a;
    a.S = S;
    a.lazy_context = false;
    a.json = context_json;
    a.json_len = context_length;
    a.outcomes = outcomes;
    lua_settop(L, 0);
    lua_pushcfunction(L, eval_all_tx);
    lua_pushlightuserdata(L, &a);
    int status = lua_pcall(L, 1, 0, 0);
    int32_t result = RS_OK;
    if (status != LUA_OK) {
        /* Each flag runs in its own protected call, so only the context conversion (or memory
         * exhaustion outside any rule) ends up here. */
        if (a.stage == STAGE_CONTEXT && status != LUA_ERRMEM) {
            char msg[RS_MESSAGE_CAP_BYTES];
            size_t len = rs_error_text(L, -1, msg, sizeof msg);
            context_error->status = RS_ERR_INVALID_CONTEXT;
            set_message(S, context_error, msg, len);
        } else {
            classify_failure(S, L, status, context_error);
        }
        result = context_error->status;
    }
    rs_disarm(S);
    if (a.lazy_context) rs_context_end(L);
    lua_settop(L, 0);
    return result;
}

static int eval_route_tx(lua_State *L) {
    eval_args *a = lua_touserdata(L, 1);
    rs_state *S = a->S;
    rs_outcome *o = a->outcome;
    a->stage = STAGE_CONTEXT;
    push_context(S, L, a);
    int req = lua_gettop(L);
    if (S->trace) rs_trace_context(L, req);
    a->stage = STAGE_RULE;
    o->status = RS_NO_DECISION;
    o->index = -1;
    /* One budget for the whole routing decision, however many routes it tries. */
    rs_arm(S, RS_PHASE_EVAL, S->limits.eval_instruction_limit, S->limits.eval_timeout_ns, 0);
    S->log_lines_this_eval = 0;
    /* Compiled matches read the request's storage table directly; an explain calls every match function, so
     * that its trace shows their lines. */
    bool compiled = S->trace == NULL && rs_dispatch_usable(S);
    int storage = 0;
    if (compiled) {
        rs_push_context_storage(L, req);
        storage = lua_gettop(L);
        rs_dispatch_begin(S);
    }
    uint32_t decided_count = 0;
    for (size_t i = 0; i < S->route_count; i++) {
        rs_route_entry *r = &S->routes[i];
        bool decided = compiled && r->match_pred >= 0;
        if (decided) {
            /* A compiled match costs one instruction of the budget, charged 64 at a time, so that the deadline
             * still bounds a decision over a great many routes. */
            if ((++decided_count & 63) == 0) {
                a->route = (int)i;
                rs_charge(L, 64);
            }
            if (!rs_dispatch_match(S, L, storage, r->match_pred)) continue;
        }
        S->current_key = r->name;
        S->current_key_len = r->name_len;
        a->route = (int)i;
        ptrdiff_t traced = S->trace ? rs_trace_open(L, RS_TRACE_ROUTE, r->name, r->file, r->line) : -1;
        if (r->match_ref != LUA_NOREF && !decided) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->match_ref);
            lua_pushvalue(L, req);
            lua_call(L, 1, 1);
            bool matched = lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (!matched) {
                if (S->trace) rs_trace_close(L, traced, "{\"matched\":false}");
                continue;
            }
            if (S->trace) rs_trace_close(L, traced, "{\"matched\":true}");
        } else {
            if (S->trace) rs_trace_close(L, traced, "{\"matched\":true,\"always\":true}");
        }
        o->index = (int32_t)i;
        if (r->static_target) {
            o->status = RS_OK;
            o->target_offset = rs_text_append(S, r->static_target, strlen(r->static_target), false, &o->target_length);
            return 0;
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->target_ref);
        lua_pushvalue(L, req);
        lua_call(L, 1, 1);
        size_t len = 0;
        const char *target = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (target == NULL || len == 0 || len >= RS_TARGET_CAP) {
            a->stage = STAGE_RESULT;
            if (target == NULL)
                snprintf(a->why, sizeof a->why, "target function of route '%s' returned a %s, not a string", r->name,
                         luaL_typename(L, -1));
            else
                snprintf(a->why, sizeof a->why, "target function of route '%s' returned an empty or oversized string",
                         r->name);
            return 0;
        }
        o->status = RS_OK;
        o->target_offset = rs_text_append(S, target, len, false, &o->target_length);
        return 0;
    }
    o->index = -1;
    return 0;
}

void rs_eval_route(rs_state *S, const char *request_json, size_t request_length, double now, rs_outcome *outcome) {
    lua_State *L = S->L;
    S->nested_proxies_used = 0;
    reset_outcome(outcome);
    S->text_len = 0;
    if (!S->usable) {
        outcome->status = RS_ERR_INTERNAL;
        outcome->index = -1;
        return;
    }
    S->now = now;
    eval_args a;
    memset(&a, 0, sizeof a);
    a.S = S;
    a.json = request_json;
    a.json_len = request_length;
    a.outcome = outcome;
    a.route = -1;
    lua_settop(L, 0);
    lua_pushcfunction(L, eval_route_tx);
    lua_pushlightuserdata(L, &a);
    int status = lua_pcall(L, 1, 0, 0);
    if (status != LUA_OK) {
        if (a.stage == STAGE_CONTEXT && status != LUA_ERRMEM) {
            char msg[RS_MESSAGE_CAP_BYTES];
            size_t len = rs_error_text(L, -1, msg, sizeof msg);
            outcome->status = RS_ERR_INVALID_CONTEXT;
            set_message(S, outcome, msg, len);
        } else {
            classify_failure(S, L, status, outcome);
        }
        outcome->index = a.route;
    } else if (a.stage == STAGE_RESULT) {
        outcome->status = RS_ERR_TYPE_MISMATCH;
        set_message(S, outcome, a.why, strlen(a.why));
        outcome->index = a.route;
    }
    rs_disarm(S);
    if (a.lazy_context) rs_context_end(L);
    lua_settop(L, 0);
}

void rs_set_context_conversion(rs_state *S, int mode) {
    lua_State *L = S->L;
    lua_pushcfunction(L, rs_set_context_mode);
    lua_pushinteger(L, mode);
    lua_pcall(L, 1, 0, 0);
    lua_settop(L, 0);
}

/* ---- explain ------------------------------------------------------------------------------- */

void rs_explain_flag(rs_state *S, size_t flag, const char *context_json, size_t context_length, double now,
                     size_t max_entries, rs_outcome *outcome) {
    rs_trace_start(S, max_entries);
    rs_eval_flag(S, flag, context_json, context_length, now, outcome);
    rs_trace_stop(S);
}

void rs_explain_route(rs_state *S, const char *request_json, size_t request_length, double now,
                      size_t max_entries, rs_outcome *outcome) {
    rs_trace_start(S, max_entries);
    rs_eval_route(S, request_json, request_length, now, outcome);
    rs_trace_stop(S);
}
