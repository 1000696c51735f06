import RuleEngine
import RuleModel
import Testing

/// Rules whose errors are unusual objects; each must fail with GENERAL and a message, and never crash.
private let oddErrors: [(name: String, body: String, message: String)] = [
    ("a table error object", "error({ code = 42 })", "table"),
    ("a nil error object", "error(nil)", "nil"),
    ("a function error object", "error(function() end)", "function"),
    ("a boolean error object", "error(false)", "boolean"),
    ("a number error object", "error(42)", "number"),
    (
        "an error object whose __tostring raises",
        "error(setmetatable({}, { __tostring = function() error('tostring exploded') end }))", "table"
    ),
    (
        "an error object whose __tostring loops",
        "error(setmetatable({}, { __tostring = function() while true do end end }))", "table"
    ),
    (
        "an error object whose __index raises",
        "error(setmetatable({}, { __index = function() error('no') end }))", "table"
    ),
    ("an error message with control bytes and invalid UTF-8", "error('line\\nbreak \\0 \\255 end')", "\\xff end"),
    ("an error raised with level 0 and a huge message", "error(('x'):rep(100000), 0)", "xxx..."),
    (
        "an error in a __close handler during an error",
        "local x <close> = setmetatable({}, { __close = function() error({}) end }) error('first')", "table"
    ),
]

/// Rules that recurse too deeply, in Lua or through C; each must fail cleanly.
private let deepRecursions: [String: String] = [
    "Lua recursion": "local function f(n) return 1 + f(n + 1) end return f(1)",
    "recursion through __index":
        "local t t = setmetatable({}, { __index = function(s, k) return t[k] end }) return t.x",
    "recursion through __tostring":
        "local t t = setmetatable({}, { __tostring = function(s) return tostring(s) end }) return tostring(t)",
    "recursion through pcall": "local function f() local ok, e = pcall(f) if not ok then error(e, 0) end end f()",
    "recursion through coroutine.wrap": "local function f() return coroutine.wrap(f)() end return f()",
    "recursion through coroutine.resume":
        "local function f() local ok, e = coroutine.resume(coroutine.create(f)) error(e, 0) end f()",
    "recursion through string.gsub": "local function f(s) return (s:gsub('.', f)) end return f('ab')",
    "recursion through table.sort":
        "local function cmp(a, b) table.sort({ 2, 1 }, cmp) return a < b end table.sort({ 2, 1 }, cmp)",
    "recursion through __concat":
        "local m = {} m.__concat = function(a, b) return setmetatable({}, m) .. b end\n"
        + "return setmetatable({}, m) .. 'x'",
    "recursion through flag_value and pcall":
        "local function f() pcall(flag_value, 'hostile', ctx) return f() + 1 end return f()",
]

@Suite("Crash resistance")
struct CrashResistanceTests {
    @Test("an unusual error object still yields a message", arguments: oddErrors.map(\.name))
    func oddErrorObject(_ name: String) throws {
        let entry = try #require(oddErrors.first { $0.name == name })
        let rules = try compileWithCanary(
            "flag \"hostile\" { rule = function(ctx) \(entry.body) end }", limits: hostileLimits())
        let answer = try rules.flag("hostile")
        #expect(answer.reason == .error)
        #expect(answer.code == .general || answer.code == .resourceLimit)
        #expect(answer.message?.contains(entry.message) == true, "\(answer.message ?? "")")
        #expect((answer.message?.utf8.count ?? 0) < 1024)
        try expectCanaryAnswers(rules)
    }

    @Test("deep recursion fails cleanly, and the canary keeps answering", arguments: deepRecursions.keys.sorted())
    func deepRecursion(_ name: String) throws {
        // Lua bounds its C recursion, but only a thread with the stack the engine asks for can reach those bounds.
        let stack = ThreadStack.currentBytes()
        try #require(stack == 0 || stack >= ThreadStack.minimumBytes, "test thread stack: \(stack) bytes")
        let rules = try compileWithCanary(
            "flag \"hostile\" { rule = function(ctx)\n\(deepRecursions[name]!)\nend }",
            limits: hostileLimits(instructions: 50_000_000, timeout: .seconds(3), memory: 64 << 20))
        let answer = try rules.flag("hostile")
        #expect(answer.reason == .error, "\(answer)")
        #expect(answer.code == .general || answer.code == .resourceLimit)
        try expectCanaryAnswers(rules)
    }

