import RuleModel
import Testing

/// The key index keeps every key's bytes in one array: each key is found by its own bytes, never by a neighbour's.
@Suite("UTF-8 key index")
struct UTF8KeyIndexTests {
    static func index(_ index: UTF8KeyIndex, of key: String) -> Int? {
        Array(key.utf8).withUnsafeBytes { index.index(of: $0) }
    }

    @Test("keys that are prefixes of their neighbours, empty and non-ASCII keys are each found at their position")
    func neighboursDoNotMatch() {
        let keys = ["team.feature", "team.feature-1", "", "team", "größe", "team.feature-10", "🚀"]
        let index = UTF8KeyIndex(keys)
        for (position, key) in keys.enumerated() {
            #expect(Self.index(index, of: key) == position, "\(key)")
            #expect(index.index(of: key) == position, "\(key)")
        }
        for absent in ["team.", "team.feature-", "team.feature-100", "große", "t", "🚀🚀"] {
            #expect(Self.index(index, of: absent) == nil, "\(absent)")
        }
    }

    @Test("the first of duplicate keys wins")
    func firstDuplicateWins() {
        let index = UTF8KeyIndex(["a", "b", "a", "b", "c"])
        #expect(index.index(of: "a") == 0)
        #expect(index.index(of: "b") == 1)
        #expect(index.index(of: "c") == 4)
    }

    @Test("ten thousand keys are each found at their position")
    func manyKeys() {
        let keys = (0..<10_000).map { "team\($0 % 20).feature-\($0)" }
        let index = UTF8KeyIndex(keys)
        #expect(keys.indices.allSatisfy { Self.index(index, of: keys[$0]) == $0 })
        #expect(UTF8KeyIndex([]).index(of: "anything") == nil)
    }
}
