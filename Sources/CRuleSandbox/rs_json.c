/*
 * rs_json.c - JSON at the Lua boundary.
 *
 * Contexts and requests arrive as JSON text and become read-only Lua tables
 * directly (no intermediate Swift values: this is on every request's path).
 * Variant and config values declared in Lua become canonical JSON text once,
 * at load time, so answers can copy them verbatim.
 */
#include "rs_state.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON text -> read-only Lua tables --------------------------------------------------- */

typedef struct jp {
    lua_State *L;
    const unsigned char *s, *p, *end;
    uint32_t max_depth;
    uint32_t max_values;
    uint32_t values_left;
} jp;

static int jp_fail(jp *j, const char *what) {
    return luaL_error(j->L, "invalid JSON at byte %d: %s", (int)(j->p - j->s), what);
}

static void jp_ws(jp *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static unsigned jp_hex4(jp *j) {
    if (j->end - j->p < 4) jp_fail(j, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->p[i]);
        if (h < 0) jp_fail(j, "invalid \\u escape");
        v = (v << 4) | (unsigned)h;
    }
    j->p += 4;
    return v;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
    char u[4];
    int n;
    if (cp < 0x80) u[0] = (char)cp, n = 1;
    else if (cp < 0x800) u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000)
        u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[2] = (char)(0x80 | (cp & 0x3F)),
        n = 3;
    else
        u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F)),
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    luaL_addlstring(b, u, (size_t)n);
}

/* Validates one UTF-8 sequence at p; returns its length or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    size_t n;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF) n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, min = 0x10000;
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    unsigned cp = c & (0x7F >> n);
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

/* Pushes the string starting after the opening quote. */
static void jp_string(jp *j) {
    const unsigned char *start = j->p;
    /* Fast path: no escapes, so the bytes can be pushed as they are. */
    while (j->p < j->end) {
        unsigned char c = *j->p;
        if (c == '"') {
            lua_pushlstring(j->L, (const char *)start, (size_t)(j->p - start));
            j->p++;
            return;
        }
        if (c == '\\') break;
        if (c < 0x20) jp_fail(j, "control character in string");
        if (c < 0x80) j->p++;
        else {
            size_t n = utf8_len(j->p, j->end);
            if (n == 0) jp_fail(j, "invalid UTF-8 in string");
            j->p += n;
        }
    }
    if (j->p >= j->end) jp_fail(j, "unterminated string");
    luaL_Buffer b;
    luaL_buffinit(j->L, &b);
    luaL_addlstring(&b, (const char *)start, (size_t)(j->p - start));
    while (j->p < j->end) {
        unsigned char c = *j->p;
        if (c == '"') {
            j->p++;
            luaL_pushresult(&b);
            return;
        }
        if (c == '\\') {
            if (j->end - j->p < 2) break;
            unsigned char e = j->p[1];
            j->p += 2;
            switch (e) {
            case '"': luaL_addchar(&b, '"'); break;
            case '\\': luaL_addchar(&b, '\\'); break;
            case '/': luaL_addchar(&b, '/'); break;
            case 'b': luaL_addchar(&b, '\b'); break;
            case 'f': luaL_addchar(&b, '\f'); break;
            case 'n': luaL_addchar(&b, '\n'); break;
            case 'r': luaL_addchar(&b, '\r'); break;
            case 't': luaL_addchar(&b, '\t'); break;
            case 'u': {
                unsigned cp = jp_hex4(j);
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u') jp_fail(j, "lone surrogate escape");
                    j->p += 2;
                    unsigned lo = jp_hex4(j);
                    if (lo < 0xDC00 || lo > 0xDFFF) jp_fail(j, "lone surrogate escape");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    jp_fail(j, "lone surrogate escape");
                }
                add_utf8(&b, cp);
                break;
            }
            default: j->p -= 2; jp_fail(j, "invalid escape");
            }
            continue;
        }
        if (c < 0x20) jp_fail(j, "control character in string");
        if (c < 0x80) {
            luaL_addchar(&b, (char)c);
            j->p++;
        } else {
            size_t n = utf8_len(j->p, j->end);
            if (n == 0) jp_fail(j, "invalid UTF-8 in string");
            luaL_addlstring(&b, (const char *)j->p, n);
            j->p += n;
        }
    }
    jp_fail(j, "unterminated string");
}

