/*
 * rs_data.c - data files: `data "beta-users"` loads beta-users.txt or beta-users.json from the rules
 * directory into an immutable set or map.
 *
 * A data set is plain C memory, built once per rule set (by the first state that loads it) and shared
 * read-only by every worker's state: a list of a million entries would cost each state tens of megabytes
 * and a second of building as a Lua table. Rules see it as a userdata whose metatable is hidden
 * (`__metatable = false`) and has no `__newindex`, so nothing can write to it; its methods only read.
 *
 * Layout: every key (and, for maps, every string value) in one byte arena; an entry array of
 * (offset, length, hash) per key; an open-addressing index of entry numbers with at least twice the
 * slots of entries (linear probing, so a lookup touches one or two cache lines).
 */
#include "rs_state.h"
#include "rule_data.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keys and values are addressed by 32-bit offsets: a data file larger than this is refused. */
#define RS_DATA_MAX_BYTES 0xF0000000u

enum { VALUE_STRING = 0, VALUE_INTEGER, VALUE_FLOAT, VALUE_BOOLEAN };

typedef struct data_entry {
    uint32_t key_off, key_len, hash;
} data_entry;

typedef struct data_value {
    uint32_t type;
    uint32_t len; /* strings */
    union {
        int64_t i;
        double d;
        uint64_t off; /* strings */
    } u;
} data_value;

struct rs_data {
    atomic_long refs;
    int is_map;
    char *arena;
    size_t arena_len, arena_cap;
    data_entry *entries;
    data_value *values; /* maps only, parallel to entries */
    size_t count, cap;
    uint32_t *slots; /* entry index + 1; 0 is empty */
    size_t slot_mask;
};

/* ---- building ---------------------------------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t len) {
    /* FNV-1a: the keys come from the rules directory, not from requests, so no flooding defence is needed. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static rs_data *data_new(int is_map, size_t arena_cap) {
    rs_data *D = calloc(1, sizeof *D);
    if (!D) return NULL;
    atomic_init(&D->refs, 1);
    D->is_map = is_map;
    D->arena = malloc(arena_cap ? arena_cap : 1);
    D->arena_cap = arena_cap ? arena_cap : 1;
    if (!D->arena) {
        free(D);
        return NULL;
    }
    return D;
}

static void data_free(rs_data *D) {
    free(D->arena);
    free(D->entries);
    free(D->values);
    free(D->slots);
    free(D);
}

/* Index of the entry with this key, or -1. */
static long data_find(const rs_data *D, const char *key, size_t len, uint32_t h) {
    if (!D->slots) return -1;
    for (size_t s = h & D->slot_mask;; s = (s + 1) & D->slot_mask) {
        uint32_t e = D->slots[s];
        if (e == 0) return -1;
        const data_entry *x = &D->entries[e - 1];
        if (x->hash == h && x->key_len == len && memcmp(D->arena + x->key_off, key, len) == 0) return (long)e - 1;
    }
}

static bool grow_index(rs_data *D, size_t want) {
    size_t slots = 16;
    while (slots < want * 2) slots <<= 1;
    if (D->slots && slots <= D->slot_mask + 1) return true;
    uint32_t *grown = calloc(slots, sizeof *grown);
    if (!grown) return false;
    free(D->slots);
    D->slots = grown;
    D->slot_mask = slots - 1;
    for (size_t i = 0; i < D->count; i++) {
        size_t s = D->entries[i].hash & D->slot_mask;
        while (D->slots[s]) s = (s + 1) & D->slot_mask;
        D->slots[s] = (uint32_t)i + 1;
    }
    return true;
}

