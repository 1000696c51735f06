/*
 * rs_helpers.c - native helper functions offered to rules: split, rollout, starts_with, ends_with, semver.compare,
 * semver.match and ip.in_cidr.
 *
 * They run on every request's hot path, so they are plain C functions without upvalues (the sandbox rejects C
 * closures with upvalues in rule data) and allocate nothing. Tables are read through lua_geti/luaL_len, never raw:
 * tables built at load time (a file-level bucket list or CIDR list) are frozen into read-only proxies, empty
 * tables whose metatable forwards to the real storage, so a raw read would see them empty. A user metamethod that
 * runs this way is ordinary Lua code under the same instruction budget.
 *
 * Error policy, the same for every helper: what the rule author wrote (bucket lists, seeds, operators, reference
 * versions, CIDRs) is validated on every call and raises an error naming the helper when it is wrong, because that
 * is a bug in the rule that should fail loudly and deterministically. What comes from the request context (the
 * unit, the version or address being tested) may be missing or garbage, so it never raises: the helper returns
 * nil or false instead. Arguments are validated before the context value is inspected, so a broken rule fails on
 * every request and not only on those that happen to carry a usable value.
 */
#include <arpa/inet.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "rs_internal.h"

/*
 * Charges the budget for the string arguments among the first `count`: hashing a unit, comparing an affix,
 * scanning a version or a CIDR all take time proportional to the string, and the count hook sees none of it.
 * Without this, a loop calling a helper on a string of many megabytes overran the deadline by seconds.
 */
/* The steps that reading the string arguments among the first `count` costs, at `bytes_per_step` bytes a step. */
static uint64_t string_steps(lua_State *L, int count, uint64_t bytes_per_step)
{
    uint64_t bytes = 0;
    for (int i = 1; i <= count; i++)
        if (lua_type(L, i) == LUA_TSTRING)
            bytes += lua_rawlen(L, i);
    return bytes / bytes_per_step;
}

static void charge_strings(lua_State *L, int count, uint64_t bytes_per_step)
{
    rs_charge(L, string_steps(L, count, bytes_per_step));
}

/* Length of the list at `idx` as the # operator sees it (frozen proxies answer through __len); a negative answer
 * from a user __len counts as empty. */
