/*
 * rs_tests.c - function tests: test "name" (function() ... end).
 *
 * A function test runs in the candidate's own state after validation, under the evaluation instruction budget and
 * what is left of the tests' wall-clock budget. While its own code runs (S->in_test), flag(key, ctx), route(request)
 * and config(key) answer queries exactly as the evaluation transactions do, and expect(value) makes assertions.
 * The rules a query runs see the ordinary evaluation environment: in_test is off while they run, so a rule cannot
 * query or assert, and nothing a test does outlives it (every table it can reach from the rule set is frozen).
 */
#include "rs_state.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- queries ------------------------------------------------------------------------------ */

/* Pushes a read-only copy of the optional table at idx, made the way a client's context is: through its JSON text,
 * so a test's rule sees what a request would give it (numbers, nesting, read-only tables). */
static int push_request_copy(lua_State *L, rs_state *S, int idx, const char *what) {
    if (lua_isnoneornil(L, idx)) {
        rs_push_json_object(L, "", 0, S->limits.max_context_depth, S->limits.max_context_values);
        return lua_gettop(L);
    }
    luaL_checktype(L, idx, LUA_TTABLE);
    if (!rs_to_json(L, idx)) return luaL_error(L, "%s: %s", what, lua_tostring(L, -1));
    size_t len;
    const char *json = lua_tolstring(L, -1, &len);
    /* An empty table reads as an empty object. */
    if (len == 2 && json[0] == '[') json = "{}";
    else if (json[0] != '{') return luaL_error(L, "%s must be a table of named fields", what);
    rs_push_json_object(L, json, len, S->limits.max_context_depth, S->limits.max_context_values);
    lua_remove(L, -2);
    return lua_gettop(L);
}

/* The optional time argument at idx: what now() returns to the rules of this query. */
static double query_time(lua_State *L, rs_state *S, int idx) {
    if (lua_isnoneornil(L, idx)) return S->now;
    return (double)luaL_checknumber(L, idx);
}

/* Runs the function (or callable) below its argument at the top as a rule: protected, with in_test off and `now`,
 * `key` as the current key. Returns the pcall status; a budget breach re-raises at once (it ends the test). */
static int call_rule(lua_State *L, rs_state *S, const char *key, size_t key_len, double now, int results) {
    double saved_now = S->now;
    S->in_test = false;
    S->now = now;
    S->current_key = key;
    S->current_key_len = key_len;
    int status = lua_pcall(L, 1, results, 0);
    S->in_test = true;
    S->now = saved_now;
    S->current_key = NULL;
    S->current_key_len = 0;
    S->flag_depth = 0;
    if (status == LUA_ERRMEM && S->killed == RS_KILL_NONE) rs_mark_killed(L, RS_KILL_MEMORY);
    if (S->killed != RS_KILL_NONE) rs_raise_kill(L);
    return status;
}

static const char *const reason_names[] = {"TARGETING_MATCH", "DEFAULT", "STATIC", "DISABLED", "ERROR"};
enum { REASON_MATCH, REASON_DEFAULT, REASON_STATIC, REASON_DISABLED, REASON_ERROR };

/* ---- questions answered elsewhere (rs_set_test_answers) ------------------------------------- */

void rs_set_test_answers(rs_state *S, rs_ask_fn ask, void *context) {
    S->ask = ask;
    S->ask_context = context;
}

/* Appends the JSON text of the value at idx (a string, a table, a number) to the buffer. */
static void add_json(lua_State *L, luaL_Buffer *b, int idx, const char *what) {
    if (!rs_to_json(L, idx)) luaL_error(L, "%s: %s", what, lua_tostring(L, -1));
    luaL_addvalue(b);
}

/* Sends the protocol request on top of the stack (popped) to the host and pushes the answer's `result` (or nil);
 * when the answer is an error, pushes nil and sets *code / *message (strings of the answer). */