/* Adds a key already in the arena. Returns 1 when added, 0 when already present, -1 when out of memory. */
static int data_add(rs_data *D, uint32_t off, uint32_t len) {
    uint32_t h = hash_bytes(D->arena + off, len);
    if (data_find(D, D->arena + off, len, h) >= 0) return 0;
    if (D->count == D->cap) {
        size_t cap = D->cap ? D->cap * 2 : 1024;
        data_entry *entries = realloc(D->entries, cap * sizeof *entries);
        if (!entries) return -1;
        D->entries = entries;
        if (D->is_map) {
            data_value *values = realloc(D->values, cap * sizeof *values);
            if (!values) return -1;
            D->values = values;
        }
        D->cap = cap;
    }
    if ((D->count + 1) * 2 > D->slot_mask + 1 || !D->slots) {
        if (!grow_index(D, D->count + 1)) return -1;
    }
    D->entries[D->count] = (data_entry){off, len, h};
    size_t s = h & D->slot_mask;
    while (D->slots[s]) s = (s + 1) & D->slot_mask;
    D->slots[s] = (uint32_t)D->count + 1;
    D->count++;
    return 1;
}

/* Gives back the memory the build reserved but did not use. */
static void data_trim(rs_data *D) {
    if (D->arena_len < D->arena_cap) {
        char *a = realloc(D->arena, D->arena_len ? D->arena_len : 1);
        if (a) {
            D->arena = a;
            D->arena_cap = D->arena_len ? D->arena_len : 1;
        }
    }
    if (D->count < D->cap && D->count > 0) {
        data_entry *e = realloc(D->entries, D->count * sizeof *e);
        if (e) D->entries = e;
        if (D->is_map) {
            data_value *v = realloc(D->values, D->count * sizeof *v);
            if (v) D->values = v;
        }
        D->cap = D->count;
    }
    if (!D->slots) grow_index(D, 1);
}

/* Length of the valid UTF-8 sequence at p (at most end - p bytes), 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF) n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, min = 0x10000;
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    unsigned cp = c & (0x3F >> (n - 1));
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

static bool valid_text(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        if (*p < 0x80) {
            if (*p == 0) return false;
            p++;
            continue;
        }
        size_t n = utf8_seq(p, end);
        if (n == 0) return false;
        p += n;
    }
    return true;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

/* A list: the file's bytes become the arena as they are, and entries point into them. */
static rs_data *parse_text(const char *bytes, size_t length, int32_t *line_out, char *error, size_t cap) {
    rs_data *D = data_new(0, length);
    if (!D) {
        snprintf(error, cap, "not enough memory");
        return NULL;
    }
    memcpy(D->arena, bytes, length);
    D->arena_len = length;
    int32_t line = 0;
    size_t pos = 0;
    while (pos < length) {
        line++;
        const char *start = D->arena + pos;
        const char *nl = memchr(start, '\n', length - pos);
        size_t n = nl ? (size_t)(nl - start) : length - pos;
        pos += n + (nl ? 1 : 0);
        size_t a = 0, b = n;
        while (a < b && is_space(start[a])) a++;
        while (b > a && is_space(start[b - 1])) b--;
        if (a == b || start[a] == '#') continue;
        if (!valid_text(start + a, b - a)) {
            *line_out = line;
            snprintf(error, cap, "the entry is not valid UTF-8 text (or holds a NUL byte)");
            data_free(D);
            return NULL;
        }
        if (data_add(D, (uint32_t)(start + a - D->arena), (uint32_t)(b - a)) < 0) {
            *line_out = line;
            snprintf(error, cap, "not enough memory");
            data_free(D);
            return NULL;
        }
    }
    data_trim(D);
    return D;
}

/* ---- JSON -------------------------------------------------------------------------------------- */

typedef struct json_reader {
    const char *p, *end;
    int32_t line;
    rs_data *D;
    char *error;
    size_t cap;
} json_reader;

static bool jfail(json_reader *j, const char *message) {
    snprintf(j->error, j->cap, "%s", message);
    return false;
}