static lua_Integer checked_len(lua_State *L, int idx)
{
    lua_Integer n = luaL_len(L, idx);
    return n < 0 ? 0 : n;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* MurmurHash3 x86_32                                                                                             */
/* ------------------------------------------------------------------------------------------------------------ */

/*
 * Streaming form of Austin Appleby's MurmurHash3_x86_32. flagd hashes the concatenation seed .. unit; feeding the
 * two pieces one after the other gives the same result as hashing the joined string, without building that string
 * (no allocation on the hot path, no Lua string interning of throwaway keys).
 */
typedef struct murmur3_state {
    uint32_t h;
    uint32_t total_len; /* the algorithm mixes in the length modulo 2^32 */
    uint8_t pending[4]; /* bytes of an incomplete block carried over between updates */
    size_t npending;
} murmur3_state;

#define MURMUR3_C1 0xcc9e2d51u
#define MURMUR3_C2 0x1b873593u

static inline uint32_t rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

static inline uint32_t murmur3_scramble(uint32_t k)
{
    k *= MURMUR3_C1;
    k = rotl32(k, 15);
    k *= MURMUR3_C2;
    return k;
}

/* Reads a 4-byte block as the little-endian integer the algorithm specifies. memcpy keeps the read legal at any
 * alignment; the swap keeps the hash identical on a big-endian host. */
static inline uint32_t read_le32(const uint8_t *p)
{
    uint32_t k;
    memcpy(&k, p, sizeof k);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    k = __builtin_bswap32(k);
#endif
    return k;
}

static inline void murmur3_block(murmur3_state *st, uint32_t k)
{
    st->h ^= murmur3_scramble(k);
    st->h = rotl32(st->h, 13);
    st->h = st->h * 5u + 0xe6546b64u;
}

static void murmur3_init(murmur3_state *st, uint32_t seed)
{
    st->h = seed;
    st->total_len = 0;
    st->npending = 0;
}

static void murmur3_update(murmur3_state *st, const void *data, size_t len)
{
    const uint8_t *p = data;
    st->total_len += (uint32_t)len;
    /* Complete a block left over from the previous piece first. */
    while (st->npending > 0 && st->npending < 4 && len > 0) {
        st->pending[st->npending++] = *p++;
        len--;
    }
    if (st->npending == 4) {
        murmur3_block(st, read_le32(st->pending));
        st->npending = 0;
    }
    for (; len >= 4; p += 4, len -= 4)
        murmur3_block(st, read_le32(p));
    /* Keep the tail: it may be completed by the next piece. */
    for (; len > 0; len--)
        st->pending[st->npending++] = *p++;
}

static uint32_t murmur3_final(murmur3_state *st)
{
    uint32_t h = st->h;
    if (st->npending > 0) {
        /* The tail is read little-endian too, zero-padded. */
        uint32_t k = 0;
        for (size_t i = st->npending; i-- > 0;)
            k = (k << 8) | st->pending[i];
        h ^= murmur3_scramble(k);
    }
    h ^= st->total_len;
    /* fmix32: final avalanche */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/*
 * One-shot hash. Not declared in rs_internal.h (the helpers are its only user in the sandbox); it has external
 * linkage so that the C tests can check it against the reference vectors directly.
 */
uint32_t rs_murmur3_x86_32(const void *data, size_t len, uint32_t seed);

uint32_t rs_murmur3_x86_32(const void *data, size_t len, uint32_t seed)
{
    murmur3_state st;
    murmur3_init(&st, seed);
    murmur3_update(&st, data, len);
    return murmur3_final(&st);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* split and rollout                                                                                              */
/* ------------------------------------------------------------------------------------------------------------ */

/* Bucket weights and their total stay below 2^32 so that hash * total fits in 64 bits. */
#define WEIGHT_LIMIT (UINT64_C(1) << 32)

/* rollout's weights are percentages scaled by this, so that percents down to 0.001 are honoured. */
#define ROLLOUT_SCALE 1000

/*
 * The hash seed of split/rollout: the explicit seed argument at `idx` (of type t), or else the key of the flag or
 * route being evaluated, which makes cohorts independent from one flag to the next, exactly as flagd's implicit seed
 * does.
 */
static const char *hash_seed_of_type(lua_State *L, int idx, int t, const char *fname, size_t *len)
{
    if (t == LUA_TSTRING)
        return lua_tolstring(L, idx, len);
    if (t != LUA_TNONE && t != LUA_TNIL)
        luaL_error(L, "%s: seed must be a string", fname);
    const char *key = rs_current_key(L, len);
    if (key == NULL)
        luaL_error(L, "%s: a seed is required outside rules (no flag or route is being evaluated)", fname);
    return key;
}

static const char *hash_seed(lua_State *L, int idx, const char *fname, size_t *len)
{
    return hash_seed_of_type(L, idx, lua_type(L, idx), fname, len);
}

/*
 * flagd's "v2" bucketing point: b = (h * total) >> 32 with h = murmur3(seed .. unit, 0). b is uniform over
 * [0, total) up to rounding and, unlike a floating-point ratio, exact and identical on every platform.
 */
static uint64_t bucket_point(const char *seed, size_t seed_len, const char *unit, size_t unit_len, uint64_t total)
{
    murmur3_state st;
    murmur3_init(&st, 0);
    murmur3_update(&st, seed, seed_len);
    murmur3_update(&st, unit, unit_len);
    uint64_t h = murmur3_final(&st);
    return (h * total) >> 32;
}

/*
 * Weight of bucket i of the bucket list at `tidx`, clamped to [0, WEIGHT_LIMIT] (anything at the limit makes the
 * total check fail). Raises an error naming the bucket when it is malformed. Leaves the stack as it found it.
 */
static uint64_t bucket_weight(lua_State *L, int tidx, lua_Integer i)
{
    if (lua_geti(L, tidx, i) != LUA_TTABLE)
        luaL_error(L, "split: bucket %I must be a table {value, weight}", (LUAI_UACINT)i);
    if (lua_geti(L, -1, 1) == LUA_TNIL)
        luaL_error(L, "split: bucket %I has no value", (LUAI_UACINT)i);
    lua_pop(L, 1);

    uint64_t weight;
    int t = lua_geti(L, -1, 2);
    if (t == LUA_TNIL) {
        weight = 1; /* flagd's shorthand ["heads"] */
    } else if (t == LUA_TNUMBER) {
        int isint = 0;
        lua_Integer w = lua_tointegerx(L, -1, &isint);
        if (isint) {
            weight = w <= 0 ? 0 : (uint64_t)w >= WEIGHT_LIMIT ? WEIGHT_LIMIT : (uint64_t)w;
        } else {
            /* A float with an integral value converts above; what is left is either not integral or beyond the
             * 64-bit range, where every double is integral (only its sign then matters). */
            lua_Number d = lua_tonumber(L, -1);
            if (!isfinite(d) || (d > -9007199254740992.0 && d < 9007199254740992.0))
                luaL_error(L, "split: bucket %I weight must be an integer", (LUAI_UACINT)i);
            weight = d < 0 ? 0 : WEIGHT_LIMIT;
        }
    } else {
        luaL_error(L, "split: bucket %I weight must be an integer", (LUAI_UACINT)i);
        return 0; /* not reached */
    }
    lua_pop(L, 2);
    return weight;
}

/* split(unit, buckets [, seed]) -> the value of the chosen bucket, or nil */
static int h_split(lua_State *L)
{
    /* Resolve the seed first so that a bad or missing one fails on every call. The pointer is fetched again just
     * before hashing: reading the buckets may run a metamethod, which could evaluate another flag and so move the
     * current key. */
    size_t seed_len;
    (void)hash_seed(L, 3, "split", &seed_len);
    charge_strings(L, 3, 16);
    if (!lua_istable(L, 2))
        return luaL_error(L, "split: buckets must be a table of {value, weight} tables");

    lua_Integer n = checked_len(L, 2);
    rs_charge(L, (uint64_t)n);

    /* First pass: validate every bucket (even when the unit is unusable) and total the weights. */
    uint64_t total = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        total += bucket_weight(L, 2, i);
        if (total >= WEIGHT_LIMIT)
            return luaL_error(L, "split: total weight must be below 2^32");
    }

    /* Only a string is a unit: flagd returns null for a missing or non-string bucketing key. */
    if (lua_type(L, 1) != LUA_TSTRING || total == 0) {
        lua_pushnil(L);
        if (rs_tracing(L)) {
            const char *why = lua_type(L, 1) != LUA_TSTRING ? "\"why\":\"the unit is not a string\""
                                                            : "\"why\":\"every weight is 0\"";
            rs_trace_call(L, "split", lua_type(L, 3) == LUA_TSTRING ? 3 : 2, -1, why);
        }
        return 1;
    }
    size_t unit_len;
    const char *unit = lua_tolstring(L, 1, &unit_len);
    const char *seed = hash_seed(L, 3, "split", &seed_len);
    uint64_t b = bucket_point(seed, seed_len, unit, unit_len, total);

    /* Second pass: b < total, so some bucket's running sum exceeds it; zero-weight buckets never win. The
     * weights are read again rather than kept: the list may be arbitrarily long. */
    uint64_t running = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        uint64_t weight = bucket_weight(L, 2, i);
        running += weight;
        if (running > b) {
            lua_geti(L, 2, i);
            lua_geti(L, -1, 1);
            if (rs_tracing(L)) {
                char extra[200];
                snprintf(extra, sizeof extra,
                         "\"bucket\":%llu,\"total\":%llu,\"chosen\":%lld,\"range\":[%llu,%llu]",
                         (unsigned long long)b, (unsigned long long)total, (long long)i,
                         (unsigned long long)(running - weight), (unsigned long long)running);
                rs_trace_call(L, "split", lua_type(L, 3) == LUA_TSTRING ? 3 : 2, -1, extra);
            }
            return 1;
        }
    }
    /* Reached only if a user metamethod answered differently on the second pass: no decision. */
    lua_pushnil(L);
    return 1;
}

/*
 * rollout(unit, percent [, seed]) -> true / false, or nil for a non-string unit.
 *
 * The same math as split(unit, {{true, w}, {false, 100000 - w}}, seed) with w = round(percent * 1000), so percents
 * are honoured to 0.001. For an integer percent p this picks exactly the side that split with weights {p, 100 - p}
 * picks, so rules moving between the two (or from flagd's fractional) keep their cohorts. Proof: with h < 2^32 the
 * hash, split with weights {a, T - a} picks the first bucket iff floor(h * T / 2^32) < a, which for an integer a is
 * equivalent to h * T / 2^32 < a, i.e. h * T < a * 2^32. With weights {p, 100 - p}: h * 100 < p * 2^32. With
 * weights {1000p, 1000(100 - p)}: h * 100000 < 1000p * 2^32, the same inequality multiplied by 1000. The two
 * conditions are equivalent for every h, so the sides agree (including p = 0, never true, and p = 100, always).
 */
static int h_rollout(lua_State *L)
{
    /* Each argument's type is asked once, and an integer percent read as one: this runs for every rollout. */
    size_t seed_len;
    int seed_type = lua_type(L, 3);
    const char *seed = hash_seed_of_type(L, 3, seed_type, "rollout", &seed_len);
    if (lua_type(L, 2) != LUA_TNUMBER)
        return luaL_error(L, "rollout: percent must be a number");
    lua_Number p = lua_isinteger(L, 2) ? (lua_Number)lua_tointeger(L, 2) : lua_tonumber(L, 2);
    if (isnan(p))
        return luaL_error(L, "rollout: percent must not be NaN");
    if (p < 0)
        p = 0;
    if (p > 100)
        p = 100;
    /* p * 1000 lies in [0, 100000]; adding 0.5 before truncating rounds to nearest for these non-negative values. */
    uint64_t on = (uint64_t)(p * ROLLOUT_SCALE + 0.5);
    const uint64_t total = 100 * ROLLOUT_SCALE;
    if (on > total)
        on = total;
    /* The strings' bytes (the unit's, and the seed's when it is an argument), and a walk over two buckets as split
     * would charge: one charge before any hashing. */
    size_t unit_len = 0;
    const char *unit = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &unit_len) : NULL;
    size_t seed_bytes = seed_type == LUA_TSTRING ? seed_len : 0;
    rs_charge(L, (unit_len + seed_bytes) / 16 + 2);

    if (unit == NULL) {
        lua_pushnil(L);
        if (rs_tracing(L))
            rs_trace_call(L, "rollout", lua_type(L, 3) == LUA_TSTRING ? 3 : 2, -1,
                          "\"why\":\"the unit is not a string\"");
        return 1;
    }
    /* Walking {true, on}, {false, total - on}: the first bucket wins iff its running sum `on` exceeds b. */
    uint64_t b = bucket_point(seed, seed_len, unit, unit_len, total);
    lua_pushboolean(L, b < on);
    if (rs_tracing(L)) {
        char extra[160];
        snprintf(extra, sizeof extra, "\"bucket\":%llu,\"total\":%llu,\"threshold\":%llu", (unsigned long long)b,
                 (unsigned long long)total, (unsigned long long)on);
        rs_trace_call(L, "rollout", lua_type(L, 3) == LUA_TSTRING ? 3 : 2, -1, extra);
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* starts_with and ends_with                                                                                      */
/* ------------------------------------------------------------------------------------------------------------ */

/* Shared body: the affix is the rule author's (must be a string), the subject may be a missing context field. */
static int affix_test(lua_State *L, const char *fname, const char *what, bool at_end)
{
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "%s: %s must be a string", fname, what);
    charge_strings(L, 2, 16);
    size_t alen, slen;
    const char *affix = lua_tolstring(L, 2, &alen);
    bool result = false;
    if (lua_type(L, 1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, 1, &slen);
        result = slen >= alen && memcmp(at_end ? s + (slen - alen) : s, affix, alen) == 0;
    }
    lua_pushboolean(L, result);
    if (rs_tracing(L))
        rs_trace_call(L, fname, 2, -1, NULL);
    return 1;
}

/* starts_with(s, prefix) -> boolean */
static int h_starts_with(lua_State *L)
{
    return affix_test(L, "starts_with", "prefix", false);
}

/* ends_with(s, suffix) -> boolean */
static int h_ends_with(lua_State *L)
{
    return affix_test(L, "ends_with", "suffix", true);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* semver                                                                                                         */
/* ------------------------------------------------------------------------------------------------------------ */

/* A parsed version. The pre-release points into the text it was parsed from; build metadata is validated but not
 * kept, since it never takes part in precedence (SemVer 2.0.0 §10). */
typedef struct semver {
    uint64_t core[3];   /* MAJOR, MINOR, PATCH */
    const char *pre;    /* dot-separated pre-release identifiers without the '-', NULL when there are none */
    size_t pre_len;
} semver;

/* Room for the text of any Lua number ("%.14g" or a 64-bit integer). */
#define SEMVER_NUMBUF 64

static inline bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static inline bool is_ident_char(char c)
{
    return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '-';
}

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_digit(s[i]))
            return false;
    return true;
}

