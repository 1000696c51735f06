import RuleEngine
import RuleModel
import Testing

/// Each of these rules tries to remember request 1's user and serve it to request 2: the flag's variants are the
/// users, so a leak shows up as request 2 being answered with request 1's user. Every attempt must fail at run time
/// (and so never leak), whatever trick it uses.
private let runtimeLeakAttempts: [String: String] = [
    "a field of a file-level table, through a string key": """
    local cache = {}
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local key = "us" .. "er"
      local previous = cache[key]
      cache[key] = ctx.user
      return previous
    end }
    """,
    "rawset on a file-level table": """
    local cache = {}
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = rawget(cache, "user")
      rawset(cache, "user", ctx.user)
      return previous
    end }
    """,
    "table.insert into a file-level list": """
    local seen = {}
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = seen[#seen]
      table.insert(seen, ctx.user)
      return previous
    end }
    """,
    "a library table": """
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = rawget(string, "last")
      string.last = ctx.user
      return previous
    end }
    """,
    "rawset on a library table": """
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = rawget(math, "last")
      rawset(math, "last", ctx.user)
      return previous
    end }
    """,
    "the globals table through _G": """
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = _G.last
      _G.last = ctx.user
      return previous
    end }
    """,
    "setmetatable on a file-level table": """
    local box = {}
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = box.user
      local user = ctx.user
      setmetatable(box, { __index = function() return user end })
      return previous
    end }
    """,
    "the metatable of a file-level table": """
    local box = setmetatable({}, { __index = {} })
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = box.user
      local mt = getmetatable(box)
      mt.__index.user = ctx.user
      return previous
    end }
    """,
    "the flag's own definition table, kept in a file-level local": """
    local definition = { variants = { alice = 1, bob = 2, none = 0 }, default = "none" }
    definition.rule = function(ctx)
      local key = "la" .. "st"
      local previous = definition[key]
      definition[key] = ctx.user
      return previous
    end
    flag "hostile" (definition)
    """,
    "a route's definition table, kept in a file-level local": """
    local spec = { target = "backend" }
    route "r" (spec)
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local key = "la" .. "st"
      local previous = spec[key]
      spec[key] = ctx.user
      return previous
    end }
    """,
    "a table inside a definition, reached through flag_value": """
    flag "store" { variants = { box = { user = "none" } }, default = "box" }
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local _, box = flag_value("store", ctx)
      local previous = box.user
      box["us" .. "er"] = ctx.user
      return previous
    end }
    """,
    "rawset on the metatable of a file-level table": """
    local mt = { __index = {} }
    local box = setmetatable({}, mt)
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      local previous = box.user
      rawset(getmetatable(box).__index, "user", ctx.user)
      return previous
    end }
    """,
    "a variant value table": """
    local values = { alice = { n = 1 }, bob = { n = 2 }, none = { n = 0 } }
    flag "hostile" { variants = values, default = "none", rule = function(ctx)
      local previous = values.none.last
      values.none.last = ctx.user
      return previous
    end }
    """,
    "the flag's own definition table": """
    local definition = { variants = { alice = 1, bob = 2, none = 0 }, default = "none" }
    definition.rule = function(ctx)
      local previous = definition.variants.last
      definition.variants.last = ctx.user
      return previous
    end
    flag "hostile" (definition)
    """,
    "the context table itself": """
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      ctx.user = "bob"
      return ctx.user
    end }
    """,
    "a metatable set on the context": """
    flag "hostile" { variants = { alice = 1, bob = 2, none = 0 }, default = "none", rule = function(ctx)
      setmetatable(ctx, { __index = function() return "bob" end })
      return ctx.user
    end }
    """,
]

