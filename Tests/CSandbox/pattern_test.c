// sources: rs_pattern.c
/*
 * pattern_test.c - tests of the budgeted pattern functions in rs_pattern.c.
 *
 * Stock Lua 5.4 is the specification: a plain lua_State gets the stock string
 * library plus our four functions as the global table `rs`, and a Lua script
 * (below, as a raw string) runs
 *   1. a differential test: hand-written cases and seeded random ones run
 *      through both implementations; every returned value (type included),
 *      every error message, every call made to a replacement function and
 *      the sequence produced by gmatch iterators must agree;
 *   2. budget tests: patterns that backtrack exponentially, huge subjects and
 *      quadratic plain searches must be killed by the budget (the stand-in
 *      rs_charge() below records the kill) with the budget error, while
 *      ordinary calls charge only a handful of steps in one rs_charge() call;
 *   3. depth tests: patterns that nest thousands deep end with an error, never
 *      with a crash.
 * The sandbox's budget hooks are replaced by a test-local counter.
 */
#include "rs_internal.h"

#include <lualib.h>
#include <stdio.h>
#include <string.h>

#define BUDGET_ERROR "rs-test: budget exhausted"

static uint64_t budget_left = UINT64_MAX;
static uint64_t steps_charged;
static uint64_t charge_calls;
/* Set when rs_charge() found the budget exhausted: the stand-in for the sandbox's kill. */
static int killed;

/* Test stand-ins for the sandbox's accounting (see rs_internal.h). */
void rs_charge(lua_State *L, uint64_t steps) {
    charge_calls++;
    steps_charged += steps;
    if (steps > budget_left) {
        budget_left = 0; /* sticky until the script sets a new budget */
        killed = 1;
        luaL_error(L, BUDGET_ERROR);
        return;
    }
    budget_left -= steps;
}

int rs_resource_error(lua_State *L, const char *what) {
    return luaL_error(L, BUDGET_ERROR " (%s)", what);
}

const char *rs_current_key(lua_State *L, size_t *len) {
    (void)L;
    if (len != NULL)
        *len = 0;
    return NULL;
}

/* t_budget([steps]): new budget (unlimited without an argument); resets the
 * counters read by t_charged(). */
static int t_budget(lua_State *L) {
    budget_left = lua_isnoneornil(L, 1) ? UINT64_MAX : (uint64_t)luaL_checkinteger(L, 1);
    steps_charged = 0;
    charge_calls = 0;
    killed = 0;
    return 0;
}

/* t_charged() -> steps charged, number of rs_charge() calls, whether the budget killed the run, all since
 * t_budget(). */
static int t_charged(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)steps_charged);
    lua_pushinteger(L, (lua_Integer)charge_calls);
    lua_pushboolean(L, killed);
    return 3;
}

static int traceback(lua_State *L) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

static const char *const script = R"LUA(
local S, R = string, rs
local budget, charged = t_budget, t_charged
local BUDGET_ERR = BUDGET_ERROR
local fmt, pack, concat = string.format, table.pack, table.concat

-- Errors raised by C functions called from Lua code carry the caller's
-- position ("pattern_test:12: ..."), so messages are compared by their ending.
local function is_error(err, msg)
  return type(err) == 'string' and #err >= #msg and err:sub(-#msg) == msg
end

-- The functions are always called as `lib.name(...)`, so an argument error
-- names the function the same way ('find', 'gsub', ...) for both libraries.
local function wrap(lib)
  return {
    find = function(...) return lib.find(...) end,
    match = function(...) return lib.match(...) end,
    gmatch = function(...) return lib.gmatch(...) end,
    gsub = function(...) return lib.gsub(...) end,
  }
end
local STOCK, MINE = wrap(S), wrap(R)

-- Values to text, with their exact type (integer and float differ).
local function show(v)
  local t = math.type(v) or type(v)
  if t == 'string' then return fmt('%q', v) end
  if t == 'function' or t == 'table' then return t end
  return t .. ':' .. tostring(v)
