/*
 * rs_trace.c - recording what one evaluation did, for `explain`.
 *
 * Nothing here runs on the normal path: the line hook is part of the hook mask only while a trace is
 * being recorded (rs_trace_mask), helpers record only when rs_tracing() says so, and the context's field
 * reads are seen through an __index closure installed on that one request's context only. The next
 * evaluation re-arms the plain count hook and builds a fresh context, so an explain leaves nothing behind.
 *
 * The trace is a flat list of records in execution order, each with a nesting depth (a prerequisite's
 * own steps and a route's match lines sit one level below the record that introduced them). Loops fold:
 * a jump back to a line already recorded in the same function raises that record's count, and the records
 * after it count up as the next iterations repeat them.
 */
#include "rs_state.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How far back a loop head is searched for. */
#define RS_TRACE_LOOP_WINDOW 64
/* Longest rendered argument or result, and longest detail text. */
#define RS_TRACE_STRING_BYTES 200
#define RS_TRACE_DETAIL_BYTES 2048
/* Table arguments are rendered this deep and this wide. */
#define RS_TRACE_TABLE_DEPTH 3
#define RS_TRACE_TABLE_ITEMS 16

struct rs_trace {
    rs_trace_entry *entries;
    size_t count, cap;
    rs_trace_entry *fields;
    size_t field_count, field_cap;
    size_t max_entries;
    bool truncated;
    bool on;
    int32_t depth;
    /* While a loop repeats: the record the last step matched, else -1. */
    ptrdiff_t cursor;
    /* The record of the last loop head found, else -1: a loop whose body records differing calls on every
     * iteration keeps finding its head here, however far back the head has moved. */
    ptrdiff_t head;
    /* The last line event: a later line at or before it in the same function is a jump back (a loop). */
    const char *last_file;
    int32_t last_line, last_function, last_depth;
};

static void free_entry(rs_trace_entry *e) {
    free((char *)e->file);
    free((char *)e->name);
    free((char *)e->detail);
}

static void trace_reset(rs_trace *T) {
    for (size_t i = 0; i < T->count; i++) free_entry(&T->entries[i]);
    for (size_t i = 0; i < T->field_count; i++) free_entry(&T->fields[i]);
    T->count = 0;
    T->field_count = 0;
    T->truncated = false;
    T->depth = 0;
    T->cursor = -1;
    T->head = -1;
    T->last_file = NULL;
    T->last_line = 0;
    T->last_function = -1;
    T->last_depth = -1;
}

void rs_trace_start(rs_state *S, size_t max_entries) {
    if (S->trace == NULL) {
        S->trace = calloc(1, sizeof *S->trace);
        if (S->trace == NULL) abort();
    }
    trace_reset(S->trace);
    S->trace->max_entries = max_entries ? max_entries : 1000;
    S->trace->on = true;
}

void rs_trace_stop(rs_state *S) {
    if (S->trace) S->trace->on = false;
    /* Back to the plain count hook at once, whatever the evaluation did. */
    int count = lua_gethookcount(S->L);
    lua_sethook(S->L, lua_gethook(S->L), LUA_MASKCOUNT, count > 0 ? count : RS_HOOK_INTERVAL);
}

void rs_trace_free(rs_state *S) {
    if (S->trace == NULL) return;
    trace_reset(S->trace);
    free(S->trace->entries);
    free(S->trace->fields);
    free(S->trace);
    S->trace = NULL;
}

int rs_trace_mask(const rs_state *S) { return S->trace && S->trace->on ? LUA_MASKLINE : 0; }

rs_trace *rs_tracing(lua_State *L) {
    rs_state *S = rs_state_of(L);
    return S->trace && S->trace->on && S->phase == RS_PHASE_EVAL ? S->trace : NULL;
}

/* ---- records ------------------------------------------------------------------------------ */

static bool same_text(const char *a, const char *b) {
    if (a == NULL || b == NULL) return a == b;
    return strcmp(a, b) == 0;
}

