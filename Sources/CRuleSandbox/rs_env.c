/*
 * rs_env.c - the environment rule files run in, built from nothing.
 *
 * Only an allow-list of the standard library is copied in; every function that
 * could let state survive an evaluation, leave the sandbox, or run unbounded in C
 * is absent or wrapped. The resulting base environment and all its library
 * tables are frozen before the first line of user code runs.
 */
#include "rs_state.h"

#include <math.h>
#include <string.h>

/* ---- read-only tables -------------------------------------------------------------------- */

int rs_ro_newindex(lua_State *L) { return luaL_error(L, "attempt to modify a read-only table"); }

bool rs_is_frozen(lua_State *L, int idx) {
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return false;
    lua_pushliteral(L, "__newindex");
    lua_rawget(L, -2);
    bool frozen = lua_tocfunction(L, -1) == rs_ro_newindex;
    lua_pop(L, 2);
    return frozen;
}

void rs_push_storage(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_getmetatable(L, idx);
    lua_pushliteral(L, "__rs_storage");
    lua_rawget(L, -2);
    lua_remove(L, -2);
}

void rs_rawget_any(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    if (rs_is_frozen(L, idx)) {
        rs_push_storage(L, idx);
        lua_insert(L, -2);
        lua_rawget(L, -2);
        lua_remove(L, -2);
    } else {
        lua_rawget(L, idx);
    }
}

/* ---- base functions ---------------------------------------------------------------------- */

/* pcall and xpcall return to the rule like the stock ones, except that a kill (budget, deadline,
 * memory) is re-raised instead of being caught: the breach is sticky. */
static int finish_pcall(lua_State *L, int status, lua_KContext extra) {
    rs_state *S = rs_state_of(L);
    if (status == LUA_ERRMEM && S->killed == RS_KILL_NONE) rs_mark_killed(L, RS_KILL_MEMORY);
    if (S->killed != RS_KILL_NONE) return rs_raise_kill(L);
    if (status != LUA_OK && status != LUA_YIELD) {
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

static int sb_pcall(lua_State *L) {
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finish_pcall);
    return finish_pcall(L, status, 0);
}

static int sb_xpcall(lua_State *L) {
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2); /* f, handler, true, f, args... */
    int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_pcall);
    return finish_pcall(L, status, 2);
}

/* A frozen table cannot serve as a metatable directly (Lua reads metamethods raw, and the proxy
 * is empty). Its "twin" is a private copy of its contents used as the real metatable; the twin's
 * __metatable field makes getmetatable() return the frozen table itself, so `getmetatable(obj) ==
 * Class` keeps working, and the twin never becomes reachable by rule code. */
static void push_twin(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_twins);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    if (!lua_isnil(L, -1)) {
        lua_remove(L, -2);
        return;
    }
    lua_pop(L, 1);
    lua_newtable(L);
    int twin = lua_gettop(L);
    rs_push_storage(L, idx);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            if (strcmp(k, "__gc") == 0 || strcmp(k, "__mode") == 0) {
                lua_pop(L, 1);
                continue;
            }
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, twin);
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "__metatable");
    lua_rawget(L, twin);
    bool has_protection = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!has_protection) {
        lua_pushliteral(L, "__metatable");
        lua_pushvalue(L, idx);
        lua_rawset(L, twin);
    }
    lua_pushvalue(L, idx);
    lua_pushvalue(L, twin);
    lua_rawset(L, twin - 1); /* twins[frozen] = twin */
    lua_remove(L, twin - 1);
}

static int sb_setmetatable(lua_State *L) {
    rs_state *S = rs_state_of(L);
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    lua_settop(L, 2);
    if (t == LUA_TTABLE) {
        if (rs_is_frozen(L, 2)) {
            push_twin(L, 2);
            lua_replace(L, 2);
        } else {
            lua_pushliteral(L, "__gc");
            lua_rawget(L, 2);
            if (!lua_isnil(L, -1)) return luaL_error(L, "finalizers (__gc) are not allowed in rules");
            lua_pop(L, 1);
        }
    }
    if (rs_is_frozen(L, 1)) return luaL_error(L, "cannot change the metatable of a read-only table");
    return S->orig.setmetatable(L);
}

static int sb_rawget(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    lua_settop(L, 2);
    if (rs_is_frozen(L, 1)) {
        rs_push_storage(L, 1);
        lua_replace(L, 1);
    }
    lua_rawget(L, 1);
    return 1;
}