static void ask_host(lua_State *L, rs_state *S, const char **code, const char **message) {
    size_t len, answer_len = 0;
    const char *request = lua_tolstring(L, -1, &len);
    const char *answer = S->ask(S->ask_context, request, len, &answer_len);
    lua_pop(L, 1);
    if (answer == NULL) luaL_error(L, "rulesd did not answer");
    rs_push_json_object(L, answer, answer_len, S->limits.max_context_depth + 4, S->limits.max_context_values + 64);
    int reply = lua_gettop(L);
    lua_getfield(L, reply, "ok");
    bool ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    *code = NULL;
    *message = NULL;
    if (ok) {
        lua_getfield(L, reply, "result");
    } else {
        lua_getfield(L, reply, "error");
        int error = lua_gettop(L);
        if (lua_type(L, error) != LUA_TTABLE) luaL_error(L, "rulesd answered an error without saying which");
        lua_getfield(L, error, "code");
        lua_getfield(L, error, "message");
        *code = lua_tostring(L, -2);
        *message = lua_tostring(L, -1);
        if (*code == NULL) *code = "INTERNAL";
        if (*message == NULL) *message = "";
        /* Both strings stay referenced by the error table, which stays on the stack below the nil. */
        lua_pop(L, 2);
        lua_pushnil(L);
    }
}

/* Copies field `from` of the table at src into field `to` of the table at dst. */
static void copy_field(lua_State *L, int src, const char *from, int dst, const char *to) {
    lua_getfield(L, src, from);
    lua_setfield(L, dst, to);
}

/* Each remote_* first fixes the stack to its arguments: the buffer then lives above them. */
static int remote_flag(lua_State *L, rs_state *S, const char *key) {
    lua_settop(L, 3);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "{\"op\":\"flag\",\"flag\":");
    add_json(L, &b, 1, "flag()");
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        luaL_addstring(&b, ",\"context\":");
        add_json(L, &b, 2, "flag(): the context");
    }
    if (!lua_isnoneornil(L, 3)) {
        luaL_checknumber(L, 3);
        luaL_addstring(&b, ",\"at\":");
        add_json(L, &b, 3, "flag(): the time");
    }
    luaL_addchar(&b, '}');
    luaL_pushresult(&b);
    const char *code, *message;
    ask_host(L, S, &code, &message);
    if (code != NULL) {
        if (strcmp(code, "FLAG_NOT_FOUND") == 0) return luaL_error(L, "flag(): no flag '%s' in the rule set", key);
        return luaL_error(L, "flag(): rulesd answered %s: %s", code, message);
    }
    int result = lua_gettop(L);
    if (lua_type(L, result) != LUA_TTABLE) return luaL_error(L, "flag(): rulesd's answer has no result");
    lua_createtable(L, 0, 4);
    int answer = lua_gettop(L);
    copy_field(L, result, "variant", answer, "variant");
    copy_field(L, result, "value", answer, "value");
    copy_field(L, result, "reason", answer, "reason");
    copy_field(L, result, "error_message", answer, "error");
    return 1;
}

static int remote_route(lua_State *L, rs_state *S) {
    lua_settop(L, 2);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "{\"op\":\"route\"");
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        luaL_addstring(&b, ",\"request\":");
        add_json(L, &b, 1, "route(): the request");
    }
    if (!lua_isnoneornil(L, 2)) {
        luaL_checknumber(L, 2);
        luaL_addstring(&b, ",\"at\":");
        add_json(L, &b, 2, "route(): the time");
    }
    luaL_addchar(&b, '}');
    luaL_pushresult(&b);
    const char *code, *message;
    ask_host(L, S, &code, &message);
    if (code != NULL) {
        if (strcmp(code, "NO_ROUTE") == 0) return 1; /* the nil on top */
        if (strcmp(code, "RULE_ERROR") != 0) return luaL_error(L, "route(): rulesd answered %s: %s", code, message);
        int error = lua_gettop(L) - 1;
        lua_createtable(L, 0, 2);
        copy_field(L, error, "route", lua_gettop(L), "name");
        lua_pushstring(L, message);
        lua_setfield(L, -2, "error");
        return 1;
    }
    int result = lua_gettop(L);
    if (lua_type(L, result) != LUA_TTABLE) return luaL_error(L, "route(): rulesd's answer has no result");
    lua_createtable(L, 0, 2);
    copy_field(L, result, "route", lua_gettop(L), "name");
    copy_field(L, result, "target", lua_gettop(L), "target");
    return 1;
}