static void jspace(json_reader *j) {
    while (j->p < j->end) {
        char c = *j->p;
        if (c == '\n') j->line++;
        else if (c != ' ' && c != '\t' && c != '\r') return;
        j->p++;
    }
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(json_reader *j, unsigned *out) {
    if (j->end - j->p < 4) return jfail(j, "a \\u escape needs four hex digits");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(j->p[i]);
        if (d < 0) return jfail(j, "a \\u escape needs four hex digits");
        v = v * 16 + (unsigned)d;
    }
    j->p += 4;
    *out = v;
    return true;
}

static void put_utf8(rs_data *D, unsigned cp) {
    char *o = D->arena + D->arena_len;
    if (cp < 0x80) o[0] = (char)cp, D->arena_len += 1;
    else if (cp < 0x800) o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), D->arena_len += 2;
    else if (cp < 0x10000)
        o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F)),
        D->arena_len += 3;
    else
        o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | ((cp >> 12) & 0x3F)),
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F)), D->arena_len += 4;
}

/* Reads a string (the opening quote is next) into the arena. The arena has the file's size: a decoded
 * string is never longer than its JSON spelling. */
static bool read_string(json_reader *j, uint32_t *off, uint32_t *len) {
    rs_data *D = j->D;
    j->p++;
    *off = (uint32_t)D->arena_len;
    for (;;) {
        if (j->p >= j->end) return jfail(j, "unterminated string");
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') {
            j->p++;
            break;
        }
        if (c < 0x20) return jfail(j, "a control character inside a string (escape it)");
        if (c == '\\') {
            if (j->end - j->p < 2) return jfail(j, "unterminated string");
            char e = j->p[1];
            j->p += 2;
            char plain = 0;
            switch (e) {
            case '"': plain = '"'; break;
            case '\\': plain = '\\'; break;
            case '/': plain = '/'; break;
            case 'b': plain = '\b'; break;
            case 'f': plain = '\f'; break;
            case 'n': plain = '\n'; break;
            case 'r': plain = '\r'; break;
            case 't': plain = '\t'; break;
            case 'u': {
                unsigned cp;
                if (!read_hex4(j, &cp)) return false;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                        return jfail(j, "a lone UTF-16 surrogate in a \\u escape");
                    j->p += 2;
                    if (!read_hex4(j, &lo)) return false;
                    if (lo < 0xDC00 || lo > 0xDFFF) return jfail(j, "a lone UTF-16 surrogate in a \\u escape");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return jfail(j, "a lone UTF-16 surrogate in a \\u escape");
                }
                if (cp == 0) return jfail(j, "a NUL character in a string");
                put_utf8(D, cp);
                continue;
            }
            default: return jfail(j, "an invalid escape in a string");
            }
            D->arena[D->arena_len++] = plain;
            continue;
        }
        size_t n = utf8_seq((const unsigned char *)j->p, (const unsigned char *)j->end);
        if (n == 0) return jfail(j, "a string is not valid UTF-8");
        memcpy(D->arena + D->arena_len, j->p, n);
        D->arena_len += n;
        j->p += n;
    }
    *len = (uint32_t)(D->arena_len - *off);
    return true;
}

