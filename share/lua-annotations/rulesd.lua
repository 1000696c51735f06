---@meta rulesd
-- Type annotations of the rulesd rule API for lua-language-server (LuaLS). Nothing here runs: rulesd provides
-- these functions itself. `rulesctl init DIR` writes a .luarc.json that points LuaLS at this file; see
-- docs/RULES.md, "Editor support". The rest of what rule files see is Lua 5.4's own library, reduced by the
-- sandbox (no io, os, debug, package, load, require, print; see docs/RULES.md, "The sandbox").

---A request or evaluation context: a read-only table made from the client's JSON object.
---@class rulesd.Context
---@field [string] any

---@alias rulesd.Reason "TARGETING_MATCH"|"DEFAULT"|"STATIC"|"DISABLED"|"ERROR"

---What `flag "key" { ... }` takes.
---@class rulesd.FlagDefinition
---@field description? string
---Variant names and their values (any JSON value); without it the flag is boolean: "on" (true) and "off" (false).
---@field variants? table<string, any>
---The variant answered when the rule returns nil or fails (required with `variants`).
---@field default? string
---@field enabled? boolean
---Returns a variant name, or nil for the default.
---@field rule? fun(ctx: rulesd.Context): string?

---What `route "name" { ... }` takes.
---@class rulesd.RouteDefinition
---@field description? string
---Higher priorities are tried first.
---@field priority? integer
---Whether the route takes the request; absent: every request.
---@field match? fun(req: rulesd.Context): boolean?
---Where the request goes: a constant, or a function returning a non-empty string.
---@field target string|fun(req: rulesd.Context): string

---A share over sampled contexts: `field` set to `prefix .. n` for n = 1..count.
---@class rulesd.Sample
---@field field string
---@field count integer
---@field prefix? string

---What a declarative `test "name" { ... }` takes: one of flag, route or config, and what to expect.
---@class rulesd.TestDefinition
---@field flag? string
---@field context? table
---@field at? number
---@field expect? string
---@field expect_value? any
---@field expect_reason? rulesd.Reason
---@field sample? rulesd.Sample
---@field expect_share? table<string, number[]>
---@field route? table
---@field expect_route? string|false
---@field expect_target? string
---@field config? string

---A flag's answer in a function test: what a client would get.
---@class rulesd.FlagAnswer
---@field variant string
---@field value any
---@field reason rulesd.Reason
---Why the rule failed (reason "ERROR").
---@field error? string

---A route's answer in a function test (nil when no route matches).
---@class rulesd.RouteAnswer
---@field name string
---@field target? string
---Why the route's match or target function failed.
---@field error? string

---Assertions on one value, from `expect(value)`. A failing one fails the test at its own line.
---@class rulesd.Expectation
---Raw equality (numbers by value, tables by identity).
---@field to_be fun(expected: any)
---@field not_to_be fun(unexpected: any)
---Deep equality of JSON-like values (tables member by member).
---@field to_equal fun(expected: any)
---@field not_to_equal fun(unexpected: any)
---Neither nil nor false.
---@field to_be_truthy fun()
---nil or false.
---@field to_be_falsy fun()
---@field to_be_nil fun()
---@field not_to_be_nil fun()
---A number within `tolerance` (default 1e-9) of `expected`.
---@field to_be_close_to fun(expected: number, tolerance?: number)
---A number in [low, high].
---@field to_be_between fun(low: number, high: number)
---@field to_be_greater_than fun(bound: number)
---@field to_be_less_than fun(bound: number)
---A string containing a substring, or a table with an element deep-equal to `item`.
---@field to_contain fun(item: any)
---@field not_to_contain fun(item: any)

---Declares a flag: `flag "key" { variants = ..., default = ..., rule = function(ctx) ... end }`.
---In a function test, `flag(key, ctx, at)` answers instead: the flag's variant, value and reason for the context
---(optionally at a pinned time).
---@param key string
---@return fun(definition: rulesd.FlagDefinition)
---@overload fun(key: string, ctx?: table, at?: number): rulesd.FlagAnswer
function flag(key) end

