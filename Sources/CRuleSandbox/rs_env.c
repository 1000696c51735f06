/*
 * rs_env.c - the environment rule files run in, built from nothing.
 *
 * Only an allow-list of the standard library is copied in; every function that
 * could let state survive an evaluation, leave the sandbox, or run unbounded in C
 * is absent or wrapped. The resulting base environment and all its library
 * tables are frozen before the first line of user code runs.
 */
#include "rs_state.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
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
    rs_complete_context(L, -1); /* a context read lazily is whole before anything walks it */
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
        S->user_metatables = true; /* its metamethods may be Lua functions: see RS_SHAPE_STRAIGHT_MASK */
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

/* ---- deterministic traversal ------------------------------------------------------------------ */

/*
 * Every worker holds its own Lua state, and Lua seeds its string hashes per state (from the clock and from
 * addresses), so the stock next and pairs visit one table's keys in a different order in each worker: a rule
 * that returned the first match of a pairs loop answered differently depending on the worker that ran it.
 * Traversal here follows one canonical order instead: numbers ascending, then strings bytewise, then false
 * and true; keys of other types (tables or functions used as keys) come last, in Lua's own order, which
 * nothing can make the same across states.
 */
typedef struct key_entry {
    int rank;           /* 0 number, 1 string, 2 boolean, 3 anything else */
    long double number; /* numbers and booleans; exact for every integer and double */
    const char *s;      /* strings: valid while the key is on the stack or in a table on it */
    size_t len;
    lua_Integer raw;    /* position in Lua's own traversal order: the tie-break for rank 3 */
} key_entry;

static void key_describe(lua_State *L, int idx, lua_Integer raw, key_entry *e) {
    e->raw = raw;
    e->s = NULL;
    e->len = 0;
    e->number = 0;
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        e->rank = 0;
        e->number = lua_isinteger(L, idx) ? (long double)lua_tointeger(L, idx) : (long double)lua_tonumber(L, idx);
        break;
    case LUA_TSTRING:
        e->rank = 1;
        e->s = lua_tolstring(L, idx, &e->len);
        break;
    case LUA_TBOOLEAN:
        e->rank = 2;
        e->number = lua_toboolean(L, idx);
        break;
    default: e->rank = 3;
    }
}

static int key_entry_cmp(const void *a, const void *b) {
    const key_entry *x = a, *y = b;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    if (x->rank == 0 || x->rank == 2) {
        if (x->number != y->number) return x->number < y->number ? -1 : 1;
    } else if (x->rank == 1) {
        int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
        if (c != 0) return c < 0 ? -1 : 1;
        if (x->len != y->len) return x->len < y->len ? -1 : 1;
    }
    return (x->raw > y->raw) - (x->raw < y->raw);
}

/* The iterator of pairs: upvalues are the table (raw storage), its keys in canonical order, and the position
 * reached. Keys whose value was cleared during the traversal are skipped, as Lua's own next would. */
static int ordered_iterator(lua_State *L) {
    lua_Integer pos = lua_tointeger(L, lua_upvalueindex(3));
    lua_Integer n = (lua_Integer)lua_rawlen(L, lua_upvalueindex(2));
    while (++pos <= n) {
        lua_rawgeti(L, lua_upvalueindex(2), pos);
        lua_pushvalue(L, -1);
        lua_rawget(L, lua_upvalueindex(1));
        if (!lua_isnil(L, -1)) {
            lua_pushinteger(L, pos);
            lua_replace(L, lua_upvalueindex(3));
            return 2;
        }
        lua_pop(L, 2);
    }
    lua_pushinteger(L, n);
    lua_replace(L, lua_upvalueindex(3));
    lua_pushnil(L);
    return 1;
}

