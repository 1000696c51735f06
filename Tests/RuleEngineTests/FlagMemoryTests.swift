import RuleModel
import Testing

@testable import RuleEngine

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

    /// The address of an array's storage: two arrays that share it hold one copy of their elements.
    static func storage<Element>(_ array: [Element]) -> UnsafeRawPointer? {
        array.withUnsafeBufferPointer { $0.baseAddress.map(UnsafeRawPointer.init) }
    }

    @Test("boolean flags share one variants array, and its encoded answers, in the rule set's model")
    func booleanFlagsShareTheModelsVariants() throws {
        let rules = try compile([
            "flags.lua": Self.booleanFlags(3) + """

                flag "own" { variants = { a = 1, b = { nested = true } }, default = "a" }
                flag "twin" { variants = { a = 1, b = { nested = true } }, default = "b" }
                """
        ])
        let flags = rules.ruleSet.flags
        let boolean = flags.indices.filter { flags[$0].key.hasPrefix("feature-") }
        let own = try #require(flags.firstIndex { $0.key == "own" })
        let twin = try #require(flags.firstIndex { $0.key == "twin" })
        #expect(boolean.count == 3)
        #expect(Set(boolean.map { Self.storage(flags[$0].variants) }).count == 1)
        #expect(Set(boolean.map { rules.ruleSet.flagFragments.records[$0].variants }).count == 1)
        // Flags with variants of their own keep their own, even when equal to another flag's.
        #expect(Self.storage(flags[own].variants) != Self.storage(flags[boolean[0]].variants))
        #expect(Self.storage(flags[own].variants) != Self.storage(flags[twin].variants))
        #expect(flags[own].variants.map(\.name) == ["a", "b"])
        #expect(flags[own].variants.map(\.json) == [Array("1".utf8), Array(#"{"nested":true}"#.utf8)])
        #expect(flags[boolean[0]].variants.map(\.json) == [Array("false".utf8), Array("true".utf8)])
        // The shared pieces encode exactly what each flag's own would.
        for index in flags.indices {
            let fragments = rules.ruleSet.flagFragments[index]
            let alone = FlagAnswerFragments(flags[index])
            #expect(fragments.head == alone.head)
            #expect(fragments.variants == alone.variants)
            #expect(fragments.tail == alone.tail)
        }
        #expect(try rules.flag("twin", [:]) == FlagAnswer(value: ["nested": true], variant: "b", reason: .staticValue))
    }

    /// The address of a slice's first element.
    static func start(_ slice: ArraySlice<UInt8>) -> UnsafeRawPointer? {
        slice.withUnsafeBufferPointer { $0.baseAddress.map(UnsafeRawPointer.init) }
    }

    @Test("the heads and tails of every flag's answers are one array, each flag's pieces after the previous flag's")
    func answerFragmentsShareOneArray() throws {
        let rules = try compile([
            "flags.lua": Self.booleanFlags(50) + "\n" + #"flag "meta" { metadata = { team = "growth" } }"#
        ])
        let fragments = rules.ruleSet.flagFragments
        #expect(fragments.count == 51)
        for index in 0..<fragments.count {
            let piece = fragments[index]
            let head = try #require(Self.start(piece.head))
            #expect(Self.start(piece.tail) == head + piece.head.count)
            if index + 1 < fragments.count {
                #expect(Self.start(fragments[index + 1].head) == head + piece.head.count + piece.tail.count)
            }
            let alone = FlagAnswerFragments(rules.ruleSet.flags[index])
            #expect(piece.head == alone.head)
            #expect(piece.tail == alone.tail)
        }
        let meta = try #require(rules.ruleSet.flagIndex(forKey: "meta"))
        #expect(String(decoding: fragments[meta].tail, as: UTF8.self).hasPrefix(#","metadata":{"team":"growth"}"#))
    }

    @Test("closing a state of 4 MiB or more hands the freed memory back to the system")
    func closingALargeStateReturnsMemory() throws {
        let before = RuleCompiler.freeMemoryReturns
        do {
            let rules = try compile([
                "big.lua": """
                local blob = string.rep("x", 5 * 1024 * 1024)
                flag "big" { rule = function(ctx) return #blob > 0 and "on" or "off" end }
                """
            ])
            #expect(rules.evaluator.memoryInUse >= 4 << 20)
            #expect(try rules.flag("big", [:]).variant == "on")
        }
        #expect(RuleCompiler.freeMemoryReturns > before)
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