---Declares a route: `route "name" { priority = ..., match = function(req) ... end, target = ... }`.
---In a function test, `route(request, at)` routes a request instead: `{name, target}`, or nil when no route matches.
---@param name string
---@return fun(definition: rulesd.RouteDefinition)
---@overload fun(request: table, at?: number): rulesd.RouteAnswer?
function route(name) end

---Declares a configuration value: `config "key" (value)` or `config "key" { ... }`.
---In a function test, `config(key)` returns the value instead.
---@param key string
---@return fun(value: any)
---@overload fun(key: string): any
function config(key) end

---Declares a rule test, run in every candidate rule set before it goes live: `test "name" { flag = ..., expect = ... }`
---(declarative) or `test "name" (function() ... end)` (a function with `expect` assertions).
---@param name string
---@return fun(definition: rulesd.TestDefinition|fun())
function test(name) end

---Assertions, in function tests only: `expect(flag("f", ctx).variant).to_be("on")`.
---@param value any
---@return rulesd.Expectation
function expect(value) end

---A data file of the rules directory, loaded once per rule set and shared read-only by every worker.
---@class rulesd.DataSet
local DataSet = {}

---Whether `key` is an entry (a set) or a key (a map); integers are looked up as decimal text.
---@param key any
---@return boolean
function DataSet:has(key) end

---A map's value for `key` (`true` for an entry of a set), or nil.
---@param key any
---@return string|number|boolean|nil
function DataSet:get(key) end

---The number of entries.
---@return integer
function DataSet:size() end

---"set" (a .txt file or a JSON array) or "map" (a JSON object).
---@return "set"|"map"
function DataSet:kind() end

---Loads `NAME.txt` (one entry per line, `#` comments) or `NAME.json` (an array or an object) from the rules
---directory, at load time only: `local beta = data "beta-users"`, then `beta:has(ctx.user_id)` in a rule.
---@param name string
---@return rulesd.DataSet
function data(name) end

---Sticky bucketing: the value of the bucket `unit` falls in (MurmurHash3 of seed .. unit, as flagd's fractional);
---nil when `unit` is not a string. `seed` defaults to the key of the flag or route being evaluated.
---@generic T
---@param unit any
---@param buckets {[1]: T, [2]: integer?}[]
---@param seed? string
---@return T?
function split(unit, buckets, seed) end

---true for `percent`% of units (honoured to 0.001), sticky like split; nil when `unit` is not a string.
---@param unit any
---@param percent number
---@param seed? string
---@return boolean?
function rollout(unit, percent, seed) end

---Plain prefix test; false when `s` is not a string.
---@param s any
---@param prefix string
---@return boolean
function starts_with(s, prefix) end

---Plain suffix test; false when `s` is not a string.
---@param s any
---@param suffix string
---@return boolean
function ends_with(s, suffix) end

---The evaluation time in seconds since the epoch (pinned by a query's "at"); only while a rule is evaluated.
---@return number
function now() end

---Another flag's decision for a context (a prerequisite): its variant name and value.
---@param key string
---@param ctx table
---@return string variant
---@return any value
function flag_value(key, ctx) end

---Writes a line to rulesd's log, attributed to the flag or route being evaluated.
---@param level "debug"|"info"|"warn"|"warning"|"error"
---@param message any
---@overload fun(message: any)
function log(level, message) end

---Semantic versions (SemVer 2.0.0, flagd's ^ and ~).
semver = {}

---@param a any
---@param b any
---@return -1|0|1|nil
function semver.compare(a, b) end

---@param v any
---@param op "="|"=="|"!="|"~="|"<"|"<="|">"|">="|"^"|"~"
---@param ref string
---@return boolean
function semver.match(v, op, ref) end

---IP addresses and networks.
ip = {}

---Whether `addr` is in the network `cidr` (a CIDR string or a list of them); IPv4 and IPv6.
---@param addr any
---@param cidr string|string[]
---@return boolean
function ip.in_cidr(addr, cidr) end