/* Parses the digits s[0..n) (n > 0, all digits) as a number; false when it needs more than 64 bits. */
static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* A SemVer numeric identifier: digits only, no leading zero (except "0" itself), fitting in 64 bits. */
static bool parse_numeric_ident(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || (n > 1 && s[0] == '0') || !all_digits(s, n))
        return false;
    return parse_u64(s, n, out);
}

/*
 * Validates dot-separated identifiers s[0..n): each non-empty and made of [0-9A-Za-z-]. For pre-release
 * identifiers (`numeric_rules`), an all-digit identifier must also be a valid numeric identifier; build identifiers
 * may have leading zeros (SemVer 2.0.0 §9, §10).
 */
static bool valid_idents(const char *s, size_t n, bool numeric_rules)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '.') {
            if (!is_ident_char(s[i]))
                return false;
            continue;
        }
        size_t len = i - start;
        if (len == 0)
            return false;
        uint64_t unused;
        if (numeric_rules && all_digits(s + start, len) && !parse_numeric_ident(s + start, len, &unused))
            return false;
        start = i + 1;
    }
    return true;
}

/*
 * Parses [vV]MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD] from s[0..n). Missing MINOR/PATCH are 0, as flagd reads
 * "1" as 1.0.0. Nothing else is tolerated: no surrounding spaces, no leading zeros, no empty identifiers.
 */