static void jp_number(jp *j) {
    const unsigned char *start = j->p;
    bool integer = true;
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p >= j->end) jp_fail(j, "truncated number");
    if (*j->p == '0') j->p++;
    else if (*j->p >= '1' && *j->p <= '9')
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    else jp_fail(j, "invalid number");
    if (j->p < j->end && *j->p == '.') {
        integer = false;
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') jp_fail(j, "invalid number");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        integer = false;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') jp_fail(j, "invalid number");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    char buf[64];
    size_t len = (size_t)(j->p - start);
    if (len >= sizeof buf) {
        /* Long literals: only the float path can hold them; copy through a Lua string. */
        lua_pushlstring(j->L, (const char *)start, len);
        double d = strtod(lua_tostring(j->L, -1), NULL);
        lua_pop(j->L, 1);
        if (!isfinite(d)) jp_fail(j, "number out of range");
        lua_pushnumber(j->L, d);
        return;
    }
    memcpy(buf, start, len);
    buf[len] = 0;
    if (integer) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == 0) {
            lua_pushinteger(j->L, (lua_Integer)v);
            return;
        }
    }
    double d = strtod(buf, NULL);
    if (!isfinite(d)) jp_fail(j, "number out of range");
    lua_pushnumber(j->L, d);
}

static bool jp_literal(jp *j, const char *lit, size_t n) {
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return false;
    j->p += n;
    return true;
}

/* Pushes one value; JSON null pushes nil. */
static void jp_value(jp *j, uint32_t depth) {
    jp_ws(j);
    if (j->p >= j->end) jp_fail(j, "unexpected end of input");
    /* The object itself is not one of its values: a context of exactly max_values members is accepted. */
    if (depth > 0 && j->values_left-- == 0)
        luaL_error(j->L, "more than %I values (at byte %d)", (lua_Integer)j->max_values, (int)(j->p - j->s));
    unsigned char c = *j->p;
    if (c == '{' || c == '[') {
        /* The object is level 1, so a container at depth max_depth is one level too deep. */
        if (depth >= j->max_depth)
            luaL_error(j->L, "nested deeper than %I levels (at byte %d)", (lua_Integer)j->max_depth,
                       (int)(j->p - j->s));
        luaL_checkstack(j->L, 8, "JSON nesting");
        j->p++;
        bool object = c == '{';
        lua_createtable(j->L, object ? 0 : 4, object ? 4 : 0);
        int t = lua_gettop(j->L);
        jp_ws(j);
        if (j->p < j->end && *j->p == (object ? '}' : ']')) {
            j->p++;
            if (depth == 0) rs_make_readonly_context(j->L); else rs_make_readonly(j->L);
            return;
        }
        lua_Integer index = 0;
        for (;;) {
            if (object) {
                jp_ws(j);
                if (j->p >= j->end || *j->p != '"') jp_fail(j, "expected a string key");
                j->p++;
                jp_string(j);
                lua_pushvalue(j->L, -1);
                lua_rawget(j->L, t);
                if (!lua_isnil(j->L, -1)) jp_fail(j, "duplicate key");
                lua_pop(j->L, 1);
                jp_ws(j);
                if (j->p >= j->end || *j->p != ':') jp_fail(j, "expected ':'");
                j->p++;
                jp_value(j, depth + 1);
                if (lua_isnil(j->L, -1)) lua_pop(j->L, 2); /* null: the key is absent */
                else lua_rawset(j->L, t);
            } else {
                jp_value(j, depth + 1);
                lua_rawseti(j->L, t, ++index);
            }
            jp_ws(j);
            if (j->p >= j->end) jp_fail(j, "unexpected end of input");
            if (*j->p == ',') {
                j->p++;
                continue;
            }
            if (*j->p == (object ? '}' : ']')) {
                j->p++;
                break;
            }
            jp_fail(j, object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
        if (depth == 0) rs_make_readonly_context(j->L); else rs_make_readonly(j->L);
        return;
    }
    if (c == '"') {
        j->p++;
        jp_string(j);
        return;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        jp_number(j);
        return;
    }
    if (jp_literal(j, "true", 4)) lua_pushboolean(j->L, 1);
    else if (jp_literal(j, "false", 5)) lua_pushboolean(j->L, 0);
    else if (jp_literal(j, "null", 4)) lua_pushnil(j->L);
    else jp_fail(j, "unexpected character");
}

void rs_push_json_object(lua_State *L, const char *json, size_t len, uint32_t max_depth, uint32_t max_values) {
    jp j = {L, (const unsigned char *)json, (const unsigned char *)json, (const unsigned char *)json + len, max_depth,
            max_values, max_values};
    jp_ws(&j);
    if (j.p >= j.end) {
        /* An absent context is an empty one. */
        lua_createtable(L, 0, 0);
        rs_make_readonly_context(L);
        return;
    }
    if (*j.p != '{') jp_fail(&j, "expected an object");
    jp_value(&j, 0);
    jp_ws(&j);
    if (j.p != j.end) jp_fail(&j, "trailing data after the object");
}

/* ---- Lua values -> canonical JSON text --------------------------------------------------- */

#define JSON_MAX_DEPTH 64

/* Output goes to a userdata kept at a fixed stack slot (not a luaL_Buffer, which forbids the
 * unbalanced stack use a recursive walk needs; not malloc, which a memory error would leak). */
typedef struct jw {
    lua_State *L;
    int visiting; /* stack index of the set of tables on the current path (cycle detection) */
    int slot;     /* stack index of the output userdata */
    char *data;
    size_t len, cap;
    char error[200];
} jw;

static void jw_add(jw *w, const char *s, size_t n) {
    if (w->len + n > w->cap) {
        size_t cap = w->cap * 2 > w->len + n + 64 ? w->cap * 2 : w->len + n + 64;
        char *grown = lua_newuserdatauv(w->L, cap, 0);
        if (w->len) memcpy(grown, w->data, w->len);
        lua_replace(w->L, w->slot);
        w->data = grown;
        w->cap = cap;
    }
    memcpy(w->data + w->len, s, n);
    w->len += n;
}

#define JW_CHAR(w, c)                                                                                                  \
    do {                                                                                                               \
        char ch_ = (char)(c);                                                                                          \
        jw_add((w), &ch_, 1);                                                                                          \
    } while (0)
#define JW_STR(w, s) jw_add((w), (s), strlen(s))

static void jw_string(jw *w, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    JW_CHAR(w, '"');
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            JW_CHAR(w, '\\');
            JW_CHAR(w, (char)c);
            p++;
        } else if (c < 0x20) {
            JW_CHAR(w, '\\');
            switch (c) {
            case '\n': JW_CHAR(w, 'n'); break;
            case '\r': JW_CHAR(w, 'r'); break;
            case '\t': JW_CHAR(w, 't'); break;
            case '\b': JW_CHAR(w, 'b'); break;
            case '\f': JW_CHAR(w, 'f'); break;
            default:
                JW_STR(w, "u00");
                JW_CHAR(w, hex[c >> 4]);
                JW_CHAR(w, hex[c & 15]);
            }
            p++;
        } else if (c < 0x80) {
            JW_CHAR(w, (char)c);
            p++;
        } else {
            size_t n = utf8_len(p, end);
            /* U+2028/2029 are valid JSON but break JavaScript consumers that eval lines. */
            if (n == 3 && p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9))
                JW_STR(w, p[2] == 0xA8 ? "\\u2028" : "\\u2029");
            else jw_add(w, (const char *)p, n);
            p += n;
        }
    }
    JW_CHAR(w, '"');
}