static bool same_step(const rs_trace_entry *a, const rs_trace_entry *b) {
    return a->kind == b->kind && a->depth == b->depth && a->line == b->line && same_text(a->file, b->file) &&
           same_text(a->name, b->name) && same_text(a->detail, b->detail);
}

static bool room_for_one(rs_trace *T) {
    if (T->count + T->field_count < T->max_entries) return true;
    T->truncated = true;
    return false;
}

static rs_trace_entry *append(rs_trace *T, rs_trace_entry *e) {
    if (!room_for_one(T)) {
        free_entry(e);
        return NULL;
    }
    if (T->count == T->cap) {
        size_t cap = T->cap ? T->cap * 2 : 32;
        rs_trace_entry *grown = realloc(T->entries, cap * sizeof *grown);
        if (grown == NULL) abort();
        T->entries = grown;
        T->cap = cap;
    }
    e->count = 1;
    T->entries[T->count] = *e;
    return &T->entries[T->count++];
}

/* A record that may repeat a loop iteration recorded before: counted there instead of listed again. */
static void add_step(rs_trace *T, rs_trace_entry *e, bool jumped_back) {
    if (T->cursor >= 0) {
        size_t next = (size_t)T->cursor + 1;
        if (next < T->count && same_step(&T->entries[next], e)) {
            T->entries[next].count++;
            T->cursor = (ptrdiff_t)next;
            free_entry(e);
            return;
        }
        T->cursor = -1;
    }
    if (jumped_back && T->head >= 0 && (size_t)T->head < T->count && same_step(&T->entries[T->head], e)) {
        T->entries[T->head].count++;
        T->cursor = T->head;
        free_entry(e);
        return;
    }
    if (jumped_back) {
        size_t stop = T->count > RS_TRACE_LOOP_WINDOW ? T->count - RS_TRACE_LOOP_WINDOW : 0;
        for (size_t k = T->count; k-- > stop;) {
            if (T->entries[k].depth < e->depth) break;
            if (same_step(&T->entries[k], e)) {
                T->entries[k].count++;
                T->cursor = (ptrdiff_t)k;
                T->head = (ptrdiff_t)k;
                free_entry(e);
                return;
            }
        }
    }
    append(T, e);
}

void rs_trace_line(lua_State *L, lua_Debug *ar) {
    rs_trace *T = rs_tracing(L);
    if (T == NULL || !lua_getinfo(L, "S", ar) || ar->source[0] != '@' || ar->currentline <= 0) return;
    const char *file = ar->source + 1;
    bool jumped_back = T->last_file != NULL && T->last_depth == T->depth && T->last_function == ar->linedefined &&
                       strcmp(T->last_file, file) == 0 && ar->currentline <= T->last_line;
    /* The source string belongs to a function the rule set keeps alive for the state's whole life. */
    T->last_file = file;
    T->last_line = ar->currentline;
    T->last_function = ar->linedefined;
    T->last_depth = T->depth;
    rs_trace_entry e = {RS_TRACE_LINE, T->depth, 1, ar->currentline, rs_strdup(file), NULL, NULL};
    add_step(T, &e, jumped_back);
}

/* The rule-file line that called the running C function, if any. */
static void caller_location(lua_State *L, const char **file, int32_t *line) {
    lua_Debug ar;
    *file = NULL;
    *line = 0;
    for (int level = 1; level < 4 && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar)) continue;
        if (ar.source[0] == '@' && ar.currentline > 0) {
            *file = ar.source + 1;
            *line = ar.currentline;
            return;
        }
    }
}

/* ---- rendering values as JSON ------------------------------------------------------------- */

typedef struct out {
    char *p;
    size_t len, cap;
    bool full;
} out;

static void put(out *o, const char *s, size_t n) {
    if (o->full || o->len + n + 1 > o->cap) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = 0;
}

static void puts_(out *o, const char *s) { put(o, s, strlen(s)); }

