import RuleEngine
import RuleModel
import Testing

/// Rules that try to run forever, or to make C code do unbounded work; each must end with RESOURCE_LIMIT.
private let cpuBombs: [String: String] = [
    "an infinite loop": "while true do end",
    "an infinite loop inside pcall": "pcall(function() while true do end end) return 'on'",
    "pcall in a loop, catching each breach": "while true do pcall(function() while true do end end) end",
    "an infinite loop inside xpcall": "xpcall(function() while true do end end, function(e) return e end) return 'on'",
    "an infinite loop in xpcall's error handler":
        "for i = 1, 1e9 do xpcall(function() error('x') end, function(m) while true do end end) end return 'on'",
    "an infinite loop inside a coroutine":
        "local co = coroutine.create(function() while true do end end) coroutine.resume(co) return 'on'",
    "resuming a looping coroutine repeatedly":
        "local co = coroutine.create(function() while true do end end) while true do coroutine.resume(co) end",
    "an infinite loop inside coroutine.wrap": "pcall(coroutine.wrap(function() while true do end end)) return 'on'",
    "an infinite loop in a __close handler":
        "local spin = { __close = function() while true do end end }\n"
        + "pcall(function() local x <close> = setmetatable({}, spin) error('go') end) return 'on'",
    "a __close handler looping while the breach unwinds":
        "local x <close> = setmetatable({}, { __close = function() while true do end end }) while true do end",
    "a __close handler in a coroutine":
        "local spin = { __close = function() while true do end end }\n"
        + "for i = 1, 1e9 do\n"
        + "  pcall(coroutine.wrap(function() local x <close> = setmetatable({}, spin) coroutine.yield() end))\n"
        + "end",
    "an infinite loop in an __index metamethod":
        "local t = setmetatable({}, { __index = function() while true do end end }) return t.x",
    "an infinite loop in a table.sort comparator":
        "local t = { 3, 1, 2 } table.sort(t, function(a, b) while true do end end) return 'on'",
    "an infinite loop in a gsub replacement function":
        "local s = ('x'):gsub('x', function() while true do end end) return 'on'",
    "unbounded tail calls": "local function f() return f() end return f()",
    "recursive prerequisites caught with pcall":
        "local function again() pcall(flag_value, 'hostile', ctx) return again() end return again()",
    "string.rep with a huge count": "local s = ('x'):rep(1e10) return 'on'",
    "string.rep of the empty string with a huge count": "local s = (''):rep(1e12) return 'on'",
    "string.rep with a huge separator product": "local s = ('ab'):rep(1e6, ('-'):rep(1000)) return 'on'",
    "string.rep in a loop": "while true do local s = ('x'):rep(100000) end",
    "table.concat over a huge range": "return table.concat({}, '', 1, 1e15)",
    "table.concat in a loop":
        "local t = {} for i = 1, 1000 do t[i] = 'x' end while true do local s = table.concat(t) end",
    "table.move over a huge range": "table.move({ 1 }, 1, 1e15, 2) return 'on'",
    "table.insert into a table claiming a huge length":
        "local t = setmetatable({}, { __len = function() return 1e15 end }) table.insert(t, 1, 'x') return 'on'",
    "table.sort of a table claiming a huge length":
        "local t = setmetatable({}, { __len = function() return 2147483646 end }) table.sort(t) return 'on'",
    "table.sort in a loop":
        "local t = {} for i = 1, 1e4 do t[i] = i end while true do table.sort(t, function(a, b) return a > b end) end",
    "table.unpack over a range larger than the budget": "return table.unpack({}, 1, 300000)",
    "string.pack with a huge field": "local s = string.pack('c1000000000', '') return 'on'",
    "string.pack with many huge fields": "local s = string.pack(('c100000000'):rep(30), '') return 'on'",
    "an exponential pattern": "local s = ('a'):rep(30) s:find(('a*'):rep(24) .. 'b') return 'on'",
    "an exponential pattern in match":
        "local s = ('a'):rep(5000) s:match(('(.-)'):rep(30) .. 'b') return 'on'",
    "an exponential pattern in gmatch":
        "for m in ('a'):rep(40):gmatch(('a?'):rep(40) .. ('a'):rep(40) .. 'b') do end return 'on'",
    "an exponential pattern in gsub": "local s = ('a'):rep(40):gsub(('a-'):rep(30) .. 'b', '') return 'on'",
    "plain find over a huge subject in a loop":
        "local s = ('a'):rep(100000) while true do s:find(('a'):rep(5000) .. 'b', 1, true) end",
]