end
local function showall(r, from)
  local t = {}
  for i = from or 1, r.n do t[#t + 1] = show(r[i]) end
  return '(' .. concat(t, ', ') .. ')'
end

-- Replacement arguments for gsub are described by specs, so that each
-- implementation gets its own fresh (but identical) function or table and the
-- calls made to functions can be logged and compared.
local function make_repl(spec, log)
  if type(spec) ~= 'table' then return spec end
  if spec.fn then
    local kind = spec.fn
    return function(...)
      local args = pack(...)
      log[#log + 1] = showall(args)
      local a = args[1]
      if kind == 1 then return nil
      elseif kind == 2 then return false
      elseif kind == 3 then return '<' .. tostring(a) .. '>'
      elseif kind == 4 then return #log
      elseif kind == 5 then return 1.5
      elseif kind == 6 then return {}
      elseif kind == 7 then
        local h = #tostring(a) % 4
        if h == 0 then return nil elseif h == 1 then return false
        elseif h == 2 then return tostring(a) .. tostring(a) else return a end
      elseif kind == 8 then error('boom from replacement', 0)
      elseif kind == 9 then return true
      else return args.n end
    end
  end
  local kind = spec.tbl
  if kind == 1 then
    return {a = 'A', b = false, ['('] = '[', [1] = 'one', [2] = 2, [3] = 2.5, x = 1.5, [''] = 'E', aa = 'AA'}
  elseif kind == 2 then
    return setmetatable({}, {__index = function(_, k)
      log[#log + 1] = show(k)
      if type(k) == 'string' and #k > 1 then return k:reverse() end
      return nil
    end})
  elseif kind == 3 then
    return {a = {}, b = 'B'}
  else
    return {a = true, c = 'C'}
  end
end

local function describe(fname, args)
  local t = {}
  for i = 1, args.n do
    local v = args[i]
    if type(v) == 'table' and v.fn then t[i] = 'function#' .. v.fn
    elseif type(v) == 'table' and v.tbl then t[i] = 'table#' .. v.tbl
    else t[i] = show(v) end
  end
  return fname .. '(' .. concat(t, ', ') .. ')'
end

-- Runs one call through one library; returns the outcome as text.
local function outcome(lib, fname, args)
  local log = {}
  local a = {n = args.n}
  for i = 1, args.n do a[i] = make_repl(args[i], log) end
  local r
  if fname == 'gmatch' then
    r = pack(pcall(function()
      local it = lib.gmatch(table.unpack(a, 1, a.n))
      local out = {}
      for _ = 1, 300 do
        local v = pack(it())
        out[#out + 1] = showall(v)
        if v.n == 0 or v[1] == nil then
          out[#out + 1] = showall(pack(it())) -- stays exhausted
          break
        end
      end
      return concat(out, ' ')
    end))
  else
    r = pack(pcall(lib[fname], table.unpack(a, 1, a.n)))
  end
  local budget_hit = (r[1] == false and is_error(r[2], BUDGET_ERR))
  return showall(r) .. ' log:' .. concat(log, ';'), budget_hit
end

local ncases, nskipped = 0, 0
-- Compares the two implementations on one call. Our side runs first with a
-- budget; a case it cannot finish within the budget would take stock Lua just
-- as long, so it is skipped rather than run through stock.
local function check(fname, ...)
  local args = pack(...)
  budget(5000000)
  local mine, hit = outcome(MINE, fname, args)
  budget()
  if hit then nskipped = nskipped + 1; return end
  local stock = outcome(STOCK, fname, args)
  ncases = ncases + 1
  if mine ~= stock then
    error(fmt('MISMATCH in %s\n  stock: %s\n  mine:  %s', describe(fname, args), stock, mine), 0)
  end
end

------------------------------------------------------------------------------
-- 1a. Hand-written cases
------------------------------------------------------------------------------
local F, M, G, X = 'find', 'match', 'gmatch', 'gsub'
local mi, ma = math.mininteger, math.maxinteger

-- init handling, plain flag, fast path
for _, init in ipairs{'NONE', 1, 2, 3, 4, 5, 6, 7, 0, -1, -2, -5, -6, -7, -100, 100, mi, ma, mi + 1, 2.0, -1.0, '3',
                      ' 2 ', '0x2', 1.5, 'x', true, {}} do
  for _, p in ipairs{'l', 'lo', '', 'hello', 'hello!', 'x', 'l+', '^h', '^', '$', '.', '()', 'o$', '%l', '(l)(l)'} do
    for _, f in ipairs{F, M, G} do
      if init == 'NONE' then check(f, 'hello', p) else check(f, 'hello', p, init) end
    end
    local i = init
    if i == 'NONE' then i = nil end
    check(F, 'hello', p, i, true) check(F, 'hello', p, i, false)
  end
end
for _, plain in ipairs{'NONE', nil, false, true, 0, '', {}} do
  for _, p in ipairs{'a.b', '.', '%.', 'a+', '+', '(', '[', ']', '^a', 'a$', '$', 'b-', '-', '?', '*', '%', 'b'} do
    if plain == 'NONE' then check(F, 'xa.ba+b(a[b]^ab$-?*%', p)
    else check(F, 'xa.ba+b(a[b]^ab$-?*%', p, 1, plain) end
    check(F, 'xa.ba+b(a[b]^ab$-?*%', p, 5, plain)
  end
end
check(F, 'aaa', 'aa', 1, true) check(F, 'abababc', 'abc', 1, true) check(F, 'ab', 'abc', 1, true)
check(F, 'a\0b\0c', '\0c', 1, true) check(F, 'a\0b\0c', 'b\0c') check(F, 'a\0b', '\0')
check(F, '', '') check(F, '', '', 1) check(F, '', '', 2) check(F, '', '', 0) check(F, '', '', -1)
check(F, '', 'a') check(F, '', '^$') check(F, '', '$') check(F, '', '^') check(M, '', '') check(M, '', '()')

-- argument errors and conversions
for _, f in ipairs{F, M, G, X} do
  check(f) check(f, 'abc') check(f, {}, 'a') check(f, 'abc', {}) check(f, nil, 'a') check(f, 'abc', nil)
  check(f, 12345, 3, nil, nil) check(f, 1.5, '%.', nil, nil) check(f, 'a1', 1) check(f, true, 'a')
  check(f, 'abc', 'b', 1.5) check(f, 'abc', 'b', '2') check(f, 'abc', 'b', 'x') check(f, 'abc', 'b', {})
end

-- anchors
for _, s in ipairs{'abc', 'aabc', 'bc', '', '^abc', 'ab$c', 'c$', '$', '^'} do
  for _, p in ipairs{'^a', '^b', 'c$', '^abc$', '^$', '$', '^', 'b$c', '$c', '^^', '%^a', 'a^', '^a*', '^.-$',
                     'c$$', '$$', '.$', '^(a)', '^()', '(^a)', '(c$)', '^%$'} do
    check(F, s, p) check(M, s, p) check(G, s, p) check(X, s, p, '[%0]') check(X, s, p, 'X', 1)
    check(F, s, p, 2) check(M, s, p, 2) check(G, s, p, 2) check(X, s, p, '')
  end
end

-- every class, as items, in sets and complemented, against every byte
local all = {}
for i = 0, 255 do all[#all + 1] = S.char(i) end
all = concat(all)
for _, c in ipairs{'a', 'c', 'd', 'g', 'l', 'p', 's', 'u', 'w', 'x', 'z', 'b', 'e', 'y', 'q', 'h', 'v'} do
  for _, cl in ipairs{c, c:upper()} do
    if cl ~= 'b' and cl ~= 'f' then
      check(X, all, '%' .. cl, '') check(X, all, '[%' .. cl .. ']', '') check(X, all, '[^%' .. cl .. ']', '')
      check(X, all, '%' .. cl .. '+', '<%0>') check(F, all, '%' .. cl) check(M, all, '%' .. cl .. '+')
    end
  end
end
for i = 0, 255 do
  local ch = S.char(i)
  check(X, all, '%' .. ch, '') check(F, all, '%' .. ch) check(F, all, ch) check(M, all, '[' .. ch .. ']')
  check(X, all, '[%' .. ch .. ']', '.') check(X, all, '[^' .. ch .. ']', '')
end
check(X, all, '.', '') check(X, all, '[a-z]', '') check(X, all, '[z-a]', '') check(X, all, '[%a-z]', '')
check(X, all, '[a-]', '') check(X, all, '[-a]', '') check(X, all, '[]]', '') check(X, all, '[^]]', '')
check(X, all, '[]-a]', '') check(X, all, '[^%]]', '') check(X, all, '[%]-a]', '') check(X, all, '[\0-\31]', '')
check(X, all, '[\128-\255]', '') check(X, all, '[^\0]', '') check(X, all, '[%-]', '') check(X, all, '[a-c-e]', '')
check(X, all, '[^^]', '') check(X, all, '[%^]', '') check(X, all, '[%%]', '') check(X, all, '[^%w%s]', '')
check(X, all, '[a%-z]', '') check(X, all, '[---]', '') check(X, all, '[%a-]', '') check(X, all, '[%d-%a]', '')

-- malformed patterns
for _, p in ipairs{'%', 'a%', '[', '[a', '[^', '[^]', '[]', '[%', '[%]', '[a%]', '[a-', '(', 'a(', '(()', ')', 'a)',
                   '())', '%b', '%b(', '%bx', '%f', '%fa', '%f[', '%f[a', '%f[]', '%1', '%0', '%9', '(a)%2',
                   '(a%1)', '(a)%1', '()%1', '[%z]', '%f[%', '(%', '(a)(', '(()())', 'a)b', ')('} do
  for _, f in ipairs{F, M, G} do check(f, 'xa(a)a]', p) check(f, '', p) end
  check(X, 'xa(a)a]', p, 'y') check(X, '', p, 'y') check(X, 'xa(a)a]', p, {fn = 3})
end

-- quantifiers
for _, s in ipairs{'', 'a', 'aaa', 'aaab', 'baaa', 'ab', '<a><b>', 'x*', '**', 'a-b', 'a?b', '+a', 'hello'} do
  for _, p in ipairs{'a*', 'a+', 'a-', 'a?', 'a-b', 'a*b', 'a+b', 'a?b', '^a-', 'a-$', '^a-$', 'a?a?a?a?', '<.->',
                     '<.*>', '.-', '.*', '.+', '.?', '*', '**', '+', '+a', '?', '-', 'a**', 'a*?', 'a?-', '[ab]*b',
                     '[^b]+', '%a*%d?', 'x%*', '(a*)b', '(a-)(b)', '(a?)(a?)', 'a.-b', '.-b', 'a*a', 'a-a',
                     '.-$', '()a*()', 'b*', 'h.-o', 'h.*l'} do
    check(F, s, p) check(M, s, p) check(G, s, p) check(X, s, p, '[%0]') check(X, s, p, '-', 2)
  end
end

-- captures, position captures and back-references
local cap_cases = {
  {'hello world from Lua', '(%w+) (%w+)'}, {'key = value', '(%w+)%s*=%s*(%w+)'}, {'abc', '()a()'},
  {'abc', '(a)(b)(c)'}, {'abab', '(ab)%1'}, {'abab', '(a)(b)%2'}, {'abab', '(a)(b)%1%2'}, {'aa', '(a)%0'},
  {'aa', '(a%1)'}, {'abc', '((a)(b))'}, {'abc', '(a'}, {'abc', 'a)'}, {'abc', '(()a)'}, {'aa', '()%1'},
  {'abc', '(a)(b)%3'}, {'xyzxyz', '(x(y)z)%1'}, {'xyzxyz', '(x(y)z)%2'}, {'aaaa', '(a*)%1'}, {'aaaaa', '^(a*)%1$'},
  {'a', '(a*(.)%w(%s*))'}, {'[[x]] [[y]]', '%[(=*)%[(.-)%]%1%]'}, {'[==[x]==]', '%[(=*)%[(.-)%]%1%]'},
  {'then', '()(t)()(h)()'}, {'abc', '()'}, {'', '()'}, {'abc', '(b)()'}, {'abc', '((((((((((a))))))))))'},
  {'"quoted" and \'single\'', '(["\'])(.-)%1'}, {'a.b.c', '^(.-)%.(.*)$'}, {'x=1, y=2', '(%w+)=(%w+)'},
}
for _, c in ipairs(cap_cases) do
  local s, p = c[1], c[2]
  check(F, s, p) check(M, s, p) check(G, s, p) check(F, s, p, 2) check(M, s, p, -3)
  for _, r in ipairs{'%0', '%1', '%2', '%3', '%9', '<%1|%2>', '%%1', '%', 'a%', '%a', '%10', '%0%0', '',
                     {fn = 3}, {fn = 10}, {tbl = 1}, {tbl = 2}} do
    check(X, s, p, r) check(X, s, p, r, 1)
  end
end
-- exactly 32 captures is fine, 33 is not
check(M, S.rep('a', 40), S.rep('(a)', 32)) check(M, S.rep('a', 40), S.rep('(a)', 33))
check(F, S.rep('a', 40), S.rep('()', 32)) check(F, S.rep('a', 40), S.rep('()', 33))
check(X, S.rep('a', 40), S.rep('(a)', 32), '%9') check(G, S.rep('a', 40), S.rep('(a)', 33))
check(M, S.rep('a', 40), S.rep('(', 32) .. 'a' .. S.rep(')', 32))
check(M, S.rep('a', 40), S.rep('(', 33) .. 'a' .. S.rep(')', 33))

-- %b and %f
for _, s in ipairs{'(foo(bar))baz', 'if (a(b)c) then', '((x)', "'a'b'", '[[x]]', '(a)', ')(', 'x', '',
                   'THE (quick) fox', 'hello world', 'THE\0(quick)\0', 'aXb  c1d'} do
  for _, p in ipairs{'%b()', '%b()*', '%b)(', "%b''", '%b[]', '%bxy', '%b((', '%b', '%b(', '(%b())', '%b()%b()',
                     '%f[%a]%a+', '%f[%a]', '%f[%A]', '%f[%l]', '%f[%z]', '%f[^%z]', '%f[a]', '%fa', '%f',
                     '%f[a', '%f[%w]%w+$', '%f[\0]', '%f[^\0]', '%f[%s]', '%f[^%s]', '%f[%w]*', '%f[%w]?x',
                     '%f[%u]%u+%f[%U]', '%f[]]', '%f[^]]'} do
    check(F, s, p) check(M, s, p) check(G, s, p) check(X, s, p, '|') check(X, s, p, '<%0>', 2)
  end
end

-- gsub replacements
local gsub_cases = {'hello world', 'abc', '', 'a,b,,c', 'hello', '\0a\0', 'aaa'}
local gsub_pats = {'o', '%w', '(%w)', '%w+', '', 'x*', 'b*', '.-', '^', '$', '^a', '(l)(l)', '()', ',', '.',
                   '(%w*)', 'a*', '()a()'}
local gsub_repls = {'0', '%0%0', '%1', '%2', '%', '%x', '%%', '<%1>', '%0 %0', '', 'x', 7, 1.5, -0.0, 2^63,
                    {fn = 1}, {fn = 2}, {fn = 3}, {fn = 4}, {fn = 5}, {fn = 6}, {fn = 7}, {fn = 8}, {fn = 9},
                    {fn = 10}, {tbl = 1}, {tbl = 2}, {tbl = 3}, {tbl = 4}, 'NIL', true, false}
for _, s in ipairs(gsub_cases) do
  for _, p in ipairs(gsub_pats) do
    for _, r in ipairs(gsub_repls) do
      if r == 'NIL' then r = nil end
      check(X, s, p, r)
      for _, n in ipairs{0, 1, 2, -1, 1.5, '1', 'x', ma, mi, 2.0} do check(X, s, p, r, n) end
    end
  end
end
check(X, 'abc', 'b') check(X, 'abc', 'b', nil) check(X, 'abc', 'b', 'x', nil) check(X, 'abc', 'b', 'x', {})
check(X, 12345, 3, 9) check(X, 12345, 7, 9) check(X, 1.25, '%.', ',')

-- gmatch specifics
for _, c in ipairs{{'hello world from Lua', '%a+'}, {'k1=v1, k2=v2', '(%w+)=(%w+)'}, {'abc', ''}, {'abc', 'x*'},
                   {'abc', '^a'}, {'^a^a', '^a'}, {'abc', '()'}, {'abc', '(a'}, {'abc', '%'}, {'aaa', 'a*'},
                   {'a,b,,c', '([^,]*)'}, {'ab', '.-'}, {'', ''}, {'', '.'}} do
  for _, init in ipairs{'NONE', 1, 2, 3, 4, 5, 0, -1, -2, -100, 100, 1.5} do
    if init == 'NONE' then check(G, c[1], c[2]) else check(G, c[1], c[2], init) end
  end
end

-- too complex for the recursion limit (stock Lua gives up at the same depth)
check(M, S.rep('a', 300), S.rep('a?', 300)) check(M, S.rep('a', 199), S.rep('a?', 199))
check(M, S.rep('a', 300), S.rep('a-', 300)) check(M, S.rep('a', 300), S.rep('a*', 300))
check(M, S.rep('a', 300), S.rep('a?', 150)) check(M, S.rep('a', 300), S.rep('a?', 210) .. 'b')
for k = 190, 210 do -- the exact depth at which each construct gives up
  for _, item in ipairs{'a?', 'a-', '.?', '[a]?', 'a-%s*', '%f[%w]?a?'} do
    check(M, S.rep('a', 300), S.rep(item, k)) check(F, S.rep('a', 300), S.rep(item, k), 50)
  end
  check(X, S.rep('a', 300), S.rep('a?', k), 'x') check(G, S.rep('a', 300), S.rep('a-', k))
  check(M, S.rep('a', 300), '(' .. S.rep('a?', k) .. ')') check(M, S.rep('a', 300), S.rep('a?', k) .. '()')
end

-- re-entry: a replacement function that itself uses the pattern functions
do
  local function nested(lib)
    return showall(pack(pcall(lib.gsub, 'ab cd', '(%w)(%w)', function(x, y)
      return lib.gsub(y .. x, '.', function(c) return select(2, lib.find('zyxwdcba', c)) .. lib.match(c, '.') end)
    end)))
  end
  budget()
  local a, b = nested(S), nested(R)
  if a ~= b then error('MISMATCH in nested gsub\n  stock: ' .. a .. '\n  mine:  ' .. b, 0) end
  ncases = ncases + 1
end

-- the same functions used as string methods
local smt = getmetatable('')
local function methods(lib)
  smt.__index = lib
  local r = pack(pcall(function()
    local out = {}
    local function add(...) out[#out + 1] = showall(pack(...)) end
    add(('hello'):find('l')) add(('hello'):find('l', 4)) add(('a.b'):find('.', 1, true))
    add(('hello world'):match('(%w+) (%w+)')) add(('abc'):gsub('%w', '%0%0'))
    for k, v in ('a=1, b=2'):gmatch('(%w+)=(%w+)') do add(k, v) end
    add(pcall(function() return ('x'):find({}) end)) add(pcall(function() return ('x'):gsub('x') end))
    add(pcall(function() return ('x'):match('%') end))
    return concat(out, ' ')
  end))
  smt.__index = S
  return showall(r)
end
budget()
local a, b = methods(S), methods(R)
if a ~= b then error('MISMATCH in method calls\n  stock: ' .. a .. '\n  mine:  ' .. b, 0) end
ncases = ncases + 1

local nhand = ncases
print(fmt('differential: %d hand-written cases agree', nhand))

------------------------------------------------------------------------------
-- 1b. Random cases (seeded, reproducible)
------------------------------------------------------------------------------
math.randomseed(20240521)
local rnd = math.random
local function pick(t) return t[rnd(#t)] end

local subj_chars = {'a', 'a', 'a', 'b', 'b', 'c', 'A', 'B', '1', '2', ' ', ' ', '(', ')', '[', ']', '%', '.', '-',
                    '^', '$', '\0', '\n', '\255', 'x', 'y', '_', ',', '='}
local lits = {'a', 'a', 'b', 'c', 'A', '1', ' ', 'x', ',', '=', '\0', '\255', '%%', '%.', '%(', '%)', '%[', '%]',
              '%-', '%^', '%$', '%z', '%_', '%,', '-', '=', ']', '^'}
local classes = {'%a', '%A', '%c', '%C', '%d', '%D', '%g', '%G', '%l', '%L', '%p', '%P', '%s', '%S', '%u', '%U',
                 '%w', '%W', '%x', '%X'}
local set_chars = {'a', 'b', 'c', 'x', '1', ' ', '-', '^', ']', '%', '(', ')', '.', '\0'}

local function gen_subject()
  local t = {}
  for i = 1, rnd(0, 16) do t[i] = pick(subj_chars) end
  return concat(t)
end

local function gen_set()
  local t = {'['}
  if rnd(4) == 1 then t[#t + 1] = '^' end
  for _ = 1, rnd(0, 4) do
    local k = rnd(7)
    if k == 1 then t[#t + 1] = pick(set_chars) .. '-' .. pick(set_chars)
    elseif k == 2 then t[#t + 1] = pick(classes)
    elseif k == 3 then t[#t + 1] = '%' .. pick(set_chars)
    else t[#t + 1] = pick(set_chars) end
  end
  if rnd(15) ~= 1 then t[#t + 1] = ']' end
  return concat(t)
end

local gen_seq
local function gen_item(depth)
  local k = rnd(24)
  local item
  if k <= 7 then item = pick(lits)
  elseif k <= 9 then item = '.'
  elseif k <= 12 then item = pick(classes)
  elseif k <= 14 then item = gen_set()
  elseif k <= 16 then
    if depth < 3 then return '(' .. gen_seq(depth + 1, rnd(0, 3)) .. (rnd(12) == 1 and '' or ')') end
    item = '.'
  elseif k == 17 then return '()'
  elseif k == 18 then return '%' .. rnd(0, 4)
  elseif k == 19 then return '%b' .. pick{'()', '()', 'ab', "''", '[]', '(', '', ')('}
  elseif k == 20 then return '%f' .. (rnd(6) == 1 and pick{'a', '', '%'} or gen_set())
  elseif k == 21 then return pick{'$', '^', '%', '[', ']', '(', ')', '*', '+', '-', '?'}
  else item = pick(lits) end
  local q = rnd(9)
  if q == 1 then item = item .. '*' elseif q == 2 then item = item .. '+'
  elseif q == 3 then item = item .. '-' elseif q == 4 then item = item .. '?' end
  return item
end
function gen_seq(depth, n)
  local t = {}
  for i = 1, n do t[i] = gen_item(depth) end
  return concat(t)
end
local function gen_pattern()
  local p = gen_seq(0, rnd(0, 6))
  if rnd(5) == 1 then p = '^' .. p end
  if rnd(5) == 1 then p = p .. '$' end
  if rnd(10) == 1 and #p > 0 then p = p:sub(1, rnd(0, #p)) end -- cut anywhere: dangling '%', '[', ...
  return p
end

local function gen_init(s)
  local k = rnd(40)
  if k <= 10 then return nil end
  if k <= 28 then return rnd(-#s - 3, #s + 3) end
  return pick{0, ma, mi, 2.0, '2', 1.5, 'x', -1.0, #s + 1}
end
local function gen_repl()
  local k = rnd(30)
  if k <= 16 then
    local t = {}
    for i = 1, rnd(0, 4) do t[i] = pick{'x', '%0', '%1', '%2', '%3', '%%', '-', '\0', '%1%1', 'yz'} end
    if rnd(25) == 1 then t[#t + 1] = pick{'%', '%a', '%9', '%-'} end
    return concat(t)
  end
  if k <= 22 then return {fn = rnd(10)} end
  if k <= 27 then return {tbl = rnd(4)} end
  return pick{7, 1.5, true, false}
end
local function gen_max()
  local k = rnd(20)
  if k <= 12 then return nil end
  if k <= 18 then return rnd(-1, 4) end
  return pick{1.5, '2', ma, mi, 2.0}
end

local ROUNDS = 40000
for _ = 1, ROUNDS do
  local s, p = gen_subject(), gen_pattern()
  local plain = pick{nil, nil, nil, true, false}
  check(F, s, p, gen_init(s), plain)
  check(M, s, p, gen_init(s))
  check(G, s, p, gen_init(s))
  check(X, s, p, gen_repl(), gen_max())
  -- plain finds where hits are likely
  local n1, n2 = rnd(0, 20), rnd(0, 4)
  local hay, needle = {}, {}
  for i = 1, n1 do hay[i] = pick{'a', 'a', 'b', '.'} end
  for i = 1, n2 do needle[i] = pick{'a', 'a', 'b', '.'} end
  check(F, concat(hay), concat(needle), gen_init(hay), pick{true, nil})
end
print(fmt('differential: %d random cases agree (%d rounds, seed 20240521)', ncases - nhand, ROUNDS))
print(fmt('differential: %d cases in all, %d skipped (over the per-case budget)', ncases, nskipped))
assert(nskipped < ROUNDS / 100, 'too many skipped cases')

------------------------------------------------------------------------------
-- 2. Budget
------------------------------------------------------------------------------
local LIMIT = 10000000
-- A budget case passes when the run was killed by the budget (the stand-in rs_charge() saw it exhausted, after
-- more than the whole budget was asked for) and ended with the budget error. No wall-clock time is asserted: on a
-- shared machine under sanitizers that measures the machine, not the code.
local function expect_budget(name, f)
  collectgarbage()
  budget(LIMIT)
  local ok, err = pcall(f)
  local steps, calls, killed = charged()
  budget()
  if ok or not is_error(err, BUDGET_ERR) then
    error(fmt('%s: expected the budget error, got %s, %s', name, tostring(ok), tostring(err)), 0)
  end
  if not killed or steps <= LIMIT then
    error(fmt('%s: ended with the budget error but the budget did not kill it (%d of %d steps charged)',
      name, steps, LIMIT), 0)
  end
  print(fmt('budget: %-52s killed after %d steps asked in %d rs_charge calls', name, steps, calls))
end

local a30, a5000 = S.rep('a', 30), S.rep('a', 5000)
local exp_pat = S.rep('a*', 24) .. 'b'
expect_budget('find(("a"):rep(30), ("a*"):rep(24).."b")', function() return R.find(a30, exp_pat) end)
expect_budget('match (same)', function() return R.match(a30, exp_pat) end)
expect_budget('gmatch (same)', function() for _ in R.gmatch(a30, exp_pat) do end end)
expect_budget('gsub (same)', function() return R.gsub(a30, exp_pat, 'x') end)
expect_budget('("a"):rep(5000):match(".-.-.-.-.-b")', function() return R.match(a5000, '.-.-.-.-.-b') end)
expect_budget('match(("a"):rep(5000), "(.*)(.*)(.*)%1%2%3b")',
  function() return R.match(a5000, '(.*)(.*)(.*)%1%2%3b') end)
local huge = S.rep('a', 50000000)
expect_budget('gsub(50 MB, "a", "bb")', function() return R.gsub(huge, 'a', 'bb') end)
expect_budget('gsub(50 MB, ".", function)', function() return R.gsub(huge, '.', function() end) end)
expect_budget('gsub(50 MB, "a+", 1 MB replacement) x2', function()
  return R.gsub(huge, '(a+)', S.rep('r', 1000000) .. '%1')
end)
expect_budget('match(50 MB, ".*b")', function() return R.match(huge, '.*b') end)
expect_budget('find(50 MB, "%f[b]")', function() return R.find(huge, '%f[b]') end)
expect_budget('gmatch(50 MB, "a")', function() for _ in R.gmatch(huge, 'a') do end end)
huge = nil
local huge2 = S.rep('a', 200000000)
expect_budget('find(200 MB, "b", 1, true)', function() return R.find(huge2, 'b', 1, true) end)
expect_budget('find(200 MB, "b") (no specials)', function() return R.find(huge2, 'b') end)
huge2 = nil
local hay, needle = S.rep('a', 1000000), S.rep('a', 100000) .. 'b'
expect_budget('find(("a"):rep(1e6), ("a"):rep(1e5).."b", 1, true)', function() return R.find(hay, needle, 1, true) end)
expect_budget('find(("("):rep(1e5), "%b()")', function() return R.find(S.rep('(', 100000), '%b()') end)
hay, needle = nil, nil
local big_set = '[' .. S.rep('b', 1000000) .. ']'
expect_budget('find(("a"):rep(1e5), "[" .. ("b"):rep(1e6) .. "]")',
  function() return R.find(S.rep('a', 100000), big_set) end)
expect_budget('find(("a"):rep(1e5), "%f" .. (1 MB set))',
  function() return R.find(S.rep('a', 100000), '%f' .. big_set) end)
big_set = nil

-- Ordinary calls cost a few steps and one rs_charge() call.
local function cheap(name, max_steps, f)
  budget(LIMIT)
  local r = pack(f())
  local steps, calls = charged()
  budget()
  if steps > max_steps or calls > 1 then
    error(fmt('%s: charged %d steps in %d calls (expected <= %d in 1)', name, steps, calls, max_steps), 0)
  end
  print(fmt('cheap:  %-52s %3d steps, %d call(s) -> %s', name, steps, calls, showall(r)))
end
cheap('("hello world"):match("^(%w+)")', 40, function() return R.match('hello world', '^(%w+)') end)
cheap('find("key=value", "=", 1, true)', 5, function() return R.find('key=value', '=', 1, true) end)
cheap('find("user@example.com", "@")', 5, function() return R.find('user@example.com', '@') end)
cheap('gsub("hello world", "o", "0")', 80, function() return R.gsub('hello world', 'o', '0') end)
cheap('match("v1.2.3", "^v(%d+)%.(%d+)%.(%d+)$")', 60,
  function() return R.match('v1.2.3', '^v(%d+)%.(%d+)%.(%d+)$') end)
cheap('match("/api/v2/users/42", "^/api/v%d+/users/(%d+)$")', 80,
  function() return R.match('/api/v2/users/42', '^/api/v%d+/users/(%d+)$') end)

------------------------------------------------------------------------------
-- 3. Depth: deeply nested or repeated items end in an error, never a crash
------------------------------------------------------------------------------
local function expect_error(name, f, ...)
  local wanted = {...}
  budget(1000000000)
  local ok, err = pcall(f)
  budget()
  local good = false
  for _, w in ipairs(wanted) do if not ok and is_error(err, w) then good = true end end
  if not good then error(fmt('%s: expected one of {%s}, got %s, %s', name, concat(wanted, ', '), tostring(ok),
                              tostring(err):sub(1, 200)), 0) end
  print(fmt('depth:  %-52s -> %s', name, err))
end
local TOO = 'pattern too complex'
local a10k = S.rep('a', 10000)
expect_error('match(a*10000, ("a?"):rep(10000))', function() return R.match(a10k, S.rep('a?', 10000)) end, TOO)
expect_error('match(a*10000, ("a-"):rep(10000).."b")', function() return R.match(a10k, S.rep('a-', 10000) .. 'b') end,
  TOO, BUDGET_ERR)
expect_error('match(a*10000, ("[%a]?"):rep(10000))', function() return R.match(a10k, S.rep('[%a]?', 10000)) end, TOO)
expect_error('match(a*10000, ("(a)"):rep(5000))', function() return R.match(a10k, S.rep('(a)', 5000)) end,
  'too many captures', TOO)
expect_error('find(a*10000, ("("):rep(5000).."a"..(")"):rep(5000))',
  function() return R.find(a10k, S.rep('(', 5000) .. 'a' .. S.rep(')', 5000)) end, 'too many captures', TOO)
expect_error('gsub(a*10000, ("a?"):rep(5000), "")', function() return R.gsub(a10k, S.rep('a?', 5000), '') end, TOO)
expect_error('gmatch(a*10000, (".?"):rep(5000))', function() for _ in R.gmatch(a10k, S.rep('.?', 5000)) do end end,
  TOO)
expect_error('match(a*10000, ("(.)"):rep(5000))', function() return R.match(a10k, S.rep('(.)', 5000)) end,
  'too many captures')
expect_error('match(a*10000, ("%s*a?"):rep(5000))', function() return R.match(a10k, S.rep('%s*a?', 5000)) end, TOO)
-- straight-line items do not nest, so long flat patterns simply work
budget(LIMIT)
assert(R.match(a10k, S.rep('a', 10000)) == a10k)
assert(R.find(a10k, '^' .. S.rep('a', 9999) .. '$') == nil)
assert(R.match(a10k, S.rep('%f[a]', 100000) .. 'a') == 'a')
assert(R.match(a10k, S.rep('x?', 50000) .. 'a') == 'a')
assert(R.match(a10k, S.rep('a*', 5000)) == a10k) -- only the first '*' matches anything, so nothing nests
budget()
print('depth:  long flat patterns (10000 literals, 100000 frontiers, 50000 x?, 5000 a*) match fine')
print('all pattern tests passed')
)LUA";

int main(void) {
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);

    static const luaL_Reg pattern_functions[] = {
        {"find", rs_str_find}, {"match", rs_str_match}, {"gmatch", rs_str_gmatch}, {"gsub", rs_str_gsub}, {NULL, NULL},
    };
    static const luaL_Reg test_functions[] = {{"t_budget", t_budget}, {"t_charged", t_charged}, {NULL, NULL}};
    luaL_newlib(L, pattern_functions);
    lua_setglobal(L, "rs");
    lua_pushglobaltable(L);
    luaL_setfuncs(L, test_functions, 0);
    lua_pop(L, 1);
    lua_pushstring(L, BUDGET_ERROR);
    lua_setglobal(L, "BUDGET_ERROR");

    int status = 1;
    lua_pushcfunction(L, traceback);
    if (luaL_loadbuffer(L, script, strlen(script), "=pattern_test") == LUA_OK && lua_pcall(L, 0, 0, -2) == LUA_OK) {
        status = 0;
    } else {
        fprintf(stderr, "pattern_test: %s\n", lua_tostring(L, -1));
    }
    lua_close(L);
    return status;
}