static bool semver_parse(const char *s, size_t n, semver *v)
{
    size_t i = 0;
    if (i < n && (s[i] == 'v' || s[i] == 'V'))
        i++;
    for (int part = 0; part < 3; part++) {
        v->core[part] = 0;
        if (part > 0) {
            if (i >= n || s[i] != '.')
                continue; /* a shortened version: the remaining parts stay 0 */
            i++;
        }
        size_t start = i;
        while (i < n && is_digit(s[i]))
            i++;
        if (!parse_numeric_ident(s + start, i - start, &v->core[part]))
            return false;
    }
    v->pre = NULL;
    v->pre_len = 0;
    if (i < n && s[i] == '-') {
        size_t start = ++i;
        while (i < n && s[i] != '+')
            i++;
        if (!valid_idents(s + start, i - start, true))
            return false;
        v->pre = s + start;
        v->pre_len = i - start;
    }
    if (i < n && s[i] == '+') {
        i++;
        if (!valid_idents(s + i, n - i, false))
            return false;
        i = n;
    }
    return i == n;
}

/*
 * Parses the Lua value at `idx` as a version: a string, or a number read through its decimal text (integer 1 is
 * "1", i.e. 1.0.0, as flagd coerces JSON numbers). `buf` holds that text and must outlive `v`. Any other type, or
 * text that is not a version, gives false.
 */
