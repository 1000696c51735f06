import RuleEngine
import RuleModel
import Testing

/// What each flag costs a Lua state: a rule set of many flags is held once per worker.
@Suite("Flag memory")
struct FlagMemoryTests {
    /// `count` boolean flags with a rule each, in one file.
    static func booleanFlags(_ count: Int) -> String {
        (0..<count).map { index in
            """
            flag "feature-\(index)" {
              rule = function(ctx) if ctx.plan == "pro" then return "on" end end,
            }
            """
        }.joined(separator: "\n")
    }

    // Sharing the variants took a thousand such flags from 614,196 bytes to 395,572 (Lua 5.4.4).
    @Test("boolean flags share their variants: a thousand more cost a state under 450 KiB")
    func booleanFlagsShareVariants() throws {
        let small = try compile(["flags.lua": Self.booleanFlags(100)])
        let large = try compile(["flags.lua": Self.booleanFlags(1_100)])
        let perThousand = large.evaluator.memoryInUse - small.evaluator.memoryInUse
        #expect(perThousand < 450 * 1024)
    }

    @Test("boolean flags answer on and off, each with its own default")
    func booleanAnswers() throws {
        let rules = try compile([
            "flags.lua": """
            flag "a" { default = "on", rule = function(ctx) if ctx.off then return "off" end end }
            flag "b" { rule = function(ctx) return ctx.b end }
            flag "c" { rule = function(ctx) local variant, value = flag_value("a", ctx) return value and "on" or "off" end }
            """
        ])
        #expect(try rules.flag("a", [:]) == FlagAnswer(value: true, variant: "on", reason: .defaultValue))
        #expect(try rules.flag("a", ["off": true]) == FlagAnswer(value: false, variant: "off", reason: .targetingMatch))
        #expect(try rules.flag("b", [:]) == FlagAnswer(value: false, variant: "off", reason: .defaultValue))
        #expect(try rules.flag("b", ["b": "on"]) == FlagAnswer(value: true, variant: "on", reason: .targetingMatch))
        let mismatch = try rules.flag("b", ["b": "maybe"])
        #expect(mismatch.code == .typeMismatch)
        #expect(mismatch.message == "rule returned 'maybe', which is not a variant of flag 'b'")
        #expect(try rules.flag("c", ["off": true]).variant == "off")
        #expect(try rules.flag("c", [:]).variant == "on")
        #expect(
            rules.ruleSet.flags.map { $0.variants.map(\.name) } == [["off", "on"], ["off", "on"], ["off", "on"]])
    }
}