static int remote_config(lua_State *L, rs_state *S, const char *key) {
    lua_settop(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "{\"op\":\"config\",\"key\":");
    add_json(L, &b, 1, "config()");
    luaL_addchar(&b, '}');
    luaL_pushresult(&b);
    const char *code, *message;
    ask_host(L, S, &code, &message);
    if (code != NULL) {
        if (strcmp(code, "CONFIG_NOT_FOUND") == 0) return luaL_error(L, "config(): no config '%s' in the rule set", key);
        return luaL_error(L, "config(): rulesd answered %s: %s", code, message);
    }
    if (lua_type(L, -1) != LUA_TTABLE) return luaL_error(L, "config(): rulesd's answer has no result");
    lua_getfield(L, -1, "value");
    return 1;
}

/* flag(key [, ctx [, at]]) -> {variant = , value = , reason = [, error = ]}: the answer a client would get. */
int rs_test_flag(lua_State *L) {
    rs_state *S = rs_state_of(L);
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    if (S->ask) return remote_flag(L, S, key);
    int idx = rs_find_flag(L, key, len);
    if (idx < 0) return luaL_error(L, "flag(): no flag '%s' in the rule set", key);
    rs_flag_entry *f = &S->flags[idx];
    double now = query_time(L, S, 3);
    int ctx = push_request_copy(L, S, 2, "flag(): the context");
    int variant = f->default_variant;
    int reason = !f->enabled ? REASON_DISABLED : f->rule_ref == LUA_NOREF ? REASON_STATIC : REASON_DEFAULT;
    char error[RS_MESSAGE_CAP_BYTES] = "";
    if (reason == REASON_DEFAULT) {
        S->flag_depth = 0;
        S->flag_stack[S->flag_depth++] = idx;
        lua_rawgeti(L, LUA_REGISTRYINDEX, f->rule_ref);
        lua_pushvalue(L, ctx);
        if (call_rule(L, S, f->key, f->key_len, now, 1) != LUA_OK) {
            rs_error_text(L, -1, error, sizeof error);
            lua_pop(L, 1);
            reason = REASON_ERROR;
        } else {
            int v = rs_flag_result(L, f, error, sizeof error);
            if (v == -2) reason = REASON_ERROR;
            else if (v >= 0) {
                variant = v;
                reason = REASON_MATCH;
            }
        }
    }
    lua_createtable(L, 0, 4);
    lua_pushstring(L, f->variants[variant].name);
    lua_setfield(L, -2, "variant");
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->values_ref);
    lua_rawgeti(L, -1, variant + 1);
    lua_setfield(L, -3, "value");
    lua_pop(L, 1);
    lua_pushstring(L, reason_names[reason]);
    lua_setfield(L, -2, "reason");
    if (reason == REASON_ERROR) {
        lua_pushstring(L, error);
        lua_setfield(L, -2, "error");
    }
    return 1;
}

/* route(request [, at]) -> {name = , target = }, nil when no route matches, or {name = , error = } when a route's
 * match or target function fails. */
int rs_test_route(lua_State *L) {
    rs_state *S = rs_state_of(L);
    if (S->ask) return remote_route(L, S);
    double now = query_time(L, S, 2);
    int req = push_request_copy(L, S, 1, "route(): the request");
    char error[RS_MESSAGE_CAP_BYTES] = "";
    for (size_t i = 0; i < S->route_count; i++) {
        rs_route_entry *r = &S->routes[i];
        if (r->match_ref != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->match_ref);
            lua_pushvalue(L, req);
            if (call_rule(L, S, r->name, r->name_len, now, 1) != LUA_OK) {
                rs_error_text(L, -1, error, sizeof error);
                goto failed;
            }
            bool matched = lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (!matched) continue;
        }
        lua_createtable(L, 0, 2);
        lua_pushstring(L, r->name);
        lua_setfield(L, -2, "name");
        if (r->static_target) {
            lua_pushstring(L, r->static_target);
        } else {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->target_ref);
            lua_pushvalue(L, req);
            if (call_rule(L, S, r->name, r->name_len, now, 1) != LUA_OK) {
                rs_error_text(L, -1, error, sizeof error);
                goto failed;
            }
            size_t len = 0;
            if (lua_type(L, -1) != LUA_TSTRING || (lua_tolstring(L, -1, &len), len == 0 || len >= RS_TARGET_CAP)) {
                snprintf(error, sizeof error, "target function of route '%s' returned %s", r->name,
                         lua_type(L, -1) == LUA_TSTRING ? "an empty or oversized string" : luaL_typename(L, -1));
                goto failed;
            }
        }
        lua_setfield(L, -2, "target");
        return 1;
    failed:
        lua_createtable(L, 0, 2);
        lua_pushstring(L, r->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, error);
        lua_setfield(L, -2, "error");
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