static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF) len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, min = 0x10000;
    else return 0;
    if (n < len) return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* A JSON string of at most RS_TRACE_STRING_BYTES input bytes ("..." marks a cut); bad UTF-8 becomes U+FFFD. */
static void put_string(out *o, const char *s, size_t n) {
    put(o, "\"", 1);
    bool cut = n > RS_TRACE_STRING_BYTES;
    if (cut) n = RS_TRACE_STRING_BYTES;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(o, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            puts_(o, esc);
            i++;
        } else if (c < 0x80) {
            put(o, (const char *)u + i, 1);
            i++;
        } else {
            size_t len = utf8_seq(u + i, n - i);
            if (len == 0) {
                puts_(o, "\\ufffd");
                i++;
            } else {
                put(o, (const char *)u + i, len);
                i += len;
            }
        }
    }
    if (cut) puts_(o, "...");
    put(o, "\"", 1);
}

static void put_integer(out *o, long long v) {
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    puts_(o, b);
}

static void put_value(lua_State *L, out *o, int idx, int depth);

/* Tables are read raw (through a read-only view's storage), so rendering never runs rule code. */
static void put_table(lua_State *L, out *o, int idx, int depth) {
    if (depth >= RS_TRACE_TABLE_DEPTH || !lua_checkstack(L, 4)) {
        put_string(o, "<table>", 7);
        return;
    }
    idx = lua_absindex(L, idx);
    if (rs_is_frozen(L, idx)) rs_push_storage(L, idx);
    else lua_pushvalue(L, idx);
    int t = lua_gettop(L);
    lua_Unsigned n = lua_rawlen(L, t);
    if (n > 0) {
        put(o, "[", 1);
        for (lua_Unsigned i = 1; i <= n && i <= RS_TRACE_TABLE_ITEMS; i++) {
            if (i > 1) put(o, ",", 1);
            lua_rawgeti(L, t, (lua_Integer)i);
            put_value(L, o, -1, depth + 1);
            lua_pop(L, 1);
        }
        if (n > RS_TRACE_TABLE_ITEMS) puts_(o, ",\"...\"");
        put(o, "]", 1);
    } else {
        put(o, "{", 1);
        int items = 0;
        lua_pushnil(L);
        while (lua_next(L, t)) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                if (items == RS_TRACE_TABLE_ITEMS) {
                    lua_pop(L, 2);
                    puts_(o, ",\"...\":\"...\"");
                    break;
                }
                if (items++ > 0) put(o, ",", 1);
                size_t kl;
                const char *k = lua_tolstring(L, -2, &kl);
                put_string(o, k, kl);
                put(o, ":", 1);
                put_value(L, o, -1, depth + 1);
            }
            lua_pop(L, 1);
        }
        put(o, "}", 1);
    }
    lua_settop(L, t - 1);
}

static void put_value(lua_State *L, out *o, int idx, int depth) {
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TNONE: puts_(o, "null"); break;
    case LUA_TBOOLEAN: puts_(o, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            put_integer(o, (long long)lua_tointeger(L, idx));
        } else {
            lua_Number d = lua_tonumber(L, idx);
            char b[40];
            if (isfinite(d)) {
                snprintf(b, sizeof b, "%.17g", (double)d);
                puts_(o, b);
            } else {
                put_string(o, isnan(d) ? "nan" : d > 0 ? "inf" : "-inf", isnan(d) ? 3 : d > 0 ? 3 : 4);
            }
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_string(o, s, n);
        break;
    }
    case LUA_TTABLE: put_table(L, o, idx, depth); break;
    default: {
        char b[40];
        snprintf(b, sizeof b, "<%s>", luaL_typename(L, idx));
        put_string(o, b, strlen(b));
    }
    }
}

/* ---- helper calls, prerequisites, routes -------------------------------------------------- */