/* Returns pairs' three values for the table at idx (frozen or read-only tables: over their storage). */
static int push_ordered_pairs(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    if (rs_is_frozen(L, idx)) rs_push_storage(L, idx);
    else lua_pushvalue(L, idx);
    int t = lua_gettop(L);
    lua_newtable(L);
    int keys = lua_gettop(L);
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, keys, ++n);
    }
    uint64_t log2n = 1;
    while (((uint64_t)1 << log2n) < (uint64_t)n && log2n < 63) log2n++;
    rs_charge(L, 1 + (uint64_t)n * log2n);
    key_entry *entries = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *entries, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, keys, i);
        key_describe(L, -1, i, &entries[i - 1]); /* the string stays alive in `keys` */
        lua_pop(L, 1);
    }
    qsort(entries, (size_t)n, sizeof *entries, key_entry_cmp);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 0; i < n; i++) {
        lua_rawgeti(L, keys, entries[i].raw);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushvalue(L, t);
    lua_insert(L, -2);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, ordered_iterator, 3);
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    return 3;
}

static int pairs_continue(lua_State *L, int status, lua_KContext extra) {
    (void)L, (void)status, (void)extra;
    return 3;
}

/* pairs: a __pairs metamethod decides, as in stock Lua (and may yield, as there); otherwise the canonical
 * order. */
static int sb_pairs(lua_State *L) {
    luaL_checkany(L, 1);
    if (luaL_getmetafield(L, 1, "__pairs") != LUA_TNIL) {
        lua_pushvalue(L, 1);
        lua_callk(L, 1, 3, 0, pairs_continue);
        return 3;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    return push_ordered_pairs(L, 1);
}

/* The position, in Lua's own traversal order, of a key that is no longer live in the table at idx (its value was
 * cleared during a traversal, as in `for k in next, t do t[k] = nil end`): Lua's own next still accepts such a
 * dead key, and raises its "invalid key to 'next'" for a key that never was there. Positions of live keys are
 * even (2, 4, ...); the dead key sits just before the live key that follows it. */
static lua_Integer dead_key_position(lua_State *L, int idx, int key) {
    lua_pushvalue(L, key);
    if (!lua_next(L, idx)) return 0; /* no live key follows: after every live key (the caller adds the count) */
    lua_pop(L, 1);
    lua_Integer raw = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        raw += 2;
        lua_pop(L, 1);
        if (lua_rawequal(L, -1, -2)) {
            lua_pop(L, 2);
            return raw - 1;
        }
    }
    lua_pop(L, 1);
    return 0;
}

/* next(t, k): the key after k in the canonical order. Each call walks the table (and is charged for it), so
 * pairs is the way to traverse a large table; next stays right for emptiness tests and occasional steps. */
static int sb_next(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (rs_is_frozen(L, 1)) {
        rs_push_storage(L, 1);
        lua_replace(L, 1);
    }
    lua_pushnil(L); /* 3: the best candidate so far */
    bool from_start = lua_isnil(L, 2), have_best = false;
    key_entry after, best, current;
    lua_Integer raw = 0;
    if (!from_start) {
        bool found = false;
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            raw += 2;
            lua_pop(L, 1);
            if (lua_rawequal(L, -1, 2)) {
                found = true;
                lua_pop(L, 1);
                break;
            }
        }
        if (!found) {
            lua_Integer position = dead_key_position(L, 1, 2);
            raw = position ? position : raw + 1;
        }
        key_describe(L, 2, raw, &after);
    }
    raw = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        raw += 2;
        key_describe(L, -1, raw, &current);
        if ((from_start || key_entry_cmp(&current, &after) > 0) &&
            (!have_best || key_entry_cmp(&current, &best) < 0)) {
            lua_pushvalue(L, -1);
            lua_replace(L, 3);
            key_describe(L, 3, raw, &best);
            have_best = true;
        }
    }
    rs_charge(L, 1 + (uint64_t)raw);
    if (!have_best) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 3);
    lua_rawget(L, 1);
    return 2;
}

