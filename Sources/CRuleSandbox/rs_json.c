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

typedef struct jctx jctx;

/* One walk over JSON text. Building, it pushes Lua values; checking (build false), it pushes nothing, and records
 * every object key in `z`, to find duplicates and, for the top-level object, the members to convert on first read.
 * Both walks raise the same errors at the same bytes, so checking a context first and converting parts of it later
 * answers exactly as converting all of it at once. */
typedef struct jp {
    lua_State *L;
    const unsigned char *s, *p, *end;
    uint32_t max_depth;
    uint32_t max_values;
    uint32_t values_left;
    bool build;
    bool trusted; /* building text already checked: no duplicate keys to look for */
    jctx *z;      /* checking: where keys go */
    int zidx;     /* checking: stack index of z's userdata (its buffers grow through it) */
    struct key_cache *kc; /* building a context whole: the state's cache of interned strings, at stack index kcidx */
    int kcidx;
    uint64_t filter; /* building a context whole: the members to convert (S->context_filter; 0: all) */
    bool restart;    /* a filtered conversion lost track of the members it checked: convert it again, whole */
    const unsigned char *key; /* the key of the member being read, when it is left out uncached (KEY_LEFT_OUT) */
    size_t key_len;
    uint32_t key_hash;
} jp;

/* jp_top_key's answer for the key of a member left out (see context_filter) that the key cache does not hold. */
#define KEY_LEFT_OUT (-2)

/* A key of a member left out and not cached, in the key cache's table of them: its place in the text. */
typedef struct left_out_key {
    uint32_t fill; /* the conversion that met it (another: an empty entry) */
    uint32_t hash;
    uint32_t offset, len;
} left_out_key;

/* The keys of top-level members, interned once per state: the same few keys arrive with every context, and pushing a
 * kept string costs a fraction of interning its bytes again (hashing, the string table's chain, the allocator's
 * check). Set-associative: a key takes a slot of its hash's set, replacing the one set longest ago. The strings are
 * the user values of the cache's userdata, so that they stay alive while cached and no longer.
 *
 * The cache also keeps track of which keys the reused context storage holds (rs_env.c), so that a conversion need
 * not empty the storage first (walking a table with lua_next costs more than building a new one): it overwrites the
 * members it has, then removes the keys the last conversion set and this one did not. When the storage may hold a
 * key that the cache cannot name (a key not cached, a cached key replaced while its member was set, a conversion
 * that failed half-way), the next conversion empties it whole instead. */
#define KEY_CACHE_SLOTS 256
/* Four slots a key may take, in 64 sets: with 64 slots in sets of two, a context of 20 keys had three in one set one
 * time in four, and then lost track of its storage (and emptied it whole) at every conversion, three times the cost
 * of tracking it. Now a set overflows about one time in twenty for 40 keys. */
#define KEY_CACHE_WAYS 4
#define KEY_CACHE_SET_BITS 6 /* KEY_CACHE_SLOTS / KEY_CACHE_WAYS sets */
_Static_assert(KEY_CACHE_WAYS << KEY_CACHE_SET_BITS == KEY_CACHE_SLOTS, "the sets fill the cache");
#define KEY_CACHE_MAX_LEN 31

/* Short string values are interned once per state too, in a cache of the same shape behind the keys' one: the same
 * countries, plans, versions and regions arrive in context after context, and pushing a kept string costs ~30
 * instructions where interning its bytes again costs ~270 (hashing, the string table's chain, and for a string no
 * longer alive, an allocation and its collection). Values unique to a request (user ids) would only churn such a
 * cache, so a string is cached at its second miss (see STRING_CANDIDATES), and replaces the way used longest ago. */
#define STRING_CACHE_SLOTS 256
#define STRING_CACHE_WAYS 4
#define STRING_CACHE_SET_BITS 6
_Static_assert(STRING_CACHE_WAYS << STRING_CACHE_SET_BITS == STRING_CACHE_SLOTS, "the sets fill the cache");
#define STRING_CACHE_MAX_LEN 31
/* The strings missed once, by the low bits of their hash (the set takes the top bits): a string is cached when it is
 * missed again before another string with the same low bits is, so that strings of one set in one context (which
 * take turns in their set's entry) still get in. */
#define STRING_CANDIDATES 256

typedef struct key_cache {
    struct rs_state *S;               /* the state whose cache this is */
    uint32_t fill;                    /* the conversion in progress, or the last one */
    uint32_t set_in[KEY_CACHE_SLOTS]; /* the conversion that last set the slot's key in the storage (0: none) */
    /* The conversion that last met the slot's key with a value other than null, set or left out (context_filter):
     * the same key again in that conversion is a duplicate. */
    uint32_t met_in[KEY_CACHE_SLOTS];
    uint8_t number[KEY_CACHE_SLOTS]; /* the key's number in the state's list of keys rules read; 0: none */
    /* The keys of the members that a conversion leaving members out left out without caching them (a rule reads
     * none of them, and they would only evict the keys it reads): by hash, open addressing, to tell duplicates.
     * Host memory, grown as a context needs (freed with the state); out_count counts this conversion's. */
    left_out_key *out;
    uint32_t out_cap, out_count;
    uint8_t len[KEY_CACHE_SLOTS];     /* the key's length + 1; 0 for an empty slot */
    uint8_t last[KEY_CACHE_SLOTS];    /* the slots whose keys the last complete conversion set */
    uint8_t current[KEY_CACHE_SLOTS]; /* the slots whose keys this conversion has set */
    uint16_t nlast, ncurrent;
    bool untracked; /* the storage may hold keys that `last` does not name: empty it whole first */
    bool lost;      /* this conversion set a key that `current` does not name */
    bool kept;      /* the storage still holds what the last conversion set (it was not emptied) */
    char bytes[KEY_CACHE_SLOTS][KEY_CACHE_MAX_LEN];
    /* Per key slot: the cached string (its slot + 1; 0: none) the member was last set to, and that slot's
     * generation then; see jp_top_string_member. */
    uint16_t kept_str[KEY_CACHE_SLOTS];
    uint32_t kept_gen[KEY_CACHE_SLOTS];
    /* Short strings met as values (and as the keys of nested objects): see push_short_string. */
    uint32_t str_used[STRING_CACHE_SLOTS];                     /* the conversion that last used the slot */
    uint32_t str_candidate[STRING_CANDIDATES];                 /* hashes of strings missed once, by their low bits */
    uint8_t str_len[STRING_CACHE_SLOTS];                       /* the string's length + 1; 0 for an empty slot */
    uint32_t str_gen[STRING_CACHE_SLOTS];                      /* counts the strings the slot has held */
    char str_bytes[STRING_CACHE_SLOTS][STRING_CACHE_MAX_LEN];
} key_cache;

static void jz_key(jp *j, uint32_t obj, bool in_arena, uint32_t off, uint32_t len);
static void jz_arena_add(jp *j, const void *bytes, size_t n);
static uint32_t jz_arena_mark(const jp *j);
static uint32_t jz_next_object(jp *j);
static void jz_set_value(jp *j);
static void jz_drop_if_null(jp *j);
static void push_short_string(jp *j, const unsigned char *bytes, size_t n);

static int jp_fail(jp *j, const char *what) {
    return luaL_error(j->L, "invalid JSON at byte %d: %s", (int)(j->p - j->s), what);
}