static bool valid_utf8(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        size_t n = utf8_len(p, end);
        if (n == 0) return false;
        p += n;
    }
    return true;
}

static void jw_number(jw *w, int idx) {
    char buf[64];
    if (lua_isinteger(w->L, idx)) {
        snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(w->L, idx));
    } else {
        double d = lua_tonumber(w->L, idx);
        /* Shortest text that reads back as the same double; keep a '.' or exponent so that the
         * value stays a float for typed clients. */
        for (int precision = 15; precision <= 17; precision++) {
            snprintf(buf, sizeof buf, "%.*g", precision, d);
            if (strtod(buf, NULL) == d) break;
        }
        if (!strpbrk(buf, ".eEn")) strcat(buf, ".0");
    }
    JW_STR(w, buf);
}

typedef struct key_ref {
    const char *s;
    size_t len;
} key_ref;

static int key_cmp(const void *a, const void *b) {
    const key_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    return x->len < y->len ? -1 : (x->len > y->len);
}

static bool jw_value(jw *w, int idx, int depth);

static bool jw_table(jw *w, int idx, int depth) {
    lua_State *L = w->L;
    if (depth >= JSON_MAX_DEPTH) {
        snprintf(w->error, sizeof w->error, "nested deeper than %d levels", JSON_MAX_DEPTH);
        return false;
    }
    lua_pushvalue(L, idx);
    lua_rawget(L, w->visiting);
    bool cycle = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (cycle) {
        snprintf(w->error, sizeof w->error, "contains a cycle (a table that contains itself)");
        return false;
    }
    luaL_checkstack(L, 10, "JSON nesting");
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, w->visiting);
    int t = idx;
    if (rs_is_frozen(L, idx)) {
        rs_push_storage(L, idx);
        t = lua_gettop(L);
    } else {
        lua_pushvalue(L, idx);
    }
    /* Classify: a sequence 1..n is an array, string keys make an object, an empty table is an
     * object. Anything else cannot become JSON. */
    size_t count = 0, strings = 0;
    lua_Integer max_index = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        count++;
        if (lua_type(L, -2) == LUA_TSTRING) strings++;
        else if (lua_isinteger(L, -2) && lua_tointeger(L, -2) > 0) {
            lua_Integer k = lua_tointeger(L, -2);
            if (k > max_index) max_index = k;
        } else {
            /* The key's type is read before popping it: after the pop, -1 is the table itself, and the
             * message would name the wrong type. */
            snprintf(w->error, sizeof w->error, "has a key of type %s; JSON objects need string keys",
                     luaL_typename(L, -2));
            lua_pop(L, 2);
            return false;
        }
        lua_pop(L, 1);
    }
    bool ok = true;
    if (strings == 0 && count > 0) {
        if ((size_t)max_index != count) {
            snprintf(w->error, sizeof w->error, "is an array with holes");
            return false;
        }
        JW_CHAR(w, '[');
        for (lua_Integer i = 1; ok && i <= max_index; i++) {
            if (i > 1) JW_CHAR(w, ',');
            lua_rawgeti(L, t, i);
            ok = jw_value(w, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        if (ok) JW_CHAR(w, ']');
    } else {
        if (strings != count) {
            snprintf(w->error, sizeof w->error, "mixes array and object keys");
            return false;
        }
        key_ref *keys = lua_newuserdatauv(L, (count ? count : 1) * sizeof *keys, 0);
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, t)) {
            keys[n].s = lua_tolstring(L, -2, &keys[n].len);
            n++;
            lua_pop(L, 1);
        }
        qsort(keys, n, sizeof *keys, key_cmp);
        JW_CHAR(w, '{');
        for (size_t i = 0; ok && i < n; i++) {
            if (!valid_utf8(keys[i].s, keys[i].len)) {
                snprintf(w->error, sizeof w->error, "has a key that is not valid UTF-8");
                ok = false;
                break;
            }
            if (i > 0) JW_CHAR(w, ',');
            jw_string(w, keys[i].s, keys[i].len);
            JW_CHAR(w, ':');
            lua_pushlstring(L, keys[i].s, keys[i].len);
            lua_rawget(L, t);
            ok = jw_value(w, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        if (ok) JW_CHAR(w, '}');
        lua_pop(L, 1); /* keys */
    }
    lua_pop(L, 1); /* t */
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, w->visiting);
    return ok;
}

