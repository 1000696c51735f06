import RuleEngine
import RuleModel
import Testing

@Suite("Flags")
struct FlagTests {
    @Test("a flag without variants or default has on = true and off = false, and serves off")
    func defaultVariantSet() throws {
        let rules = try compile(["f.lua": #"flag "simple" { description = "plain" }"#])
        let flag = try #require(rules.ruleSet.flags.first)
        #expect(flag.variants.map(\.name) == ["off", "on"])
        #expect(flag.variants.map(\.value) == [false, true])
        #expect(flag.variants[flag.defaultVariant].name == "off")
        #expect(flag.description == "plain")
        #expect(try rules.flag("simple") == FlagAnswer(value: false, variant: "off", reason: .staticValue))
    }

    @Test("a flag without a rule serves its default variant with reason STATIC")
    func staticFlag() throws {
        let rules = try compile([
            "f.lua": ##"flag "colour" { variants = { red = "#f00", blue = "#00f" }, default = "blue" }"##
        ])
        #expect(try rules.flag("colour") == FlagAnswer(value: "#00f", variant: "blue", reason: .staticValue))
    }

    @Test("a rule that returns a variant name serves it with reason TARGETING_MATCH")
    func targetingMatch() throws {
        let rules = try compile([
            "f.lua": """
            flag "checkout.new-flow" {
              rule = function(ctx) if ctx.country == "NL" then return "on" end end,
            }
            """
        ])
        let answer = try rules.flag("checkout.new-flow", ["country": "NL"])
        #expect(answer == FlagAnswer(value: true, variant: "on", reason: .targetingMatch))
    }

    @Test("a rule that returns nil serves the default variant with reason DEFAULT")
    func ruleReturnsNil() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { rule = function(ctx) if ctx.country == "NL" then return "on" end end }"#
        ])
        #expect(
            try rules.flag("x", ["country": "BE"]) == FlagAnswer(value: false, variant: "off", reason: .defaultValue))
    }

    @Test("a disabled flag serves its default variant with reason DISABLED, without running its rule")
    func disabledFlag() throws {
        let rules = try compile([
            "f.lua": """
            flag "x" {
              enabled = false,
              variants = { a = 1, b = 2 }, default = "b",
              rule = function(ctx) error("a disabled flag's rule must not run") end,
            }
            """
        ])
        #expect(try rules.flag("x") == FlagAnswer(value: 2, variant: "b", reason: .disabled))
        #expect(rules.ruleSet.flags[0].enabled == false)
    }

    @Test("enabled = true behaves like an absent enabled field")
    func explicitlyEnabled() throws {
        let rules = try compile(["f.lua": #"flag "x" { enabled = true, rule = function() return "on" end }"#])
        #expect(try rules.flag("x").reason == .targetingMatch)
    }

    @Test("a rule returning a name that is not a variant is a TYPE_MISMATCH error serving the default value")
    func unknownVariantIsTypeMismatch() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { variants = { a = "A", b = "B" }, default = "a", rule = function() return "c" end }"#
        ])
        let answer = try rules.flag("x")
        #expect(answer.value == "A")
        #expect(answer.variant == "a")
        #expect(answer.reason == .error)
        #expect(answer.code == .typeMismatch)
        #expect(answer.message?.contains("'c'") == true)
    }

    @Test("a rule returning a non-string value (a boolean) is a TYPE_MISMATCH error")
    func booleanReturnIsTypeMismatch() throws {
        let rules = try compile(["f.lua": #"flag "x" { rule = function() return true end }"#])
        let answer = try rules.flag("x")
        #expect(answer.code == .typeMismatch)
        #expect(answer.message?.contains("boolean") == true)
        #expect(answer.value == false)
    }

    @Test("a rule that raises an error is a GENERAL error with its message, serving the default value")
    func ruleErrorIsGeneral() throws {
        let rules = try compile([
            "rules/f.lua": """
            flag "x" {
              variants = { a = 1, b = 2 }, default = "b",
              rule = function(ctx)
                error("no country in the context")
              end,
            }
            """
        ])
        let answer = try rules.flag("x")
        #expect(answer.reason == .error)
        #expect(answer.code == .general)
        #expect(answer.value == 2)
        #expect(answer.message == "rules/f.lua:4: no country in the context")
    }

    @Test("a flag's source is the file and line of its declaration")
    func sourceLocation() throws {
        let rules = try compile([
            "team/payments.lua": """
            -- payments

            flag "pay.fast" {
              rule = function() return "on" end,
            }
            """
        ])
        let flag = try #require(rules.ruleSet.flags.first)
        #expect(flag.location.description == "team/payments.lua:3")
        #expect(flag.hasRule)
    }

    @Test("variant values may be booleans, numbers, strings, objects and arrays")
    func variantValueShapes() throws {
        let rules = try compile([
            "f.lua": """
            flag "shapes" {
              variants = {
                yes = true, count = 42, ratio = 0.25, text = "hello",
                object = { title = "Pics", perPage = 100, nested = { ok = true } },
                list = { 1, "two", false },
                empty = {},
              },
              default = "text",
            }
            """
        ])
        let variants = Dictionary(uniqueKeysWithValues: rules.ruleSet.flags[0].variants.map { ($0.name, $0.value) })
        #expect(variants["yes"] == true)
        #expect(variants["count"] == .integer(42))
        #expect(variants["ratio"] == .number(0.25))
        #expect(variants["text"] == "hello")
        #expect(variants["object"] == ["nested": ["ok": true], "perPage": 100, "title": "Pics"])
        #expect(variants["list"] == [1, "two", false])
        #expect(variants["empty"] == .object(JSONObject()))
    }

    @Test("variant values are kept as canonical JSON with sorted keys")
    func canonicalVariantJSON() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { variants = { v = { b = 1, a = { d = 2.5, c = "s" } } }, default = "v" }"#
        ])
        let json = String(decoding: rules.ruleSet.flags[0].variants[0].json, as: UTF8.self)
        #expect(json == #"{"a":{"c":"s","d":2.5},"b":1}"#)
    }

    @Test("variants are sorted by name and the default is found by name")
    func variantsSorted() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { variants = { zeta = 1, alpha = 2, mid = 3 }, default = "mid" }"#
        ])
        let flag = rules.ruleSet.flags[0]
        #expect(flag.variants.map(\.name) == ["alpha", "mid", "zeta"])
        #expect(flag.defaultVariant == 1)
    }

    @Test("flags(context) answers every flag, sorted by key, in one call")
    func allFlags() throws {
        let rules = try compile([
            "a.lua": #"flag "b.second" { rule = function(ctx) return ctx.tier == "gold" and "on" or nil end }"#,
            "b.lua": """
            flag "a.first" { variants = { x = "X" }, default = "x" }
            flag "c.third" { enabled = false }
            flag "d.broken" { rule = function() error("boom") end }
            """,
        ])
        let decisions = try rules.evaluator.evaluateAllFlags(context: ["tier": "gold"], now: pinnedNow).get()
        #expect(rules.ruleSet.flags.map(\.key) == ["a.first", "b.second", "c.third", "d.broken"])
        #expect(decisions.map(\.reason) == [.staticValue, .targetingMatch, .disabled, .error])
        #expect(decisions[3].failure?.code == .general)
    }

    @Test("flags(context) reports an invalid context once, as INVALID_CONTEXT")
    func allFlagsInvalidContext() throws {
        let rules = try compile(["f.lua": #"flag "x" { rule = function() return "on" end }"#])
        let result = Array("[1, 2]".utf8).withUnsafeBytes {
            rules.evaluator.evaluateAllFlags(context: $0, now: pinnedNow)
        }
        guard case .failure(let failure) = result else {
            Issue.record("a non-object context was accepted")
            return
        }
        #expect(failure.code == .invalidContext)
    }

    @Test("an unknown flag key has no decision")
    func unknownFlag() throws {
        let rules = try compile(["f.lua": #"flag "x" {}"#])
        #expect(rules.evaluator.evaluateFlag(key: "nope", context: [:], now: pinnedNow) == nil)
        #expect(rules.ruleSet.flagIndex(forKey: "nope") == nil)
    }

    @Test("a flag that is static or disabled answers even for an invalid context, since no rule reads it")
    func staticIgnoresContext() throws {
        let rules = try compile(["f.lua": #"flag "s" {}  flag "d" { enabled = false, rule = function() end }"#])
        #expect(try rules.flag("s", rawContext: Array("not json".utf8)).reason == .staticValue)
        #expect(try rules.flag("d", rawContext: Array("not json".utf8)).reason == .disabled)
    }

    @Test("flag_value(key, ctx) gives a rule another flag's variant and value")
    func flagValuePrerequisite() throws {
        let rules = try compile([
            "f.lua": """
            flag "base" {
              variants = { gold = { discount = 20 }, none = { discount = 0 } }, default = "none",
              rule = function(ctx) if ctx.tier == "gold" then return "gold" end end,
            }
            flag "dependent" {
              rule = function(ctx)
                local variant, value = flag_value("base", ctx)
                if variant == "gold" and value.discount == 20 then return "on" end
                return "off"
              end,
            }
            """
        ])
        #expect(try rules.flag("dependent", ["tier": "gold"]).variant == "on")
        #expect(try rules.flag("dependent", ["tier": "tin"]).variant == "off")
    }

    @Test("flag_value of a flag that fails propagates as an error of the caller")
    func flagValueFailure() throws {
        let rules = try compile([
            "f.lua": """
            flag "broken" { rule = function() error("inner trouble") end }
            flag "caller" { rule = function(ctx) local v = flag_value("broken", ctx) return v end }
            """
        ])
        let answer = try rules.flag("caller")
        #expect(answer.code == .general)
        #expect(answer.message?.contains("inner trouble") == true)
    }

    @Test("flag_value of an unknown flag is an evaluation error naming it")
    func flagValueUnknown() throws {
        let rules = try compile([
            "f.lua": #"flag "caller" { rule = function(ctx) return (flag_value("ghost", ctx)) end }"#
        ])
        let answer = try rules.flag("caller")
        #expect(answer.code == .general)
        #expect(answer.message?.contains("ghost") == true)
    }

    @Test("a flag_value cycle is an evaluation error, not a hang")
    func flagValueCycle() throws {
        let rules = try compile([
            "f.lua": """
            flag "a" { rule = function(ctx) return (flag_value("b", ctx)) end }
            flag "b" { rule = function(ctx) return (flag_value("a", ctx)) end }
            flag "self" { rule = function(ctx) return (flag_value("self", ctx)) end }
            """
        ])
        for key in ["a", "b", "self"] {
            let answer = try rules.flag(key)
            #expect(answer.reason == .error)
            #expect(answer.code == .general)
            #expect(answer.message?.contains("cycle") == true, "\(answer.message ?? "")")
        }
    }

    @Test("a flag_value cycle caught with pcall still ends, and the flag answers")
    func flagValueCycleCaught() throws {
        let rules = try compile([
            "f.lua": """
            flag "a" {
              rule = function(ctx)
                local ok = pcall(flag_value, "a", ctx)
                return ok and "on" or "off"
              end,
            }
            """
        ])
        #expect(try rules.flag("a").variant == "off")
    }

    @Test("now() returns the time the request pinned")
    func nowIsPinned() throws {
        let rules = try compile([
            "f.lua": """
            flag "launch" {
              rule = function(ctx) if now() >= 1800000000 then return "on" end return "off" end,
            }
            flag "exact" { rule = function(ctx)
              return now() == 1700000000 and math.type(now()) == "integer" and "on" or "off"
            end }
            """
        ])
        #expect(try rules.flag("launch", now: 1_799_999_999).variant == "off")
        #expect(try rules.flag("launch", now: 1_800_000_000).variant == "on")
        #expect(try rules.flag("exact", now: 1_700_000_000).variant == "on")
    }

    @Test("now() keeps sub-second precision when the pinned time has it")
    func nowFraction() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { rule = function() return now() == 1700000000.25 and "on" or "off" end }"#
        ])
        #expect(try rules.flag("x", now: 1_700_000_000.25).variant == "on")
    }

    @Test("now() is not available while a file loads, so loading stays deterministic")
    func nowAtLoad() throws {
        let failure = loadFailure(["f.lua": "local t = now()\n"])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "now()"))
    }

    @Test("log(level, message) records escaped lines with the flag's key as origin")
    func logLines() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { rule = function(ctx) log("warn", "odd\ninput\0") log(42) return nil end }"#
        ])
        _ = try rules.flag("x")
        let lines = rules.evaluator.takeLogs()
        #expect(lines.count == 2)
        #expect(lines.first?.level == .warning)
        #expect(lines.first?.origin == "x")
        #expect(lines.first?.text == #"odd\ninput\x00"#)
        #expect(lines.last?.text == "42")
        #expect(rules.evaluator.takeLogs().isEmpty)
    }

    @Test("log is bounded: a few lines per evaluation, each cut to the byte limit")
    func logBounded() throws {
        var limits = RuleEngineLimits()
        limits.logLinesPerEvaluation = 3
        limits.logLineBytes = 64
        let rules = try compile(
            ["f.lua": #"flag "x" { rule = function() for i = 1, 100 do log(("y"):rep(1000)) end end }"#],
            limits: limits)
        #expect(try rules.flag("x").reason == .defaultValue)
        let lines = rules.logs()
        #expect(lines.count == 3)
        #expect(lines.allSatisfy { $0.utf8.count < 64 && $0.hasSuffix("...") })
    }

    @Test("print does not exist: log is the only output")
    func noPrint() throws {
        let rules = try compile(["f.lua": #"flag "x" { rule = function() print("hi") end }"#])
        let answer = try rules.flag("x")
        #expect(answer.code == .general)
        #expect(answer.message?.contains("print") == true)
    }
}

@Suite("Default variants that are not the first by name")
struct DefaultVariantIndexTests {
    @Test("a rule returning nil serves the declared default even when another variant sorts first")
    func nilServesDeclaredDefault() throws {
        let source = RuleSource(
            path: "a.lua",
            content: Array(
                """
                flag "p" { variants = { gross = 1, net = 2 }, default = "net", rule = function(ctx) return nil end }
                """.utf8))
        let (ruleSet, evaluator) = try RuleCompiler.compile([source])
        let decision = try #require(evaluator.evaluateFlag(key: "p", context: ["country": "US"]))
        #expect(decision.reason == .defaultValue)
        #expect(ruleSet.flags[0].variants[decision.variantIndex].name == "net")
    }
}