/// Rules that would keep state in a place that cannot be made read-only; they are refused at load, with the file
/// and line of the problem.
private let loadTimeLeakAttempts: [(name: String, rule: String, line: Int, message: String)] = [
    (
        "a global assigned by a rule",
        """
        flag "hostile" { rule = function(ctx)
          last_user = ctx.user
        end }
        """, 2, "assigns to the global 'last_user'"
    ),
    (
        "an upvalue assigned by a rule",
        """
        local last
        flag "hostile" { rule = function(ctx)
          local previous = last
          last = ctx.user
          return previous
        end }
        """, 4, "assigns to the file-level variable 'last'"
    ),
    (
        "an upvalue assigned by a helper function the rule calls",
        """
        local count = 0
        local function bump() count = count + 1 end
        flag "hostile" { rule = function(ctx) bump() end }
        """, 2, "assigns to the file-level variable 'count'"
    ),
    (
        "an upvalue assigned by a closure made inside the rule",
        """
        local stash
        flag "hostile" { rule = function(ctx)
          local function keep() stash = ctx.user end
          keep()
        end }
        """, 3, "assigns to the file-level variable 'stash'"
    ),
    (
        "a field of the file's environment held in a local",
        """
        local env = _ENV
        flag "hostile" { rule = function(ctx)
          env.last = ctx.user
        end }
        """, 3, "file-level table 'env'"
    ),
    (
        "a coroutine created while loading",
        """
        local memory = coroutine.create(function(user)
          while true do user = coroutine.yield(user) end
        end)
        flag "hostile" { rule = function(ctx)
          local _, previous = coroutine.resume(memory, ctx.user)
          return previous
        end }
        """, 4, "a coroutine created while loading"
    ),
    (
        "a coroutine.wrap function created while loading",
        """
        local remember = coroutine.wrap(function(user)
          while true do user = coroutine.yield(user) end
        end)
        flag "hostile" { rule = function(ctx) return remember(ctx.user) end }
        """, 4, "wrapped coroutine created while loading"
    ),
    (
        "a gmatch iterator created while loading",
        """
        local next_word = ("a b c"):gmatch("%a")
        flag "hostile" { rule = function(ctx) return next_word() end }
        """, 2, "iterator"
    ),
    (
        "a coroutine reached through a metatable",
        """
        local co = coroutine.create(function() end)
        local box = setmetatable({}, { __index = { co = co } })
        flag "hostile" { rule = function(ctx) return box.co end }
        """, 3, "coroutine"
    ),
]

@Suite("No state survives an evaluation")
struct StateIsolationTests {
    @Test("a rule cannot carry request 1's context to request 2", arguments: Array(runtimeLeakAttempts.keys).sorted())
    func noLeakAtRuntime(_ name: String) throws {
        let rules = try compileWithCanary(runtimeLeakAttempts[name]!)
        let first = try rules.flag("hostile", ["user": "alice"])
        #expect(first.reason == .error, "request 1: \(first)")
        #expect(first.code == .general)
        try expectCanaryAnswers(rules)
        let second = try rules.flag("hostile", ["user": "bob"])
        #expect(second.variant != "alice", "request 2 saw request 1's user")
        #expect(second.reason == .error)
        try expectCanaryAnswers(rules)
    }