static inline void jp_ws(jp *j) {
    if (j->p < j->end && *j->p > ' ') return; /* most tokens follow the last one directly */
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

static void jp_out(jp *j, luaL_Buffer *b, bool key, const void *bytes, size_t n) {
    if (j->build) luaL_addlstring(b, bytes, n);
    else if (key) jz_arena_add(j, bytes, n);
}

static void add_utf8(jp *j, luaL_Buffer *b, bool key, unsigned cp) {
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
    jp_out(j, b, key, u, (size_t)n);
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

/* Bytes that need no attention inside a string: ASCII from 0x20 up, except '"' and '\\'. */
static const unsigned char plain_ascii[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* A hash of n bytes (at most 31: KEY_CACHE_MAX_LEN, STRING_CACHE_MAX_LEN), from overlapping word loads that cover
 * them all. */
static uint32_t short_string_hash(const unsigned char *p, size_t n) {
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        if (n > 16) {
            uint64_t c, d;
            memcpy(&c, p + 8, 8);
            memcpy(&d, p + n - 16, 8);
            a ^= c * 0xFF51AFD7ED558CCDull;
            b ^= d * 0xC4CEB9FE1A85EC53ull;
        }
    } else if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, p, 4);
        memcpy(&y, p + n - 4, 4);
        a = x;
        b = y;
    } else if (n > 0) {
        a = (uint64_t)p[0] | (uint64_t)p[n / 2] << 8 | (uint64_t)p[n - 1] << 16;
    }
    uint64_t h = a ^ (b * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)n << 56);
    /* One xor-shift before the multiply: a multiply alone is linear, and keys that differ by a step (k0, k1, k2...)
     * then landed in one set; the shift lets every input bit reach the top bits, which choose the set. */
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return (uint32_t)(h >> 32);
}

/* Where the plain ASCII from p ends (printable, neither '"' nor '\\'), at most at end; begin is the text's start.
 * Eight bytes at a time where the text allows, since strings are most of a context's bytes: a byte is special when it
 * is below 0x20, at least 0x80, a quote or a backslash, and the lowest special byte of a word is found exactly by the
 * usual subtract-and-mask tests (a borrow only runs upwards from a byte that is itself special). */
static inline const unsigned char *skip_plain(const unsigned char *begin, const unsigned char *p,
                                              const unsigned char *end) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    for (;;) {
        uint64_t w;
        size_t left = (size_t)(end - p);
        if (left >= 8) {
            memcpy(&w, p, 8);
        } else if (left > 0 && end - begin >= 8) {
            /* The last bytes, read as the tail of the text's last word: the bytes past end shift in as zeros, which
             * count as special, so the scan stops at end at the latest. */
            memcpy(&w, end - 8, 8);
            w >>= 8 * (8 - left);
        } else {
            break;
        }
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
        uint64_t m = (((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b) | w) & high;
        if (m != 0) {
            size_t at = (size_t)__builtin_ctzll(m) >> 3;
            return at < left ? p + at : end;
        }
        if (left <= 8) return end;
        p += 8;
    }
#else
    (void)begin;
#endif
    while (p < end && plain_ascii[*p]) p++;
    return p;
}