    @Test("error messages are escaped: control bytes and invalid UTF-8 never reach the answer raw")
    func escapedMessages() throws {
        let rules = try compile(["e.lua": #"flag "x" { rule = function() error("a\27[31mred\0\255", 0) end }"#])
        let message = try #require(try rules.flag("x").message)
        #expect(message == #"a\x1b[31mred\x00\xff"#)
    }

    @Test("a rule returning NaN, infinity or a huge integer is a TYPE_MISMATCH, not a crash")
    func oddReturns() throws {
        let rules = try compile([
            "r.lua": """
            flag "nan" { rule = function() return 0/0 end }
            flag "inf" { rule = function() return math.huge end }
            flag "int" { rule = function() return math.maxinteger end }
            flag "cycle" { rule = function() local t = {} t[1] = t return t end }
            flag "deep" { rule = function() local t = {} for i = 1, 1000 do t = { t } end return t end }
            flag "bytes" { rule = function() return "\\255\\0" end }
            flag "co" { rule = function() return coroutine.create(function() end) end }
            """
        ])
        for key in ["nan", "inf", "int", "cycle", "deep", "bytes", "co"] {
            let answer = try rules.flag(key)
            #expect(answer.code == .typeMismatch, "\(key): \(answer)")
            #expect(answer.value == false)
        }
    }

    @Test("a rule returning several values is judged by the first")
    func multipleReturns() throws {
        let rules = try compile(["r.lua": #"flag "x" { rule = function() return "on", "garbage", {} end }"#])
        #expect(try rules.flag("x").variant == "on")
    }

    @Test("a route target that is a table, a huge string or empty is a TYPE_MISMATCH")
    func oddTargets() throws {
        let rules = try compile([
            "r.lua": """
            route "r" { target = function(req)
              if req.kind == "table" then local t = {} t.self = t return t end
              if req.kind == "huge" then return ("x"):rep(100000) end
              return ""
            end }
            """
        ])
        for kind in ["table", "huge", "empty"] {
            guard case .failed(_, let failure) = rules.evaluator.route(request: ["kind": .string(kind)], now: pinnedNow)
            else {
                Issue.record("target for \(kind) was accepted")
                continue
            }
            #expect(failure.code == .typeMismatch)
        }
    }

    @Test("Lua errors never unwind through Swift: a thousand failing evaluations in a row leave the state usable")
    func manyFailures() throws {
        let rules = try compileWithCanary(
            """
            flag "hostile" { rule = function(ctx)
              if ctx.n % 3 == 0 then error({}) end
              if ctx.n % 3 == 1 then while true do end end
              local t = {} for i = 1, 1e9 do t[i] = i end
            end }
            """, limits: hostileLimits(instructions: 20_000, memory: 2 << 20))
        for n in 0..<300 {
            let answer = try rules.flag("hostile", ["n": .integer(Int64(n))])
            #expect(answer.reason == .error)
        }
        try expectCanaryAnswers(rules)
    }

    @Test("the stock coroutine.close crash is not reachable: coroutine.close is absent")
    func coroutineCloseAbsent() throws {
        try expectHostileFlagFails(
            """
            flag "hostile" { rule = function()
              local co = coroutine.create(function() end)
              for i = 1, 1000 do
                local inner = co
                co = coroutine.create(function() coroutine.close(inner) end)
              end
              coroutine.close(co)
            end }
            """, code: .general)
    }

    @Test("an error handler that recurses through pcall (a Lua 5.4.4 crasher) ends without crashing")
    func recursiveErrorHandler() throws {
        let rules = try compileWithCanary(
            """
            flag "hostile" { rule = function()
              local function loop() assert(pcall(loop)) end
              local ok = xpcall(loop, loop)
              return ok and "on" or "off"
            end }
            """)
        let answer = try rules.flag("hostile")
        // The C-stack limit ends the recursion with a plain Lua error that xpcall catches: the rule itself
        // finishes and decides "off"; neither a crash nor a budget kill.
        #expect(answer == FlagAnswer(value: false, variant: "off", reason: .targetingMatch), "\(answer)")
        try expectCanaryAnswers(rules)
    }

    @Test("table.move over a range Lua itself refuses is a plain error")
    func moveWholeRange() throws {
        let message = try expectHostileFlagFails(
            #"flag "hostile" { rule = function() table.move({}, math.mininteger, math.maxinteger, 1, {}) end }"#,
            code: .general)
        #expect(message.contains("too many elements"))
    }

    @Test("a to-be-closed variable whose value cannot be closed is a plain error")
    func badClose() throws {
        try expectHostileFlagFails(
            #"flag "hostile" { rule = function() local x <close> = {} end }"#, code: .general)
    }

    @Test("a constant _ENV does not confuse the sandbox")
    func constEnv() throws {
        let rules = try compileWithCanary(
            """
            local _ENV <const> = { flag = flag, split = split }
            flag "hostile" { rule = function(ctx) return split(ctx.user, { { "on", 1 } }, "") end }
            """)
        #expect(try rules.flag("hostile", ["user": "u"]).variant == "on")
        try expectCanaryAnswers(rules)
    }

    @Test("yielding from a rule outside a coroutine is a plain error")
    func yieldOutside() throws {
        try expectHostileFlagFails(
            #"flag "hostile" { rule = function() return coroutine.yield("on") end }"#, code: .general)
    }

    @Test("resuming the running evaluation is a plain error")
    func resumeRunning() throws {
        let rules = try compileWithCanary(
            """
            flag "hostile" { rule = function()
              local main = coroutine.running()
              local ok = coroutine.resume(main)
              return ok and "on" or "off"
            end }
            """)
        #expect(try rules.flag("hostile").variant == "off")
    }
}