static bool read_number(json_reader *j, data_value *v) {
    const char *s = j->p, *p = s;
    bool integral = true;
    if (p < j->end && *p == '-') p++;
    if (p < j->end && *p == '0') p++;
    else if (p < j->end && *p >= '1' && *p <= '9')
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    else return jfail(j, "invalid number");
    if (p < j->end && *p == '.') {
        integral = false;
        p++;
        if (p >= j->end || *p < '0' || *p > '9') return jfail(j, "invalid number");
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        integral = false;
        p++;
        if (p < j->end && (*p == '+' || *p == '-')) p++;
        if (p >= j->end || *p < '0' || *p > '9') return jfail(j, "invalid number");
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    char buf[64];
    if ((size_t)(p - s) >= sizeof buf) return jfail(j, "a number with more than 63 characters");
    memcpy(buf, s, (size_t)(p - s));
    buf[p - s] = 0;
    j->p = p;
    if (integral) {
        errno = 0;
        long long i = strtoll(buf, NULL, 10);
        if (errno == 0) {
            v->type = VALUE_INTEGER;
            v->u.i = i;
            return true;
        }
    }
    v->type = VALUE_FLOAT;
    v->u.d = strtod(buf, NULL);
    return true;
}

static bool match_word(json_reader *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return false;
    j->p += n;
    return true;
}

static bool read_value(json_reader *j, data_value *v) {
    if (j->p >= j->end) return jfail(j, "a value is missing");
    char c = *j->p;
    if (c == '"') {
        uint32_t off, len;
        if (!read_string(j, &off, &len)) return false;
        v->type = VALUE_STRING;
        v->u.off = off;
        v->len = len;
        return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return read_number(j, v);
    if (match_word(j, "true")) {
        v->type = VALUE_BOOLEAN;
        v->u.i = 1;
        return true;
    }
    if (match_word(j, "false")) {
        v->type = VALUE_BOOLEAN;
        v->u.i = 0;
        return true;
    }
    if (match_word(j, "null")) return jfail(j, "a map value is null (leave the key out instead)");
    if (c == '[' || c == '{') return jfail(j, "map values must be strings, numbers or booleans, not arrays or objects");
    return jfail(j, "invalid JSON value");
}

static bool add_or_fail(json_reader *j, uint32_t off, uint32_t len, bool duplicates_fail) {
    int added = data_add(j->D, off, len);
    if (added < 0) return jfail(j, "not enough memory");
    if (added == 0 && duplicates_fail) return jfail(j, "duplicate key");
    if (added == 0) j->D->arena_len = off; /* a repeated member: its copy is not kept */
    return true;
}

static bool parse_array(json_reader *j) {
    j->p++;
    jspace(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return true;
    }
    for (;;) {
        jspace(j);
        if (j->p >= j->end) return jfail(j, "unterminated array");
        if (*j->p != '"') return jfail(j, "a list entry is not a string");
        uint32_t off, len;
        if (!read_string(j, &off, &len) || !add_or_fail(j, off, len, false)) return false;
        jspace(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return true;
        }
        return jfail(j, "expected ',' or ']' in the array");
    }
}

static bool parse_object(json_reader *j) {
    j->p++;
    jspace(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return true;
    }
    for (;;) {
        jspace(j);
        if (j->p >= j->end || *j->p != '"') return jfail(j, "expected a string key in the object");
        uint32_t off, len;
        if (!read_string(j, &off, &len)) return false;
        jspace(j);
        if (j->p >= j->end || *j->p != ':') return jfail(j, "expected ':' after a key");
        j->p++;
        jspace(j);
        data_value v = {0};
        if (!read_value(j, &v)) return false;
        /* The index holds the key; the value goes beside it, under the same entry number. */
        size_t index = j->D->count;
        if (!add_or_fail(j, off, len, true)) return false;
        j->D->values[index] = v;
        jspace(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            return true;
        }
        return jfail(j, "expected ',' or '}' in the object");
    }
}

static rs_data *parse_json(const char *bytes, size_t length, int32_t *line_out, char *error, size_t cap) {
    json_reader j = {bytes, bytes + length, 1, NULL, error, cap};
    jspace(&j);
    if (j.p >= j.end || (*j.p != '[' && *j.p != '{')) {
        *line_out = j.line;
        snprintf(error, cap, "a JSON data file holds an array of strings (a set) or an object (a map)");
        return NULL;
    }
    j.D = data_new(*j.p == '{', length);
    if (!j.D) {
        snprintf(error, cap, "not enough memory");
        return NULL;
    }
    bool ok = *j.p == '{' ? parse_object(&j) : parse_array(&j);
    if (ok) {
        jspace(&j);
        if (j.p < j.end) ok = jfail(&j, "text after the JSON value");
    }
    if (!ok) {
        *line_out = j.line;
        data_free(j.D);
        return NULL;
    }
    data_trim(j.D);
    return j.D;
}

/* ---- the public face --------------------------------------------------------------------------- */

rs_data *rs_data_parse(int format, const char *bytes, size_t length, int32_t *error_line, char *error,
                       size_t error_cap) {
    *error_line = 0;
    /* A byte order mark some editors write is not part of the first entry. */
    if (length >= 3 && memcmp(bytes, "\xEF\xBB\xBF", 3) == 0) {
        bytes += 3;
        length -= 3;
    }
    if (length >= RS_DATA_MAX_BYTES) {
        snprintf(error, error_cap, "a data file must be smaller than %u bytes", RS_DATA_MAX_BYTES);
        return NULL;
    }
    return format == RS_DATA_JSON ? parse_json(bytes, length, error_line, error, error_cap)
                                  : parse_text(bytes, length, error_line, error, error_cap);
}

void rs_data_retain(rs_data *D) { atomic_fetch_add_explicit(&D->refs, 1, memory_order_relaxed); }

void rs_data_release(rs_data *D) {
    if (D && atomic_fetch_sub_explicit(&D->refs, 1, memory_order_acq_rel) == 1) data_free(D);
}

size_t rs_data_entries(const rs_data *D) { return D->count; }

uint64_t rs_data_bytes(const rs_data *D) {
    return sizeof *D + D->arena_cap + D->cap * sizeof *D->entries + (D->is_map ? D->cap * sizeof *D->values : 0) +
           (D->slot_mask + 1) * sizeof *D->slots;
}

int rs_data_is_map(const rs_data *D) { return D->is_map; }

int rs_data_contains(const rs_data *D, const char *key, size_t length) {
    return data_find(D, key, length, hash_bytes(key, length)) >= 0;
}

/* ---- per state: the files offered, the sets used ---------------------------------------------- */

typedef struct data_offer {
    char *path;
    char *bytes; /* NULL once parsed, or when offered built */
    size_t length;
    rs_data *built;
    char *name; /* set when a rule file used it */
    int32_t used_order;
} data_offer;

struct rs_data_table {
    data_offer *offers;
    size_t count, cap;
    size_t used;
};

static data_offer *new_offer(rs_state *S, const char *path) {
    if (!S->data) {
        S->data = calloc(1, sizeof *S->data);
        if (!S->data) return NULL;
    }
    struct rs_data_table *T = S->data;
    if (T->count == T->cap) {
        size_t cap = T->cap ? T->cap * 2 : 8;
        data_offer *grown = realloc(T->offers, cap * sizeof *grown);
        if (!grown) return NULL;
        T->offers = grown;
        T->cap = cap;
    }
    data_offer *o = &T->offers[T->count];
    memset(o, 0, sizeof *o);
    o->path = rs_strdup(path);
    if (!o->path) return NULL;
    o->used_order = -1;
    T->count++;
    return o;
}

int rs_state_offer_data_file(rs_state *S, const char *relative_path, const char *bytes, size_t length) {
    data_offer *o = new_offer(S, relative_path);
    if (!o) return -1;
    o->bytes = malloc(length ? length : 1);
    if (!o->bytes) return -1;
    memcpy(o->bytes, bytes, length);
    o->length = length;
    return 0;
}

int rs_state_offer_data_set(rs_state *S, const char *relative_path, rs_data *D) {
    data_offer *o = new_offer(S, relative_path);
    if (!o) return -1;
    rs_data_retain(D);
    o->built = D;
    return 0;
}

size_t rs_state_data_count(const rs_state *S) { return S->data ? S->data->used : 0; }

rs_data_info rs_state_data_at(const rs_state *S, size_t index) {
    rs_data_info info = {"", "", NULL};
    if (!S->data) return info;
    for (size_t i = 0; i < S->data->count; i++) {
        data_offer *o = &S->data->offers[i];
        if (o->used_order == (int32_t)index) {
            info.name = o->name;
            info.path = o->path;
            info.data = o->built;
        }
    }
    return info;
}

void rs_data_drop_sources(rs_state *S) {
    if (!S->data) return;
    for (size_t i = 0; i < S->data->count; i++) {
        free(S->data->offers[i].bytes);
        S->data->offers[i].bytes = NULL;
    }
}

void rs_data_state_free(rs_state *S) {
    if (!S->data) return;
    for (size_t i = 0; i < S->data->count; i++) {
        data_offer *o = &S->data->offers[i];
        free(o->path);
        free(o->bytes);
        free(o->name);
        rs_data_release(o->built);
    }
    free(S->data->offers);
    free(S->data);
    S->data = NULL;
}

/* ---- what rules see ---------------------------------------------------------------------------- */

static const char data_meta_key = 0;

typedef struct data_box {
    rs_data *data;      /* kept alive by the state's offer */
    const char *name;   /* the offer's name */
} data_box;

bool rs_is_data_object(lua_State *L, int idx) {
    if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return false;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &data_meta_key);
    bool same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

static data_box *check_box(lua_State *L) {
    if (!rs_is_data_object(L, 1)) {
        luaL_error(L, "data methods are called with ':' on a data object (beta:has(key))");
        return NULL;
    }
    return lua_touserdata(L, 1);
}

/* The key to look up: strings as they are, integers (and floats holding one) in decimal, like tostring;
 * anything else matches nothing. */
static const char *lookup_key(lua_State *L, int idx, size_t *len, char *buf, size_t cap) {
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: return lua_tolstring(L, idx, len);
    case LUA_TNUMBER: {
        lua_Integer i;
        if (lua_isinteger(L, idx)) i = lua_tointeger(L, idx);
        else if (!lua_numbertointeger(lua_tonumber(L, idx), &i) || (lua_Number)i != lua_tonumber(L, idx)) return NULL;
        *len = (size_t)snprintf(buf, cap, "%lld", (long long)i);
        return buf;
    }
    default: return NULL;
    }
}

static long box_find(lua_State *L, data_box *box) {
    char buf[32];
    size_t len = 0;
    const char *key = lookup_key(L, 2, &len, buf, sizeof buf);
    if (!key) return -1;
    /* Hashing reads the whole key: charge it like the string functions charge their input. */
    rs_charge(L, 1 + len / 64);
    return data_find(box->data, key, len, hash_bytes(key, len));
}

static int data_has(lua_State *L) {
    data_box *box = check_box(L);
    lua_pushboolean(L, box_find(L, box) >= 0);
    return 1;
}

static int data_get(lua_State *L) {
    data_box *box = check_box(L);
    long e = box_find(L, box);
    if (e < 0) {
        lua_pushnil(L);
        return 1;
    }
    const rs_data *D = box->data;
    if (!D->is_map) {
        lua_pushboolean(L, 1);
        return 1;
    }
    const data_value *v = &D->values[e];
    switch (v->type) {
    case VALUE_STRING: lua_pushlstring(L, D->arena + v->u.off, v->len); break;
    case VALUE_INTEGER: lua_pushinteger(L, (lua_Integer)v->u.i); break;
    case VALUE_FLOAT: lua_pushnumber(L, (lua_Number)v->u.d); break;
    default: lua_pushboolean(L, v->u.i != 0); break;
    }
    return 1;
}

static int data_size(lua_State *L) {
    data_box *box = check_box(L);
    lua_pushinteger(L, (lua_Integer)box->data->count);
    return 1;
}

static int data_kind(lua_State *L) {
    data_box *box = check_box(L);
    lua_pushstring(L, box->data->is_map ? "map" : "set");
    return 1;
}

static int data_tostring(lua_State *L) {
    data_box *box = check_box(L);
    lua_pushfstring(L, "data \"%s\" (%s of %I entries)", box->name, box->data->is_map ? "map" : "set",
                    (lua_Integer)box->data->count);
    return 1;
}

static void push_data_metatable(lua_State *L) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &data_meta_key) == LUA_TTABLE) return;
    lua_pop(L, 1);
    static const luaL_Reg methods[] = {
        {"has", data_has}, {"get", data_get}, {"size", data_size}, {"kind", data_kind}, {NULL, NULL},
    };
    lua_createtable(L, 0, 5);
    lua_createtable(L, 0, 4);
    luaL_setfuncs(L, methods, 0);
    /* Unreachable from rules (the metatable is hidden), and frozen anyway: a method table must not change. */
    rs_freeze_table(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, data_size);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, data_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &data_meta_key);
}