/* The string starting after the opening quote: pushed when building; when checking, only a key is kept (in z). */
static void jp_string(jp *j, bool key, uint32_t obj) {
    const unsigned char *start = j->p;
    /* Fast path: no escapes, so the bytes can be pushed as they are. */
    while (j->p < j->end) {
        j->p = skip_plain(j->s, j->p, j->end);
        if (j->p >= j->end) break;
        unsigned char c = *j->p;
        if (c == '"') {
            size_t n = (size_t)(j->p - start);
            j->p++; /* a duplicate key is reported after its closing quote */
            if (j->build) {
                if (j->kc != NULL && n <= STRING_CACHE_MAX_LEN) push_short_string(j, start, n);
                else lua_pushlstring(j->L, (const char *)start, n);
            }
            else if (key) jz_key(j, obj, false, (uint32_t)(start - j->s), (uint32_t)n);
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
    uint32_t mark = 0;
    if (j->build) luaL_buffinit(j->L, &b);
    else if (key) mark = jz_arena_mark(j);
    jp_out(j, &b, key, start, (size_t)(j->p - start));
    while (j->p < j->end) {
        unsigned char c = *j->p;
        if (c == '"') {
            j->p++;
            if (j->build) luaL_pushresult(&b);
            else if (key) jz_key(j, obj, true, mark, jz_arena_mark(j) - mark);
            return;
        }
        if (c == '\\') {
            if (j->end - j->p < 2) break;
            unsigned char e = j->p[1];
            j->p += 2;
            char out;
            switch (e) {
            case '"': out = '"'; break;
            case '\\': out = '\\'; break;
            case '/': out = '/'; break;
            case 'b': out = '\b'; break;
            case 'f': out = '\f'; break;
            case 'n': out = '\n'; break;
            case 'r': out = '\r'; break;
            case 't': out = '\t'; break;
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
                add_utf8(j, &b, key, cp);
                continue;
            }
            default: j->p -= 2; jp_fail(j, "invalid escape"); return;
            }
            jp_out(j, &b, key, &out, 1);
            continue;
        }
        if (c < 0x20) jp_fail(j, "control character in string");
        if (c < 0x80) {
            jp_out(j, &b, key, &c, 1);
            j->p++;
        } else {
            size_t n = utf8_len(j->p, j->end);
            if (n == 0) jp_fail(j, "invalid UTF-8 in string");
            jp_out(j, &b, key, j->p, n);
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
    size_t len = (size_t)(j->p - start);
    /* Integers of up to 18 digits cannot overflow 64 bits: read directly, without copying them for strtoll. */
    if (integer && len <= 18 + (*start == '-')) {
        if (j->build) {
            const unsigned char *d = start + (*start == '-');
            lua_Integer v = 0;
            for (; d < j->p; d++) v = v * 10 + (*d - '0');
            lua_pushinteger(j->L, *start == '-' ? -v : v);
        }
        return;
    }
    char buf[64];
    if (len >= sizeof buf) {
        /* Long literals: only the float path can hold them; copy through a Lua string. */
        lua_pushlstring(j->L, (const char *)start, len);
        double d = strtod(lua_tostring(j->L, -1), NULL);
        lua_pop(j->L, 1);
        if (!isfinite(d)) jp_fail(j, "number out of range");
        if (j->build) lua_pushnumber(j->L, d);
        return;
    }
    memcpy(buf, start, len);
    buf[len] = 0;
    if (integer) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == 0) {
            if (j->build) lua_pushinteger(j->L, (lua_Integer)v);
            return;
        }
    }
    double d = strtod(buf, NULL);
    if (!isfinite(d)) jp_fail(j, "number out of range");
    if (j->build) lua_pushnumber(j->L, d);
}

static bool jp_literal(jp *j, const char *lit, size_t n) {
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return false;
    j->p += n;
    return true;
}

/* The first keys set in an object being built, to find a duplicate without a table lookup: a key's bytes stay put
 * while the table holds it. (Keys whose value is null are not set, and a later same key is no duplicate.) */
#define JP_SEEN_KEYS 8

typedef struct jp_seen {
    uint32_t count; /* above JP_SEEN_KEYS: more keys than kept, so the table is asked */
    const char *key[JP_SEEN_KEYS];
    size_t len[JP_SEEN_KEYS];
} jp_seen;

/* Raises the duplicate-key error if the key on top is already set in the table at t. */
static void jp_check_duplicate(jp *j, int t, const jp_seen *seen) {
    if (seen->count > JP_SEEN_KEYS) {
        lua_pushvalue(j->L, -1);
        lua_rawget(j->L, t);
        if (!lua_isnil(j->L, -1)) jp_fail(j, "duplicate key");
        lua_pop(j->L, 1);
        return;
    }
    size_t len;
    const char *key = lua_tolstring(j->L, -1, &len);
    for (uint32_t i = 0; i < seen->count; i++) {
        if (seen->len[i] == len && (seen->key[i] == key || memcmp(seen->key[i], key, len) == 0))
            jp_fail(j, "duplicate key");
    }
}

/* The first of the slots a key may take (the cache is set-associative, so that keys of one context that hash alike
 * do not evict each other on every conversion): the top bits of the key's hash choose the set. */
static unsigned key_cache_set_of_hash(uint32_t h) { return (h >> (32 - KEY_CACHE_SET_BITS)) * KEY_CACHE_WAYS; }

static unsigned key_cache_set_of(const unsigned char *p, size_t n) {
    return key_cache_set_of_hash(short_string_hash(p, n));
}

/* Whether n bytes (at most KEY_CACHE_MAX_LEN) at a and b are equal: a few word loads, overlapping at the end and
 * reading nothing outside the n bytes, rather than a call to memcmp for a handful of bytes. */
static inline bool key_bytes_equal(const unsigned char *a, const unsigned char *b, size_t n) {
    if (n >= 8) {
        uint64_t x, y;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y) return false;
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    if (n >= 4) {
        uint32_t x1, y1, x2, y2;
        memcpy(&x1, a, 4);
        memcpy(&y1, b, 4);
        memcpy(&x2, a + n - 4, 4);
        memcpy(&y2, b + n - 4, 4);
        return x1 == y1 && x2 == y2;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return false;
    return true;
}

/* The slot holding the key, or -1. */
static int key_cache_find(const key_cache *kc, unsigned first, const void *bytes, size_t n) {
    for (unsigned slot = first; slot < first + KEY_CACHE_WAYS; slot++)
        if (kc->len[slot] == n + 1 && key_bytes_equal((const unsigned char *)kc->bytes[slot], bytes, n))
            return (int)slot;
    return -1;
}

/* The way of the set at `first` (of `ways`) to fill: an empty one (len 0), else the one with the oldest stamp. */
static unsigned way_to_replace(const uint8_t *len, const uint32_t *stamp, unsigned first, unsigned ways) {
    unsigned slot = first;
    for (unsigned way = first; way < first + ways; way++) {
        if (len[way] == 0) return way;
        if (stamp[way] < stamp[slot]) slot = way;
    }
    return slot;
}

/* The slot of the cached string of n bytes (at most STRING_CACHE_MAX_LEN) and hash h, or -1. */
static int string_cache_find(const key_cache *kc, uint32_t h, const unsigned char *bytes, size_t n) {
    unsigned first = (h >> (32 - STRING_CACHE_SET_BITS)) * STRING_CACHE_WAYS;
    for (unsigned slot = first; slot < first + STRING_CACHE_WAYS; slot++)
        if (kc->str_len[slot] == n + 1 && key_bytes_equal((const unsigned char *)kc->str_bytes[slot], bytes, n))
            return (int)slot;
    return -1;
}

/* Pushes cached string `slot`. */
static void string_cache_push(jp *j, int slot) {
    j->kc->str_used[slot] = j->kc->fill;
    lua_getiuservalue(j->L, j->kcidx, KEY_CACHE_SLOTS + slot + 1);
}

/* Interns and pushes a string the cache does not hold (hash h), and caches it at its second miss (see
 * STRING_CANDIDATES); returns its slot then, else -1. */
static int string_cache_add(jp *j, uint32_t h, const unsigned char *bytes, size_t n) {
    key_cache *kc = j->kc;
    lua_pushlstring(j->L, (const char *)bytes, n);
    uint32_t *candidate = &kc->str_candidate[h % STRING_CANDIDATES];
    if (*candidate != h) {
        *candidate = h;
        return -1;
    }
    unsigned slot = way_to_replace(kc->str_len, kc->str_used, (h >> (32 - STRING_CACHE_SET_BITS)) * STRING_CACHE_WAYS,
                                   STRING_CACHE_WAYS);
    lua_pushvalue(j->L, -1);
    lua_setiuservalue(j->L, j->kcidx, KEY_CACHE_SLOTS + (int)slot + 1);
    memcpy(kc->str_bytes[slot], bytes, n);
    kc->str_len[slot] = (uint8_t)(n + 1);
    kc->str_used[slot] = kc->fill;
    kc->str_gen[slot]++; /* members kept as the string it held are no longer known to hold this one */
    *candidate = ~h; /* the next string to be cached here must miss twice as well */
    return (int)slot;
}

/* Pushes the string of n bytes (at most STRING_CACHE_MAX_LEN, no escapes), from the cache of interned strings. */
static void push_short_string(jp *j, const unsigned char *bytes, size_t n) {
    uint32_t h = short_string_hash(bytes, n);
    int slot = string_cache_find(j->kc, h, bytes, n);
    if (slot >= 0) string_cache_push(j, slot);
    else (void)string_cache_add(j, h, bytes, n);
}

/* Removes the member named by cached slot `slot` from the storage at t (the cache at kcidx). */
static void key_cache_remove(lua_State *L, key_cache *kc, int kcidx, int t, unsigned slot) {
    kc->kept_str[slot] = 0;
    lua_getiuservalue(L, kcidx, (int)slot + 1);
    lua_pushnil(L);
    lua_rawset(L, t);
}

static uint32_t jz_hash(const unsigned char *p, size_t n, uint32_t obj);

/* Whether the key of n bytes at p, of short_string_hash h, is in S's list of keys that rules read: the list's filter
 * of hashes answers most keys that are not. */
static inline bool context_key_listed(rs_state *S, uint32_t h, const unsigned char *p, size_t n) {
    if ((S->context_key_hashes[(h >> 6) & 3] >> (h & 63) & 1) == 0) return false;
    return rs_context_key_number(S, (const char *)p, n, false) != 0;
}

/* Whether this conversion left out a member of the key at j->key (KEY_LEFT_OUT) already. */
static bool left_out_before(const jp *j, const key_cache *kc) {
    if (kc->out_count == 0) return false;
    uint32_t h = j->key_hash, mask = kc->out_cap - 1;
    for (uint32_t i = h & mask; kc->out[i].fill == kc->fill; i = (i + 1) & mask) {
        const left_out_key *e = &kc->out[i];
        if (e->hash == h && e->len == j->key_len && memcmp(j->s + e->offset, j->key, j->key_len) == 0) return true;
    }
    return false;
}

/* Records the key at j->key as left out by this conversion; false when there is no memory for it. */
static bool left_out_add(const jp *j, key_cache *kc) {
    if ((kc->out_count + 1) * 2 > kc->out_cap) {
        uint32_t cap = kc->out_cap ? kc->out_cap * 2 : 64;
        left_out_key *grown = calloc(cap, sizeof *grown);
        if (grown == NULL) return false;
        for (uint32_t i = 0; i < kc->out_cap; i++) {
            if (kc->out[i].fill != kc->fill) continue;
            uint32_t at = kc->out[i].hash & (cap - 1);
            while (grown[at].fill == kc->fill) at = (at + 1) & (cap - 1);
            grown[at] = kc->out[i];
        }
        free(kc->out);
        kc->out = grown;
        kc->out_cap = cap;
    }
    uint32_t h = j->key_hash, mask = kc->out_cap - 1, at = h & mask;
    while (kc->out[at].fill == kc->fill) at = (at + 1) & mask;
    kc->out[at] = (left_out_key){kc->fill, h, (uint32_t)(j->key - j->s), (uint32_t)j->key_len};
    kc->out_count++;
    return true;
}

/* Pushes the key of a top-level member (after its opening quote), from the cache when it holds it; returns its slot,
 * or -1 for a key that is not cached. A key with escapes, non-ASCII bytes or of more than KEY_CACHE_MAX_LEN bytes
 * goes through jp_string, from its first byte, so that every error is raised at the same byte as before. Converting
 * without the members the rule cannot read (j->filter), a plain key of such a member that the cache does not hold
 * and has no free entry for, or that is too long to be cached, is pushed nowhere: KEY_LEFT_OUT, with j->key set. */
static int jp_top_key(jp *j, key_cache *kc, int t, bool *pushed) {
    int kcidx = t + 1;
    *pushed = true;
    const unsigned char *start = j->p;
    j->p = skip_plain(j->s, j->p, j->end);
    size_t n = (size_t)(j->p - start);
    if (j->filter != 0 && j->p < j->end && *j->p == '"' && n > KEY_CACHE_MAX_LEN) {
        j->p++; /* longer than any key a rule reads by name */
        j->key = start;
        j->key_len = n;
        j->key_hash = jz_hash(start, n, 0);
        *pushed = false;
        return KEY_LEFT_OUT;
    }
    if (j->p >= j->end || *j->p != '"' || n > KEY_CACHE_MAX_LEN) {
        j->p = start;
        jp_string(j, true, 0);
        /* Spelled with escapes, it may still be a key the cache names: its slot then counts it as set. */
        size_t len;
        const char *key = lua_tolstring(j->L, -1, &len);
        if (len > KEY_CACHE_MAX_LEN) return -1;
        return key_cache_find(kc, key_cache_set_of((const unsigned char *)key, len), key, len);
    }
    j->p++;
    uint32_t h = short_string_hash(start, n);
    unsigned first = key_cache_set_of_hash(h);
    int found = key_cache_find(kc, first, start, n);
    if (found >= 0) {
        *pushed = false; /* the caller pushes it when the member needs setting */
        return found;
    }
    /* The slot to replace: an empty one, else the one a conversion set longest ago. */
    unsigned slot = way_to_replace(kc->len, kc->set_in, first, KEY_CACHE_WAYS);
    /* Converting for a rule that reads none of the key's members, it takes only an empty slot; it evicts no key,
     * which would be cached again at its next conversion, and is left out uncached (see key_cache.out). */
    if (j->filter != 0 && kc->len[slot] != 0 && !context_key_listed(kc->S, h, start, n)) {
        j->key = start;
        j->key_len = n;
        j->key_hash = h;
        *pushed = false;
        return KEY_LEFT_OUT;
    }
    lua_pushlstring(j->L, (const char *)start, n);
    /* The key it replaces: a member of this conversion stays, but the cache no longer names it (the slot stays
     * listed once, for the new key); one that only an earlier conversion set goes now, while the cache names it. */
    if (kc->met_in[slot] == kc->fill) {
        kc->lost = true;
    } else {
        if (kc->len[slot] != 0) key_cache_remove(j->L, kc, kcidx, t, slot);
        kc->set_in[slot] = 0;
    }
    lua_pushvalue(j->L, -1);
    lua_setiuservalue(j->L, kcidx, (int)slot + 1);
    memcpy(kc->bytes[slot], start, n);
    kc->len[slot] = (uint8_t)(n + 1);
    kc->kept_str[slot] = 0;
    kc->number[slot] = (uint8_t)rs_context_key_number(kc->S, (const char *)start, n, false);
    return (int)slot;
}

/* The member of cached slot `slot` (-1: a key not cached) was set in the storage. */
static void key_cache_set(key_cache *kc, int slot) {
    if (slot < 0) kc->lost = true;
    else if (kc->set_in[slot] != kc->fill) {
        kc->set_in[slot] = kc->fill;
        kc->met_in[slot] = kc->fill;
        kc->current[kc->ncurrent++] = (uint8_t)slot;
    }
}

/* Converts a top-level member whose value (after the ':') is a string of at most STRING_CACHE_MAX_LEN plain bytes,
 * the common case, for the key of cached slot `slot` (on the stack when `pushed`); answers false, having read
 * nothing, for any other value. The string comes from the cache of interned strings; and when the storage already
 * holds this key with this very string (the last conversion set it, and nothing removed it or reused the string's
 * slot since), neither is pushed and the table is not touched (~150 instructions less): a country, plan or version
 * often repeats from one context to the next, and a service asking for several flags sends one context each time. */
static bool jp_top_string_member(jp *j, key_cache *kc, int t, int slot, bool pushed) {
    jp_ws(j);
    if (j->p >= j->end || *j->p != '"') return false;
    const unsigned char *start = j->p + 1, *close = skip_plain(j->s, start, j->end);
    size_t n = (size_t)(close - start);
    if (close >= j->end || *close != '"' || n > STRING_CACHE_MAX_LEN) return false;
    /* as jp_value counts it, at its opening quote */
    if (j->values_left-- == 0)
        luaL_error(j->L, "more than %I values (at byte %d)", (lua_Integer)j->max_values, (int)(j->p - j->s));
    j->p = close + 1;
    uint32_t h = short_string_hash(start, n);
    int v = string_cache_find(kc, h, start, n);
    /* Not when the key is on the stack already: spelled with escapes, or pushed for the duplicate check of a
     * conversion that lost track of its storage (the skipped key would stay on the stack). */
    if (v >= 0 && !pushed && kc->kept && kc->set_in[slot] == kc->fill - 1 && kc->kept_str[slot] == v + 1 &&
        kc->kept_gen[slot] == kc->str_gen[v]) {
        kc->str_used[v] = kc->fill;
        key_cache_set(kc, slot);
        return true;
    }
    if (!pushed) lua_getiuservalue(j->L, t + 1, slot + 1);
    if (v >= 0) string_cache_push(j, v);
    else v = string_cache_add(j, h, start, n);
    lua_rawset(j->L, t);
    key_cache_set(kc, slot);
    kc->kept_str[slot] = (uint16_t)(v + 1);
    kc->kept_gen[slot] = v >= 0 ? kc->str_gen[v] : 0;
    return true;
}

/* Removes the members of the last conversion that this one has not set (yet). */
static void key_cache_drop_stale(lua_State *L, key_cache *kc, int t) {
    for (unsigned i = 0; i < kc->nlast; i++) {
        unsigned slot = kc->last[i];
        if (kc->set_in[slot] != kc->fill) key_cache_remove(L, kc, t + 1, t, slot);
    }
    kc->nlast = 0;
}

/* Starts converting a top-level object: pushes the context's proxy (unless S->bare_context), the reused storage (at t)
 * and the key cache (at t + 1). */
static key_cache *context_fill_begin(lua_State *L) {
    rs_state *S = rs_state_of(L);
    key_cache *kc = S->key_cache;
    rs_begin_context_fill(L, S, kc->untracked);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->key_cache_ref);
    if (kc->untracked) kc->nlast = 0;
    kc->kept = !kc->untracked; /* an untracked storage was emptied above */
    if (++kc->fill == 0) {
        memset(kc->set_in, 0, sizeof kc->set_in);
        memset(kc->met_in, 0, sizeof kc->met_in);
        if (kc->out != NULL) memset(kc->out, 0, kc->out_cap * sizeof *kc->out);
        memset(kc->str_used, 0, sizeof kc->str_used);
        memset(kc->kept_str, 0, sizeof kc->kept_str);
        kc->fill = 1;
    }
    kc->ncurrent = 0;
    kc->out_count = 0;
    kc->lost = false;
    kc->untracked = true; /* until the conversion completes */
    return kc;
}

/* Completes a conversion of the storage at t: it then holds exactly the object's members. Leaves the proxy, pointed
 * at the storage, at t - 1 and on top (with S->bare_context, the storage on top). */
static void context_fill_end(lua_State *L, key_cache *kc, int t) {
    key_cache_drop_stale(L, kc, t);
    memcpy(kc->last, kc->current, kc->ncurrent);
    kc->nlast = kc->ncurrent;
    kc->untracked = kc->lost;
    lua_settop(L, t);
    rs_end_context_fill(L, kc->S);
}

unsigned rs_context_key_number(rs_state *S, const char *s, size_t n, bool add) {
    if (n > RS_CONTEXT_KEY_MAX_LEN || n > KEY_CACHE_MAX_LEN) return 0; /* never cached: see jp_top_key */
    for (unsigned i = 0; i < S->context_key_count; i++)
        if (S->context_key_names[i].len == n && memcmp(S->context_key_names[i].bytes, s, n) == 0) return i + 1;
    if (!add || S->context_key_count == RS_CONTEXT_KEY_NAMES) return 0;
    rs_context_key_name *name = &S->context_key_names[S->context_key_count++];
    name->len = (uint8_t)n;
    memcpy(name->bytes, s, n);
    uint32_t h = short_string_hash((const unsigned char *)s, n);
    S->context_key_hashes[(h >> 6) & 3] |= 1ull << (h & 63);
    return S->context_key_count;
}

void rs_renumber_cached_keys(rs_state *S) {
    key_cache *kc = S->key_cache;
    for (unsigned slot = 0; slot < KEY_CACHE_SLOTS; slot++)
        kc->number[slot] =
            kc->len[slot] == 0 ? 0 : (uint8_t)rs_context_key_number(S, kc->bytes[slot], kc->len[slot] - 1u, false);
}

unsigned rs_key_cache_set(const char *key, size_t len) {
    return key_cache_set_of((const unsigned char *)key, len) / KEY_CACHE_WAYS;
}

void rs_free_key_cache(rs_state *S) {
    if (S->key_cache == NULL) return;
    free(S->key_cache->out);
    S->key_cache->out = NULL;
    S->key_cache->out_cap = 0;
}

void rs_create_key_cache(lua_State *L) {
    key_cache *kc = lua_newuserdatauv(L, sizeof *kc, KEY_CACHE_SLOTS + STRING_CACHE_SLOTS);
    memset(kc, 0, sizeof *kc);
    rs_state *S = rs_state_of(L);
    kc->S = S;
    S->key_cache = kc;
    S->key_cache_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Ends a container being built (at t): the top-level object's storage is handed to its proxy (kc is its cache), any
 * other container is made read-only. */
static void jp_end_container(jp *j, key_cache *kc, int t) {
    if (!j->build) return;
    if (kc != NULL) {
        context_fill_end(j->L, kc, t);
        j->kc = NULL;
    } else {
        rs_make_readonly(j->L);
    }
}

static bool jp_value(jp *j, uint32_t depth);
static jctx *jz_push(lua_State *L);
static void jz_start(lua_State *L, jctx *z, int zidx, const unsigned char *text, size_t len, uint32_t max_depth);
static void jz_forget_text(jctx *z);

/* Whether the rule whose context keys are `filter` (RS_CONTEXT_KEYS_KNOWN and bits) can read the member of the key
 * in cached slot `slot`. */
static inline bool key_wanted(const key_cache *kc, int slot, uint64_t filter) {
    unsigned number = kc->number[slot];
    return number != 0 && (filter >> (number - 1) & 1) != 0;
}

/* Checks the value of a top-level member that the rule cannot read, without converting it; answers whether it is
 * null. It is read by jp_value itself with building off (the same code, pushing nothing), so that it raises every
 * error, counts against every limit and stops at every byte exactly as converting it would; the keys of its objects
 * go to the state's lazy checker, which tells their duplicates. */
static bool jp_skip_other_value(jp *j, uint32_t depth);

static inline __attribute__((always_inline)) bool jp_skip_value(jp *j, uint32_t depth) {
    jp_ws(j);
    if (j->p < j->end && *j->p == '"') {
        /* The common case, a string of plain bytes, as jp_value and jp_string read it (its count first). */
        const unsigned char *close = skip_plain(j->s, j->p + 1, j->end);
        if (close < j->end && *close == '"') {
            if (j->values_left-- == 0)
                luaL_error(j->L, "more than %I values (at byte %d)", (lua_Integer)j->max_values, (int)(j->p - j->s));
            j->p = close + 1;
            return false;
        }
    }
    return jp_skip_other_value(j, depth);
}

static bool jp_skip_other_value(jp *j, uint32_t depth) {
    if (j->p < j->end && (*j->p == '{' || *j->p == '[') && j->z == NULL) {
        /* The checker is pushed above the storage and the key cache until the conversion ends. A rule that never
         * reads a large member does not pay for it, as with lazy reading. */
        j->z = jz_push(j->L);
        j->zidx = lua_gettop(j->L);
        jz_start(j->L, j->z, j->zidx, j->s, (size_t)(j->end - j->s), j->max_depth);
    }
    bool null = j->p < j->end && *j->p == 'n';
    j->build = false;
    jp_value(j, depth);
    j->build = true;
    return null;
}

/* Pushes one value when building (JSON null pushes nil, and answers true); checks it otherwise. */
static bool jp_value(jp *j, uint32_t depth) {
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
        int t = 0;
        uint32_t obj = 0; /* checking: which object the keys belong to (0: the top-level one) */
        key_cache *kc = NULL; /* building the top-level object: its keys' cache, at t + 1 */
        if (j->build && depth == 0) {
            kc = context_fill_begin(j->L);
            t = lua_gettop(j->L) - 1;
            j->kc = kc;
            j->kcidx = t + 1;
        } else if (j->build) {
            lua_createtable(j->L, object ? 0 : 4, object ? 4 : 0);
            t = lua_gettop(j->L);
        } else if (object && depth > 0) {
            obj = jz_next_object(j);
        }
        jp_ws(j);
        if (j->p < j->end && *j->p == (object ? '}' : ']')) {
            j->p++;
            jp_end_container(j, kc, t);
            return false;
        }
        lua_Integer index = 0;
        jp_seen seen;
        seen.count = 0;
        for (;;) {
            if (object) {
                if (j->p >= j->end || *j->p != '"') {
                    jp_ws(j);
                    if (j->p >= j->end || *j->p != '"') jp_fail(j, "expected a string key");
                }
                j->p++;
                int slot = -1;
                bool pushed = true; /* the key is on the stack */
                if (kc != NULL) {
                    /* While every member set so far is named by the cache, its slot tells a duplicate; after a key
                     * it cannot name, the table answers, once it holds this object's members only. */
                    slot = jp_top_key(j, kc, t, &pushed);
                    if (slot == -1) kc->lost = true;
                    /* Members left out are told from duplicates by their slots alone: once those do not name every
                     * member met, the conversion starts again and converts them all. */
                    if (kc->lost && j->filter != 0) {
                        j->restart = true;
                        return false;
                    }
                    if (kc->lost && !pushed) {
                        lua_getiuservalue(j->L, t + 1, slot + 1);
                        pushed = true;
                    }
                    if (kc->lost && seen.count <= JP_SEEN_KEYS) {
                        key_cache_drop_stale(j->L, kc, t);
                        seen.count = JP_SEEN_KEYS + 1;
                    }
                    if (seen.count > JP_SEEN_KEYS) jp_check_duplicate(j, t, &seen);
                    else if (slot == KEY_LEFT_OUT ? left_out_before(j, kc) : kc->met_in[slot] == kc->fill)
                        jp_fail(j, "duplicate key");
                } else {
                    jp_string(j, true, obj);
                    if (j->build && !j->trusted) jp_check_duplicate(j, t, &seen);
                }
                if (j->p >= j->end || *j->p != ':') {
                    jp_ws(j);
                    if (j->p >= j->end || *j->p != ':') jp_fail(j, "expected ':'");
                }
                j->p++;
                if (!j->build) jz_set_value(j);
                if (slot == KEY_LEFT_OUT) {
                    if (!jp_skip_value(j, depth + 1) && !left_out_add(j, kc)) {
                        j->restart = true;
                        return false;
                    }
                    goto member_done;
                }
                if (slot >= 0) {
                    if (j->filter != 0 && !key_wanted(kc, slot, j->filter)) {
                        if (pushed) lua_pop(j->L, 1);
                        if (!jp_skip_value(j, depth + 1)) kc->met_in[slot] = kc->fill;
                        goto member_done;
                    }
                    if (jp_top_string_member(j, kc, t, slot, pushed)) goto member_done;
                    if (!pushed) lua_getiuservalue(j->L, t + 1, slot + 1);
                    kc->kept_str[slot] = 0;
                }
                bool null = jp_value(j, depth + 1);
                if (!j->build) {
                    jz_drop_if_null(j);
                } else if (null) {
                    /* null: the key is absent (and the reused storage may have it from an earlier context) */
                    if (kc != NULL) lua_rawset(j->L, t);
                    else lua_pop(j->L, 2);
                } else if (kc != NULL) {
                    lua_rawset(j->L, t);
                    key_cache_set(kc, slot);
                } else {
                    if (!j->trusted && seen.count < JP_SEEN_KEYS) {
                        seen.key[seen.count] = lua_tolstring(j->L, -2, &seen.len[seen.count]);
                        seen.count++;
                    } else {
                        seen.count = JP_SEEN_KEYS + 1; /* from here on, the table answers */
                    }
                    lua_rawset(j->L, t);
                }
            } else {
                jp_value(j, depth + 1);
                if (j->build) lua_rawseti(j->L, t, ++index);
            }
        member_done:
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
        jp_end_container(j, kc, t);
        return false;
    }
    if (c == '"') {
        j->p++;
        jp_string(j, false, 0);
        return false;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        jp_number(j);
        return false;
    }
    bool truth = jp_literal(j, "true", 4);
    if (truth || jp_literal(j, "false", 5)) {
        if (j->build) lua_pushboolean(j->L, truth);
        return false;
    }
    if (!jp_literal(j, "null", 4)) jp_fail(j, "unexpected character");
    if (j->build) lua_pushnil(j->L);
    return j->build;
}

/* Converts the object in json (len bytes), or only the members that `filter` names (0: all of them). Returns false,
 * having pushed nothing, when a conversion leaving members out lost track of them (see the object loop of jp_value):
 * the storage, half converted, is then marked untracked, so that the next conversion empties it first. */
static bool push_json_object(lua_State *L, const char *json, size_t len, uint32_t max_depth, uint32_t max_values,
                             uint64_t filter) {
    int base = lua_gettop(L);
    jp j = {L, (const unsigned char *)json, (const unsigned char *)json, (const unsigned char *)json + len,
            max_depth, max_values, max_values, true, false, NULL, 0, NULL, 0, filter, false, NULL, 0, 0};
    jp_ws(&j);
    if (j.p >= j.end) {
        /* An absent context is an empty one. */
        key_cache *kc = context_fill_begin(L);
        context_fill_end(L, kc, lua_gettop(L) - 1);
        return true;
    }
    if (*j.p != '{') jp_fail(&j, "expected an object");
    jp_value(&j, 0);
    if (j.z != NULL) jz_forget_text(j.z); /* nothing is read from this text later */
    if (j.restart) {
        lua_settop(L, base);
        return false;
    }
    jp_ws(&j);
    if (j.p != j.end) jp_fail(&j, "trailing data after the object");
    return true;
}

void rs_push_json_object(lua_State *L, const char *json, size_t len, uint32_t max_depth, uint32_t max_values) {
    (void)push_json_object(L, json, len, max_depth, max_values, 0);
}

/* ---- contexts converted on first read ---------------------------------------------------- */

/*
 * Converting a whole context into Lua tables was most of a flag evaluation's cost (table and string allocation,
 * key interning and the garbage they leave), though rules read a few fields of it. A context is therefore checked
 * in one pass over its text without building anything, which raises every error the full conversion would, at the
 * same byte, and indexes the top-level members; the storage behind the read-only view starts empty, and a member
 * becomes a Lua value (nested objects whole) the first time a rule reads it. Whatever walks the storage itself
 * (pairs, next, rawget, #, explain, canonical JSON) goes through rs_push_storage, which completes it first, so
 * every observable behaviour is that of the full conversion.
 */

/* One object key seen while checking. */
typedef struct jkey {
    uint32_t obj;   /* the object it belongs to: 0 for the top-level object */
    uint32_t hash;  /* of the key's bytes, mixed with obj */
    uint32_t off;   /* the decoded key: bytes in the text, or in the arena when it had escapes */
    uint32_t len;
    uint32_t value; /* offset of the member's value in the text */
    uint8_t in_arena;
    uint8_t converted; /* top-level members: already read into the storage */
} jkey;

/* The per-state checker and index, a userdata in the registry. Its buffers are userdata in its user values, so
 * that the Lua allocator accounts for them and an error while checking leaks nothing. */
struct jctx {
    const unsigned char *json; /* the context being read lazily; NULL outside the evaluation it belongs to */
    size_t json_len;
    uint32_t max_depth;
    const void *storage; /* the storage being filled (kept alive as a user value), to recognise it */
    jkey *keys;
    uint32_t nkeys, keys_cap;
    uint32_t *slots; /* open addressing: index + 1 into keys, 0 when empty */
    uint32_t mask, slots_cap;
    unsigned char *arena;
    uint32_t arena_len, arena_cap;
    uint32_t next_obj;
    uint32_t last_slot; /* where the last key recorded went */
};

enum { UV_KEYS = 1, UV_SLOTS, UV_ARENA, UV_STORAGE, UV_COUNT = UV_STORAGE };

static const char key_jctx = 0;
static const char key_lazy_meta = 0;

#define JZ_MIN_SLOTS 16u

/* Below this size a context is converted whole. Checking first and converting a member on its first read costs a fixed
 * ~4,000 instructions more (a storage table per evaluation, the checker's index, a C call through __index per member
 * read) and saves the conversion of the members not read, whose cost depends on their values (callgrind and
 * `rulesbench growth`, a rule reading one or three members). A string value unique to the request (an id, a
 * timestamp) costs a new string and its collection, ~500 instructions: for such contexts lazy reading pays from
 * about six members, 90 bytes. Values that repeat from one context to the next are cheaper whole up to about 24
 * members (440 bytes), thanks to the reused storage and the key cache, but lazily read past this size they cost at
 * most ~12% more, where whole conversion of unique values cost up to 56% more: so the bound stays low. */
#define RS_LAZY_CONTEXT_BYTES 96

/* A hash of a key's bytes, eight at a time (keys are short, and hashing is most of checking one). */
static uint32_t jz_hash(const unsigned char *p, size_t n, uint32_t obj) {
    uint64_t h = ((uint64_t)n << 32 | obj) * 0x9E3779B97F4A7C15ull;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    }
    /* The multiplications only carry upwards; the probe uses the low bits: mix the high ones down. */
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* Replaces buffer `uv` of z by a larger one holding the same first `used` bytes; returns it. */
static void *jz_grow(lua_State *L, int zidx, int uv, const void *old, size_t used, size_t bytes) {
    void *grown = lua_newuserdatauv(L, bytes, 0);
    if (used) memcpy(grown, old, used);
    lua_setiuservalue(L, zidx, uv);
    return grown;
}

static void jz_arena_add(jp *j, const void *bytes, size_t n) {
    jctx *z = j->z;
    if (z->arena_len + n > z->arena_cap) {
        if (z->arena_len + n > UINT32_MAX / 2) luaL_error(j->L, "context too large");
        uint32_t cap = z->arena_cap * 2 > z->arena_len + n ? z->arena_cap * 2 : (uint32_t)(z->arena_len + n) * 2;
        z->arena = jz_grow(j->L, j->zidx, UV_ARENA, z->arena, z->arena_len, cap);
        z->arena_cap = cap;
    }
    memcpy(z->arena + z->arena_len, bytes, n);
    z->arena_len += (uint32_t)n;
}

static uint32_t jz_arena_mark(const jp *j) { return j->z->arena_len; }

static uint32_t jz_next_object(jp *j) { return ++j->z->next_obj; }

static const unsigned char *jz_key_bytes(const jctx *z, const jkey *k) {
    return (k->in_arena ? z->arena : z->json) + k->off;
}

/* The slot of the key (obj, bytes): the one holding it, or the empty one where it would go. */
static uint32_t jz_probe(const jctx *z, uint32_t obj, uint32_t hash, const unsigned char *bytes, size_t len) {
    uint32_t i = hash & z->mask;
    for (; z->slots[i] != 0; i = (i + 1) & z->mask) {
        const jkey *k = &z->keys[z->slots[i] - 1];
        if (k->hash == hash && k->obj == obj && k->len == len && memcmp(jz_key_bytes(z, k), bytes, len) == 0) break;
    }
    return i;
}

static void jz_rehash(jp *j) {
    jctx *z = j->z;
    uint32_t size = (z->mask + 1) * 2;
    if (size > z->slots_cap) {
        z->slots = jz_grow(j->L, j->zidx, UV_SLOTS, NULL, 0, (size_t)size * sizeof *z->slots);
        z->slots_cap = size;
    }
    z->mask = size - 1;
    memset(z->slots, 0, (size_t)size * sizeof *z->slots);
    for (uint32_t n = 0; n < z->nkeys; n++) {
        uint32_t i = z->keys[n].hash & z->mask;
        while (z->slots[i] != 0) i = (i + 1) & z->mask;
        z->slots[i] = n + 1;
    }
}

/* Records a key of object `obj` (checking); a second one of the same object is the duplicate error. */
static void jz_key(jp *j, uint32_t obj, bool in_arena, uint32_t off, uint32_t len) {
    jctx *z = j->z;
    if ((z->nkeys + 1) * 2 > z->mask + 1) jz_rehash(j);
    const unsigned char *bytes = (in_arena ? z->arena : z->json) + off;
    uint32_t hash = jz_hash(bytes, len, obj);
    uint32_t slot = jz_probe(z, obj, hash, bytes, len);
    if (z->slots[slot] != 0) jp_fail(j, "duplicate key");
    if (z->nkeys == z->keys_cap) {
        uint32_t cap = z->keys_cap * 2;
        z->keys = jz_grow(j->L, j->zidx, UV_KEYS, z->keys, (size_t)z->nkeys * sizeof *z->keys,
                          (size_t)cap * sizeof *z->keys);
        z->keys_cap = cap;
    }
    jkey *k = &z->keys[z->nkeys++];
    k->obj = obj;
    k->hash = hash;
    k->off = off;
    k->len = len;
    k->value = 0;
    k->in_arena = in_arena;
    k->converted = 0;
    z->slots[slot] = z->nkeys;
    z->last_slot = slot;
}

/* A member whose value is null is absent, as if its key had not been there: the same key may follow. The key is
 * the last one recorded (a null holds no keys), so taking it out of the open addressing breaks no probe chain. */
static void jz_drop_if_null(jp *j) {
    jctx *z = j->z;
    const unsigned char *v = z->json + z->keys[z->nkeys - 1].value;
    while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r') v++;
    if (*v != 'n') return;
    z->slots[z->last_slot] = 0;
    z->nkeys--;
}

/* The value of the key just recorded starts here. */
static void jz_set_value(jp *j) { j->z->keys[j->z->nkeys - 1].value = (uint32_t)(j->p - j->s); }

static int rs_lazy_index(lua_State *L);

/* Pushes the per-state checker, creating it (and the storage's metatable) on first use. */
static jctx *jz_push(lua_State *L) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_jctx) == LUA_TUSERDATA) return lua_touserdata(L, -1);
    lua_pop(L, 1);
    jctx *z = lua_newuserdatauv(L, sizeof *z, UV_COUNT);
    memset(z, 0, sizeof *z);
    int zidx = lua_gettop(L);
    z->keys_cap = 16;
    z->keys = jz_grow(L, zidx, UV_KEYS, NULL, 0, z->keys_cap * sizeof *z->keys);
    z->slots_cap = JZ_MIN_SLOTS;
    z->slots = jz_grow(L, zidx, UV_SLOTS, NULL, 0, z->slots_cap * sizeof *z->slots);
    z->arena_cap = 256;
    z->arena = jz_grow(L, zidx, UV_ARENA, NULL, 0, z->arena_cap);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, zidx);
    lua_pushcclosure(L, rs_lazy_index, 1);
    lua_setfield(L, -2, "__index");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_lazy_meta);
    lua_pushvalue(L, zidx);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_jctx);
    return z;
}