static int ro_len(lua_State *L) {
    rs_push_storage(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
    return 1;
}

static int ro_pairs(lua_State *L) { return push_ordered_pairs(L, 1); }

/* The metamethods of every read-only view: writes refused, length and traversal over the storage. */
static const luaL_Reg readonly_metamethods[] = {
    {"__newindex", rs_ro_newindex},
    {"__len", ro_len},
    {"__pairs", ro_pairs},
    {NULL, NULL},
};

/* Installs the metatable that makes the (empty) table at `proxy` a read-only view of `storage`. */
/* Points the read-only metatable on top of the stack at the table at `storage` (an absolute index): reads go
 * there, and it is the storage the sandbox's own readers find behind the proxy. */
static void point_readonly_meta(lua_State *L, int storage) {
    lua_pushliteral(L, "__index");
    lua_pushvalue(L, storage);
    lua_rawset(L, -3);
    lua_pushliteral(L, "__rs_storage");
    lua_pushvalue(L, storage);
    lua_rawset(L, -3);
}

static void set_readonly_meta(lua_State *L, int proxy, int storage, bool protect_false) {
    lua_createtable(L, 0, 6);
    point_readonly_meta(L, storage);
    luaL_setfuncs(L, readonly_metamethods, 0);
    if (protect_false) {
        lua_pushliteral(L, "__metatable");
        lua_pushboolean(L, 0);
        lua_rawset(L, -3);
    }
    lua_setmetatable(L, proxy);
}

/* Nested objects of the contexts of one evaluation that get a pooled proxy; further ones get a fresh proxy. */
#define NESTED_POOL_SIZE 64

static const char key_nested_pool = 0;

void rs_make_readonly(lua_State *L) {
    int storage = lua_gettop(L);
    rs_state *S = rs_state_of(L);
    if (S->nested_proxies_used >= NESTED_POOL_SIZE) {
        lua_createtable(L, 0, 0);
        set_readonly_meta(L, storage + 1, storage, true);
        lua_replace(L, storage);
        return;
    }
    /* Like the context's own proxy, a nested object's proxy cannot outlive the evaluation that made it (every place
     * a rule could keep it is frozen), so the next evaluation takes it again and re-points its metatable: two
     * writes instead of two new tables and a metatable filled field by field, about 3,500 instructions. */
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_nested_pool) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, NESTED_POOL_SIZE, 0);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &key_nested_pool);
    }
    int pool = storage + 1;
    lua_Integer slot = (lua_Integer)++S->nested_proxies_used;
    if (lua_rawgeti(L, pool, slot) == LUA_TTABLE) {
        lua_getmetatable(L, -1);
        point_readonly_meta(L, storage);
        lua_pop(L, 1);
    } else {
        lua_pop(L, 1);
        lua_createtable(L, 0, 0);
        set_readonly_meta(L, lua_gettop(L), storage, true);
        lua_pushvalue(L, -1);
        lua_rawseti(L, pool, slot);
    }
    lua_replace(L, storage);
    lua_settop(L, storage);
}

void rs_create_context_proxy(lua_State *L) {
    rs_state *S = rs_state_of(L);
    lua_createtable(L, 0, 0);
    int proxy = lua_gettop(L);
    lua_createtable(L, 0, 0);
    int storage = lua_gettop(L);
    set_readonly_meta(L, proxy, storage, true);
    S->context_target = lua_topointer(L, storage);
    S->context_storage_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getmetatable(L, proxy);
    S->context_meta_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    S->context_proxy_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* A storage that held more members than this is replaced rather than emptied: emptying walks every slot of its
 * hash part, which would otherwise stay at its largest size for every later evaluation. */
#define CONTEXT_STORAGE_REUSE_MEMBERS 32

/* Like the proxy, the storage cannot outlive an evaluation (rules only ever see the proxy, and its metatable is
 * protected), so every conversion of a top-level object fills the same table: a table and its hash part less to
 * allocate and collect per evaluation. */
void rs_begin_context_fill(lua_State *L, rs_state *S, bool empty) {
    if (!S->bare_context) lua_rawgeti(L, LUA_REGISTRYINDEX, S->context_proxy_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->context_storage_ref);
    if (!empty) return;
    int storage = lua_gettop(L);
    uint32_t members = 0;
    lua_pushnil(L);
    while (lua_next(L, storage)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, storage);
        members++;
    }
    if (members > CONTEXT_STORAGE_REUSE_MEMBERS) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 4);
        lua_pushvalue(L, -1);
        lua_rawseti(L, LUA_REGISTRYINDEX, S->context_storage_ref);
    }
}

/* Points the shared context proxy's metatable at the storage on top of the stack. The metatable keeps its storage
 * alive, so an equal pointer is the same table: nothing to re-point. */
static void point_context_proxy(lua_State *L, rs_state *S) {
    const void *target = lua_topointer(L, -1);
    if (target == S->context_target) return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->context_meta_ref);
    point_readonly_meta(L, lua_gettop(L) - 1);
    lua_pop(L, 1);
    S->context_target = target;
}