void rs_trace_call(lua_State *L, const char *name, int nargs, int result, const char *extra) {
    rs_trace *T = rs_tracing(L);
    if (T == NULL) return;
    char buf[RS_TRACE_DETAIL_BYTES];
    out o = {buf, 0, sizeof buf, false};
    buf[0] = 0;
    result = lua_absindex(L, result);
    puts_(&o, "{\"args\":[");
    for (int i = 1; i <= nargs; i++) {
        if (i > 1) put(&o, ",", 1);
        put_value(L, &o, i, 0);
    }
    puts_(&o, "],\"result\":");
    put_value(L, &o, result, 0);
    if (extra && extra[0]) {
        put(&o, ",", 1);
        puts_(&o, extra);
    }
    put(&o, "}", 1);
    if (o.full) snprintf(buf, sizeof buf, "{\"args\":[\"<too long to show>\"],\"result\":null}");
    const char *file;
    int32_t line;
    caller_location(L, &file, &line);
    rs_trace_entry e = {RS_TRACE_CALL, T->depth, 1, line, file ? rs_strdup(file) : NULL, rs_strdup(name),
                        rs_strdup(buf)};
    add_step(T, &e, false);
}

ptrdiff_t rs_trace_open(lua_State *L, int kind, const char *name, const char *file, int32_t line) {
    rs_trace *T = rs_tracing(L);
    if (T == NULL) return -1;
    T->cursor = -1;
    T->head = -1;
    T->last_file = NULL;
    if (kind == RS_TRACE_FLAG) caller_location(L, &file, &line);
    rs_trace_entry e = {kind, T->depth, 1, line, file ? rs_strdup(file) : NULL, rs_strdup(name), NULL};
    rs_trace_entry *added = append(T, &e);
    T->depth++;
    return added ? (ptrdiff_t)(added - T->entries) : -1;
}

void rs_trace_close(lua_State *L, ptrdiff_t opened, const char *detail) {
    rs_trace *T = rs_tracing(L);
    if (T == NULL) return;
    if (T->depth > 0) T->depth--;
    T->cursor = -1;
    T->head = -1;
    T->last_file = NULL;
    if (opened >= 0 && (size_t)opened < T->count) {
        free((char *)T->entries[opened].detail);
        T->entries[opened].detail = rs_strdup(detail);
    }
}

void rs_trace_close_outcome(lua_State *L, ptrdiff_t opened, const char *variant, const char *reason) {
    char buf[512];
    out o = {buf, 0, sizeof buf, false};
    buf[0] = 0;
    puts_(&o, "{\"variant\":");
    if (variant != NULL)
        put_string(&o, variant, strlen(variant));
    else
        puts_(&o, "null"); /* a flag without a default variant that no rule decided */
    puts_(&o, ",\"reason\":\"");
    puts_(&o, reason);
    puts_(&o, "\"}");
    rs_trace_close(L, opened, buf);
}

/* ---- context field reads ------------------------------------------------------------------- */

static void record_field(lua_State *L, rs_trace *T, const char *path, int value) {
    for (size_t i = 0; i < T->field_count; i++) {
        if (strcmp(T->fields[i].name, path) == 0) {
            T->fields[i].count++;
            return;
        }
    }
    if (!room_for_one(T)) return;
    if (T->field_count == T->field_cap) {
        size_t cap = T->field_cap ? T->field_cap * 2 : 16;
        rs_trace_entry *grown = realloc(T->fields, cap * sizeof *grown);
        if (grown == NULL) abort();
        T->fields = grown;
        T->field_cap = cap;
    }
    char buf[RS_TRACE_DETAIL_BYTES];
    out o = {buf, 0, sizeof buf, false};
    buf[0] = 0;
    if (lua_isnil(L, value)) {
        puts_(&o, "{\"present\":false}");
    } else {
        puts_(&o, "{\"present\":true,\"value\":");
        put_value(L, &o, value, 1);
        put(&o, "}", 1);
        if (o.full) snprintf(buf, sizeof buf, "{\"present\":true}");
    }
    const char *file;
    int32_t line;
    caller_location(L, &file, &line);
    rs_trace_entry e = {RS_TRACE_FIELD, 0, 1, line, file ? rs_strdup(file) : NULL, rs_strdup(path), rs_strdup(buf)};
    T->fields[T->field_count++] = e;
}