    @Test(
        "a rule that would keep state in a place that cannot be frozen is refused at load with file:line",
        arguments: loadTimeLeakAttempts.map(\.name))
    func refusedAtLoad(_ name: String) throws {
        let attempt = try #require(loadTimeLeakAttempts.first { $0.name == name })
        let failure = loadFailure(["canary.lua": canaryFile, "hostile.lua": attempt.rule])
        #expect(
            hasDiagnostic(failure, file: "hostile.lua", line: attempt.line, containing: attempt.message),
            "\(failure?.description ?? "")")
        #expect(failure?.diagnostics.allSatisfy { $0.location.file == "hostile.lua" } == true)
    }

    @Test("a rule may assign its own locals and build its own tables freely")
    func localsAreFine() throws {
        let rules = try compile([
            "f.lua": """
            local limits = { gold = 3, silver = 2 }
            local function score(tier)
              local s = 0
              for i = 1, (limits[tier] or 0) do s = s + i end
              return s
            end
            flag "x" { rule = function(ctx)
              local seen = {}
              seen[#seen + 1] = ctx.tier
              local total = 0
              local add = function(n) total = total + n end
              add(score(ctx.tier))
              return total >= 6 and "on" or "off"
            end }
            """
        ])
        #expect(try rules.flag("x", ["tier": "gold"]).variant == "on")
        #expect(try rules.flag("x", ["tier": "silver"]).variant == "off")
    }

    @Test("a file-level table may be read by rules, and classes with metatables keep working")
    func frozenDataReadable() throws {
        let rules = try compile([
            "f.lua": """
            local Tier = {}
            Tier.__index = Tier
            function Tier.new(name, rank) return setmetatable({ name = name, rank = rank }, Tier) end
            function Tier:above(other) return self.rank > other.rank end
            local gold, silver = Tier.new("gold", 2), Tier.new("silver", 1)
            local by_name = { gold = gold, silver = silver }
            flag "x" { rule = function(ctx)
              local t = by_name[ctx.tier]
              if t == nil then return nil end
              local fresh = Tier.new("copper", 0)
              if t:above(silver) and fresh:above(Tier.new("none", -1)) and getmetatable(t) == Tier then
                return "on"
              end
              return "off"
            end }
            """
        ])
        #expect(try rules.flag("x", ["tier": "gold"]).variant == "on")
        #expect(try rules.flag("x", ["tier": "silver"]).variant == "off")
        #expect(try rules.flag("x", ["tier": "other"]).reason == .defaultValue)
    }

    @Test("coroutines made during an evaluation work and die with it")
    func evaluationCoroutines() throws {
        let rules = try compile([
            "f.lua": """
            flag "x" { rule = function(ctx)
              local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
              local sum = gen() + gen() + gen()
              return sum == 6 and "on" or "off"
            end }
            """
        ])
        #expect(try rules.flag("x").variant == "on")
        #expect(try rules.flag("x").variant == "on")
    }

    @Test("two evaluators of one rule set answer identically, for every flag and route")
    func evaluatorsAgree() throws {
        let rules = try compile(
            [
                "a.lua": """
                local weights = { { "a", 1 }, { "b", 2 }, { "c", 3 } }
                flag "bucket" { variants = { a = "A", b = "B", c = "C" }, default = "a",
                  rule = function(ctx) return split(ctx.user, weights) end }
                flag "time" { rule = function(ctx) return now() % 2 == 0 and "on" or "off" end }
                flag "broken" { rule = function(ctx) return ctx.missing.field end }
                flag "loop" { rule = function(ctx) while ctx.user ~= "nobody" do end end }
                route "r" {
                  match = function(req) return rollout(req.user, 40) end,
                  target = function(req) return "t-" .. req.user end,
                }
                """
            ], limits: hostileLimits(instructions: 50_000))
        let second = try RuleCompiler.makeEvaluator(for: rules.ruleSet)
        for index in 0..<40 {
            let context: JSONValue = ["user": .string("user-\(index)")]
            let now = pinnedNow + Double(index)
            #expect(
                rules.evaluator.evaluateAllFlags(context: context, now: now)
                    == second.evaluateAllFlags(context: context, now: now))
            #expect(rules.evaluator.route(request: context, now: now) == second.route(request: context, now: now))
        }
    }

    /// Logs the keys of three tables in traversal order: one built at load time, one built by the rule, and the
    /// context; once with pairs and once with next.
    static let traversalRules = """
        local loaded = {}
        for i = 1, 40 do loaded["key" .. i] = i end
        local function walk(t)
          local seen = {}
          for k in pairs(t) do seen[#seen + 1] = tostring(k) end
          local stepped, k = {}, next(t)
          while k ~= nil do stepped[#stepped + 1] = tostring(k) k = next(t, k) end
          log(table.concat(seen, " ")) log(table.concat(stepped, " "))
        end
        flag "walk" { rule = function(ctx)
          local built = {}
          for i = 1, 40 do built["name" .. i] = true end
          walk(loaded) walk(built) walk(ctx)
        end }
        flag "first" { variants = { key1 = 1, key2 = 2, key3 = 3 }, default = "key1", rule = function(ctx)
          for k, v in pairs(loaded) do if v <= 3 then return k end end
        end }
        """

    @Test("pairs and next visit keys in the same order in every evaluator: no answer depends on the worker")
    func traversalOrderAgrees() throws {
        var limits = RuleEngineLimits()
        limits.logLinesPerEvaluation = 16
        limits.logLineBytes = 4096
        let rules = try compile(["walk.lua": Self.traversalRules], limits: limits)
        let second = try RuleCompiler.makeEvaluator(for: rules.ruleSet)
        var context = JSONObject()
        for index in 1...40 { context["field\(index)"] = .integer(Int64(index)) }
        _ = rules.evaluator.evaluateFlag(key: "walk", context: .object(context), now: pinnedNow)
        _ = second.evaluateFlag(key: "walk", context: .object(context), now: pinnedNow)
        let first = rules.evaluator.takeLogs().map(\.text)
        let other = second.takeLogs().map(\.text)
        #expect(first.count == 6)
        #expect(first == other)
        for _ in 0..<5 {
            #expect(
                rules.evaluator.evaluateFlag(key: "first", context: [:], now: pinnedNow)
                    == second.evaluateFlag(key: "first", context: [:], now: pinnedNow))
        }
    }

    @Test("pairs and next follow one documented order: numbers, then strings bytewise, then false and true")
    func traversalOrderIsCanonical() throws {
        let rules = try compile([
            "order.lua": """
            flag "order" { rule = function(ctx)
              local t = { "one", "two", b = 1, a = 2, B = 3, [2.5] = 4, [-1] = 5, [true] = 6, [false] = 7, [""] = 8 }
              local seen = {}
              for k in pairs(t) do seen[#seen + 1] = tostring(k) end
              local stepped, k = {}, next(t)
              while k ~= nil do stepped[#stepped + 1] = tostring(k) k = next(t, k) end
              log(table.concat(seen, ",")) log(table.concat(stepped, ","))
            end }
            """
        ])
        _ = try rules.flag("order")
        #expect(rules.logs() == ["-1,1,2,2.5,,B,a,b,false,true", "-1,1,2,2.5,,B,a,b,false,true"])
    }

    @Test("clearing fields while traversing with pairs is allowed, as in Lua")
    func clearingDuringTraversal() throws {
        let rules = try compile([
            "clear.lua": """
            flag "clear" { rule = function(ctx)
              local t = { a = 1, b = 2, c = 3 }
              local visited = 0
              for k in pairs(t) do t[k] = nil visited = visited + 1 end
              return (visited == 3 and next(t) == nil) and "on" or "off"
            end }
            """
        ])
        #expect(try rules.flag("clear").variant == "on")
    }

    @Test("next with a key the table does not hold is an error, as in Lua")
    func nextInvalidKey() throws {
        let rules = try compile([
            "n.lua": #"flag "n" { rule = function(ctx) return next({ a = 1 }, "zzz") end }"#
        ])
        let answer = try rules.flag("n")
        #expect(answer.code == .general)
        #expect(answer.message?.contains("invalid key to 'next'") == true)
    }

    @Test("a hostile evaluation in one evaluator does not change what another evaluator answers")
    func evaluatorsIndependent() throws {
        let rules = try compileWithCanary(
            """
            local cache = {}
            flag "hostile" { rule = function(ctx) cache[ctx.user] = true end }
            """)
        let second = try RuleCompiler.makeEvaluator(for: rules.ruleSet)
        _ = try rules.flag("hostile", ["user": "alice"])
        let context: JSONValue = ["user": "canary"]
        #expect(
            rules.evaluator.evaluateAllFlags(context: context, now: pinnedNow)
                == second.evaluateAllFlags(context: context, now: pinnedNow))
    }
}
