import RuleEngine
import RuleModel
import Testing

/// Names that must not exist in a rule's environment, as the rule would spell them.
let absentNames = [
    "io", "os", "package", "require", "debug", "load", "loadstring", "dofile", "loadfile", "collectgarbage",
    "print", "warn", "module", "setfenv", "getfenv", "newproxy", "unpack", "string.dump", "math.random",
    "math.randomseed", "coroutine.close",
]

@Suite("Sandbox environment")
struct SandboxEnvironmentTests {
    @Test("a dangerous global is absent while a rule is evaluated", arguments: absentNames)
    func absentAtEvaluation(_ name: String) throws {
        let rules = try compileWithCanary(
            """
            flag "hostile" {
              rule = function(ctx)
                if \(name) == nil then return "on" end
                return "off"
              end,
            }
            """)
        #expect(try rules.flag("hostile").variant == "on")
        try expectCanaryAnswers(rules)
    }

    @Test("a dangerous global is absent while a file loads", arguments: absentNames)
    func absentAtLoad(_ name: String) throws {
        let rules = try compileWithCanary(
            """
            local present = \(name) ~= nil
            flag "hostile" { default = present and "on" or "off" }
            """)
        #expect(try rules.flag("hostile").variant == "off")
    }

    @Test("calling an absent global fails the evaluation with a GENERAL error, and the canary answers")
    func callingAbsentGlobal() throws {
        for call in [
            "io.open('/etc/passwd')", "os.execute('true')", "require('os')", "load('return 1')()",
            "dofile('/etc/passwd')", "collectgarbage('count')", "string.dump(print)", "debug.getinfo(1)",
            "math.random(6)", "coroutine.close(coroutine.create(function() end))", "print('hi')",
        ] {
            try expectHostileFlagFails(
                #"flag "hostile" { rule = function(ctx) local _ = \#(call) end }"#, code: .general)
        }
    }

    @Test("a binary (precompiled) chunk saved as a .lua file is refused")
    func binaryChunkRefused() throws {
        let bytecode = try #require(readBytes(fixturesDirectory + "/binary-chunk.lua"))
        #expect(bytecode.starts(with: [0x1B, 0x4C, 0x75, 0x61]))
        do {
            _ = try RuleCompiler.compile([
                RuleSource(path: "canary.lua", content: Array(canaryFile.utf8)),
                RuleSource(path: "smuggled.lua", content: bytecode),
            ])
            Issue.record("a binary chunk was loaded")
        } catch {
            #expect(error.diagnostics.count == 1)
            #expect(error.diagnostics.first?.location.file == "smuggled.lua")
            #expect(error.diagnostics.first?.message.contains("binary chunk") == true)
        }
    }

    @Test("getmetatable of a string is false: the string metatable is out of reach")
    func stringMetatableHidden() throws {
        let rules = try compileWithCanary(
            #"flag "hostile" { rule = function() return getmetatable("") == false and "on" or "off" end }"#)
        #expect(try rules.flag("hostile").variant == "on")
    }

    @Test("rules cannot add string methods")
    func cannotAddStringMethods() throws {
        try expectHostileFlagFails(
            #"flag "hostile" { rule = function() string.shout = function(s) return s:upper() end end }"#,
            code: .general)
        try expectHostileFlagFails(
            #"flag "hostile" { rule = function() getmetatable("").__index.shout = string.upper end }"#,
            code: .general)
        try expectHostileFlagFails(
            #"flag "hostile" { rule = function() setmetatable("", {}) end }"#, code: .general)
    }

    @Test("a file cannot add string methods at load time either")
    func cannotAddStringMethodsAtLoad() {
        let failure = loadFailure(["s.lua": "string.shout = string.upper\n"])
        #expect(hasDiagnostic(failure, file: "s.lua", line: 1, containing: "read-only"))
    }

    @Test("string methods still work through the locked metatable")
    func stringMethodsWork() throws {
        let rules = try compile([
            "s.lua":
                #"flag "x" { rule = function(ctx) return (ctx.name:upper():sub(1, 2) == "AL") and "on" or "off" end }"#
        ])
        #expect(try rules.flag("x", ["name": "alice"]).variant == "on")
    }

    @Test(
        "library tables are read-only, also through rawset",
        arguments: [
            "math.pi = 3", "table.insert = nil", "string.format = nil", "utf8.char = nil", "coroutine.wrap = nil",
            "rawset(math, 'pi', 3)", "rawset(string, 'x', 1)", "setmetatable(math, {})",
        ])
    func libraryTablesReadOnly(_ statement: String) throws {
        let message = try expectHostileFlagFails(
            #"flag "hostile" { rule = function() \#(statement) end }"#, code: .general)
        #expect(message.contains("read-only"), "\(message)")
    }

    @Test("the global environment is read-only at evaluation: _G writes and rawset on _G fail")
    func globalsReadOnly() throws {
        try expectHostileFlagFails(#"flag "hostile" { rule = function(ctx) _G.seen = ctx.user end }"#, code: .general)
        try expectHostileFlagFails(
            #"flag "hostile" { rule = function(ctx) rawset(_G, "seen", ctx.user) end }"#, code: .general)
        try expectHostileFlagFails(
            #"flag "hostile" { rule = function(ctx) _ENV["se" .. "en"] = ctx.user end }"#, code: .general)
    }

    @Test("a file cannot replace a shared helper for other files")
    func helpersNotReplaceable() throws {
        let rules = try compile([
            "a.lua": "split = function() return 'always' end\n",
            "b.lua":
                #"flag "x" { variants = { always = 1, a = 2 }, default = "a", rule = function(ctx) return split("u", "#
                + #"{ { "a", 1 } }) end }"#,
        ])
        #expect(try rules.flag("x").variant == "a")
    }

    @Test("each file's globals are its own and read-only after loading")
    func fileGlobalsSeparate() throws {
        let rules = try compile([
            "a.lua": "threshold = 10\n",
            "b.lua": #"flag "x" { rule = function() return threshold == nil and "on" or "off" end }"#,
        ])
        #expect(try rules.flag("x").variant == "on")
    }

    @Test("the only source of time is now(): os.time and os.clock are absent")
    func noClock() throws {
        let rules = try compile(["t.lua": #"flag "x" { rule = function() return (os == nil) and "on" or "off" end }"#])
        #expect(try rules.flag("x").variant == "on")
    }
}