void rs_end_context_fill(lua_State *L, rs_state *S) {
    if (S->bare_context) return; /* the storage itself is the context (RS_SHAPE_SEALED) */
    point_context_proxy(L, S);
    lua_pop(L, 1);
}

void rs_make_readonly_context(lua_State *L) {
    rs_state *S = rs_state_of(L);
    int storage = lua_gettop(L);
    point_context_proxy(L, S);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->context_proxy_ref);
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
    /* The proxy's own metatable: the read-only machinery, then the user's metamethods (a user's own __len or
     * __pairs replaces the storage-reading one; __newindex is never copied, so writes stay refused). */
    lua_createtable(L, 0, 8);
    int meta = lua_gettop(L);
    luaL_setfuncs(L, readonly_metamethods, 0);
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
            /* A frozen table is an empty proxy that reads through its metatable's __index table (its storage, and
             * what chains behind that): chaining to that table directly answers every read alike, with one
             * metatable step less. A file's globals chain to the library this way, so every library name a rule
             * reads (rollout, split, string...) saves a step. */
            if (rs_is_frozen(L, user_index) && lua_getmetatable(L, user_index)) {
                lua_pushliteral(L, "__index");
                lua_rawget(L, -2);
                if (lua_type(L, -1) == LUA_TTABLE) {
                    lua_replace(L, user_index);
                    lua_pop(L, 1);
                } else {
                    lua_pop(L, 2);
                }
            }
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

/*
 * Library functions whose work in C grows with the length of their string arguments. The count hook only
 * sees VM instructions, so one instruction calling utf8.len on a 32 MiB string did about 0.4 s of work
 * unseen, and a loop of such calls overran a 50 ms deadline by minutes. Each call is now charged for the
 * bytes it touches (before it runs, where that is known), at roughly the rate its loop runs compared with
 * VM instructions.
 */
static void charge_string_args(lua_State *L, uint64_t bytes_per_step) {
    uint64_t bytes = 0;
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++)
        if (lua_type(L, i) == LUA_TSTRING) bytes += lua_rawlen(L, i);
    rs_charge(L, 1 + bytes / bytes_per_step);
}

#define RS_CHARGED_BY_LENGTH(wrapper, original, bytes_per_step)                                                      \
    static int wrapper(lua_State *L) {                                                                                 \
        charge_string_args(L, bytes_per_step);                                                                         \
        return rs_state_of(L)->orig.original(L);                                                                       \
    }

/* Lua's normalisation of a byte range [i, j] of a string of `len` bytes (str_sub's posrelatI and getendpos),
 * for arguments at `i_idx` and `j_idx` (0: no such argument) with the given defaults; returns the number of
 * bytes in the range. The original function checks the arguments itself: anything that is not an integer
 * counts as its default here. */
static uint64_t range_bytes(lua_State *L, int i_idx, lua_Integer i_default, int j_idx, lua_Integer j_default,
                            size_t len) {
    int isnum = 0;
    lua_Integer i = i_idx ? lua_tointegerx(L, i_idx, &isnum) : 0;
    if (!isnum) i = i_default;
    isnum = 0;
    lua_Integer j = j_idx ? lua_tointegerx(L, j_idx, &isnum) : 0;
    if (!isnum) j = j_default;
    lua_Integer l = (lua_Integer)len;
    if (i < 0) i = i < -l ? 1 : l + i + 1;
    else if (i == 0) i = 1;
    if (j > l) j = l;
    else if (j < 0) j = j < -l ? 0 : l + j + 1;
    return i > j ? 0 : (uint64_t)(j - i + 1);
}

/* Byte-at-a-time decoders: about one VM instruction's work per byte of the range they walk. */
static int sb_utf8_len(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) rs_charge(L, 1 + range_bytes(L, 2, 1, 3, -1, lua_rawlen(L, 1)));
    return rs_state_of(L)->orig.utf8_len(L);
}

static int sb_utf8_codepoint(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) {
        int isnum;
        lua_Integer i = lua_tointegerx(L, 2, &isnum);
        rs_charge(L, 1 + range_bytes(L, 2, 1, 3, isnum ? i : 1, lua_rawlen(L, 1)));
    }
    return rs_state_of(L)->orig.utf8_codepoint(L);
}