@Suite("CPU budgets")
struct CPULimitTests {
    @Test("a CPU bomb ends with RESOURCE_LIMIT and the canary keeps answering", arguments: cpuBombs.keys.sorted())
    func cpuBomb(_ name: String) throws {
        let body = cpuBombs[name]!
        let message = try expectHostileFlagFails(
            "flag \"hostile\" {\n  rule = function(ctx)\n    \(body)\n  end,\n}\n", code: .resourceLimit)
        #expect(message.hasPrefix("resource limit"), "\(message)")
    }

    /// Library calls whose C work grows with a string's length; on an 8 MiB string each does milliseconds of work in
    /// one VM instruction.
    static let stringScans = [
        "utf8.len(s)", "utf8.offset(s, 8000000)", "utf8.codepoint(s, 1, -1)",
        "(function() for _ in utf8.codes(s) do end end)()",
        "s:upper()", "s:lower()", "s:reverse()", "s:sub(2)", "string.format('%s', s)", "tonumber(s)",
        "string.packsize(s)", "string.unpack('z', s)", "split(s, { { 'a', 1 } })", "rollout(s, 50)",
        "starts_with(s, s)", "ends_with(s, s)", "semver.compare(s, s)", "semver.match(s, '=', '1.0.0')",
        "ip.in_cidr('10.0.0.1', s)", "s:find(s, 1, true)", "s:rep(2)",
    ]

    @Test(
        "C work on a huge string counts against the instruction budget, not only the deadline",
        arguments: stringScans)
    func stringScanCharged(_ call: String) throws {
        // The deadline is far away, so only the instruction budget can end this loop quickly: work that the budget
        // does not see would run for the whole deadline and fail with the deadline's message instead.
        let message = try expectHostileFlagFails(
            """
            flag "hostile" { rule = function(ctx)
              local s = "x"
              for i = 1, 23 do s = s .. s end
              while true do pcall(function() return \(call) end) end
            end }
            """,
            code: .resourceLimit,
            limits: hostileLimits(instructions: 1_000_000, timeout: .seconds(60), memory: 64 << 20))
        #expect(message.contains("instruction budget"), "\(message)")
    }

    @Test("walking an ordinary string character by character stays cheap")
    func characterLoopsCheap() throws {
        let rules = try compile(
            [
                "w.lua": """
                flag "walk" { rule = function(ctx)
                  local s = ("é"):rep(2000)
                  local n = 0
                  for i = 1, #s do n = n + #s:sub(i, i) end
                  for i = 1, 1000 do n = n + utf8.codepoint(s, i * 2 - 1) end
                  local pos = 1
                  for i = 1, 1000 do pos = utf8.offset(s, 2, pos) end
                  for _, c in utf8.codes(s) do n = n + 1 end
                  return n > 0 and pos == 2001 and "on" or "off"
                end }
                """
            ], limits: hostileLimits(instructions: 100_000))
        let answer = try rules.flag("walk")
        #expect(answer.variant == "on", "\(answer)")
    }

    @Test("the instruction budget ends a loop even with a generous deadline")
    func instructionBudget() throws {
        let message = try expectHostileFlagFails(
            #"flag "hostile" { rule = function() local n = 0 while true do n = n + 1 end end }"#,
            code: .resourceLimit, limits: hostileLimits(instructions: 10_000, timeout: .seconds(60)))
        #expect(message.contains("instruction budget"))
    }

    @Test("the wall-clock deadline ends a rule whose instruction budget is huge")
    func deadline() throws {
        let message = try expectHostileFlagFails(
            #"flag "hostile" { rule = function() while true do end end }"#,
            code: .resourceLimit, limits: hostileLimits(instructions: Int.max / 2, timeout: .milliseconds(50)))
        #expect(message.contains("time limit"))
    }

    @Test("a breach is sticky: pcall cannot catch it and carry on to return a variant")
    func stickyAgainstPcall() throws {
        try expectHostileFlagFails(
            """
            flag "hostile" { rule = function()
              for attempt = 1, 100 do
                local ok = pcall(function() while true do end end)
                if not ok then return "on" end
              end
            end }
            """, code: .resourceLimit)
    }

