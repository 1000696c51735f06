import RuleEngine
import RuleModel
import Testing

/// The revision's byte layout as docs/RULES.md states it, checked against digests computed outside rulesd (Python's
/// hashlib over `path, 0x00, length as 8 bytes big-endian, content` per file, files in bytewise order of path).
@Suite("Revision test vectors")
struct RevisionVectorTests {
    /// Files whose order by bytes differs from their order here, with an empty file, a file whose content holds a
    /// zero byte and invalid UTF-8, a path that is a prefix of another, and a path beyond ASCII.
    let files: [RuleSource] = [
        RuleSource(path: "b.lua", content: Array("flag \"b\" {}\n".utf8)),
        RuleSource(path: "é.lua", content: Array("e".utf8)),
        RuleSource(path: "a.lua", content: Array("x".utf8)),
        RuleSource(path: "dir/c.lua", content: []),
        RuleSource(path: "a.lu", content: [0xFF, 0x00]),
        RuleSource(path: "Z.lua", content: Array("z".utf8)),
    ]

    @Test("six files in any order give the digest computed independently from the documented layout")
    func documentedLayout() {
        let expected = "9e36b501fae78b09ad97f9def42344ba1b0bd45ed6be5540a63bda078d7935f3"
        #expect(RuleRevision(sources: files).hex == expected)
        #expect(RuleRevision(sources: files.reversed()).hex == expected)
        #expect(RuleRevision(sources: files).short == String(expected.prefix(16)))
    }

    @Test("one file: the path, a zero byte, the length in 8 bytes big-endian, the content")
    func singleFile() {
        // sha256(b"a.lua\x00" + (1).to_bytes(8, "big") + b"x")
        #expect(
            RuleRevision(sources: [RuleSource(path: "a.lua", content: Array("x".utf8))]).hex
                == "c09ab1848c0405c747e8f75af0f87965648e562c4f87513bd9e13f82778c0a27")
    }
}