/* utf8.offset walks |n| characters, but a run of continuation bytes counts as part of one character, so one
 * call can walk the whole string: it is charged afterwards for the distance it actually moved. */
static int sb_utf8_offset(lua_State *L) {
    rs_state *S = rs_state_of(L);
    size_t len = lua_type(L, 1) == LUA_TSTRING ? lua_rawlen(L, 1) : 0;
    lua_Integer n = luaL_optinteger(L, 2, 0);
    lua_Integer start = luaL_optinteger(L, 3, n >= 0 ? 1 : (lua_Integer)len + 1);
    int results = S->orig.utf8_offset(L);
    int isnum;
    lua_Integer end = lua_tointegerx(L, -1, &isnum);
    uint64_t moved = isnum ? (end > start ? (uint64_t)(end - start) : (uint64_t)(start - end)) : len;
    rs_charge(L, 1 + moved);
    return results;
}

/* Lua 5.4.4's utf8.codes iterator skips a run of continuation bytes in one step, so a single step can scan
 * the whole string: the scan is paid for when the iteration starts. */
RS_CHARGED_BY_LENGTH(sb_utf8_codes, utf8_codes, 1)
/* Byte loops with a table lookup or a copy per byte, over the whole string. */
RS_CHARGED_BY_LENGTH(sb_upper, upper, 4)
RS_CHARGED_BY_LENGTH(sb_lower, lower, 4)
RS_CHARGED_BY_LENGTH(sb_reverse, reverse, 4)
/* Scans and copies of whole arguments: format's %s and %q, tonumber's three passes over leading spaces, a
 * format string's walk. */
RS_CHARGED_BY_LENGTH(sb_format, format, 16)
RS_CHARGED_BY_LENGTH(sb_tonumber, tonumber, 4)
RS_CHARGED_BY_LENGTH(sb_packsize, packsize, 16)

/* string.sub copies the range it returns, and only that (s:sub(i, i) in a loop stays cheap). */
static int sb_sub(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) rs_charge(L, 1 + range_bytes(L, 2, 1, 3, -1, lua_rawlen(L, 1)) / 16);
    return rs_state_of(L)->orig.sub(L);
}

/* string.unpack reads from `pos` on ("z" scans for the terminator): the format and the data from `pos`. */
static int sb_sunpack(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING && lua_type(L, 2) == LUA_TSTRING)
        rs_charge(L, 1 + (lua_rawlen(L, 1) + range_bytes(L, 3, 1, 0, -1, lua_rawlen(L, 2))) / 16);
    return rs_state_of(L)->orig.sunpack(L);
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

/*
 * The table functions below follow Lua 5.4's own (ltablib.c) step for step, with two differences that keep them
 * bounded and faithful: each checks its arguments completely before it charges the budget for the range it is
 * about to walk, so a call that stock Lua rejects at once still fails with the same catchable error instead of
 * exhausting the budget; and each asks for the length (a __len metamethod is rule code) exactly once.
 */
#define TAB_R 1 /* read */
#define TAB_W 2 /* write */
#define TAB_L 4 /* length */
#define TAB_RW (TAB_R | TAB_W)

static bool has_metafield(lua_State *L, int idx, const char *name) {
    if (luaL_getmetafield(L, idx, name) == LUA_TNIL) return false;
    lua_pop(L, 1);
    return true;
}

/* Argument `arg` must be a table, or behave like one for what the function does with it (stock checktab). */
static void check_table_like(lua_State *L, int arg, int what) {
    if (lua_type(L, arg) == LUA_TTABLE) return;
    if (lua_getmetatable(L, arg)) {
        lua_pop(L, 1);
        if ((!(what & TAB_R) || has_metafield(L, arg, "__index")) &&
            (!(what & TAB_W) || has_metafield(L, arg, "__newindex")) &&
            (!(what & TAB_L) || has_metafield(L, arg, "__len")))
            return;
    }
    luaL_checktype(L, arg, LUA_TTABLE); /* raises the stock message */
}

static lua_Integer table_length(lua_State *L, int idx, int what) {
    check_table_like(L, idx, what | TAB_L);
    return luaL_len(L, idx);
}