/* config(key) -> the value, as a client reads it (tables read-only). */
int rs_test_config(lua_State *L) {
    rs_state *S = rs_state_of(L);
    const char *key = luaL_checkstring(L, 1);
    if (S->ask) return remote_config(L, S, key);
    for (size_t i = 0; i < S->config_count; i++) {
        rs_config_entry *c = &S->configs[i];
        if (strcmp(c->key, key) != 0) continue;
        /* The value goes through the JSON reader, which reads objects: wrapped in one, then unwrapped. */
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addstring(&b, "{\"v\":");
        luaL_addlstring(&b, c->json, c->json_len);
        luaL_addchar(&b, '}');
        luaL_pushresult(&b);
        size_t len;
        const char *json = lua_tolstring(L, -1, &len);
        rs_push_json_object(L, json, len, S->limits.max_context_depth + 1, S->limits.max_context_values + 1);
        rs_push_storage(L, -1);
        lua_getfield(L, -1, "v");
        return 1;
    }
    return luaL_error(L, "config(): no config '%s' in the rule set", key);
}

/* ---- expect ------------------------------------------------------------------------------- */

#define DESCRIBE_CAP 200

/* A short description of the value at idx for a failure message: JSON when it has one. */
static const char *describe(lua_State *L, int idx, char *buf, size_t cap) {
    idx = lua_absindex(L, idx);
    int t = lua_type(L, idx);
    if (t == LUA_TNIL || t == LUA_TNONE) {
        snprintf(buf, cap, "nil");
        return buf;
    }
    if (t == LUA_TFUNCTION || t == LUA_TTHREAD || t == LUA_TUSERDATA || t == LUA_TLIGHTUSERDATA) {
        snprintf(buf, cap, "(%s)", luaL_typename(L, idx));
        return buf;
    }
    if (!rs_to_json(L, idx)) {
        lua_pop(L, 2);
        snprintf(buf, cap, "(%s)", luaL_typename(L, idx));
        return buf;
    }
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    rs_escape_text(buf, cap, s, len);
    lua_pop(L, 1);
    return buf;
}

/* Pushes the table to iterate for the table at idx: its storage when it is frozen or read-only. */
static int iterable_table(lua_State *L, int idx) {
    if (rs_is_frozen(L, idx)) rs_push_storage(L, idx);
    else lua_pushvalue(L, idx);
    return lua_gettop(L);
}

/* Equality of JSON values: numbers by value, tables member by member (an empty table equals an empty table). */
static bool deep_equal(lua_State *L, int a, int b, int depth) {
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (lua_type(L, a) != LUA_TTABLE || lua_type(L, b) != LUA_TTABLE) return lua_rawequal(L, a, b);
    if (lua_rawequal(L, a, b)) return true;
    if (depth > 64) return luaL_error(L, "expect: tables nested deeper than 64 levels");
    int top = lua_gettop(L);
    int ta = iterable_table(L, a);
    int tb = iterable_table(L, b);
    size_t count_a = 0, count_b = 0;
    bool equal = true;
    lua_pushnil(L);
    while (equal && lua_next(L, ta)) {
        rs_charge(L, 1);
        count_a++;
        lua_pushvalue(L, -2);
        lua_rawget(L, tb);
        equal = !lua_isnil(L, -1) && deep_equal(L, -2, -1, depth + 1);
        lua_pop(L, 2);
    }
    if (equal) {
        lua_pushnil(L);
        while (lua_next(L, tb)) {
            rs_charge(L, 1);
            count_b++;
            lua_pop(L, 1);
        }
        equal = count_a == count_b;
    }
    lua_settop(L, top);
    return equal;
}