static void jz_forget_text(jctx *z) { z->json = NULL; }

/* Makes the checker z (at zidx) ready to check `text`, whose keys it will point into; no storage is recognised as
 * the context's until one is made for it (so a check that fails leaves nothing that could read the text later). */
static void jz_start(lua_State *L, jctx *z, int zidx, const unsigned char *text, size_t len, uint32_t max_depth) {
    z->json = NULL;
    z->storage = NULL;
    lua_pushnil(L);
    lua_setiuservalue(L, zidx, UV_STORAGE);
    z->nkeys = 0;
    z->arena_len = 0;
    z->next_obj = 0;
    /* Sized for the keys the text can hold at about eight bytes a member, within what earlier contexts grew to. */
    uint32_t slots = JZ_MIN_SLOTS;
    while (slots < len / 4 && slots < z->slots_cap) slots *= 2;
    z->mask = slots - 1;
    memset(z->slots, 0, slots * sizeof *z->slots);
    z->json = text; /* keys point into it while checking */
    z->json_len = len;
    z->max_depth = max_depth;
}

/* Pushes top-level member k of the context being read (nil for null), converted whole. The text was checked. */
static void jz_convert(lua_State *L, jctx *z, jkey *k) {
    jp j = {L, z->json, z->json + k->value, z->json + z->json_len, z->max_depth, UINT32_MAX, UINT32_MAX, true,
            true, NULL, 0, NULL, 0, 0, false, NULL, 0, 0};
    jp_value(&j, 1);
    k->converted = 1;
}