    @Test("a breach is sticky across coroutines: resume cannot swallow it")
    func stickyAgainstCoroutines() throws {
        try expectHostileFlagFails(
            """
            flag "hostile" { rule = function()
              local co = coroutine.create(function() while true do end end)
              local ok = coroutine.resume(co)
              if not ok then return "on" end
            end }
            """, code: .resourceLimit)
    }

    @Test("a breach is sticky in error handlers: xpcall's handler cannot turn it into success")
    func stickyAgainstXpcall() throws {
        try expectHostileFlagFails(
            """
            flag "hostile" { rule = function()
              local ok, v = xpcall(function() while true do end end, function() return "on" end)
              return v
            end }
            """, code: .resourceLimit)
    }

    @Test("each evaluation gets a fresh budget: a breach does not starve the next request")
    func freshBudget() throws {
        let rules = try compile(
            [
                "f.lua": """
                flag "work" { rule = function(ctx)
                  if ctx.loop then while true do end end
                  local n = 0
                  for i = 1, 20000 do n = n + i end
                  return "on"
                end }
                """
            ], limits: hostileLimits(instructions: 100_000))
        #expect(try rules.flag("work", ["loop": true]).code == .resourceLimit)
        for _ in 0..<5 {
            #expect(try rules.flag("work").variant == "on")
        }
    }

    @Test("flags(context) gives each flag its own budget: one looping rule fails alone")
    func budgetPerFlag() throws {
        let rules = try compile(
            [
                "f.lua": """
                flag "a.loop" { rule = function() while true do end end }
                flag "b.fine" { rule = function() local n = 0 for i = 1, 20000 do n = n + i end return "on" end }
                """
            ], limits: hostileLimits(instructions: 100_000))
        let decisions = try rules.evaluator.evaluateAllFlags(context: [:], now: pinnedNow).get()
        #expect(decisions[0].failure?.code == .resourceLimit)
        #expect(decisions[1].reason == .targetingMatch)
    }

    @Test("finalizers are refused: setmetatable with __gc raises, and nothing runs at collection")
    func gcRefused() throws {
        let message = try expectHostileFlagFails(
            """
            flag "hostile" { rule = function()
              setmetatable({}, { __gc = function() while true do end end })
              return "on"
            end }
            """, code: .general)
        #expect(message.contains("__gc"))
    }

    @Test("__gc is refused at load time too")
    func gcRefusedAtLoad() {
        let failure = loadFailure(["g.lua": "local t = setmetatable({}, { __gc = function() end })\n"])
        #expect(hasDiagnostic(failure, file: "g.lua", line: 1, containing: "__gc"))
    }

    @Test("an infinite loop while loading refuses the file, and other files are not loaded either")
    func loopAtLoad() {
        var limits = RuleEngineLimits()
        limits.loadInstructionLimit = 100_000
        let failure = loadFailure(
            ["canary.lua": canaryFile, "spin.lua": "pcall(function() while true do end end)\nflag \"x\" {}\n"],
            limits: limits)
        #expect(hasDiagnostic(failure, file: "spin.lua", line: 1, containing: "resource limit"))
    }

    @Test("the load deadline ends a file that loops with a huge instruction budget")
    func loadDeadline() {
        var limits = RuleEngineLimits()
        limits.loadInstructionLimit = Int.max / 2
        limits.loadTimeout = .milliseconds(100)
        let failure = loadFailure(["spin.lua": "while true do end\n"], limits: limits)
        #expect(hasDiagnostic(failure, file: "spin.lua", line: 1, containing: "time limit"))
    }

    @Test("a pattern bomb while loading refuses the file")
    func patternBombAtLoad() {
        let failure = loadFailure(["p.lua": "local _ = (('a'):rep(30)):find(('a*'):rep(24) .. 'b')\n"])
        #expect(hasDiagnostic(failure, file: "p.lua", line: 1, containing: "resource limit"))
    }

    @Test("ordinary patterns still work: captures, anchors, classes and balanced matches")
    func patternsWork() throws {
        let rules = try compile([
            "p.lua": """
            flag "x" { rule = function(ctx)
              local user, domain = ctx.email:match("^([%w.]+)@([%w.]+)$")
              local count = select(2, ("a,b,,c"):gsub(",", ";"))
              local inner = ("f(a(b)c)"):match("%b()")
              if user == "jo" and domain == "example.com" and count == 3 and inner == "(a(b)c)" then return "on" end
              return "off"
            end }
            """
        ])
        #expect(try rules.flag("x", ["email": "jo@example.com"]).variant == "on")
    }
}