static int sb_rawset(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    if (rs_is_frozen(L, 1)) return luaL_error(L, "attempt to modify a read-only table");
    return rs_state_of(L)->orig.rawset(L);
}

static int sb_rawlen(lua_State *L) {
    if (lua_type(L, 1) == LUA_TTABLE && rs_is_frozen(L, 1)) {
        rs_push_storage(L, 1);
        lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
        return 1;
    }
    return rs_state_of(L)->orig.rawlen(L);
}

static int sb_next(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (rs_is_frozen(L, 1)) {
        rs_push_storage(L, 1);
        lua_replace(L, 1);
    }
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

static int ro_len(lua_State *L) {
    rs_push_storage(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
    return 1;
}

static int ro_pairs(lua_State *L) {
    lua_pushcfunction(L, sb_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Installs the metatable that makes the (empty) table at `proxy` a read-only view of `storage`. */
static void set_readonly_meta(lua_State *L, int proxy, int storage, bool protect_false) {
    lua_createtable(L, 0, 6);
    lua_pushliteral(L, "__index");
    lua_pushvalue(L, storage);
    lua_rawset(L, -3);
    lua_pushliteral(L, "__rs_storage");
    lua_pushvalue(L, storage);
    lua_rawset(L, -3);
    lua_pushliteral(L, "__newindex");
    lua_pushcfunction(L, rs_ro_newindex);
    lua_rawset(L, -3);
    lua_pushliteral(L, "__len");
    lua_pushcfunction(L, ro_len);
    lua_rawset(L, -3);
    lua_pushliteral(L, "__pairs");
    lua_pushcfunction(L, ro_pairs);
    lua_rawset(L, -3);
    if (protect_false) {
        lua_pushliteral(L, "__metatable");
        lua_pushboolean(L, 0);
        lua_rawset(L, -3);
    }
    lua_setmetatable(L, proxy);
}

void rs_make_readonly(lua_State *L) {
    int storage = lua_gettop(L);
    lua_createtable(L, 0, 0);
    set_readonly_meta(L, storage + 1, storage, true);
    lua_replace(L, storage);
}

/* A user __index function on a frozen table must see the proxy, never the storage (it could
 * write into the storage and so keep state across evaluations). Upvalues: storage, handler. */
static int frozen_index(lua_State *L) {
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(2));
    if (lua_type(L, -1) == LUA_TFUNCTION) {
        lua_pushvalue(L, 1);
        lua_pushvalue(L, 2);
        lua_call(L, 2, 1);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_gettable(L, -2);
    return 1;
}

static const char *const copied_metamethods[] = {
    "__call", "__tostring", "__name", "__eq",  "__lt",  "__le",  "__concat", "__unm",  "__add",  "__sub", "__mul",
    "__div",  "__mod",      "__pow",  "__idiv", "__band", "__bor", "__bxor",  "__shl", "__shr", "__bnot", "__close",
    "__len",  "__pairs",    NULL,
};

void rs_freeze_table(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    if (rs_is_frozen(L, idx)) return;
    int top = lua_gettop(L);
    int mt = 0;
    if (lua_getmetatable(L, idx)) mt = lua_gettop(L);
    lua_newtable(L);
    int storage = lua_gettop(L);
    lua_newtable(L);
    int keys = lua_gettop(L);
    lua_Integer nkeys = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, storage);
        lua_pushvalue(L, -1);
        lua_rawseti(L, keys, ++nkeys);
    }
    for (lua_Integer i = 1; i <= nkeys; i++) {
        lua_rawgeti(L, keys, i);
        lua_pushnil(L);
        lua_rawset(L, idx);
    }
    /* The proxy's own metatable: the user's metamethods, then the read-only machinery. */
    lua_createtable(L, 0, 8);
    int meta = lua_gettop(L);
    if (mt) {
        for (const char *const *name = copied_metamethods; *name; name++) {
            lua_pushstring(L, *name);
            rs_rawget_any(L, mt);
            if (!lua_isnil(L, -1)) {
                lua_pushstring(L, *name);
                lua_insert(L, -2);
                lua_rawset(L, meta);
            } else {
                lua_pop(L, 1);
            }
        }
    }
    lua_pushliteral(L, "__rs_storage");
    lua_pushvalue(L, storage);
    lua_rawset(L, meta);
    lua_pushliteral(L, "__newindex");
    lua_pushcfunction(L, rs_ro_newindex);
    lua_rawset(L, meta);
    lua_pushliteral(L, "__len");
    lua_rawget(L, meta);
    if (lua_isnil(L, -1)) {
        lua_pushliteral(L, "__len");
        lua_pushcfunction(L, ro_len);
        lua_rawset(L, meta);
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "__pairs");
    lua_rawget(L, meta);
    if (lua_isnil(L, -1)) {
        lua_pushliteral(L, "__pairs");
        lua_pushcfunction(L, ro_pairs);
        lua_rawset(L, meta);
    }
    lua_pop(L, 1);
    /* __index: straight to the storage; a user __index table chains behind it (VM-native and
     * safe, since tables are frozen too); a user __index function goes through frozen_index. */
    lua_pushliteral(L, "__index");
    if (mt) {
        lua_pushliteral(L, "__index");
        rs_rawget_any(L, mt);
    } else {
        lua_pushnil(L);
    }
    int user_index = lua_gettop(L);
    if (lua_type(L, user_index) == LUA_TFUNCTION) {
        lua_pushvalue(L, storage);
        lua_pushvalue(L, user_index);
        lua_pushcclosure(L, frozen_index, 2);
    } else {
        if (!lua_isnil(L, user_index)) {
            lua_createtable(L, 0, 1);
            lua_pushliteral(L, "__index");
            lua_pushvalue(L, user_index);
            lua_rawset(L, -3);
            lua_setmetatable(L, storage);
        }
        lua_pushvalue(L, storage);
    }
    lua_remove(L, user_index);
    lua_rawset(L, meta);
    /* getmetatable(): the user's protection value, else the user's (frozen) metatable, else false. */
    lua_pushliteral(L, "__metatable");
    if (mt) {
        lua_pushliteral(L, "__metatable");
        rs_rawget_any(L, mt);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, mt);
        }
    } else {
        lua_pushboolean(L, 0);
    }
    lua_rawset(L, meta);
    lua_setmetatable(L, idx);
    lua_settop(L, top);
}