/* Whether the value at idx contains `item`: a substring of a string, or an element (deep-equal) of a table. */
static bool contains(lua_State *L, int idx, int item) {
    idx = lua_absindex(L, idx);
    item = lua_absindex(L, item);
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t hay_len, needle_len;
        const char *hay = lua_tolstring(L, idx, &hay_len);
        if (lua_type(L, item) != LUA_TSTRING) return luaL_error(L, "to_contain: a string can only contain a string");
        const char *needle = lua_tolstring(L, item, &needle_len);
        rs_charge(L, hay_len / 16 + 1);
        if (needle_len == 0) return true;
        for (size_t i = 0; i + needle_len <= hay_len; i++)
            if (memcmp(hay + i, needle, needle_len) == 0) return true;
        return false;
    }
    if (lua_type(L, idx) != LUA_TTABLE) return luaL_error(L, "to_contain: the value is a %s, not a string or table",
                                                          luaL_typename(L, idx));
    int top = lua_gettop(L);
    int t = iterable_table(L, idx);
    bool found = false;
    lua_pushnil(L);
    while (!found && lua_next(L, t)) {
        rs_charge(L, 1);
        found = deep_equal(L, -1, item, 0);
        lua_pop(L, 1);
    }
    lua_settop(L, top);
    return found;
}

static lua_Number number_arg(lua_State *L, int idx, const char *matcher, const char *what) {
    if (lua_type(L, idx) != LUA_TNUMBER) luaL_error(L, "%s: %s must be a number", matcher, what);
    return lua_tonumber(L, idx);
}

enum matcher {
    M_TO_BE,
    M_TO_EQUAL,
    M_TO_BE_TRUTHY,
    M_TO_BE_FALSY,
    M_TO_BE_NIL,
    M_TO_BE_CLOSE_TO,
    M_TO_BE_BETWEEN,
    M_TO_BE_GREATER_THAN,
    M_TO_BE_LESS_THAN,
    M_TO_CONTAIN,
};

typedef struct matcher_entry {
    const char *name;
    int matcher;
    bool negated;
} matcher_entry;

static const matcher_entry matchers[] = {
    {"to_be", M_TO_BE, false},
    {"not_to_be", M_TO_BE, true},
    {"to_equal", M_TO_EQUAL, false},
    {"not_to_equal", M_TO_EQUAL, true},
    {"to_be_truthy", M_TO_BE_TRUTHY, false},
    {"to_be_falsy", M_TO_BE_FALSY, false},
    {"to_be_nil", M_TO_BE_NIL, false},
    {"not_to_be_nil", M_TO_BE_NIL, true},
    {"to_be_close_to", M_TO_BE_CLOSE_TO, false},
    {"to_be_between", M_TO_BE_BETWEEN, false},
    {"to_be_greater_than", M_TO_BE_GREATER_THAN, false},
    {"to_be_less_than", M_TO_BE_LESS_THAN, false},
    {"to_contain", M_TO_CONTAIN, false},
    {"not_to_contain", M_TO_CONTAIN, true},
    {NULL, 0, false},
};

/* expect(x).<matcher>(...): upvalues are x and the matcher's index in `matchers`. Raises a failure that says what
 * was expected and what came back; the test runner finds the assertion's file:line on the stack. */