/* The member named by the string at `key` of the storage at `storage`, if that storage is the one being read and
 * the member was not read yet: pushes it (and keeps it in the storage) and returns true. */
static bool jz_fetch(lua_State *L, jctx *z, int storage, int key) {
    if (z->json == NULL || lua_type(L, key) != LUA_TSTRING) return false;
    if (lua_topointer(L, storage) != z->storage) return false;
    size_t len;
    const char *bytes = lua_tolstring(L, key, &len);
    uint32_t hash = jz_hash((const unsigned char *)bytes, len, 0);
    uint32_t slot = jz_probe(z, 0, hash, (const unsigned char *)bytes, len);
    if (z->slots[slot] == 0) return false;
    jkey *k = &z->keys[z->slots[slot] - 1];
    if (k->converted) return false;
    jz_convert(L, z, k);
    if (!lua_isnil(L, -1)) {
        lua_pushvalue(L, key);
        lua_pushvalue(L, -2);
        lua_rawset(L, storage);
    }
    return true;
}

/* __index of a storage being read lazily. Upvalue: the checker. */
static int rs_lazy_index(lua_State *L) {
    jctx *z = lua_touserdata(L, lua_upvalueindex(1));
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    if (!jz_fetch(L, z, 1, 2)) lua_pushnil(L);
    return 1;
}