static bool semver_from_lua(lua_State *L, int idx, char buf[SEMVER_NUMBUF], semver *v)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return semver_parse(s, n, v);
    }
    case LUA_TNUMBER: {
        int isint = 0;
        /* A float with an integral value reads like the integer (2.0 is "2"), as a JSON number would. */
        lua_Integer i = lua_tointegerx(L, idx, &isint);
        int len = isint ? snprintf(buf, SEMVER_NUMBUF, LUA_INTEGER_FMT, (LUAI_UACINT)i)
                        : snprintf(buf, SEMVER_NUMBUF, LUA_NUMBER_FMT, (LUAI_UACNUMBER)lua_tonumber(L, idx));
        if (len < 0 || len >= SEMVER_NUMBUF)
            return false;
        return semver_parse(buf, (size_t)len, v);
    }
    default:
        return false;
    }
}

static inline int cmp_u64(uint64_t a, uint64_t b)
{
    return (a > b) - (a < b);
}

/* One pre-release identifier against another (SemVer 2.0.0 §11.4.1-3); both already validated. */
static int compare_ident(const char *a, size_t an, const char *b, size_t bn)
{
    bool a_num = all_digits(a, an), b_num = all_digits(b, bn);
    if (a_num && b_num) {
        uint64_t x = 0, y = 0;
        parse_u64(a, an, &x);
        parse_u64(b, bn, &y);
        return cmp_u64(x, y);
    }
    if (a_num != b_num)
        return a_num ? -1 : 1; /* numeric identifiers have lower precedence than alphanumeric ones */
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c != 0)
        return c < 0 ? -1 : 1;
    return cmp_u64(an, bn); /* ASCII order: a proper prefix sorts first */
}