static int run_matcher(lua_State *L) {
    rs_state *S = rs_state_of(L);
    if (!S->in_test) return luaL_error(L, "expect() is only available while a function test runs");
    const matcher_entry *m = &matchers[lua_tointeger(L, lua_upvalueindex(2))];
    lua_settop(L, 2); /* missing arguments read as nil */
    int got = lua_upvalueindex(1);
    char got_text[DESCRIBE_CAP], want_text[DESCRIBE_CAP];
    bool ok;
    const char *expected;
    switch (m->matcher) {
    case M_TO_BE:
        ok = lua_rawequal(L, got, 1);
        expected = describe(L, 1, want_text, sizeof want_text);
        break;
    case M_TO_EQUAL:
        ok = deep_equal(L, got, 1, 0);
        expected = describe(L, 1, want_text, sizeof want_text);
        break;
    case M_TO_BE_TRUTHY:
        ok = lua_toboolean(L, got);
        expected = "a truthy value (not nil or false)";
        break;
    case M_TO_BE_FALSY:
        ok = !lua_toboolean(L, got);
        expected = "nil or false";
        break;
    case M_TO_BE_NIL:
        ok = lua_isnil(L, got);
        expected = "nil";
        break;
    case M_TO_BE_CLOSE_TO: {
        lua_Number want = number_arg(L, 1, m->name, "the expected value");
        lua_Number within = lua_isnoneornil(L, 2) ? 1e-9 : number_arg(L, 2, m->name, "the tolerance");
        ok = lua_type(L, got) == LUA_TNUMBER && fabs(lua_tonumber(L, got) - want) <= within;
        snprintf(want_text, sizeof want_text, "%.14g within %.6g", (double)want, (double)within);
        expected = want_text;
        break;
    }
    case M_TO_BE_BETWEEN: {
        lua_Number low = number_arg(L, 1, m->name, "the low bound");
        lua_Number high = number_arg(L, 2, m->name, "the high bound");
        ok = lua_type(L, got) == LUA_TNUMBER && lua_tonumber(L, got) >= low && lua_tonumber(L, got) <= high;
        snprintf(want_text, sizeof want_text, "a number in [%.14g, %.14g]", (double)low, (double)high);
        expected = want_text;
        break;
    }
    case M_TO_BE_GREATER_THAN:
    case M_TO_BE_LESS_THAN: {
        lua_Number bound = number_arg(L, 1, m->name, "the bound");
        bool greater = m->matcher == M_TO_BE_GREATER_THAN;
        ok = lua_type(L, got) == LUA_TNUMBER &&
             (greater ? lua_tonumber(L, got) > bound : lua_tonumber(L, got) < bound);
        snprintf(want_text, sizeof want_text, "a number %s %.14g", greater ? ">" : "<", (double)bound);
        expected = want_text;
        break;
    }
    case M_TO_CONTAIN:
        ok = contains(L, got, 1);
        snprintf(want_text, sizeof want_text, "a value containing ");
        describe(L, 1, want_text + strlen(want_text), sizeof want_text - strlen(want_text));
        expected = want_text;
        break;
    default: return luaL_error(L, "expect: unknown matcher");
    }
    if (ok != m->negated) return 0;
    describe(L, got, got_text, sizeof got_text);
    return luaL_error(L, "expect(...).%s: expected %s%s, got %s", m->name, m->negated ? "not " : "", expected,
                      got_text);
}

/* expect(x) -> a table of matchers bound to x: expect(x).to_be(y), expect(x).not_to_equal(t), ... */
int rs_api_expect(lua_State *L) {
    rs_state *S = rs_state_of(L);
    if (!S->in_test) return luaL_error(L, "expect() is only available while a function test runs");
    lua_settop(L, 1);
    lua_createtable(L, 0, (int)(sizeof matchers / sizeof *matchers));
    for (int i = 0; matchers[i].name; i++) {
        lua_pushvalue(L, 1);
        lua_pushinteger(L, i);
        lua_pushcclosure(L, run_matcher, 2);
        lua_setfield(L, -2, matchers[i].name);
    }
    return 1;
}

/* ---- running a test ----------------------------------------------------------------------- */

typedef struct test_args {
    rs_state *S;
    rs_test_entry *test;
    char file[256];
    int32_t line;
} test_args;

/* The message handler of a test's protected call: notes the innermost line of a rule file on the stack, which is
 * the failing assertion's line (the matchers and error() are C functions, so they have none). */