/* ---- bounded library functions ----------------------------------------------------------- */

static int sb_rep(lua_State *L) {
    size_t len, seplen;
    luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &seplen);
    if (n > 0) {
        rs_state *S = rs_state_of(L);
        uint64_t unit = (uint64_t)len + (uint64_t)seplen;
        if ((uint64_t)n > S->memory_limit || (unit && (uint64_t)n > S->memory_limit / unit))
            return rs_resource_error(L, "string.rep result larger than the memory limit");
        rs_charge(L, (uint64_t)n + (uint64_t)n * unit / 16);
    }
    return rs_state_of(L)->orig.rep(L);
}

static int sb_byte(lua_State *L) {
    size_t len;
    luaL_checklstring(L, 1, &len);
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer j = luaL_optinteger(L, 3, i);
    if (j > i) rs_charge(L, (uint64_t)(j - i) > len ? len : (uint64_t)(j - i));
    return rs_state_of(L)->orig.byte(L);
}

/* string.pack can pad to any size it is told ("c1000000000"): charge every number in the format
 * as bytes of output before running it. */
static int sb_pack(lua_State *L) {
    size_t len;
    const char *fmt = luaL_checklstring(L, 1, &len);
    uint64_t total = len, current = 0;
    for (size_t i = 0; i < len; i++) {
        if (fmt[i] >= '0' && fmt[i] <= '9') {
            if (current < UINT32_MAX) current = current * 10 + (uint64_t)(fmt[i] - '0');
        } else {
            total += current;
            current = 0;
        }
    }
    total += current;
    if (total > rs_state_of(L)->memory_limit) return rs_resource_error(L, "string.pack result larger than the memory limit");
    rs_charge(L, total / 8 + (uint64_t)lua_gettop(L));
    return rs_state_of(L)->orig.pack(L);
}

static lua_Integer table_length(lua_State *L, int idx) {
    luaL_checktype(L, idx, LUA_TTABLE);
    return luaL_len(L, idx);
}

static void charge_range(lua_State *L, lua_Integer from, lua_Integer to) {
    if (to >= from) {
        lua_Unsigned n = (lua_Unsigned)to - (lua_Unsigned)from + 1u;
        rs_charge(L, n);
    }
}

static int sb_concat(lua_State *L) {
    lua_Integer last = lua_isnoneornil(L, 4) ? table_length(L, 1) : luaL_checkinteger(L, 4);
    charge_range(L, luaL_optinteger(L, 3, 1), last);
    return rs_state_of(L)->orig.concat(L);
}

static int sb_insert(lua_State *L) {
    if (lua_gettop(L) == 3) charge_range(L, luaL_checkinteger(L, 2), table_length(L, 1));
    else rs_charge(L, 1);
    return rs_state_of(L)->orig.insert(L);
}

