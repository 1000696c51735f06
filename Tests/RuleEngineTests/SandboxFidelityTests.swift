import RuleEngine
import RuleModel
import Testing

// Places where the sandbox's own versions of library functions behaved differently from stock Lua 5.4 although
// nothing in the sandbox's purpose asks for a difference. Each rule answers "on" when the sandbox behaves as stock
// Lua does, and "off" (or fails) otherwise.

/// Evaluates a rule body that returns true when it saw stock Lua's behaviour.
private func expectStockBehaviour(
    _ body: String, sourceLocation: Testing.SourceLocation = #_sourceLocation
) throws {
    let rules = try compileWithCanary(
        """
        flag "hostile" {
          rule = function(ctx)
            local function check()
        \(body)
            end
            return check() and "on" or "off"
          end,
        }
        """)
    let answer = try rules.flag("hostile", sourceLocation: sourceLocation)
    #expect(answer.variant == "on", "\(answer.message ?? "answered off")", sourceLocation: sourceLocation)
    #expect(answer.code == nil, "\(answer.message ?? "")", sourceLocation: sourceLocation)
    try expectCanaryAnswers(rules, sourceLocation: sourceLocation)
}

@Suite("Sandbox fidelity to stock Lua")
struct SandboxFidelityTests {
    @Test("next(t, k) after t[k] = nil goes on, so the manual's clearing loop works")
    func nextAfterClearingTheKey() throws {
        try expectStockBehaviour(
            """
            local k1, k2 = {}, {}
            local t = {a = 1, b = 2, c = 3, 10, 20, 30, [k1] = 1, [k2] = 2, [true] = 1, [2.5] = 0}
            for k in next, t do t[k] = nil end
            return next(t) == nil
            """)
    }

    @Test("next with a key that was never in the table still raises stock Lua's error")
    func nextWithForeignKeyFails() throws {
        try expectStockBehaviour(
            """
            local ok, err = pcall(next, {a = 1}, "never there")
            return not ok and err:find("invalid key to 'next'", 1, true) ~= nil
            """)
    }

    @Test(
        "table.unpack, move and sort reject bad arguments with stock Lua's catchable error before charging",
        arguments: [
            ("table.unpack, {}, 1, 10000000", "too many results to unpack"),
            ("table.unpack, {}, math.mininteger, math.maxinteger", "too many results to unpack"),
            ("table.move, {}, 1, math.maxinteger, 2", "destination wrap around"),
            ("table.move, {}, -1, math.maxinteger, 1", "too many elements to move"),
            ("table.move, {}, math.mininteger, math.maxinteger, 1", "too many elements to move"),
            ("table.sort, setmetatable({}, {__len = function() return math.maxinteger end})", "array too big"),
            ("table.sort, setmetatable({}, {__len = function() return 1000000 end}), 3", "function expected"),
        ])
    func rangeFunctionsCheckBeforeCharging(_ call: String, _ error: String) throws {
        try expectStockBehaviour(
            """
            local ok, err = pcall(\(call))
            return not ok and err:find("\(error)", 1, true) ~= nil
            """)
    }

    @Test("a __pairs metamethod may yield, as in stock Lua")
    func pairsMetamethodYields() throws {
        try expectStockBehaviour(
            """
            local co = coroutine.wrap(function()
              local t = setmetatable({}, {__pairs = function()
                coroutine.yield("inside")
                return next, {x = 1}, nil
              end})
              for k in pairs(t) do return k end
            end)
            return co() == "inside" and co() == "x"
            """)
    }

    @Test("coroutine.wrap closes the to-be-closed variables of a coroutine that fails")
    func wrapClosesOnError() throws {
        try expectStockBehaviour(
            """
            local closed = false
            local f = coroutine.wrap(function()
              local guard <close> = setmetatable({}, {__close = function() closed = true end})
              error("boom")
            end)
            local ok, err = pcall(f)
            return not ok and err:find("boom", 1, true) ~= nil and closed
            """)
    }

    @Test("table.concat, insert, remove, sort and unpack call __len once each")
    func lengthAskedOnce() throws {
        try expectStockBehaviour(
            """
            local calls = 0
            local t = setmetatable({"b", "a"}, {__len = function() calls = calls + 1 return 2 end})
            local counts = {}
            table.concat(t); counts[#counts + 1] = calls
            table.sort(t); counts[#counts + 1] = calls
            table.unpack(t); counts[#counts + 1] = calls
            table.insert(t, "c"); counts[#counts + 1] = calls
            table.remove(t); counts[#counts + 1] = calls
            return table.concat(counts, ",") == "1,2,3,4,5" and t[1] == "a" and t[2] == nil and t[3] == "c"
            """)
    }

    @Test(
        "an argument error names the function as stock Lua does when the call site gives no name",
        arguments: [
            ("string.gsub", "'string.gsub'"), ("string.rep", "'string.rep'"), ("table.concat", "'table.concat'"),
            ("utf8.len", "'utf8.len'"), ("next", "'next'"), ("math.floor", "'math.floor'"),
        ])
    func argumentErrorsNameTheFunction(_ function: String, _ name: String) throws {
        try expectStockBehaviour(
            """
            local ok, err = pcall(\(function))
            return not ok and err:find("bad argument #1 to \(name)", 1, true) ~= nil
            """)
    }

    @Test("a file stopped by the load budget is reported at the line that was running")
    func loadKillCarriesTheLine() throws {
        var limits = RuleEngineLimits()
        limits.loadInstructionLimit = 100_000
        let failure = loadFailure(
            [
                "canary.lua": canaryFile,
                "hostile.lua": """
                local n = 0
                local function spin()
                  while true do n = n + 1 end
                end
                spin()
                """,
            ], limits: limits)
        #expect(hasDiagnostic(failure, file: "hostile.lua", line: 3, containing: "instruction budget"))
    }
}