/* Whether a name may name a data file: relative, `/`-separated, without empty, `.` or `..` components and
 * without hidden ones (the scanner skips those). */
static bool valid_name(const char *name, size_t len) {
    if (len == 0 || len > 1024 || name[0] == '/' || name[len - 1] == '/') return false;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || name[i] == '/') {
            if (i == start || name[start] == '.') return false;
            start = i + 1;
        } else if ((unsigned char)name[i] < 0x20 || name[i] == '\\') {
            return false;
        }
    }
    return valid_text(name, len);
}

static data_offer *find_offer(rs_state *S, const char *path) {
    if (!S->data) return NULL;
    for (size_t i = 0; i < S->data->count; i++)
        if (strcmp(S->data->offers[i].path, path) == 0) return &S->data->offers[i];
    return NULL;
}

/* data "name": the data set of name.txt or name.json, parsed on first use. Load time only: the object is
 * kept in a file-level local and queried by rules. */
int rs_api_data(lua_State *L) {
    rs_state *S = rs_state_of(L);
    if (S->phase != RS_PHASE_LOAD)
        return luaL_error(L, "data() is only available while a rule file loads (keep it in a file-level local)");
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!valid_name(name, len))
        return luaL_error(L, "data \"%s\": a data file's name is its path below the rules directory without "
                             "the .txt or .json ending, such as \"beta-users\" or \"lists/beta\"",
                          name);
    char txt[1100], json[1100];
    snprintf(txt, sizeof txt, "%s.txt", name);
    snprintf(json, sizeof json, "%s.json", name);
    data_offer *t = find_offer(S, txt), *j = find_offer(S, json);
    if (t && j) return luaL_error(L, "data \"%s\": both %s and %s exist; keep one", name, txt, json);
    data_offer *o = t ? t : j;
    if (!o) return luaL_error(L, "data \"%s\": no file %s or %s in the rules directory", name, txt, json);
    if (!o->built) {
        if (!o->bytes) return luaL_error(L, "data \"%s\": %s could not be read", name, o->path);
        int32_t line = 0;
        char error[256];
        uint64_t started = rs_now_ns();
        rs_data *D = rs_data_parse(o == j ? RS_DATA_JSON : RS_DATA_TEXT, o->bytes, o->length, &line, error,
                                   sizeof error);
        free(o->bytes);
        o->bytes = NULL;
        if (!D) {
            rs_add_diag(S, o->path, line, "%s", error);
            return luaL_error(L, "data \"%s\": %s is malformed (line %d)", name, o->path, (int)line);
        }
        o->built = D;
        /* Parsing is host work bounded by max_data_bytes, not the rule file's: it does not spend the file's
         * wall-clock budget (a 64 MiB list takes about a second on a slow machine). */
        if (S->deadline_ns && S->deadline_ns != RS_DEADLINE_UNSTARTED) S->deadline_ns += rs_now_ns() - started;
    }
    if (o->used_order < 0) {
        o->name = rs_strndup(name, len);
        if (!o->name) return luaL_error(L, "not enough memory");
        o->used_order = (int32_t)S->data->used++;
    }
    data_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->data = o->built;
    box->name = o->name;
    push_data_metatable(L);
    lua_setmetatable(L, -2);
    return 1;
}