static int sb_remove(lua_State *L) {
    lua_Integer size = table_length(L, 1);
    charge_range(L, luaL_optinteger(L, 2, size), size);
    return rs_state_of(L)->orig.remove(L);
}

static int sb_move(lua_State *L) {
    charge_range(L, luaL_checkinteger(L, 2), luaL_checkinteger(L, 3));
    return rs_state_of(L)->orig.move(L);
}

static int sb_sort(lua_State *L) {
    lua_Integer n = table_length(L, 1);
    if (n > 1) {
        uint64_t log2n = 1;
        while (((uint64_t)1 << log2n) < (uint64_t)n && log2n < 63) log2n++;
        rs_charge(L, (uint64_t)n * log2n);
    }
    return rs_state_of(L)->orig.sort(L);
}

static int sb_unpack(lua_State *L) {
    lua_Integer first = luaL_optinteger(L, 2, 1);
    lua_Integer last = lua_isnoneornil(L, 3) ? table_length(L, 1) : luaL_checkinteger(L, 3);
    charge_range(L, first, last);
    return rs_state_of(L)->orig.unpack(L);
}

static int sb_resume(lua_State *L) {
    rs_state *S = rs_state_of(L);
    int n = S->orig.resume(L);
    if (S->killed != RS_KILL_NONE) return rs_raise_kill(L);
    return n;
}