bool rs_push_json_context(lua_State *L, const char *json, size_t len, uint32_t max_depth, uint32_t max_values) {
    rs_state *S = rs_state_of(L);
    int mode = S->context_mode;
    const unsigned char *text = (const unsigned char *)json, *first = text;
    while (first < text + len && (*first == ' ' || *first == '\t' || *first == '\n' || *first == '\r')) first++;
    bool whole = mode == RS_CONTEXTS_WHOLE || (mode == RS_CONTEXTS_BY_SIZE && len < RS_LAZY_CONTEXT_BYTES) ||
                 first == text + len;
    /* A rule whose keys are known has the other members left out (checked, not converted), whatever the size: with
     * one key read, against checking the text and converting on first read, 10 members cost 4,490 instructions
     * against 9,970, 100 members 29,300 against 55,400, and 1,000 members 400,000 against 495,000. When the key
     * cache cannot tell the members left out apart (a key with escapes it does not hold, or a key evicted after
     * its member was met), the context is converted as for any rule. */
    uint64_t filter = S->context_filter;
    if (filter != 0 && mode != RS_CONTEXTS_LAZY && push_json_object(L, json, len, max_depth, max_values, filter))
        return false;
    if (whole) {
        push_json_object(L, json, len, max_depth, max_values, 0);
        return false;
    }
    jctx *z = jz_push(L);
    int zidx = lua_gettop(L);
    jp j = {L,     text,  first, text + len, max_depth, max_values, max_values, false, false,
            z,     zidx,  NULL,  0,          0,         false,      NULL,       0,     0};
    /* Nothing is read from the last context any more. */
    jz_start(L, z, zidx, text, len, max_depth);
    if (*j.p != '{') jp_fail(&j, "expected an object");
    jp_value(&j, 0);
    jp_ws(&j);
    if (j.p != j.end) {
        z->json = NULL;
        jp_fail(&j, "trailing data after the object");
    }
    uint32_t members = 0;
    for (uint32_t i = 0; i < z->nkeys; i++) members += z->keys[i].obj == 0;
    lua_createtable(L, 0, (int)(members < 64 ? members : 64));
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_lazy_meta);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, zidx, UV_STORAGE);
    z->storage = lua_topointer(L, -1);
    lua_remove(L, zidx);
    rs_make_readonly_context(L);
    return true;
}

