import RuleModel
import Testing

/// `scan(_:into:skimmingObjectsNamed:)`: the members named are skimmed for their extent, the rest of the line is
/// validated as `scan(_:into:)` validates it.
@Suite("Skimming named members")
struct JSONSkimTests {
    let scanner = JSONObjectScanner()

    func scan(_ text: String) -> (skimmed: Result<Bool, JSONParseError>, members: [JSONMember], full: [JSONMember]?) {
        var members: [JSONMember] = []
        var full: [JSONMember] = []
        let bytes = Array(text.utf8)
        let skimmed = bytes.withUnsafeBytes { raw in
            Result { () throws(JSONParseError) in
                try scanner.scan(raw, into: &members, skimmingObjectsNamed: ["context"])
            }
        }
        let validated = (try? scanner.scan(bytes, into: &full)) != nil
        return (skimmed, members, validated ? full : nil)
    }

    @Test("a named object is skimmed, and reported with the range and kind validation reports")
    func skimmedLikeValidated() throws {
        for line in [
            #"{"id":1,"context":{"a":"}{\"]","b":[1,{"c":2}]},"x":true}"#, #"{"context":{}}"#,
            #" { "context" : { "k" : [ ] } , "n" : -1.5e3 } "#,
        ] {
            let (skimmed, members, full) = scan(line)
            #expect(try skimmed.get(), "\(line)")
            #expect(members == full, "\(line)")
        }
    }

    @Test("an object holding a null member, or a named value that is not an object, is validated instead")
    func validatedInstead() throws {
        for line in [
            #"{"context":{"a":null}}"#, #"{"context":{"a":{"b" : null}}}"#, #"{"context":[1]}"#, #"{"x":{"a":1}}"#,
        ] {
            let (skimmed, members, full) = scan(line)
            #expect(try !skimmed.get(), "\(line)")
            #expect(members == full, "\(line)")
        }
    }

    @Test("a line that is not valid outside the skimmed object is refused with the error validation gives")
    func refusedLikeValidation() {
        for line in [
            #"{"context":{"a":1},"context":{}}"#, #"{"context":{"a":1}"#, #"{"context":{"a":1}} x"#,
            #"{"context":{"a":1},"b":tru}"#, #"{"b":"\x","context":{}}"#, #"{"context":{"a":"x}"#,
        ] {
            var members: [JSONMember] = []
            let bytes = Array(line.utf8)
            let expected = #expect(throws: JSONParseError.self) { try scanner.scan(bytes, into: &members) }
            let (skimmed, _, _) = scan(line)
            guard case .failure(let error) = skimmed else {
                Issue.record("\(line) was accepted")
                continue
            }
            #expect(error == expected, "\(line)")
        }
    }

    @Test("nesting in a skimmed object counts against the depth limit")
    func depthLimit() {
        let scanner = JSONObjectScanner(limits: JSONLimits(maxDepth: 4))
        var members: [JSONMember] = []
        for (line, accepted) in [(#"{"context":{"a":[[1]]}}"#, true), (#"{"context":{"a":[[[1]]]}}"#, false)] {
            let result = Array(line.utf8).withUnsafeBytes { raw in
                Result { () throws(JSONParseError) in
                    try scanner.scan(raw, into: &members, skimmingObjectsNamed: ["context"])
                }
            }
            #expect(((try? result.get()) != nil) == accepted, "\(line)")
        }
    }

    @Test("names are matched exactly, whatever their length, and only names given are skimmed")
    func namesMatchedExactly() throws {
        let names: JSONSkimmedNames = ["ctx", "context", "long_member_name", "x"]
        for (key, skims) in [
            ("ctx", true), ("context", true), ("long_member_name", true), ("x", true), ("cty", false),
            ("contexT", false), ("contexts", false), ("long_member_namf", false), ("long_member_nam", false),
            ("y", false), ("", false), ("requests", false),
        ] {
            var members: [JSONMember] = []
            let line = Array(#"{"\#(key)":{"a":1}}"#.utf8)
            let skimmed = try line.withUnsafeBytes { raw throws(JSONParseError) in
                try scanner.scan(raw, into: &members, skimmingObjectsNamed: names)
            }
            #expect(skimmed == skims, "\(key)")
        }
    }
}
