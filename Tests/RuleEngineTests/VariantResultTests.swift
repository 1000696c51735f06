import RuleModel
import Testing

/// A rule's result names its variant: flags with a few variants compare the name in place, others look it up; both
/// must answer alike for every name, near-miss and non-string.
@Suite("Variant names returned by rules")
struct VariantResultTests {
    static let rules = """
        flag "few" {
          variants = { a = 1, ab = 2, b = 3 }, default = "a",
          rule = function(ctx) return ctx.pick end,
        }
        flag "many" {
          variants = { a = 1, ab = 2, b = 3, c = 4, d = 5, e = 6 }, default = "a",
          rule = function(ctx) return ctx.pick end,
        }
        flag "boolean" { rule = function(ctx) return ctx.pick end }
        """

    @Test("each variant name is answered as its variant, by flags with few and with many variants")
    func names() throws {
        let rules = try compile(["v.lua": Self.rules])
        for name in ["a", "ab", "b"] {
            for flag in ["few", "many"] {
                let answer = try rules.flag(flag, ["pick": .string(name)])
                #expect(answer.variant == name && answer.reason == .targetingMatch, "\(flag) \(name)")
            }
        }
        for name in ["on", "off"] {
            let answer = try rules.flag("boolean", ["pick": .string(name)])
            #expect(answer.variant == name && answer.reason == .targetingMatch)
        }
    }

    @Test("a name that only starts or ends like a variant, or holds a NUL byte, is a TYPE_MISMATCH")
    func nearMisses() throws {
        let rules = try compile(["v.lua": Self.rules])
        for name in ["", "abc", "A", "b ", "a\u{0}", "o", "onn"] {
            for flag in ["few", "many", "boolean"] {
                let answer = try rules.flag(flag, ["pick": .string(name)])
                #expect(answer.code == .typeMismatch, "\(flag) \(name.debugDescription)")
                #expect(answer.message?.contains("which is not a variant of flag '\(flag)'") == true)
            }
        }
        #expect(try rules.flag("few", ["pick": 1]).code == .typeMismatch)
        #expect(try rules.flag("few").reason == .defaultValue)
    }
}