static int locate_failure(lua_State *L) {
    test_args *a = lua_touserdata(L, lua_upvalueindex(1));
    lua_Debug ar;
    for (int level = 1; level < 64 && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0 || ar.source[0] != '@') continue;
        snprintf(a->file, sizeof a->file, "%s", ar.source + 1);
        a->line = ar.currentline;
        break;
    }
    return 1;
}

static int test_tx(lua_State *L) {
    test_args *a = lua_touserdata(L, 1);
    rs_state *S = a->S;
    lua_pushlightuserdata(L, a);
    lua_pushcclosure(L, locate_failure, 1);
    int handler = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->test->func_ref);
    S->in_test = true;
    int status = lua_pcall(L, 0, 0, handler);
    S->in_test = false;
    lua_pushinteger(L, status);
    return 2;
}

void rs_run_test(rs_state *S, size_t index, double now, uint64_t timeout_ns, rs_test_outcome *outcome) {
    lua_State *L = S->L;
    memset(outcome, 0, sizeof *outcome);
    S->text_len = 0;
    if (!S->usable || index >= S->test_count || S->tests[index].func_ref == LUA_NOREF) {
        const char *m = "no such function test in this rule set";
        outcome->message_offset = rs_text_append(S, m, strlen(m), false, &outcome->message_length);
        return;
    }
    test_args a;
    memset(&a, 0, sizeof a);
    a.S = S;
    a.test = &S->tests[index];
    S->now = now;
    /* Where a budget stops the test: the guard notes the line of this file that was running (the message handler
     * does not run then, since a killed state allocates nothing more). */
    S->current_file = a.test->file;
    lua_settop(L, 0);
    rs_arm(S, RS_PHASE_EVAL, S->limits.eval_instruction_limit, timeout_ns, 0);
    S->log_lines_this_eval = 0;
    lua_pushcfunction(L, test_tx);
    lua_pushlightuserdata(L, &a);
    int status = lua_pcall(L, 1, 2, 0);
    int killed = S->killed;
    if (killed != RS_KILL_NONE && S->kill_line > 0 && a.line == 0) {
        snprintf(a.file, sizeof a.file, "%s", a.test->file);
        a.line = S->kill_line;
    }
    S->current_file = NULL;
    S->in_test = false;
    rs_disarm(S);
    /* test_tx returns the test's error object (when it failed) and status; a failure of test_tx itself leaves its
     * error object on top. */
    int error_index = -1;
    if (status == LUA_OK) {
        status = (int)lua_tointeger(L, -1);
        error_index = -2;
    }
    if (status == LUA_OK) {
        outcome->passed = 1;
        lua_settop(L, 0);
        return;
    }
    char msg[RS_MESSAGE_CAP_BYTES];
    size_t len;
    if (killed != RS_KILL_NONE || status == LUA_ERRMEM) {
        outcome->out_of_budget = 1;
        len = (size_t)snprintf(msg, sizeof msg, "%s", rs_kill_message(killed != RS_KILL_NONE ? killed : RS_KILL_MEMORY));
    } else {
        len = rs_error_text(L, error_index, msg, sizeof msg);
    }
    const char *text = msg;
    if (a.line > 0) {
        /* error("...") in the test prefixes the same file:line: say it once. */
        char prefix[300];
        int n = snprintf(prefix, sizeof prefix, "%s:%d: ", a.file, (int)a.line);
        if (n > 0 && (size_t)n < sizeof prefix && strncmp(msg, prefix, (size_t)n) == 0) {
            text += n;
            len -= (size_t)n;
        }
        outcome->line = a.line;
        outcome->file_offset = rs_text_append(S, a.file, strlen(a.file), false, &outcome->file_length);
    }
    outcome->message_offset = rs_text_append(S, text, len, false, &outcome->message_length);
    lua_settop(L, 0);
}

size_t rs_global_names(rs_state *S, const char **names, size_t cap) {
    lua_State *L = S->L;
    int top = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_base);
    rs_push_storage(L, -1);
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            /* The key is held by the base environment for the state's whole life. */
            if (count < cap) names[count] = lua_tostring(L, -2);
            count++;
        }
        lua_pop(L, 1);
    }
    lua_settop(L, top);
    return count;
}