void rs_complete_context(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_lazy_meta);
    bool lazy = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!lazy) return;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_jctx);
    jctx *z = lua_touserdata(L, -1);
    if (z->json != NULL && lua_topointer(L, idx) == z->storage) {
        luaL_checkstack(L, 12, "completing the context");
        for (uint32_t i = 0; i < z->nkeys; i++) {
            jkey *k = &z->keys[i];
            if (k->obj != 0 || k->converted) continue;
            jz_convert(L, z, k);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                continue;
            }
            lua_pushlstring(L, (const char *)jz_key_bytes(z, k), k->len);
            lua_insert(L, -2);
            lua_rawset(L, idx);
        }
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setmetatable(L, idx);
}

void rs_push_context_storage(lua_State *L, int idx) {
    lua_getmetatable(L, idx);
    lua_pushliteral(L, "__rs_storage");
    lua_rawget(L, -2);
    lua_remove(L, -2);
}

int rs_context_rawget(lua_State *L, int storage) {
    storage = lua_absindex(L, storage);
    lua_pushvalue(L, -1);
    int type = lua_rawget(L, storage);
    if (type != LUA_TNIL || !lua_getmetatable(L, storage)) {
        lua_remove(L, -2);
        return type;
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_lazy_meta);
    bool lazy = lua_rawequal(L, -1, -2);
    lua_pop(L, 3); /* the metatables and the nil */
    if (lazy) {
        int key = lua_gettop(L);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &key_jctx);
        jctx *z = lua_touserdata(L, -1);
        if (jz_fetch(L, z, storage, key)) {
            lua_replace(L, key);
            lua_settop(L, key);
            return lua_type(L, -1);
        }
        lua_settop(L, key);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNIL;
}

void rs_context_end(lua_State *L) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_jctx) == LUA_TUSERDATA) {
        jctx *z = lua_touserdata(L, -1);
        z->json = NULL;
        z->storage = NULL;
        lua_pushnil(L);
        lua_setiuservalue(L, -2, UV_STORAGE);
    }
    lua_pop(L, 1);
}

int rs_set_context_mode(lua_State *L) {
    rs_state_of(L)->context_mode = (int)lua_tointeger(L, 1);
    return 0;
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