/* Two non-empty pre-release strings, field by field (SemVer 2.0.0 §11.4). */
static int compare_prerelease(const char *a, size_t an, const char *b, size_t bn)
{
    size_t i = 0, j = 0;
    for (;;) {
        bool a_more = i < an, b_more = j < bn;
        if (!a_more || !b_more)
            return (int)a_more - (int)b_more; /* all equal so far: the larger set of fields wins */
        size_t ia = i, jb = j;
        while (i < an && a[i] != '.')
            i++;
        while (j < bn && b[j] != '.')
            j++;
        int c = compare_ident(a + ia, i - ia, b + jb, j - jb);
        if (c != 0)
            return c;
        i++; /* past the dot, or past the end after the last field */
        j++;
    }
}

static int semver_compare(const semver *a, const semver *b)
{
    for (int part = 0; part < 3; part++) {
        int c = cmp_u64(a->core[part], b->core[part]);
        if (c != 0)
            return c;
    }
    if (a->pre == NULL || b->pre == NULL)
        return (a->pre == NULL) - (b->pre == NULL); /* a pre-release sorts before its release */
    return compare_prerelease(a->pre, a->pre_len, b->pre, b->pre_len);
}

/* semver.compare(a, b) -> -1, 0, 1, or nil when either side is not a version */
static int h_semver_compare(lua_State *L)
{
    char abuf[SEMVER_NUMBUF], bbuf[SEMVER_NUMBUF];
    semver a, b;
    charge_strings(L, 2, 4);
    if (!semver_from_lua(L, 1, abuf, &a) || !semver_from_lua(L, 2, bbuf, &b)) {
        lua_pushnil(L);
    } else {
        lua_pushinteger(L, semver_compare(&a, &b));
    }
    if (rs_tracing(L))
        rs_trace_call(L, "semver.compare", 2, -1, NULL);
    return 1;
}

typedef enum semver_op { OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_CARET, OP_TILDE } semver_op;

static const struct {
    const char *name;
    semver_op op;
} semver_ops[] = {
    {"=", OP_EQ},  {"==", OP_EQ}, {"!=", OP_NE}, {"~=", OP_NE},   {"<", OP_LT},
    {"<=", OP_LE}, {">", OP_GT},  {">=", OP_GE}, {"^", OP_CARET}, {"~", OP_TILDE},
};

/*
 * semver.match(v, op, ref) -> boolean. "^" and "~" follow flagd (not npm): "^" means the same MAJOR and "~" the
 * same MAJOR and MINOR, whatever the rest, even for 0.x versions and pre-releases.
 */