static bool jw_value(jw *w, int idx, int depth) {
    lua_State *L = w->L;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN: JW_STR(w, lua_toboolean(L, idx) ? "true" : "false"); return true;
    case LUA_TNUMBER:
        if (!lua_isinteger(L, idx) && !isfinite(lua_tonumber(L, idx))) {
            snprintf(w->error, sizeof w->error, "is NaN or infinite, which JSON cannot hold");
            return false;
        }
        jw_number(w, idx);
        return true;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (!valid_utf8(s, len)) {
            snprintf(w->error, sizeof w->error, "is a string that is not valid UTF-8");
            return false;
        }
        jw_string(w, s, len);
        return true;
    }
    case LUA_TTABLE: return jw_table(w, idx, depth);
    default:
        snprintf(w->error, sizeof w->error, "is a %s, which cannot become JSON", luaL_typename(L, idx));
        return false;
    }
}

bool rs_to_json(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    jw w;
    w.L = L;
    lua_newtable(L);
    w.visiting = lua_gettop(L);
    w.data = lua_newuserdatauv(L, 256, 0);
    w.slot = lua_gettop(L);
    w.len = 0;
    w.cap = 256;
    w.error[0] = 0;
    bool ok = jw_value(&w, idx, 0);
    /* A walk that fails returns from any depth without popping the tables it was visiting; drop them
     * here, so that a rule set with many bad values does not grow the loader's stack each time. */
    lua_settop(L, w.slot);
    if (ok) lua_pushlstring(L, w.data, w.len);
    lua_remove(L, w.slot);
    lua_remove(L, w.visiting);
    if (!ok) {
        lua_pushnil(L);
        lua_pushstring(L, w.error);
    }
    return ok;
}
