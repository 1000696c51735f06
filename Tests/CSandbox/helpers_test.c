// sources: rs_helpers.c
/*
 * helpers_test.c - tests of the native rule helpers (rs_helpers.c): MurmurHash3 x86_32, split and rollout against
 * flagd's "v2" fractional vectors, semver, ip.in_cidr, starts_with and ends_with.
 *
 * The helpers are registered into the globals of a plain Lua state; most checks are Lua chunks calling them, which
 * exercises them exactly as rules do (argument types, error messages, return values). The sandbox services the
 * helpers depend on are stubbed below: a counting rs_charge with an optional limit, and a settable current key
 * (NULL simulates load time).
 */
#include <inttypes.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rs_internal.h"

/* Exported by rs_helpers.c for these tests (not part of rs_internal.h). */
uint32_t rs_murmur3_x86_32(const void *data, size_t len, uint32_t seed);

static int checks, failures;

static void check(int ok, const char *label, const char *got, const char *want)
{
    checks++;
    if (!ok) {
        failures++;
        fprintf(stderr, "FAIL %s: got %s, want %s\n", label, got, want);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Stubs of the sandbox services                                                                                  */
/* ------------------------------------------------------------------------------------------------------------ */

static uint64_t charged;
static uint64_t charge_limit = UINT64_MAX;
static char current_key[256];
static int have_key;

void rs_charge(lua_State *L, uint64_t steps)
{
    charged += steps;
    if (charged > charge_limit)
        luaL_error(L, "budget exhausted");
}

int rs_resource_error(lua_State *L, const char *what)
{
    return luaL_error(L, "resource limit: %s", what);
}

/* Explain is off in these tests: the helpers only ask whether to record. */
rs_trace *rs_tracing(lua_State *L)
{
    (void)L;
    return NULL;
}

void rs_trace_call(lua_State *L, const char *name, int nargs, int result, const char *extra)
{
    (void)L, (void)name, (void)nargs, (void)result, (void)extra;
}

const char *rs_current_key(lua_State *L, size_t *len)
{
    (void)L;
    if (!have_key)
        return NULL;
    *len = strlen(current_key);
    return current_key;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Lua-side test support                                                                                          */
/* ------------------------------------------------------------------------------------------------------------ */

/* check(ok, label, got, want) */
static int l_check(lua_State *L)
{
    check(lua_toboolean(L, 1), luaL_checkstring(L, 2), luaL_optstring(L, 3, "?"), luaL_optstring(L, 4, "?"));
    return 0;
}

/* set_key(key or nil): the key of the flag being evaluated; nil means load time */
static int l_set_key(lua_State *L)
{
    have_key = !lua_isnoneornil(L, 1);
    if (have_key)
        snprintf(current_key, sizeof current_key, "%s", luaL_checkstring(L, 1));
    return 0;
}

/* charged() -> steps charged so far */
static int l_charged(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)charged);
    return 1;
}

/* set_limit(n or nil): make rs_charge fail once more than n steps are charged in total */
static int l_set_limit(lua_State *L)
{
    charge_limit = lua_isnoneornil(L, 1) ? UINT64_MAX : (uint64_t)luaL_checkinteger(L, 1);
    return 0;
}

static const char prelude[] =
    "local function show(v)\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  return tostring(v)\n"
    "end\n"
    "function eq(got, want, label) check(got == want, label, show(got), show(want)) end\n"
    "function raises(want, label, f, ...)\n"
    "  local ok, err = pcall(f, ...)\n"
    "  check(not ok and type(err) == 'string' and string.find(err, want, 1, true) ~= nil, label,\n"
    "        ok and 'no error' or show(err), 'an error containing ' .. show(want))\n"
    "end\n"
    /* What the sandbox does to tables that exist at load time (rs_freeze_table): their content moves to a hidden
     * storage and the emptied table forwards reads to it through __index and __len. */
    "function freeze(t)\n"
    "  local storage = {}\n"
    "  for k, v in pairs(t) do storage[k] = type(v) == 'table' and freeze(v) or v end\n"
    "  for k in pairs(storage) do t[k] = nil end\n"
    "  return setmetatable(t, {__index = storage, __len = function() return #storage end,\n"
    "                          __newindex = function() error('read-only table') end})\n"
    "end\n"
    "function raises_exact(want, label, f, ...)\n"
    "  local ok, err = pcall(f, ...)\n"
    "  check(not ok and err == want, label, ok and 'no error' or show(err), 'the error ' .. show(want))\n"
    "end\n";

static void run_chunk(lua_State *L, const char *name, const char *code)
{
    int top = lua_gettop(L);
    if (luaL_loadbuffer(L, code, strlen(code), name) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
        check(0, name, lua_tostring(L, -1), "the chunk to run to completion");
    }
    lua_settop(L, top);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* MurmurHash3 x86_32                                                                                             */
/* ------------------------------------------------------------------------------------------------------------ */

static void test_murmur3_vectors(void)
{
    static const struct {
        const char *data;
        size_t len;
        uint32_t seed, want;
    } vectors[] = {
        /* From the task brief. */
        {"", 0, 0, 0},
        {"hello", 5, 0, 0x248bfa47},
        {"The quick brown fox jumps over the lazy dog", 43, 0, 0x2e4ff723},
        /* flagd's hash-edge vectors (cases.json 34/35): exactly 2^31 and 2^31 - 1. */
        {"6LvT0", 5, 0, 0x80000000},
        {"SI7p-", 5, 0, 0x7fffffff},
        /* The widely published verification vectors for MurmurHash3_x86_32: seeds alone, every tail length, byte
         * order of the block read, and multi-byte UTF-8. */
        {"", 0, 1, 0x514e28b7},
        {"", 0, 0xffffffff, 0x81f16f39},
        {"\xff\xff\xff\xff", 4, 0, 0x76293b50},
        {"\x21\x43\x65\x87", 4, 0, 0xf55b516b},
        {"\x21\x43\x65\x87", 4, 0x5082edee, 0x2362f9de},
        {"\x21\x43\x65", 3, 0, 0x7e4a8634},
        {"\x21\x43", 2, 0, 0xa0f7b07a},
        {"\x21", 1, 0, 0x72661cf4},
        {"\0\0\0\0", 4, 0, 0x2362f9de},
        {"\0\0\0", 3, 0, 0x85f0b427},
        {"\0\0", 2, 0, 0x30f4c306},
        {"\0", 1, 0, 0x514e28b7},
        {"aaaa", 4, 0x9747b28c, 0x5a97808a},
        {"aaa", 3, 0x9747b28c, 0x283e0130},
        {"aa", 2, 0x9747b28c, 0x5d211726},
        {"a", 1, 0x9747b28c, 0x7fa09ea6},
        {"abcd", 4, 0x9747b28c, 0xf0478627},
        {"abc", 3, 0x9747b28c, 0xc84a62dd},
        {"ab", 2, 0x9747b28c, 0x74875592},
        {"Hello, world!", 13, 0x9747b28c, 0x24884cba},
        {"\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80", 16, 0x9747b28c, 0xd58063c1},
    };
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        /* Hash from an odd address too: block reads must not depend on alignment. */
        char shifted[64];
        memcpy(shifted + 1, vectors[i].data, vectors[i].len);
        uint32_t got = rs_murmur3_x86_32(vectors[i].data, vectors[i].len, vectors[i].seed);
        uint32_t got_unaligned = rs_murmur3_x86_32(shifted + 1, vectors[i].len, vectors[i].seed);
        char label[96], gs[16], ws[16];
        snprintf(label, sizeof label, "murmur3 vector %zu (len %zu, seed 0x%08" PRIx32 ")", i, vectors[i].len,
                 vectors[i].seed);
        snprintf(gs, sizeof gs, "0x%08" PRIx32, got);
        snprintf(ws, sizeof ws, "0x%08" PRIx32, vectors[i].want);
        check(got == vectors[i].want, label, gs, ws);
        snprintf(gs, sizeof gs, "0x%08" PRIx32, got_unaligned);
        check(got_unaligned == vectors[i].want, label, gs, ws);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* split: the bucketing point, end to end                                                                         */
/* ------------------------------------------------------------------------------------------------------------ */

/* Calls split(unit, {{'lo', lo}, {'hi', hi}}, seed) and returns 'l', 'h', or '?' (anything else, errors too). */
static char split_side(lua_State *L, const char *seed, size_t seed_len, const char *unit, size_t unit_len,
                       uint64_t lo, uint64_t hi)
{
    lua_getglobal(L, "split");
    lua_pushlstring(L, unit, unit_len);
    lua_createtable(L, 2, 0);
    const char *names[2] = {"lo", "hi"};
    uint64_t weights[2] = {lo, hi};
    for (int i = 0; i < 2; i++) {
        lua_createtable(L, 2, 0);
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, 1);
        lua_pushinteger(L, (lua_Integer)weights[i]);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushlstring(L, seed, seed_len);
    char side = '?';
    if (lua_pcall(L, 3, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
        side = lua_tostring(L, -1)[0];
    lua_pop(L, 1);
    return side;
}

/*
 * With the largest total weight allowed, W = 2^32 - 1, the point b = (h * W) >> 32 equals h - 1 for every h >= 1,
 * so pinning b with two boundary calls pins the hash split computed. Random seeds and units of every length up to
 * 9 bytes (NULs included) cover each way the streamed seed .. unit can straddle a 4-byte block.
 */
static void test_split_hash_pipeline(lua_State *L)
{
    const uint64_t W = UINT32_MAX;
    unsigned rng = 12345;
    int bad = 0, cases = 0;
    for (size_t slen = 0; slen <= 9; slen++) {
        for (size_t ulen = 0; ulen <= 9; ulen++) {
            for (int rep = 0; rep < 4; rep++) {
                char buf[18];
                for (size_t i = 0; i < slen + ulen; i++) {
                    rng = rng * 1103515245u + 12345u;
                    buf[i] = (char)(rng >> 16);
                }
                uint64_t h = rs_murmur3_x86_32(buf, slen + ulen, 0);
                uint64_t b = (h * W) >> 32;
                cases++;
                /* 'lo' wins iff b < its weight. */
                if (split_side(L, buf, slen, buf + slen, ulen, b, W - b) != 'h')
                    bad++;
                if (split_side(L, buf, slen, buf + slen, ulen, b + 1, W - b - 1) != 'l')
                    bad++;
            }
        }
    }
    char got[32];
    snprintf(got, sizeof got, "%d mismatches of %d", bad, cases);
    check(bad == 0, "split's bucketing point is (murmur3(seed .. unit) * total) >> 32", got, "0 mismatches");
}

/*
 * rollout's proof, checked on the arithmetic itself: for integer p, (h * 100) >> 32 < p exactly when
 * (h * 100000) >> 32 < 1000p, for the hashes on both sides of each threshold and a spread of others.
 */
static void test_rollout_scaling_arithmetic(void)
{
    int bad = 0;
    for (uint64_t p = 0; p <= 100; p++) {
        uint64_t threshold = ((p << 32) + 99) / 100; /* smallest h with h * 100 >= p * 2^32 */
        uint64_t hs[] = {0, 1, threshold - 2, threshold - 1, threshold, threshold + 1, threshold + 2, UINT32_MAX};
        for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
            uint64_t h = hs[i] > UINT32_MAX ? UINT32_MAX : hs[i]; /* p = 0, 100 push the neighbours out of range */
            if ((((h * 100) >> 32) < p) != (((h * 100000) >> 32) < 1000 * p))
                bad++;
        }
        for (uint64_t h = p * 7919; h <= UINT32_MAX; h += 104729 * 97)
            if ((((h * 100) >> 32) < p) != (((h * 100000) >> 32) < 1000 * p))
                bad++;
    }
    char got[32];
    snprintf(got, sizeof got, "%d disagreements", bad);
    check(bad == 0, "weights {p, 100-p} and {1000p, 1000(100-p)} split every hash alike", got, "0");
}

/*
 * rollout rounds percent * 1000 to the nearest integer weight. For units whose point b (out of 100000) is known,
 * percents just either side of (b + 0.5) / 1000 pin that rounding: (b + 0.6) / 1000 rounds up to weight b + 1 and
 * includes the unit, (b + 0.4) / 1000 rounds down to b and excludes it.
 */
static void test_rollout_rounding(lua_State *L)
{
    int bad = 0;
    for (int u = 1; u <= 200; u++) {
        char unit[32];
        int len = snprintf(unit, sizeof unit, "unit-%d", u);
        uint64_t b = ((uint64_t)rs_murmur3_x86_32(unit, (size_t)len, 0) * 100000) >> 32;
        const struct {
            double percent;
            int want;
        } probes[] = {{(b + 0.6) / 1000, 1}, {(b + 0.4) / 1000, 0}, {(b + 1.0) / 1000, 1}, {b / 1000.0, 0}};
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
            lua_getglobal(L, "rollout");
            lua_pushstring(L, unit);
            lua_pushnumber(L, probes[i].percent);
            lua_pushliteral(L, "");
            if (lua_pcall(L, 3, 1, 0) != LUA_OK || !lua_isboolean(L, -1) || lua_toboolean(L, -1) != probes[i].want)
                bad++;
            lua_pop(L, 1);
        }
    }
    char got[32];
    snprintf(got, sizeof got, "%d mismatches", bad);
    check(bad == 0, "rollout rounds percent * 1000 to the nearest weight", got, "0 mismatches");
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Lua chunks                                                                                                     */
/* ------------------------------------------------------------------------------------------------------------ */

static const char registration_chunk[] =
    "local fns = {split = split, rollout = rollout, starts_with = starts_with, ends_with = ends_with,\n"
    "             ['semver.compare'] = semver.compare, ['semver.match'] = semver.match, ['ip.in_cidr'] = ip.in_cidr}\n"
    "local n = 0\n"
    "for name, f in pairs(fns) do\n"
    "  n = n + 1\n"
    "  eq(type(f), 'function', name .. ' is a function')\n"
    "  eq(debug.getinfo(f, 'S').what, 'C', name .. ' is a C function')\n"
    "  eq(debug.getupvalue(f, 1), nil, name .. ' has no upvalues')\n"
    "end\n"
    "eq(n, 7, 'all helpers registered')\n";

static const char split_chunk[] =
    "local suits = {{'clubs', 25}, {'diamonds', 25}, {'hearts', 25}, {'spades', 25}}\n"
    "local halves = {{'lower', 50}, {'upper', 50}}\n"
    /* flagd v2 conformance (cases.json) */
    "set_key('fractional-flag')\n"
    "eq(split('jack', suits), 'hearts', 'case 31: key fractional-flag, unit jack')\n"
    "set_key('fractional-flag-A-shared-seed')\n"
    "eq(split('nine', suits, 'shared-seed'), 'clubs', 'case 32: shared seed')\n"
    "set_key('another-flag')\n"
    "eq(split('nine', suits, 'shared-seed'), 'clubs', 'case 32: an explicit seed does not depend on the key')\n"
    "set_key('fractional-flag-shorthand')\n"
    "eq(split('jon@company.com', {{'heads'}, {'tails', 1}}), 'heads', 'case 33: shorthand bucket weighs 1')\n"
    "eq(split('jon@company.com', {{'heads', 1}, {'tails', 1}}), 'heads', 'case 33 spelled out')\n"
    "local short = true\n"
    "for i = 1, 1000 do\n"
    "  local u = 'user-' .. i\n"
    "  short = short and split(u, {{'a'}, {'b', 1}}) == split(u, {{'a', 1}, {'b', 1}})\n"
    "  short = short and split(u, {{'a'}, {'b'}, {'c', 2}}) == split(u, {{'a', 1}, {'b', 1}, {'c', 2}})\n"
    "end\n"
    "eq(short, true, 'a missing weight is exactly weight 1')\n"
    /* flagd hashes an explicit bucketing value on its own: seed '' reproduces it */
    "set_key('fractional-hash-edge-flag')\n"
    "eq(split('6LvT0', halves, ''), 'upper', 'case 34: hash 2^31 is point 50 of 100')\n"
    "eq(split('SI7p-', halves, ''), 'lower', 'case 35: hash 2^31-1 is point 49 of 100')\n"
    "set_key('fractional-negative-weight-flag')\n"
    "eq(split('any-user', {{'one', -50}, {'two', 100}}, ''), 'two', 'case 28: negative weight counts as 0')\n"
    "local all = true\n"
    "for i = 1, 500 do all = all and split('u' .. i, {{'one', -50}, {'two', 100}}) == 'two' end\n"
    "eq(all, true, 'a negative weight never wins')\n"
    "set_key('fractional-single-entry-flag')\n"
    "eq(split('some-targeting-key', {{'single', 1}}), 'single', 'case 27: single entry')\n"
    "set_key('fractional-null-bucket-key-flag')\n"
    "eq(split(nil, {{'one', 50}, {'two', 50}}), nil, 'case 29: nil unit')\n"
    "eq(split(12345, {{'heads'}, {'tails', 1}}), nil, 'case 40: non-string unit')\n"
    "eq(split(true, halves), nil, 'boolean unit')\n"
    "eq(split({}, halves), nil, 'table unit')\n"
    "set_key('fractional-nested-weight-flag')\n"
    "eq(split('jon@company.com', {{'red', 0}, {'blue', 10}}), 'blue', 'case 30: a zero weight never wins')\n"
    /* values and weights */
    "eq(split('x', {}), nil, 'no buckets: total 0')\n"
    "eq(split('x', {{'a', 0}, {'b', -3}}), nil, 'all weights 0')\n"
    "eq(split('x', {{true, 1}}), true, 'true value')\n"
    "eq(split('x', {{false, 1}}), false, 'false value')\n"
    "eq(split('x', {{42, 1}}), 42, 'number value')\n"
    "eq(split('x', {{'a', 25.0}}), 'a', 'integral float weight')\n"
    "eq(split('x', {{'a', 4294967295}}), 'a', 'total weight 2^32-1 is allowed')\n"
    "eq(split('x', {{'a', -1e300}, {'b', 1}}), 'b', 'huge negative weight counts as 0')\n"
    "eq(split('x', {{'a', math.mininteger}, {'b', 1}}), 'b', 'minimum integer weight counts as 0')\n"
    /* frozen (load-time) bucket lists read through their metatables */
    "local frozen = freeze({{'clubs', 25}, {'diamonds', 25}, {'hearts', 25}, {'spades', 25}})\n"
    "eq(rawlen(frozen), 0, 'a frozen list is an empty proxy')\n"
    "set_key('fractional-flag')\n"
    "eq(split('jack', frozen), 'hearts', 'case 31 with a frozen bucket list')\n"
    "eq(split('jon@company.com', freeze({{'heads'}, {'tails', 1}}), 'fractional-flag-shorthand'), 'heads',\n"
    "   'case 33 with a frozen shorthand list')\n"
    "local bad_len = setmetatable({}, {__len = function() return -4 end})\n"
    "eq(split('x', bad_len), nil, 'a negative __len counts as empty')\n"
    "raises('object length is not an integer', 'a non-integer __len is refused', split, 'x',\n"
    "       setmetatable({}, {__len = function() return 'many' end}))\n"
    /* the same choice as the first bucket whose running sum exceeds the point */
    "local counts = {}\n"
    "for i = 1, 4000 do local v = split('user-' .. i, suits); counts[v] = (counts[v] or 0) + 1 end\n"
    "local spread = true\n"
    "for _, s in ipairs(suits) do local c = counts[s[1]] or 0; spread = spread and c > 850 and c < 1150 end\n"
    "eq(spread, true, 'four equal buckets receive about a quarter each')\n"
    /* errors name the function and the bucket */
    "raises_exact('split: bucket 3 weight must be an integer', 'fractional weight',\n"
    "             split, 'x', {{'a', 1}, {'b', 1}, {'c', 0.5}})\n"
    "raises_exact('split: bucket 2 weight must be an integer', 'string weight', split, 'x', {{'a', 1}, {'b', '1'}})\n"
    "raises_exact('split: bucket 1 weight must be an integer', 'NaN weight', split, 'x', {{'a', 0/0}})\n"
    "raises_exact('split: bucket 1 weight must be an integer', 'infinite weight', split, 'x', {{'a', math.huge}})\n"
    "raises_exact('split: bucket 2 weight must be an integer', 'negative fraction', split, 'x', {{'a'}, {'b', -0.5}})\n"
    "raises_exact('split: bucket 2 must be a table {value, weight}', 'non-table bucket', split, 'x', {{'a'}, 'b'})\n"
    "raises_exact('split: bucket 1 has no value', 'nil value', split, 'x', {{nil, 5}})\n"
    "raises_exact('split: total weight must be below 2^32', 'total 2^32', split, 'x', {{'a', 2^31}, {'b', 2^31}})\n"
    "raises_exact('split: total weight must be below 2^32', 'huge weight', split, 'x', {{'a', 1e300}})\n"
    "raises_exact('split: total weight must be below 2^32', 'max integer weight',\n"
    "             split, 'x', {{'a', math.maxinteger}})\n"
    "raises('split: buckets must be a table', 'buckets not a table', split, 'x', 'clubs')\n"
    "raises('split: buckets must be a table', 'buckets missing', split, 'x')\n"
    "raises_exact('split: seed must be a string', 'number seed', split, 'x', halves, 42)\n"
    "raises_exact('split: bucket 1 weight must be an integer', 'buckets validated even for a nil unit',\n"
    "             split, nil, {{'a', 1.5}})\n"
    "raises('split: seed must be a string', 'seed validated even for a nil unit', split, nil, halves, {})\n"
    /* load time: no current key */
    "set_key(nil)\n"
    "raises('split: a seed is required outside rules', 'no seed at load time', split, 'x', halves)\n"
    "raises('split: a seed is required outside rules', 'no seed at load time, nil unit', split, nil, halves)\n"
    "eq(split('6LvT0', halves, ''), 'upper', 'an explicit seed works at load time')\n"
    /* budget */
    "set_key('fractional-flag')\n"
    "local c0 = charged()\n"
    "split('jack', suits)\n"
    "eq(charged() - c0, 4, 'split charges one step per bucket')\n"
    "set_limit(charged() + 3)\n"
    "raises_exact('budget exhausted', 'split stops when the budget runs out', split, 'jack', suits)\n"
    "set_limit(nil)\n";

static const char rollout_chunk[] =
    "set_key('rollout-flag')\n"
    /* integer percents: the same side as split with weights {p, 100 - p}, over many units */
    "local same = true\n"
    "for u = 1, 2000 do\n"
    "  local unit = 'user-' .. u\n"
    "  for p = 0, 100 do\n"
    "    if rollout(unit, p) ~= split(unit, {{true, p}, {false, 100 - p}}) then same = false end\n"
    "  end\n"
    "  if rollout(unit, 37, 's') ~= split(unit, {{true, 37}, {false, 63}}, 's') then same = false end\n"
    "  if rollout(unit, 37.0) ~= split(unit, {{true, 37}, {false, 63}}) then same = false end\n"
    "end\n"
    "eq(same, true, 'rollout(p) picks the side of split {p, 100 - p} for every integer p (2000 units)')\n"
    /* fractional percents: weights round(p * 1000) */
    "local frac = true\n"
    "local percents = {0.001, 0.5, 12.345, 33.333, 66.6666, 99.999, 99.9996}\n"
    "local weights = {1, 500, 12345, 33333, 66667, 99999, 100000}\n"
    "for u = 1, 2000 do\n"
    "  local unit = 'user-' .. u\n"
    "  for i, p in ipairs(percents) do\n"
    "    local w = weights[i]\n"
    "    if rollout(unit, p) ~= split(unit, {{true, w}, {false, 100000 - w}}) then frac = false end\n"
    "  end\n"
    "end\n"
    "eq(frac, true, 'fractional percents use weights round(p * 1000) of 100000')\n"
    "local n = 0\n"
    "for u = 1, 20000 do if rollout('user-' .. u, 12.5) then n = n + 1 end end\n"
    "eq(n > 2250 and n < 2750, true, 'rollout 12.5% includes about 2500 of 20000 units (' .. n .. ')')\n"
    "local mono = true\n"
    "for u = 1, 500 do\n"
    "  local unit, was = 'user-' .. u, false\n"
    "  for p = 0, 100, 0.25 do\n"
    "    local now = rollout(unit, p)\n"
    "    if was and not now then mono = false end\n"
    "    was = now\n"
    "  end\n"
    "end\n"
    "eq(mono, true, 'raising the percent never drops a unit')\n"
    /* clamping and degenerate percents */
    "local clamp = true\n"
    "for u = 1, 300 do\n"
    "  local unit = 'user-' .. u\n"
    "  clamp = clamp and rollout(unit, 150) == true and rollout(unit, math.huge) == true and rollout(unit, 100)\n"
    "  clamp = clamp and rollout(unit, -5) == false and rollout(unit, -math.huge) == false\n"
    "  clamp = clamp and rollout(unit, 0) == false and rollout(unit, 0.0004) == false\n"
    "end\n"
    "eq(clamp, true, 'percent clamped to [0, 100]; 0 and below 0.0005 never, 100 always')\n"
    "eq(rollout(nil, 50), nil, 'nil unit')\n"
    "eq(rollout(7, 50), nil, 'number unit')\n"
    "raises_exact('rollout: percent must not be NaN', 'NaN percent', rollout, 'x', 0/0)\n"
    "raises_exact('rollout: percent must be a number', 'string percent', rollout, 'x', '50')\n"
    "raises_exact('rollout: percent must be a number', 'missing percent', rollout, 'x')\n"
    "raises_exact('rollout: percent must be a number', 'percent validated for a nil unit', rollout, nil, {})\n"
    "raises_exact('rollout: seed must be a string', 'number seed', rollout, 'x', 50, 1)\n"
    "set_key(nil)\n"
    "raises('rollout: a seed is required outside rules', 'no seed at load time', rollout, 'x', 50)\n"
    "eq(rollout('6LvT0', 50, ''), false, 'hash 2^31 is past 50%')\n"
    "eq(rollout('SI7p-', 50, ''), true, 'hash 2^31-1 is within 50%')\n"
    "eq(rollout('6LvT0', 50.001, ''), true, 'hash 2^31 is within 50.001%')\n";

static const char affix_chunk[] =
    "eq(starts_with('hello', 'he'), true, 'starts_with prefix')\n"
    "eq(starts_with('hello', 'hello'), true, 'starts_with whole string')\n"
    "eq(starts_with('hello', ''), true, 'starts_with empty prefix')\n"
    "eq(starts_with('', ''), true, 'starts_with empty both')\n"
    "eq(starts_with('he', 'hello'), false, 'starts_with longer prefix')\n"
    "eq(starts_with('hello', 'lo'), false, 'starts_with suffix is not a prefix')\n"
    "eq(starts_with('Hello', 'he'), false, 'starts_with is case-sensitive')\n"
    "eq(starts_with('a\\0b', 'a\\0'), true, 'starts_with embedded NUL')\n"
    "eq(starts_with('a\\0b', 'a\\0c'), false, 'starts_with compares past a NUL')\n"
    "eq(starts_with(nil, 'a'), false, 'starts_with nil subject')\n"
    "eq(starts_with(42, '4'), false, 'starts_with number subject is not a string')\n"
    "eq(starts_with({}, 'a'), false, 'starts_with table subject')\n"
    "raises_exact('starts_with: prefix must be a string', 'starts_with nil prefix', starts_with, 'abc', nil)\n"
    "raises_exact('starts_with: prefix must be a string', 'starts_with number prefix', starts_with, 'abc', 5)\n"
    "raises_exact('starts_with: prefix must be a string', 'starts_with checks the prefix first', starts_with, nil)\n"
    "eq(ends_with('hello', 'lo'), true, 'ends_with suffix')\n"
    "eq(ends_with('hello', 'hello'), true, 'ends_with whole string')\n"
    "eq(ends_with('hello', ''), true, 'ends_with empty suffix')\n"
    "eq(ends_with('lo', 'hello'), false, 'ends_with longer suffix')\n"
    "eq(ends_with('hello', 'he'), false, 'ends_with prefix is not a suffix')\n"
    "eq(ends_with('user@example.com', '@example.com'), true, 'ends_with domain')\n"
    "eq(ends_with('b\\0a', '\\0a'), true, 'ends_with embedded NUL')\n"
    "eq(ends_with(nil, 'a'), false, 'ends_with nil subject')\n"
    "eq(ends_with(42, '2'), false, 'ends_with number subject')\n"
    "raises_exact('ends_with: suffix must be a string', 'ends_with number suffix', ends_with, 'abc', 5)\n"
    "raises_exact('ends_with: suffix must be a string', 'ends_with checks the suffix first', ends_with, nil, nil)\n";

static const char semver_chunk[] =
    "local cmp, match = semver.compare, semver.match\n"
    /* SemVer 2.0.0 §11 precedence examples, every pair */
    "local chains = {\n"
    "  {'1.0.0-alpha', '1.0.0-alpha.1', '1.0.0-alpha.beta', '1.0.0-beta', '1.0.0-beta.2', '1.0.0-beta.11',\n"
    "   '1.0.0-rc.1', '1.0.0'},\n"
    "  {'1.0.0', '2.0.0', '2.1.0', '2.1.1'},\n"
    "  {'0.0.0', '0.0.1', '0.1.0', '0.9.9', '0.10.0', '1.0.0-0', '1.0.0-1', '1.0.0-9', '1.0.0-10', '1.0.0-0a',\n"
    "   '1.0.0-A', '1.0.0-Z', '1.0.0-a', '1.0.0-a.0', '1.0.0-a.a', '1.0.0-a-', '1.0.0-b', '1.0.0', '1.0.1',\n"
    "   '18446744073709551615.0.0'},\n"
    "}\n"
    "for _, chain in ipairs(chains) do\n"
    "  for i = 1, #chain do\n"
    "    for j = 1, #chain do\n"
    "      local want = i < j and -1 or (i > j and 1 or 0)\n"
    "      eq(cmp(chain[i], chain[j]), want, 'compare ' .. chain[i] .. ' with ' .. chain[j])\n"
    "    end\n"
    "  end\n"
    "end\n"
    /* equal precedence */
    "local same = {\n"
    "  {'1.0.0+build.1', '1.0.0+build.2'}, {'1.0.0-alpha+001', '1.0.0-alpha'}, {'1.0.0+20130313144700', '1.0.0'},\n"
    "  {'1.0.0-beta+exp.sha.5114f85', '1.0.0-beta'}, {'1.0.0+21AF26D3----117B344092BD', '1.0.0'},\n"
    "  {'v1.2.3', '1.2.3'}, {'V1.2.3', 'v1.2.3'}, {'1', '1.0.0'}, {'1.2', '1.2.0'}, {'v2', '2.0.0'},\n"
    "  {'1-alpha', '1.0.0-alpha'}, {'1.2+b', '1.2.0'}, {1, '1.0.0'}, {2.0, '2.0.0'}, {1.5, '1.5.0'}, {0, '0.0.0'},\n"
    "  {'1.0.0-x-y-z.--', '1.0.0-x-y-z.--'}, {'1.0.0-0A.is.legal', '1.0.0-0A.is.legal'},\n"
    "  {'1.0.0-18446744073709551615', '1.0.0-18446744073709551615+x'},\n"
    "}\n"
    "for _, p in ipairs(same) do eq(cmp(p[1], p[2]), 0, 'same precedence ' .. tostring(p[1]) .. ' / ' .. p[2]) end\n"
    "eq(cmp('1.10.0', '1.9.0'), 1, 'numeric parts compare numerically')\n"
    "eq(cmp('1.0.0-alpha.10', '1.0.0-alpha.9'), 1, 'numeric identifiers compare numerically')\n"
    "eq(cmp('1.0.0-18446744073709551615', '1.0.0-18446744073709551614'), 1, '64-bit pre-release numbers')\n"
    "eq(cmp('1.0.0-alpha.1', '1.0.0-alpha.a'), -1, 'numeric identifier before alphanumeric')\n"
    "eq(cmp('1.0.0-999', '1.0.0-1a'), -1, 'numeric identifier before alphanumeric, digits first')\n"
    "eq(cmp('1.0.0-a.b.c', '1.0.0-a.b'), 1, 'more pre-release fields win')\n"
    "eq(cmp('1.0.0-rc.1', '1.0.0-rc.1.0'), -1, 'fewer pre-release fields lose')\n"
    "eq(cmp('1.0.0-alpha', '1.0.0-alphab'), -1, 'a proper prefix sorts first')\n"
    "eq(cmp('2.0.0-alpha', '1.9.9'), 1, 'a pre-release still above a lower release')\n"
    /* invalid versions */
    "local invalid = {\n"
    "  '', 'v', 'V', '1.', '1..2', '1.2.', '1.2.3.', '1.2.3.4', '01.0.0', '1.01.0', '1.0.01', '00.0.0', '1.0.0-',\n"
    "  '1.0.0-01', '1.0.0-alpha.01', '1.0.0-alpha..1', '1.0.0-alpha.', '1.0.0-.alpha', '1.0.0+', '1.0.0+a..b',\n"
    "  '1.0.0+a.', '1.0.0-al$pha', '1.0.0+bu_ild', ' 1.0.0', '1.0.0 ', 'vv1.0.0', 'x1.0.0', '-1.0.0', '+1.0.0',\n"
    "  '1.0.0\\0', '1.0\\0.0', '18446744073709551616.0.0', '1.18446744073709551616.0',\n"
    "  '1.0.0-18446744073709551616', '1.0.0-rc.1+', '1.0.0+build+more', 'not-a-version', '1.-1', '1.2.-3',\n"
    "  '1.2.3-é', 'a.b.c', '1.a.0', 'v 1.0.0', '1,0,0', '=1.0.0', '1.0.0-+',\n"
    "  -1, 1e20, 0/0, math.huge, -0.5, 1.25e-5,\n"
    "}\n"
    "for i, v in ipairs(invalid) do\n"
    "  local l = 'invalid version #' .. i .. ' ' .. string.format('%q', v)\n"
    "  eq(cmp(v, '1.0.0'), nil, l .. ': compare left')\n"
    "  eq(cmp('1.0.0', v), nil, l .. ': compare right')\n"
    "  eq(match(v, '=', '1.0.0'), false, l .. ': match =')\n"
    "  eq(match(v, '!=', '1.0.0'), false, l .. ': match !=')\n"
    "  raises('semver.match: invalid reference version', l .. ': as reference', match, '1.0.0', '=', v)\n"
    "end\n"
    "eq(cmp(nil, '1.0.0'), nil, 'nil version')\n"
    "eq(cmp(true, '1.0.0'), nil, 'boolean version')\n"
    "eq(cmp({}, '1.0.0'), nil, 'table version')\n"
    "eq(cmp('1.0.0'), nil, 'missing version')\n"
    "eq(match(nil, '>=', '0.0.0'), false, 'nil version never matches')\n"
    /* every operator */
    "local T, F = true, false\n"
    "local ops = {\n"
    "  {'1.2.3', '=', '1.2.3', T}, {'1.2.3', '=', '1.2.4', F}, {'1.2.3+a', '=', '1.2.3+b', T},\n"
    "  {'1.2.3', '==', '1.2.3', T}, {'1.2.3', '==', '1.2.3-rc.1', F},\n"
    "  {'1.2.3', '!=', '1.2.4', T}, {'1.2.3', '!=', 'v1.2.3', F},\n"
    "  {'1.2.3', '~=', '1.2.4', T}, {'1.2', '~=', '1.2.0', F},\n"
    "  {'1.2.3', '<', '1.2.4', T}, {'1.2.3', '<', '1.2.3', F},\n"
    "  {'1.2.3-rc.1', '<', '1.2.3', T}, {'1.2.4', '<', '1.2.3', F},\n"
    "  {'1.2.3', '<=', '1.2.3', T}, {'1.2.2', '<=', '1.2.3', T}, {'1.2.4', '<=', '1.2.3', F},\n"
    "  {'1.2.4', '>', '1.2.3', T}, {'1.2.3', '>', '1.2.3', F},\n"
    "  {'1.10.0', '>', '1.9.0', T}, {'1.2.3', '>', '1.2.3-rc.1', T},\n"
    "  {'1.2.3', '>=', '1.2.3', T}, {'1.2.4', '>=', '1.2.3', T}, {'1.2.2', '>=', '1.2.3', F},\n"
    "  {'3.9.9', '^', '3.0.0', T}, {'3.0.0-alpha', '^', '3.9.9', T},\n"
    "  {'2.9.9', '^', '3.0.0', F}, {'4.0.0', '^', '3.0.0', F},\n"
    "  {'0.2.0', '^', '0.1.0', T}, {'3.0.0', '^', '3.4.5', T},\n"
    "  {'3.0.9', '~', '3.0.0', T}, {'3.0.0-beta', '~', '3.0.5', T},\n"
    "  {'3.1.0', '~', '3.0.0', F}, {'4.0.0', '~', '4.1.0', F},\n"
    "  {'2.0.0', '~', '3.0.0', F},\n"
    /* flagd cases.json 22-26 */
    "  {'2.0.0-alpha', '=', '2.0.0', F}, {'2.0.0-alpha', '>', '2.0.0', F}, {'2.0.0-alpha', '<', '2.0.0', T},\n"
    "  {'3.0.1', '~', '3.0.0', T},\n"
    "  {'3.1.0', '~', '3.0.0', F}, {'3.1.0', '^', '3.0.0', T},\n"
    "  {1, '^', '1', T}, {1, '=', 1, T}, {2, '^', '1', F}, {'1.0.0', '=', 1.0, T},\n"
    "  {'not-a-version', '=', '1.0.0', F},\n"
    "}\n"
    "for _, c in ipairs(ops) do\n"
    "  eq(match(c[1], c[2], c[3]), c[4], 'match(' .. tostring(c[1]) .. ' ' .. c[2] .. ' ' .. tostring(c[3]) .. ')')\n"
    "end\n"
    "raises_exact(\"semver.match: unknown operator '=>'\", 'unknown operator', match, '1.0.0', '=>', '1.0.0')\n"
    "raises_exact(\"semver.match: unknown operator ''\", 'empty operator', match, '1.0.0', '', '1.0.0')\n"
    "raises_exact(\"semver.match: unknown operator '==='\", 'longer operator', match, '1.0.0', '===', '1.0.0')\n"
    "raises_exact('semver.match: operator must be a string', 'nil operator', match, '1.0.0', nil, '1.0.0')\n"
    "raises_exact(\"semver.match: invalid reference version 'nope'\", 'invalid reference',\n"
    "             match, '1.0.0', '=', 'nope')\n"
    "raises('semver.match: reference version must be a version string or number', 'nil reference',\n"
    "       match, '1.0.0', '=')\n"
    "raises('semver.match: unknown operator', 'operator checked for an invalid version', match, 'junk', '=<', '1')\n"
    "raises('semver.match: invalid reference', 'reference checked for an invalid version', match, nil, '=', 'x')\n";

static const char ip_chunk[] =
    "local in_cidr = ip.in_cidr\n"
    "local T, F = true, false\n"
    "local cases = {\n"
    /* IPv4 */
    "  {'10.1.2.3', '10.0.0.0/8', T}, {'11.0.0.1', '10.0.0.0/8', F}, {'9.255.255.255', '10.0.0.0/8', F},\n"
    "  {'192.168.1.255', '192.168.1.0/24', T}, {'192.168.2.0', '192.168.1.0/24', F},\n"
    "  {'172.16.0.1', '172.16.0.0/12', T}, {'172.31.255.255', '172.16.0.0/12', T},\n"
    "  {'172.32.0.1', '172.16.0.0/12', F},\n"
    "  {'172.15.255.255', '172.16.0.0/12', F}, {'10.1.2.1', '10.1.2.0/31', T}, {'10.1.2.2', '10.1.2.0/31', F},\n"
    "  {'192.168.1.7', '192.168.1.7', T}, {'192.168.1.8', '192.168.1.7', F}, {'10.1.2.3', '10.1.2.3/32', T},\n"
    "  {'1.2.3.4', '0.0.0.0/0', T}, {'255.255.255.255', '10.0.0.0/0', T}, {'10.200.0.1', '10.9.9.9/8', T},\n"
    "  {'128.0.0.0', '128.0.0.0/1', T}, {'127.255.255.255', '128.0.0.0/1', F},\n"
    /* IPv6 */
    "  {'2001:db8::1', '2001:db8::/32', T}, {'2001:db9::1', '2001:db8::/32', F},\n"
    "  {'2001:DB8::ABCD', '2001:db8::/32', T},\n"
    "  {'2001:db8::1', '2001:db8::1', T}, {'2001:db8::2', '2001:db8::1', F},\n"
    "  {'::1', '::1/128', T}, {'::2', '::1/128', F},\n"
    "  {'fe80::abcd', 'fe80::/10', T}, {'febf::1', 'fe80::/10', T}, {'fec0::1', 'fe80::/10', F},\n"
    "  {'2001:db8::1', '::/0', T}, {'2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1/128', T},\n"
    "  {'2001:db8:0:0:8000::', '2001:db8::/65', F}, {'2001:db8:0:0:7fff::', '2001:db8::/65', T},\n"
    /* the families do not mix */
    "  {'10.1.2.3', '::/0', F}, {'::1', '0.0.0.0/0', F}, {'::10.1.2.3', '10.0.0.0/8', F},\n"
    /* IPv4-mapped addresses are their IPv4 address, as addr and as cidr */
    "  {'::ffff:10.1.2.3', '10.0.0.0/8', T}, {'::FFFF:10.1.2.3', '10.0.0.0/8', T},\n"
    "  {'::ffff:a01:203', '10.0.0.0/8', T},\n"
    "  {'0:0:0:0:0:ffff:10.1.2.3', '10.1.2.3', T}, {'::ffff:11.1.2.3', '10.0.0.0/8', F},\n"
    "  {'10.1.2.3', '::ffff:10.0.0.0/104', T}, {'11.1.2.3', '::ffff:10.0.0.0/104', F},\n"
    "  {'::ffff:10.1.2.3', '::ffff:10.0.0.0/104', T}, {'10.1.2.3', '::ffff:10.1.2.3', T},\n"
    "  {'10.1.2.4', '::ffff:10.1.2.3', F},\n"
    "  {'1.2.3.4', '::ffff:0.0.0.0/96', T}, {'2001:db8::1', '::ffff:0.0.0.0/96', F}, {'::ffff:1.2.3.4', '::/0', F},\n"
    /* addresses that are not addresses: false */
    "  {'10.1.2', '10.0.0.0/8', F}, {'10.1.2.3.4', '10.0.0.0/8', F}, {'256.1.2.3', '0.0.0.0/0', F},\n"
    "  {'010.1.2.3', '0.0.0.0/0', F}, {' 10.1.2.3', '0.0.0.0/0', F}, {'10.1.2.3 ', '0.0.0.0/0', F},\n"
    "  {'10.1.2.3\\0', '0.0.0.0/0', F}, {'10.1.2.3/32', '0.0.0.0/0', F}, {'', '0.0.0.0/0', F},\n"
    "  {'localhost', '0.0.0.0/0', F}, {'fe80::1%eth0', 'fe80::/10', F}, {'fe80::1%1', 'fe80::/10', F},\n"
    "  {'1::2::3', '::/0', F}, {'::ffff:1.2.3', '0.0.0.0/0', F}, {string.rep('1', 100), '0.0.0.0/0', F},\n"
    "  {nil, '0.0.0.0/0', F}, {167838211, '0.0.0.0/0', F}, {true, '0.0.0.0/0', F}, {{}, '::/0', F},\n"
    "}\n"
    "for _, c in ipairs(cases) do\n"
    "  eq(in_cidr(c[1], c[2]), c[3], 'in_cidr(' .. string.format('%q', tostring(c[1])) .. ', ' .. c[2] .. ')')\n"
    "end\n"
    /* lists */
    "eq(in_cidr('10.1.2.3', {'192.168.0.0/16', '10.0.0.0/8'}), true, 'list: second entry matches')\n"
    "eq(in_cidr('10.1.2.3', {'10.0.0.0/8', '192.168.0.0/16'}), true, 'list: first entry matches')\n"
    "eq(in_cidr('172.16.0.1', {'192.168.0.0/16', '10.0.0.0/8'}), false, 'list: no entry matches')\n"
    "eq(in_cidr('10.1.2.3', {}), false, 'empty list')\n"
    "eq(in_cidr('2001:db8::5', {'10.0.0.0/8', '2001:db8::/32'}), true, 'mixed-family list, IPv6')\n"
    "eq(in_cidr('::ffff:10.9.9.9', {'2001:db8::/32', '10.0.0.0/8'}), true, 'mixed-family list, mapped')\n"
    "eq(in_cidr(nil, {'10.0.0.0/8'}), false, 'list, nil address')\n"
    "eq(in_cidr('10.1.2.3', freeze({'192.168.0.0/16', '10.0.0.0/8'})), true, 'frozen list')\n"
    "eq(in_cidr('172.16.1.1', freeze({'192.168.0.0/16', '10.0.0.0/8'})), false, 'frozen list, no match')\n"
    "local c0 = charged()\n"
    "in_cidr('10.1.2.3', {'192.168.0.0/16', '10.0.0.0/8', '::/0'})\n"
    "eq(charged() - c0, 3, 'a CIDR list charges one step per entry')\n"
    /* the rule author's mistakes raise */
    "local bad = {\n"
    "  {'10.0.0.0/33', 'invalid prefix length'}, {'::/129', 'invalid prefix length'},\n"
    "  {'10.0.0.0/', 'invalid prefix length'}, {'10.0.0.0/-1', 'invalid prefix length'},\n"
    "  {'10.0.0.0/+8', 'invalid prefix length'}, {'10.0.0.0/08', 'invalid prefix length'},\n"
    "  {'10.0.0.0/8x', 'invalid prefix length'}, {'10.0.0.0/ 8', 'invalid prefix length'},\n"
    "  {'10.0.0.0/8/8', 'invalid prefix length'}, {'10.0.0.0/0008', 'invalid prefix length'},\n"
    "  {'10.0.0.0/8\\0', 'invalid prefix length'}, {'::/1000', 'invalid prefix length'},\n"
    "  {'10.0.0/8', 'invalid address'}, {'/8', 'invalid address'}, {'', 'invalid address'},\n"
    "  {'10.0.0.0 /8', 'invalid address'}, {'fe80::1%eth0/64', 'invalid address'},\n"
    "  {'fe80::1%eth0', 'invalid address'},\n"
    "  {'bogus', 'invalid address'}, {'300.0.0.0/8', 'invalid address'}, {'10.0.0.0\\0/8', 'invalid address'},\n"
    "  {'::ffff:10.0.0.0/80', 'invalid prefix length'}, {'::ffff:0.0.0.0/0', 'invalid prefix length'},\n"
    "  {'::ffff:10.0.0.0/129', 'invalid prefix length'},\n"
    "}\n"
    "for _, b in ipairs(bad) do\n"
    "  raises('ip.in_cidr: ' .. b[2], 'bad cidr ' .. string.format('%q', b[1]), in_cidr, '10.1.2.3', b[1])\n"
    "  raises('ip.in_cidr: ' .. b[2], 'bad cidr in a list ' .. string.format('%q', b[1]), in_cidr, '10.1.2.3',\n"
    "         {'10.0.0.0/8', b[1]})\n"
    "  raises('ip.in_cidr: ' .. b[2], 'bad cidr, bad address ' .. string.format('%q', b[1]), in_cidr, nil, b[1])\n"
    "end\n"
    "raises_exact(\"ip.in_cidr: invalid prefix length in CIDR '10.0.0.0/33'\", 'exact message', in_cidr, '1.2.3.4',\n"
    "             '10.0.0.0/33')\n"
    "raises_exact(\"ip.in_cidr: invalid prefix length in CIDR '::ffff:10.0.0.0/95' \"\n"
    "             .. \"(an IPv4-mapped address needs at least 96)\", 'mapped CIDR message',\n"
    "             in_cidr, '10.1.2.3', '::ffff:10.0.0.0/95')\n"
    "raises_exact('ip.in_cidr: CIDR list entry 2 must be a string', 'non-string list entry', in_cidr, '10.1.2.3',\n"
    "             {'10.0.0.0/8', 42})\n"
    "raises_exact('ip.in_cidr: cidr must be a CIDR string or a list of them', 'nil cidr', in_cidr, '10.1.2.3', nil)\n"
    "raises_exact('ip.in_cidr: cidr must be a CIDR string or a list of them', 'number cidr', in_cidr, '10.1.2.3', 8)\n";

int main(void)
{
    test_murmur3_vectors();
    test_rollout_scaling_arithmetic();

    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);

    /* Register the helpers into the globals, and check the registration leaves the stack as it found it. */
    lua_pushglobaltable(L);
    int top = lua_gettop(L);
    rs_open_helpers(L);
    check(lua_gettop(L) == top && lua_istable(L, -1), "rs_open_helpers keeps the stack balanced", "unbalanced",
          "balanced");
    lua_settop(L, 0);

    lua_register(L, "check", l_check);
    lua_register(L, "set_key", l_set_key);
    lua_register(L, "charged", l_charged);
    lua_register(L, "set_limit", l_set_limit);
    run_chunk(L, "prelude", prelude);

    run_chunk(L, "registration", registration_chunk);
    test_split_hash_pipeline(L);
    test_rollout_rounding(L);
    run_chunk(L, "split", split_chunk);
    run_chunk(L, "rollout", rollout_chunk);
    run_chunk(L, "starts_with/ends_with", affix_chunk);
    run_chunk(L, "semver", semver_chunk);
    run_chunk(L, "ip", ip_chunk);

    lua_close(L);
    printf("helpers_test: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
