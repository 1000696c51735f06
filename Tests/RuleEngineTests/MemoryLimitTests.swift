import RuleEngine
import RuleModel
import Testing

/// Rules that try to exhaust memory; under a 4 MiB cap each must end with RESOURCE_LIMIT (memory), cleanly.
private let memoryBombs: [String: String] = [
    "a table that grows forever": "local t = {} for i = 1, 1e9 do t[i] = { i } end",
    "a string that doubles forever": "local s = 'x' for i = 1, 40 do s = s .. s end",
    "doubling inside pcall, catching each failure":
        "local s = 'x' for i = 1, 40 do pcall(function() s = s .. s end) end return 'on'",
    "deep recursion that keeps frames alive": "local function f(n) return 1 + f(n + 1) end return f(1)",
    "a memory bomb inside a coroutine":
        "local co = coroutine.wrap(function() local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(64) .. i end end) co()",
    "table.concat of large pieces":
        "local t = {} for i = 1, 100 do t[i] = ('x'):rep(1000) end\n"
        + "local all = {} for i = 1, 1000 do all[i] = table.concat(t) end",
    "string.rep just below the cap, many times":
        "local keep = {} for i = 1, 100 do keep[i] = ('x'):rep(1000000) end",
    "many coroutines": "local cos = {} for i = 1, 1e9 do cos[i] = coroutine.create(function() end) end",
    "a long chain of closures":
        "local f = function() end for i = 1, 1e9 do local g = f f = function() return g() end end",
    "string.format producing large strings":
        "local t = {} for i = 1, 1e9 do t[i] = string.format('%099d%099d%099d', i, i, i) end",
]

private func memoryLimits(_ bytes: Int = 4 << 20) -> RuleEngineLimits {
    // A generous instruction budget and deadline, so that the memory cap is what ends each bomb.
    hostileLimits(instructions: 500_000_000, timeout: .seconds(30), memory: bytes)
}

@Suite("Memory cap")
struct MemoryLimitTests {
    @Test("the default memory cap is 64 MiB")
    func defaultCap() {
        #expect(RuleEngineLimits().memoryLimit == 64 << 20)
    }

    @Test("a memory bomb ends with RESOURCE_LIMIT and the canary keeps answering", arguments: memoryBombs.keys.sorted())
    func memoryBomb(_ name: String) throws {
        let message = try expectHostileFlagFails(
            "flag \"hostile\" { rule = function(ctx)\n\(memoryBombs[name]!)\nend }\n", code: .resourceLimit,
            limits: memoryLimits())
        #expect(message.contains("memory"), "\(message)")
    }

    @Test("a memory breach inside a coroutine is sticky: resume cannot catch it and carry on")
    func memoryBreachInCoroutine() throws {
        try expectHostileFlagFails(
            """
            flag "hostile" { rule = function()
              local co = coroutine.create(function() local t = {} for i = 1, 1e9 do t[i] = { i } end end)
              local ok = coroutine.resume(co)
              return "on"
            end }
            """, code: .resourceLimit, limits: memoryLimits())
    }

    @Test("a memory breach inside coroutine.wrap is sticky: pcall around it cannot catch it")
    func memoryBreachInWrap() throws {
        try expectHostileFlagFails(
            """
            flag "hostile" { rule = function()
              local ok = pcall(coroutine.wrap(function() local s = "x" for i = 1, 40 do s = s .. s end end))
              return "on"
            end }
            """, code: .resourceLimit, limits: memoryLimits())
    }

    @Test("memory is given back: after each failed bomb a rule can still use most of the cap")
    func memoryReclaimed() throws {
        // "needy" keeps about 2.6 MiB alive until it returns: it fits under the 4 MiB cap only if the memory
        // the bombs took (the whole cap, each time) was given back.
        let rules = try compileWithCanary(
            """
            flag "hostile" { rule = function() local t = {} for i = 1, 1e9 do t[i] = { i } end end }
            flag "needy" { rule = function()
              local t = {}
              for i = 1, 2500 do t[i] = ("x"):rep(1000) .. i end
              return #t == 2500 and "on" or "off"
            end }
            """,
            limits: memoryLimits())
        #expect(try rules.flag("needy").variant == "on")
        for round in 0..<20 {
            #expect(try rules.flag("hostile").code == .resourceLimit, "round \(round)")
            let needy = try rules.flag("needy")
            #expect(needy.variant == "on", "round \(round): \(needy.message ?? "")")
        }
        try expectCanaryAnswers(rules)
    }

    @Test("the cap is configurable: the same rule fits under 64 MiB and not under 8 MiB")
    func configurableCap() throws {
        let rule = """
            flag "big" { rule = function()
              local s = "x"
              for i = 1, 23 do s = s .. s end
              return #s == 8388608 and "on" or "off"
            end }
            """
        let roomy = try compile(["b.lua": rule])
        #expect(try roomy.flag("big").variant == "on")
        let tight = try compile(["b.lua": rule], limits: memoryLimits(8 << 20))
        let answer = try tight.flag("big")
        #expect(answer.code == .resourceLimit)
        #expect(answer.message?.contains("memory") == true)
    }

    @Test("a memory bomb while loading refuses the file cleanly")
    func bombAtLoad() {
        var limits = memoryLimits()
        limits.loadInstructionLimit = 500_000_000
        limits.loadTimeout = .seconds(30)
        let failure = loadFailure(
            ["canary.lua": canaryFile, "bomb.lua": "local t = {} for i = 1, 1e9 do t[i] = { i } end\n"], limits: limits)
        #expect(hasDiagnostic(failure, file: "bomb.lua", line: 0, containing: "memory limit"))
    }

    @Test("a rule set whose data does not fit under the cap is refused")
    func dataTooBig() {
        let failure = loadFailure(
            ["data.lua": "local t = {} for i = 1, 200000 do t[i] = 'value-' .. i end\nconfig \"big\" (t)\n"],
            limits: memoryLimits(2 << 20))
        #expect(failure?.diagnostics.isEmpty == false)
    }

    @Test("building a context that does not fit under the cap fails that evaluation, not the process")
    func contextTooBigForCap() throws {
        var limits = memoryLimits(1 << 20)
        limits.maxContextValues = 1_000_000
        let rules = try compileWithCanary(
            """
            flag "hostile" { rule = function(ctx) return ctx.items and nil end }
            flag "unread" { rule = function(ctx) return ctx.other end }
            """, limits: limits)
        let big =
            "{\"items\":["
            + Array(repeating: "\"" + String(repeating: "z", count: 200) + "\"", count: 20000)
            .enumerated().map { "\"\($0.offset)-\($0.element.dropFirst())" }.joined(separator: ",") + "]}"
        let answer = try rules.flag("hostile", rawContext: Array(big.utf8))
        #expect(answer.reason == .error)
        #expect(answer.code == .resourceLimit)
        // A field is built when a rule first reads it: one that never reads the large field does not pay for it.
        #expect(try rules.flag("unread", rawContext: Array(big.utf8)).reason == .defaultValue)
        try expectCanaryAnswers(rules)
    }
}