static int h_semver_match(lua_State *L)
{
    charge_strings(L, 3, 4);
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "semver.match: operator must be a string");
    size_t oplen;
    const char *opname = lua_tolstring(L, 2, &oplen);
    size_t k = 0, nops = sizeof semver_ops / sizeof semver_ops[0];
    while (k < nops && !(strlen(semver_ops[k].name) == oplen && memcmp(semver_ops[k].name, opname, oplen) == 0))
        k++;
    if (k == nops)
        return luaL_error(L, "semver.match: unknown operator '%s'", opname);

    char rbuf[SEMVER_NUMBUF], vbuf[SEMVER_NUMBUF];
    semver ref, v;
    if (!semver_from_lua(L, 3, rbuf, &ref)) {
        int t = lua_type(L, 3);
        if (t == LUA_TSTRING || t == LUA_TNUMBER)
            return luaL_error(L, "semver.match: invalid reference version '%s'", luaL_tolstring(L, 3, NULL));
        return luaL_error(L, "semver.match: reference version must be a version string or number, got %s",
                          luaL_typename(L, 3));
    }
    if (!semver_from_lua(L, 1, vbuf, &v)) {
        lua_pushboolean(L, false);
        if (rs_tracing(L))
            rs_trace_call(L, "semver.match", 3, -1, "\"why\":\"not a version\"");
        return 1;
    }

    int c = semver_compare(&v, &ref);
    bool result = false;
    switch (semver_ops[k].op) {
    case OP_EQ: result = c == 0; break;
    case OP_NE: result = c != 0; break;
    case OP_LT: result = c < 0; break;
    case OP_LE: result = c <= 0; break;
    case OP_GT: result = c > 0; break;
    case OP_GE: result = c >= 0; break;
    case OP_CARET: result = v.core[0] == ref.core[0]; break;
    case OP_TILDE: result = v.core[0] == ref.core[0] && v.core[1] == ref.core[1]; break;
    }
    lua_pushboolean(L, result);
    if (rs_tracing(L))
        rs_trace_call(L, "semver.match", 3, -1, NULL);
    return 1;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* ip.in_cidr                                                                                                     */
/* ------------------------------------------------------------------------------------------------------------ */

/* An address in network byte order. IPv4 (and IPv4-mapped IPv6) addresses use the first 4 bytes. */
typedef struct ip_addr {
    int bits; /* 32 or 128 */
    unsigned char b[16];
} ip_addr;

static const unsigned char v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/*
 * Parses a bare address s[0..n) with inet_pton. The text is copied to NUL-terminate it, which also lets an
 * embedded NUL be refused rather than silently ending the address early. Zone ids ("fe80::1%eth0") are refused
 * even where the platform's inet_pton might take them: a zone names a local interface, meaningless in a rule.
 * ::ffff:a.b.c.d becomes a.b.c.d, so one rule covers clients seen through a dual-stack socket; `mapped` tells the
 * caller it happened (a CIDR's prefix length must then be rebased).
 */
static bool parse_ip(const char *s, size_t n, ip_addr *out, bool *mapped)
{
    char buf[INET6_ADDRSTRLEN];
    *mapped = false;
    if (n == 0 || n >= sizeof buf || memchr(s, '\0', n) != NULL || memchr(s, '%', n) != NULL)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (inet_pton(AF_INET, buf, out->b) == 1) {
        out->bits = 32;
        return true;
    }
    if (inet_pton(AF_INET6, buf, out->b) != 1)
        return false;
    if (memcmp(out->b, v4_mapped_prefix, sizeof v4_mapped_prefix) == 0) {
        memmove(out->b, out->b + 12, 4);
        out->bits = 32;
        *mapped = true;
        return true;
    }
    out->bits = 128;
    return true;
}

typedef struct ip_net {
    ip_addr addr;
    int prefix; /* 0..addr.bits */
} ip_net;

/*
 * Parses "addr/len" or a bare "addr" (a single host) or raises an error naming the CIDR. Host bits below the
 * prefix are allowed and ignored ("10.1.2.3/8" is 10.0.0.0/8), as in most allow lists. The prefix length is plain
 * decimal without sign or leading zeros. A mapped address in a CIDR needs a prefix of at least 96: a shorter one
 * would span IPv6 space outside the mapped range, which has no IPv4 meaning.
 */