/* The number of elements in [from, to], saturating: the full integer range has 2^64 of them, one more than a
 * 64-bit count holds, and must not wrap to a charge of zero. */
static uint64_t range_count(lua_Integer from, lua_Integer to) {
    if (to < from) return 0;
    lua_Unsigned gap = (lua_Unsigned)to - (lua_Unsigned)from;
    return gap == (lua_Unsigned)-1 ? UINT64_MAX : (uint64_t)gap + 1;
}

static void concat_field(lua_State *L, luaL_Buffer *b, lua_Integer i) {
    lua_geti(L, 1, i);
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid value (%s) at index %I in table for 'concat'", luaL_typename(L, -1), (LUAI_UACINT)i);
    luaL_addvalue(b);
}

static int sb_concat(lua_State *L) {
    lua_Integer last = table_length(L, 1, TAB_R);
    size_t lsep;
    const char *sep = luaL_optlstring(L, 2, "", &lsep);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    last = luaL_optinteger(L, 4, last);
    rs_charge(L, 1 + range_count(i, last));
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (; i < last; i++) {
        concat_field(L, &b, i);
        luaL_addlstring(&b, sep, lsep);
    }
    if (i == last) concat_field(L, &b, i);
    luaL_pushresult(&b);
    return 1;
}

static int sb_insert(lua_State *L) {
    lua_Integer e = table_length(L, 1, TAB_RW);
    e = (lua_Integer)((lua_Unsigned)e + 1u); /* first empty element */
    lua_Integer pos;
    switch (lua_gettop(L)) {
    case 2: pos = e; break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        break;
    default: return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    rs_charge(L, 1 + range_count(pos, e));
    for (lua_Integer i = e; i > pos; i--) {
        lua_geti(L, 1, i - 1);
        lua_seti(L, 1, i);
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int sb_remove(lua_State *L) {
    lua_Integer size = table_length(L, 1, TAB_RW);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 1, "position out of bounds");
    rs_charge(L, 1 + range_count(pos, size));
    lua_geti(L, 1, pos);
    for (; pos < size; pos++) {
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

/* table.move: every check of the stock function runs first (integers, tables, "too many elements to move",
 * "destination wrap around"); only a move that will happen is charged. */
static int sb_move(lua_State *L) {
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int tt = !lua_isnoneornil(L, 5) ? 5 : 1;
    check_table_like(L, 1, TAB_R);
    check_table_like(L, tt, TAB_W);
    if (e >= f) {
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        lua_Integer n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        rs_charge(L, 1 + (uint64_t)n);
    }
    return rs_state_of(L)->orig.move(L);
}

/* table.unpack: the range is checked against what the stack can hold before it is charged. */
static int sb_unpack(lua_State *L) {
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer e = lua_isnoneornil(L, 3) ? luaL_len(L, 1) : luaL_checkinteger(L, 3);
    if (i > e) return 0;
    lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)i;
    if (n >= (unsigned int)INT_MAX || !lua_checkstack(L, (int)(++n))) return luaL_error(L, "too many results to unpack");
    rs_charge(L, (uint64_t)n);
    for (; i < e; i++) lua_geti(L, 1, i);
    lua_geti(L, 1, e);
    return (int)n;
}

/* The __len of a table-like proxy made by sort: the length its caller already obtained (upvalue 1). */
static int known_length(lua_State *L) {
    lua_pushvalue(L, lua_upvalueindex(1));
    return 1;
}

/* table.sort: the stock quicksort, charged n log n once the length and the order function are known. The stock
 * function asks for the length itself; when that would run rule code a second time (a __len written in Lua), it
 * is handed a stand-in that reads and writes through to the table and answers the length already obtained. */
static int sb_sort(lua_State *L) {
    lua_Integer n = table_length(L, 1, TAB_RW);
    if (n > 1) {
        luaL_argcheck(L, n < INT_MAX, 1, "array too big");
        if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
        uint64_t log2n = 1;
        while (((uint64_t)1 << log2n) < (uint64_t)n && log2n < 63) log2n++;
        rs_charge(L, (uint64_t)n * log2n);
    }
    if (luaL_getmetafield(L, 1, "__len") != LUA_TNIL) {
        bool rule_code = !lua_iscfunction(L, -1);
        lua_pop(L, 1);
        if (rule_code) {
            lua_settop(L, 2);
            lua_createtable(L, 0, 0);
            lua_createtable(L, 0, 3);
            lua_pushvalue(L, 1);
            lua_setfield(L, -2, "__index");
            lua_pushvalue(L, 1);
            lua_setfield(L, -2, "__newindex");
            lua_pushinteger(L, n);
            lua_pushcclosure(L, known_length, 1);
            lua_setfield(L, -2, "__len");
            lua_setmetatable(L, -2);
            lua_replace(L, 1);
        }
    }
    return rs_state_of(L)->orig.sort(L);
}

/* A coroutine that ran out of memory ends with LUA_ERRMEM, which the stock resume hands back to the
 * caller as (false, "not enough memory"), like any error: a rule could then carry on past a memory
 * breach. Turn it into the sticky kill, as pcall does. */
static void kill_if_out_of_memory(lua_State *L, lua_State *co) {
    if (co != NULL && lua_status(co) == LUA_ERRMEM) rs_mark_killed(L, RS_KILL_MEMORY);
}

static int sb_resume(lua_State *L) {
    rs_state *S = rs_state_of(L);
    lua_State *co = lua_tothread(L, 1);
    int n = S->orig.resume(L);
    kill_if_out_of_memory(L, co);
    if (S->killed != RS_KILL_NONE) return rs_raise_kill(L);
    return n;
}

/* coroutine.wrap, rebuilt on the guarded resume (the stock one resumes without the kill check). */
static int sb_wrap_call(lua_State *L) {
    rs_state *S = rs_state_of(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    int n = S->orig.resume(L);
    kill_if_out_of_memory(L, lua_tothread(L, lua_upvalueindex(1)));
    if (S->killed != RS_KILL_NONE) return rs_raise_kill(L);
    int first = lua_gettop(L) - n + 1;
    if (lua_toboolean(L, first)) {
        lua_remove(L, first);
        return n - 1;
    }
    /* An error inside the coroutine: close its pending to-be-closed variables, as the stock wrap does; their
     * __close handlers may replace the error. */
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int status = lua_status(co);
    if (status != LUA_OK && status != LUA_YIELD) {
        status = lua_resetthread(co);
        if (status == LUA_ERRMEM) rs_mark_killed(L, RS_KILL_MEMORY);
        if (S->killed != RS_KILL_NONE) return rs_raise_kill(L);
        lua_pop(L, 1);
        lua_xmove(co, L, 1);
    }
    if (status != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
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

/*
 * An argument error names the function from the calling code when it can ("bad argument #1 to 'gsub'"); when the
 * call gives no name (pcall(string.rep), a call through a local), Lua's auxiliary library looks the function up
 * in the registry's table of loaded modules, two levels deep. That table still held the stock libraries, so the
 * sandbox's functions were named '?'. It now lists what rules actually see: the base environment as _G and each
 * library table, by their (unfrozen) storage, since the lookup walks them with lua_next.
 */
static void publish_library_names(lua_State *L, int base) {
    lua_newtable(L);
    int loaded = lua_gettop(L);
    rs_push_storage(L, base);
    int storage = lua_gettop(L);
    lua_pushvalue(L, storage);
    lua_setfield(L, loaded, LUA_GNAME);
    lua_pushnil(L);
    while (lua_next(L, storage)) {
        if (lua_type(L, -2) == LUA_TSTRING && rs_is_frozen(L, -1)) {
            rs_push_storage(L, -1);
            lua_pushvalue(L, -3);
            lua_insert(L, -2);
            lua_rawset(L, loaded);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
}

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


static const char *const base_names[] = {
    "assert", "error", "ipairs", "select", "tostring", "type", "rawequal", "getmetatable",
    "_VERSION", NULL,
};
static const char *const string_names[] = {"char", "len", NULL};
static const char *const table_names[] = {"pack", NULL};
static const char *const math_names[] = {
    "abs", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger", "min", "mininteger",
    "modf", "pi", "rad", "sin", "sqrt", "tan", "tointeger", "type", "ult", "atan", "asin", "acos", NULL,
};
static const char *const utf8_names[] = {"char", "charpattern", NULL};
static const char *const coroutine_names[] = {"create", "yield", "status", "isyieldable", "running", NULL};

/* The sandbox's own base functions, beside the stock ones copied by name (base_names). */
static const luaL_Reg base_functions[] = {
    {"pcall", sb_pcall},
    {"xpcall", sb_xpcall},
    {"setmetatable", sb_setmetatable},
    {"rawget", sb_rawget},
    {"rawset", sb_rawset},
    {"rawlen", sb_rawlen},
    {"next", sb_next},
    {"pairs", sb_pairs},
    {"tonumber", sb_tonumber},
    {NULL, NULL},
};

/* string: bounded or charged versions of the stock functions, and the budgeted pattern functions. */
static const luaL_Reg string_functions[] = {
    {"rep", sb_rep},
    {"byte", sb_byte},
    {"pack", sb_pack},
    {"upper", sb_upper},
    {"lower", sb_lower},
    {"reverse", sb_reverse},
    {"sub", sb_sub},
    {"format", sb_format},
    {"packsize", sb_packsize},
    {"unpack", sb_sunpack},
    {"find", rs_str_find},
    {"match", rs_str_match},
    {"gmatch", rs_str_gmatch},
    {"gsub", rs_str_gsub},
    {NULL, NULL},
};

/* table: each charged for the range it walks. */
static const luaL_Reg table_functions[] = {
    {"concat", sb_concat},
    {"insert", sb_insert},
    {"remove", sb_remove},
    {"move", sb_move},
    {"sort", sb_sort},
    {"unpack", sb_unpack},
    {NULL, NULL},
};

/* utf8: charged for the bytes each decodes. */
static const luaL_Reg utf8_functions[] = {
    {"len", sb_utf8_len},
    {"offset", sb_utf8_offset},
    {"codepoint", sb_utf8_codepoint},
    {"codes", sb_utf8_codes},
    {NULL, NULL},
};

/* coroutine: resume and wrap re-raise a kill (close is left out: Lua 5.4.4 crashes on some chains of it). */
static const luaL_Reg coroutine_functions[] = {
    {"resume", sb_resume},
    {"wrap", sb_wrap},
    {NULL, NULL},
};

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
    S->orig.tonumber = field_cfunction(L, g, "tonumber");
    S->orig.upper = field_cfunction(L, str, "upper");
    S->orig.lower = field_cfunction(L, str, "lower");
    S->orig.reverse = field_cfunction(L, str, "reverse");
    S->orig.sub = field_cfunction(L, str, "sub");
    S->orig.format = field_cfunction(L, str, "format");
    S->orig.packsize = field_cfunction(L, str, "packsize");
    S->orig.sunpack = field_cfunction(L, str, "unpack");
    S->orig.utf8_len = field_cfunction(L, utf8, "len");
    S->orig.utf8_offset = field_cfunction(L, utf8, "offset");
    S->orig.utf8_codepoint = field_cfunction(L, utf8, "codepoint");
    S->orig.utf8_codes = field_cfunction(L, utf8, "codes");
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
    luaL_setfuncs(L, base_functions, 0);

    lua_newtable(L);
    int sstr = lua_gettop(L);
    copy_fields(L, str, sstr, string_names);
    luaL_setfuncs(L, string_functions, 0);

    lua_newtable(L);
    int stab = lua_gettop(L);
    copy_fields(L, tab, stab, table_names);
    luaL_setfuncs(L, table_functions, 0);

    lua_newtable(L);
    int smath = lua_gettop(L);
    copy_fields(L, math, smath, math_names);

    lua_newtable(L);
    int sutf8 = lua_gettop(L);
    copy_fields(L, utf8, sutf8, utf8_names);
    luaL_setfuncs(L, utf8_functions, 0);

    lua_newtable(L);
    int sco = lua_gettop(L);
    copy_fields(L, co, sco, coroutine_names);
    luaL_setfuncs(L, coroutine_functions, 0);

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
    publish_library_names(L, base);
    /* The real globals table (holding load, dofile, require, print, ...) is dropped: nothing the
     * sandbox hands to rules refers to it. */
    lua_newtable(L);
    lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_settop(L, g - 1);
    return 0;
}