/* __index of a traced context table. Upvalues: the storage, the table's path ("" at the top). */
static int traced_index(lua_State *L) {
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    rs_trace *T = rs_tracing(L);
    int kt = lua_type(L, 2);
    if (T != NULL && (kt == LUA_TSTRING || kt == LUA_TNUMBER)) {
        size_t plen, klen;
        const char *prefix = lua_tolstring(L, lua_upvalueindex(2), &plen);
        lua_pushvalue(L, 2);
        const char *key = lua_tolstring(L, -1, &klen);
        char path[RS_TRACE_STRING_BYTES + 8];
        if (kt == LUA_TNUMBER) snprintf(path, sizeof path, "%s[%s]", prefix, key);
        else if (plen == 0) snprintf(path, sizeof path, "%s", key);
        else snprintf(path, sizeof path, "%s.%s", prefix, key);
        lua_pop(L, 1);
        record_field(L, T, path, 3);
    }
    return 1;
}

/* Points the read-only view at idx (and every view inside it) at traced_index. */
static void trace_view(lua_State *L, int idx, const char *path, int depth) {
    idx = lua_absindex(L, idx);
    if (depth > 64 || !rs_is_frozen(L, idx)) return;
    luaL_checkstack(L, 6, "tracing the context");
    lua_getmetatable(L, idx);
    int meta = lua_gettop(L);
    rs_push_storage(L, idx);
    int storage = lua_gettop(L);
    lua_pushliteral(L, "__index");
    lua_pushvalue(L, storage);
    lua_pushstring(L, path);
    lua_pushcclosure(L, traced_index, 2);
    lua_rawset(L, meta);
    lua_pushnil(L);
    while (lua_next(L, storage)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            char child[RS_TRACE_STRING_BYTES + 8];
            if (lua_type(L, -2) == LUA_TNUMBER) {
                snprintf(child, sizeof child, "%s[%lld]", path, (long long)lua_tointeger(L, -2));
            } else if (lua_type(L, -2) == LUA_TSTRING) {
                if (path[0]) snprintf(child, sizeof child, "%s.%s", path, lua_tostring(L, -2));
                else snprintf(child, sizeof child, "%s", lua_tostring(L, -2));
            } else {
                lua_pop(L, 1);
                continue;
            }
            trace_view(L, -1, child, depth + 1);
        }
        lua_pop(L, 1);
    }
    lua_settop(L, meta - 1);
}

void rs_trace_context(lua_State *L, int idx) {
    rs_state *S = rs_state_of(L);
    if (S->trace == NULL || !S->trace->on) return;
    trace_view(L, idx, "", 0);
}

/* ---- reading the trace back ------------------------------------------------------------------ */

size_t rs_trace_count(const rs_state *S) { return S->trace ? S->trace->count : 0; }

rs_trace_entry rs_trace_at(const rs_state *S, size_t index) {
    rs_trace_entry none = {0, 0, 0, 0, NULL, NULL, NULL};
    if (S->trace == NULL || index >= S->trace->count) return none;
    return S->trace->entries[index];
}

size_t rs_trace_field_count(const rs_state *S) { return S->trace ? S->trace->field_count : 0; }

rs_trace_entry rs_trace_field_at(const rs_state *S, size_t index) {
    rs_trace_entry none = {0, 0, 0, 0, NULL, NULL, NULL};
    if (S->trace == NULL || index >= S->trace->field_count) return none;
    return S->trace->fields[index];
}

int rs_trace_truncated(const rs_state *S) { return S->trace && S->trace->truncated; }

int rs_hook_mask(const rs_state *S) { return lua_gethookmask(S->L); }