static void parse_cidr(lua_State *L, const char *s, size_t n, ip_net *net)
{
    rs_charge(L, n / 16); /* the search for '/' (and an error message quoting the CIDR) cost its length */
    const char *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n;
    bool mapped;
    if (!parse_ip(s, alen, &net->addr, &mapped))
        luaL_error(L, "ip.in_cidr: invalid address in CIDR '%s'", s);
    int max_bits = mapped ? 128 : net->addr.bits;
    int prefix = max_bits;
    if (slash != NULL) {
        const char *p = slash + 1;
        size_t plen = n - alen - 1;
        bool ok = plen >= 1 && plen <= 3 && !(plen > 1 && p[0] == '0') && all_digits(p, plen);
        prefix = 0;
        for (size_t i = 0; ok && i < plen; i++)
            prefix = prefix * 10 + (p[i] - '0');
        if (!ok || prefix > max_bits)
            luaL_error(L, "ip.in_cidr: invalid prefix length in CIDR '%s'", s);
    }
    if (mapped) {
        if (prefix < 96)
            luaL_error(L, "ip.in_cidr: invalid prefix length in CIDR '%s' (an IPv4-mapped address needs at least 96)",
                       s);
        prefix -= 96;
    }
    net->prefix = prefix;
}

static bool ip_in_net(const ip_addr *a, const ip_net *net)
{
    if (a->bits != net->addr.bits)
        return false;
    int full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(a->b, net->addr.b, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xffu << (8 - rest));
    return (a->b[full] & mask) == (net->addr.b[full] & mask);
}

/* ip.in_cidr(addr, cidr) -> boolean; cidr is a CIDR string or a list of them (true when any contains addr) */
static int h_ip_in_cidr(lua_State *L)
{
    ip_addr addr;
    bool mapped;
    size_t alen = 0;
    const char *astr = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &alen) : NULL;
    bool addr_ok = astr != NULL && parse_ip(astr, alen, &addr, &mapped);

    bool found = false;
    ip_net net;
    size_t n;
    switch (lua_type(L, 2)) {
    case LUA_TSTRING: {
        const char *s = lua_tolstring(L, 2, &n);
        parse_cidr(L, s, n, &net);
        found = addr_ok && ip_in_net(&addr, &net);
        break;
    }
    case LUA_TTABLE: {
        lua_Integer count = checked_len(L, 2);
        rs_charge(L, (uint64_t)count);
        /* Every entry is parsed even after a match, so a broken entry fails whatever the address. */
        for (lua_Integer i = 1; i <= count; i++) {
            if (lua_geti(L, 2, i) != LUA_TSTRING)
                return luaL_error(L, "ip.in_cidr: CIDR list entry %I must be a string", (LUAI_UACINT)i);
            const char *s = lua_tolstring(L, -1, &n);
            parse_cidr(L, s, n, &net);
            found = found || (addr_ok && ip_in_net(&addr, &net));
            lua_pop(L, 1);
        }
        break;
    }
    default:
        return luaL_error(L, "ip.in_cidr: cidr must be a CIDR string or a list of them");
    }
    lua_pushboolean(L, found);
    if (rs_tracing(L))
        rs_trace_call(L, "ip.in_cidr", 2, -1, addr_ok ? NULL : "\"why\":\"not an IP address\"");
    return 1;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Registration                                                                                                   */
/* ------------------------------------------------------------------------------------------------------------ */

bool rs_helper_runs_no_lua(lua_CFunction f)
{
    return f == h_split || f == h_rollout || f == h_starts_with || f == h_ends_with || f == h_semver_compare ||
           f == h_semver_match || f == h_ip_in_cidr;
}

void rs_open_helpers(lua_State *L)
{
    static const luaL_Reg top[] = {
        {"split", h_split},
        {"rollout", h_rollout},
        {"starts_with", h_starts_with},
        {"ends_with", h_ends_with},
        {NULL, NULL},
    };
    static const luaL_Reg semver_fns[] = {
        {"compare", h_semver_compare},
        {"match", h_semver_match},
        {NULL, NULL},
    };
    static const luaL_Reg ip_fns[] = {
        {"in_cidr", h_ip_in_cidr},
        {NULL, NULL},
    };

    /* Without upvalues (nup 0), each is a light C function, as the sandbox requires. */
    int t = lua_absindex(L, -1);
    luaL_checkstack(L, 3, "rs_open_helpers");
    luaL_setfuncs(L, top, 0);

    luaL_newlib(L, semver_fns);
    lua_setfield(L, t, "semver");

    luaL_newlib(L, ip_fns);
    lua_setfield(L, t, "ip");
}