/* coroutine.wrap, rebuilt on the guarded resume (the stock one resumes without the kill check). */
static int sb_wrap_call(lua_State *L) {
    rs_state *S = rs_state_of(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    int n = S->orig.resume(L);
    if (S->killed != RS_KILL_NONE) return rs_raise_kill(L);
    int first = lua_gettop(L) - n + 1;
    if (lua_toboolean(L, first)) {
        lua_remove(L, first);
        return n - 1;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int sb_wrap(lua_State *L) {
    rs_state_of(L)->orig.create(L);
    lua_pushcclosure(L, sb_wrap_call, 1);
    return 1;
}

/* ---- building the environment ------------------------------------------------------------ */

static lua_CFunction field_cfunction(lua_State *L, int table, const char *name) {
    lua_getfield(L, table, name);
    lua_CFunction f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    if (f == NULL) luaL_error(L, "sandbox setup: standard function %s is missing", name);
    return f;
}

static void copy_fields(lua_State *L, int from, int to, const char *const *names) {
    for (; *names; names++) {
        lua_getfield(L, from, *names);
        if (lua_isnil(L, -1)) luaL_error(L, "sandbox setup: standard field %s is missing", *names);
        lua_setfield(L, to, *names);
    }
}

static void set_function(lua_State *L, int table, const char *name, lua_CFunction f) {
    lua_pushcfunction(L, f);
    lua_setfield(L, table, name);
}

static const char *const base_names[] = {
    "assert", "error", "ipairs", "pairs", "select", "tonumber", "tostring", "type", "rawequal", "getmetatable",
    "_VERSION", NULL,
};
static const char *const string_names[] = {
    "char", "format", "len", "lower", "upper", "reverse", "sub", "packsize", "unpack", NULL,
};
static const char *const table_names[] = {"pack", NULL};
static const char *const math_names[] = {
    "abs", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger", "min", "mininteger",
    "modf", "pi", "rad", "sin", "sqrt", "tan", "tointeger", "type", "ult", "atan", "asin", "acos", NULL,
};
static const char *const utf8_names[] = {"char", "charpattern", "codes", "codepoint", "len", "offset", NULL};
static const char *const coroutine_names[] = {"create", "yield", "status", "isyieldable", "running", NULL};

int rs_build_base_env(lua_State *L) {
    rs_state *S = rs_state_of(L);
    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    lua_getfield(L, g, "string");
    int str = lua_gettop(L);
    lua_getfield(L, g, "table");
    int tab = lua_gettop(L);
    lua_getfield(L, g, "math");
    int math = lua_gettop(L);
    lua_getfield(L, g, "utf8");
    int utf8 = lua_gettop(L);
    lua_getfield(L, g, "coroutine");
    int co = lua_gettop(L);

    S->orig.setmetatable = field_cfunction(L, g, "setmetatable");
    S->orig.rawget = field_cfunction(L, g, "rawget");
    S->orig.rawset = field_cfunction(L, g, "rawset");
    S->orig.rawlen = field_cfunction(L, g, "rawlen");
    S->orig.next = field_cfunction(L, g, "next");
    S->orig.rep = field_cfunction(L, str, "rep");
    S->orig.pack = field_cfunction(L, str, "pack");
    S->orig.byte = field_cfunction(L, str, "byte");
    S->orig.concat = field_cfunction(L, tab, "concat");
    S->orig.insert = field_cfunction(L, tab, "insert");
    S->orig.remove = field_cfunction(L, tab, "remove");
    S->orig.move = field_cfunction(L, tab, "move");
    S->orig.sort = field_cfunction(L, tab, "sort");
    S->orig.unpack = field_cfunction(L, tab, "unpack");
    S->orig.create = field_cfunction(L, co, "create");
    S->orig.resume = field_cfunction(L, co, "resume");

    lua_newtable(L);
    int base = lua_gettop(L);
    copy_fields(L, g, base, base_names);
    set_function(L, base, "pcall", sb_pcall);
    set_function(L, base, "xpcall", sb_xpcall);
    set_function(L, base, "setmetatable", sb_setmetatable);
    set_function(L, base, "rawget", sb_rawget);
    set_function(L, base, "rawset", sb_rawset);
    set_function(L, base, "rawlen", sb_rawlen);
    set_function(L, base, "next", sb_next);

    lua_newtable(L);
    int sstr = lua_gettop(L);
    copy_fields(L, str, sstr, string_names);
    set_function(L, sstr, "rep", sb_rep);
    set_function(L, sstr, "byte", sb_byte);
    set_function(L, sstr, "pack", sb_pack);
    set_function(L, sstr, "find", rs_str_find);
    set_function(L, sstr, "match", rs_str_match);
    set_function(L, sstr, "gmatch", rs_str_gmatch);
    set_function(L, sstr, "gsub", rs_str_gsub);

    lua_newtable(L);
    int stab = lua_gettop(L);
    copy_fields(L, tab, stab, table_names);
    set_function(L, stab, "concat", sb_concat);
    set_function(L, stab, "insert", sb_insert);
    set_function(L, stab, "remove", sb_remove);
    set_function(L, stab, "move", sb_move);
    set_function(L, stab, "sort", sb_sort);
    set_function(L, stab, "unpack", sb_unpack);

    lua_newtable(L);
    int smath = lua_gettop(L);
    copy_fields(L, math, smath, math_names);

    lua_newtable(L);
    int sutf8 = lua_gettop(L);
    copy_fields(L, utf8, sutf8, utf8_names);

    /* coroutine.close is left out: Lua 5.4.4 crashes on some chains of it. */
    lua_newtable(L);
    int sco = lua_gettop(L);
    copy_fields(L, co, sco, coroutine_names);
    set_function(L, sco, "resume", sb_resume);
    set_function(L, sco, "wrap", sb_wrap);

    lua_pushvalue(L, base);
    rs_open_helpers(L);
    rs_open_rule_api(L);
    lua_pop(L, 1);

    /* Library tables go in frozen, helpers' sub-tables too (semver, ip). */
    int libs[] = {sstr, stab, smath, sutf8, sco};
    const char *lib_names[] = {"string", "table", "math", "utf8", "coroutine"};
    for (int i = 0; i < 5; i++) {
        rs_freeze_table(L, libs[i]);
        lua_pushvalue(L, libs[i]);
        lua_setfield(L, base, lib_names[i]);
    }
    lua_pushnil(L);
    while (lua_next(L, base)) {
        if (lua_type(L, -1) == LUA_TTABLE) rs_freeze_table(L, -1);
        lua_pop(L, 1);
    }

    /* The string metatable: methods from the sandboxed string table; the stock arithmetic
     * coercions kept; getmetatable("") answers false so rules cannot reach it. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    int old_meta = lua_gettop(L);
    lua_newtable(L);
    int smeta = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, old_meta)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, smeta);
    }
    lua_pushvalue(L, sstr);
    lua_setfield(L, smeta, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, smeta, "__metatable");
    /* Left unfrozen on purpose: Lua reads metamethods raw, and __metatable = false already keeps
     * this table out of rules' reach. */
    lua_pushvalue(L, smeta);
    lua_setmetatable(L, old_meta - 1);
    lua_settop(L, base);

    rs_freeze_table(L, base);
    lua_pushvalue(L, base);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rs_key_base);
    /* The real globals table (holding load, dofile, require, print, ...) is dropped: nothing the
     * sandbox hands to rules refers to it. */
    lua_newtable(L);
    lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_settop(L, g - 1);
    return 0;
}
