import RuleModel
import Testing

/// One member as the scanner's callback reported it, with the key copied out.
private struct ScannedMember: Equatable, CustomStringConvertible {
    var key: String
    var range: Range<Int>
    var kind: JSONKind

    var description: String { "\(key) \(range) \(kind)" }
}

private func scanResult(_ bytes: [UInt8], limits: JSONLimits = JSONLimits()) -> Result<[ScannedMember], JSONParseError>
{
    var members: [ScannedMember] = []
    do {
        try JSONObjectScanner(limits: limits).scan(bytes) { key, range, kind in
            members.append(ScannedMember(key: String(decoding: key, as: UTF8.self), range: range, kind: kind))
        }
        return .success(members)
    } catch let error as JSONParseError {
        return .failure(error)
    } catch {
        Issue.record("unexpected error \(error)")
        return .success([])
    }
}

private func scanResult(_ text: String, limits: JSONLimits = JSONLimits()) -> Result<[ScannedMember], JSONParseError> {
    scanResult(Array(text.utf8), limits: limits)
}

private func scanError(_ text: String, limits: JSONLimits = JSONLimits()) -> JSONParseError? {
    if case .failure(let error) = scanResult(text, limits: limits) { return error }
    return nil
}

private func kind(of value: JSONValue) -> JSONKind {
    switch value {
    case .null: return .null
    case .bool(let flag): return flag ? .true : .false
    case .integer, .number: return .number
    case .string: return .string
    case .array: return .array
    case .object: return .object
    }
}

/// Checks that the scanner accepts exactly what the parser accepts as an object, reporting the same members, and
/// rejects the rest, with the parser's error whenever the line starts like an object.
private func expectAgreement(_ bytes: [UInt8], sourceLocation: Testing.SourceLocation = #_sourceLocation) {
    let parsed = Result { () throws(JSONParseError) in try JSONParser().parse(bytes) }
    let scanned = scanResult(bytes)
    let startsLikeObject = bytes.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) } == UInt8(ascii: "{")
    let shown = String(decoding: bytes.prefix(200), as: UTF8.self)
    switch (parsed, scanned) {
    case (.success(.object(let object)), .success(let members)):
        #expect(members.count == object.count, "\(shown)", sourceLocation: sourceLocation)
        for ((key, value), member) in zip(object, members) {
            #expect(member.key == key, "\(shown)", sourceLocation: sourceLocation)
            #expect(member.kind == kind(of: value), "\(shown)", sourceLocation: sourceLocation)
            let memberValue = try? JSONParser().parse(Array(bytes[member.range]))
            #expect(memberValue.map { jsonIdentical($0, value) } == true, "\(shown)", sourceLocation: sourceLocation)
        }
    case (.success(let value), .failure(let error)):
        #expect(value.objectValue == nil, "scanner rejected \(shown): \(error)", sourceLocation: sourceLocation)
        #expect(error.message.hasPrefix("expected a JSON object"), "\(shown)", sourceLocation: sourceLocation)
    case (.failure(let parserError), .failure(let scannerError)):
        if startsLikeObject {
            #expect(scannerError == parserError, "\(shown)", sourceLocation: sourceLocation)
        }
    case (.failure(let error), .success):
        Issue.record("scanner accepted \(shown) which the parser rejects: \(error)", sourceLocation: sourceLocation)
    case (.success, .success):
        Issue.record("scanner accepted non-object \(shown)", sourceLocation: sourceLocation)
    }
}

/// Object documents, valid and invalid, for agreement between scanner and parser.
private let objectCorpus: [String] = [
    "{}", " { } ", #"{"a":1}"#, #"{"a":-0,"b":1.5e3,"c":"x","d":true,"e":false,"f":null,"g":[],"h":{}}"#,
    #"{"nested":{"a":[1,{"b":[{"c":{}}]}]},"after":"ok"}"#, #"{"\u0041":1,"\n":2,"\uD83D\uDE00":3}"#,
    #"{"big":123456789012345678901234567890,"tiny":1e-400,"max":9223372036854775807}"#,
    #"{"s":"\"\\\/\b\f\n\r\t\u0000\u2028"}"#, "{\"é€😀\":\"é€😀\"}", "{\n\t\"a\" :\r\n 1 \n}\n",
    "{", "}", "{,}", #"{"a"}"#, #"{"a":}"#, #"{"a" 1}"#, #"{"a":1,}"#, #"{"a":1 "b":2}"#, #"{"a":1}}"#,
    #"{"a":1} x"#, #"{"a":1}{"#, #"{"a":[1,]}"#, #"{"a":[1 2]}"#, #"{"a":tru}"#, #"{"a":nul}"#, #"{"a":01}"#,
    #"{"a":1.}"#, #"{"a":-}"#, #"{"a":1e400}"#, #"{"a":"\x"}"#, #"{"a":"\uD800"}"#, #"{"a":"\uDC00\uD800"}"#,
    #"{"a":"\u12"}"#, "{\"a\":\"\t\"}", #"{"a":"abc}"#, #"{"a":1,"a":2}"#, #"{"a":{"b":1,"b":2}}"#,
    #"{"a":1,"\u0061":2}"#, #"{"x":[{"k":1},{"k":2}],"k":3}"#, #"{'a':1}"#, #"{a:1}"#, #"{"a":1,"b":{"c":[}}"#,
    #"{"a":NaN}"#, #"{"a":Infinity}"#, #"{"a":+1}"#, #"{"a":.5}"#, "{\"a\":1}\u{0}", "\u{FEFF}{}",
    "{\"a\":" + String(repeating: "[", count: 63) + String(repeating: "]", count: 63) + "}",
    "{\"a\":" + String(repeating: "[", count: 64) + String(repeating: "]", count: 64) + "}",
    "[1]", "1", "\"a\"", "null", "", "   ", "x", "[", "-",
]

/// Byte-level invalid object documents (bad UTF-8 in keys and values).
private let invalidUTF8Objects: [[UInt8]] = [
    [0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D], [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC0, 0xAF, 0x22, 0x7D],
    [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x7D],
    [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xF4, 0x90, 0x80, 0x80, 0x22, 0x7D],
    [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xE2, 0x82, 0x22, 0x7D], [0x7B, 0xC3, 0xA9, 0x7D],
]

@Suite("JSONObjectScanner")
struct JSONScannerTests {
    @Test func reportsMembersInOrderWithRangesAndKinds() throws {
        let line = #"{"op":"get","id":42,"args":[1,2],"opts":{"x":null},"f":1.5,"t":true,"n":false,"z":null}"#
        let members = try scanResult(line).get()
        #expect(
            members == [
                ScannedMember(key: "op", range: 6..<11, kind: .string),
                ScannedMember(key: "id", range: 17..<19, kind: .number),
                ScannedMember(key: "args", range: 27..<32, kind: .array),
                ScannedMember(key: "opts", range: 40..<50, kind: .object),
                ScannedMember(key: "f", range: 55..<58, kind: .number),
                ScannedMember(key: "t", range: 63..<67, kind: .true),
                ScannedMember(key: "n", range: 72..<77, kind: .false),
                ScannedMember(key: "z", range: 82..<86, kind: .null),
            ])
    }

    @Test func reportsNothingForEmptyObject() throws {
        #expect(try scanResult(" {} ").get().isEmpty)
    }

    @Test func allowsWhitespaceAroundTokens() throws {
        let members = try scanResult(" \t{ \"a\" :\n[ 1 ] ,\r\n\"b\": 2 }\n").get()
        #expect(
            members == [
                ScannedMember(key: "a", range: 10..<15, kind: .array),
                ScannedMember(key: "b", range: 24..<25, kind: .number),
            ])
    }

    @Test func decodesEscapedKeys() throws {
        let members = try scanResult(#"{"\u0061b":1,"c\nd":{"\u0065":2},"\uD83D\uDE00":3}"#).get()
        #expect(members.map(\.key) == ["ab", "c\nd", "😀"])
    }

    @Test func rejectsTopLevelValueThatIsNotAnObject() {
        #expect(scanError("[1]") == JSONParseError(offset: 0, message: "expected a JSON object at byte 0"))
        #expect(scanError("  \"s\"") == JSONParseError(offset: 2, message: "expected a JSON object at byte 2"))
        #expect(scanError("x") == JSONParseError(offset: 0, message: "unexpected character 'x' at byte 0"))
        #expect(scanError(" ") == JSONParseError(offset: 1, message: "unexpected end of input"))
    }

    @Test func rejectsDuplicateTopLevelKey() {
        #expect(scanError(#"{"a":1,"b":2,"a":3}"#) == JSONParseError(offset: 13, message: #"duplicate key "a""#))
    }

    @Test func rejectsDuplicateKeyInNestedObject() {
        #expect(scanError(#"{"a":{"b":1,"b":2}}"#) == JSONParseError(offset: 12, message: #"duplicate key "b""#))
    }

    @Test func rejectsDuplicateKeyWrittenWithEscapes() {
        #expect(scanError(#"{"k\u00e9":1,"k\u00E9":2}"#)?.message == #"duplicate key "ké""#)
        #expect(scanError(#"{"ké":1,"k\u00e9":2}"#)?.message == #"duplicate key "ké""#)
    }

    @Test func rejectsDuplicateKeyInLargeObject() {
        let members = (0..<200).map { "\"k\($0)\":[\($0)]" }.joined(separator: ",")
        #expect(scanError("{" + members + #","k150":0}"#)?.message == #"duplicate key "k150""#)
        #expect(scanError("{" + members + "}") == nil)
    }

    @Test func allowsSameKeyAtDifferentLevels() {
        #expect(scanError(#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#) == nil)
    }

    @Test func rejectsTrailingData() {
        #expect(scanError(#"{"a":1} {}"#) == JSONParseError(offset: 8, message: "trailing data after JSON value"))
    }

    @Test func rejectsNestingBeyondLimit() {
        let line = #"{"a":"# + String(repeating: "[", count: 100_000)
        #expect(scanError(line) == JSONParseError(offset: 68, message: "nesting deeper than 64"))
    }

    @Test func walksHugeNestingWithoutRecursion() throws {
        let line = #"{"a":"# + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        let result = scanResult(line, limits: JSONLimits(maxDepth: 200_000))
        #expect(try result.get() == [ScannedMember(key: "a", range: 5..<200_005, kind: .array)])
    }

    @Test func appliesValueAndStringLimits() {
        #expect(scanError(#"{"a":[1,2]}"#, limits: JSONLimits(maxValues: 3))?.message == "more than 3 values")
        #expect(
            scanError(#"{"abc":1}"#, limits: JSONLimits(maxStringBytes: 2))?.message == "string longer than 2 bytes")
    }

    @Test func rejectsInvalidUTF8() {
        let line: [UInt8] = [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D]
        #expect(throws: JSONParseError(offset: 6, message: "invalid UTF-8 in string at byte 6")) {
            try JSONObjectScanner().scan(line) { _, _, _ in }
        }
    }

    @Test func propagatesCallbackError() {
        struct Stop: Error, Equatable {}
        var calls = 0
        #expect(throws: Stop()) {
            try JSONObjectScanner().scan(Array(#"{"a":1,"b":2}"#.utf8)) { _, _, _ in
                calls += 1
                throw Stop()
            }
        }
        #expect(calls == 1)
    }

    @Test func keepsEscapedKeyValidWhileNestedKeysAreDecoded() throws {
        let line = #"{"\u0041\u0042":{"\u0043":{"\u0044":1}},"x":1}"#
        #expect(try scanResult(line).get().map(\.key) == ["AB", "x"])
    }

    @Test func comparesKeysWithHelper() throws {
        var matched: [Bool] = []
        try JSONObjectScanner().scan(Array(#"{"\u006fp":1,"o":2,"opx":3,"p":4}"#.utf8)) { key, _, _ in
            matched.append(JSONObjectScanner.key(key, equals: "op"))
        }
        #expect(matched == [true, false, false, false])
    }

    @Test func fillsReusableMemberArray() throws {
        let line = Array(#"{"a\tb":"x","n":[1]}"#.utf8)
        var members = [JSONMember(keyRange: 0..<0, keyIsEscaped: false, valueRange: 0..<0, kind: .null)]
        try JSONObjectScanner().scan(line, into: &members)
        #expect(
            members == [
                JSONMember(keyRange: 2..<6, keyIsEscaped: true, valueRange: 8..<11, kind: .string),
                JSONMember(keyRange: 13..<14, keyIsEscaped: false, valueRange: 16..<19, kind: .array),
            ])
        line.withUnsafeBytes { bytes in
            #expect(members[0].keyString(in: bytes) == "a\tb")
            #expect(members[0].keyEquals("a\tb", in: bytes))
            #expect(members[1].keyEquals("n", in: bytes))
            #expect(!members[1].keyEquals("a", in: bytes))
        }
    }

    @Test func emptiesMemberArrayOnError() {
        var members: [JSONMember] = []
        #expect(throws: JSONParseError.self) {
            try JSONObjectScanner().scan(Array(#"{"a":1,"b":}"#.utf8), into: &members)
        }
        #expect(members.isEmpty)
    }

    // MARK: Reading values

    @Test func decodesStringValue() throws {
        let line = Array(#"{"s":"a\"b\u00e9\uD83D\uDE00"}"#.utf8)
        let members = try scanResult(line).get()
        let text = try line.withUnsafeBytes { try JSONObjectScanner.string(in: $0, range: members[0].range) }
        #expect(text == "a\"bé😀")
    }

    @Test func rejectsNonStringRangeInStringReader() {
        let line = Array(#"{"n":12}"#.utf8)
        line.withUnsafeBytes { bytes in
            #expect(throws: JSONParseError.self) { try JSONObjectScanner.string(in: bytes, range: 5..<7) }
            #expect(throws: JSONParseError.self) { try JSONObjectScanner.string(in: bytes, range: 0..<8) }
        }
    }

    @Test func readsIntegerValues() {
        let line = Array(#"[9223372036854775807,-9223372036854775808,9223372036854775808,1.0,1e2,"1",-0]"#.utf8)
        let ranges = [1..<20, 21..<41, 42..<61, 62..<65, 66..<69, 70..<73, 74..<76]
        line.withUnsafeBytes { bytes in
            #expect(
                ranges.map { JSONObjectScanner.int64(in: bytes, range: $0) } == [.max, .min, nil, nil, nil, nil, 0])
        }
    }

    @Test func readsDoubleValuesAcceptingIntegers() {
        let line = Array(#"[42,-1.5e3,9223372036854775808,"x",1e400,2.5x]"#.utf8)
        let ranges = [1..<3, 4..<10, 11..<30, 31..<34, 35..<40, 41..<45]
        line.withUnsafeBytes { bytes in
            #expect(
                ranges.map { JSONObjectScanner.double(in: bytes, range: $0) } == [
                    42, -1500, 9.223372036854775808e18, nil, nil, nil,
                ])
        }
    }

    @Test func parsesMemberValueIntoJSONValue() throws {
        let line = Array(#"{"params":{"user":"ann","tags":["a","b"],"n":1.0}}"#.utf8)
        let members = try scanResult(line).get()
        let value = try line.withUnsafeBytes { try JSONObjectScanner().value(in: $0, range: members[0].range) }
        #expect(value == ["user": "ann", "tags": ["a", "b"], "n": 1.0])
    }

    // MARK: Agreement with the parser

    @Test(arguments: objectCorpus)
    func agreesWithParserOnCorpusDocument(_ document: String) {
        expectAgreement(Array(document.utf8))
    }

    @Test(arguments: jsonValidDocuments + jsonInvalidDocuments)
    func agreesWithParserOnParserCorpusDocument(_ document: String) {
        expectAgreement(Array(document.utf8))
    }

    @Test(arguments: invalidUTF8Objects)
    func agreesWithParserOnInvalidUTF8(_ document: [UInt8]) {
        #expect(jsonParseError(document) != nil)
        expectAgreement(document)
    }

    @Test func agreesWithParserOnRandomObjects() {
        var generator = JSONTestGenerator(seed: 0x5CA9_0001)
        for _ in 0..<1000 {
            var object = JSONObject()
            for _ in 0..<Int.random(in: 0...8, using: &generator) {
                object[randomJSONString(&generator)] = randomJSONValue(&generator, depth: 1)
            }
            let options: JSONWriter.Options = Bool.random(using: &generator) ? [.prettyPrinted] : []
            expectAgreement(Array(JSONWriter.string(.object(object), options: options).utf8))
        }
    }

    @Test func agreesWithParserOnMutatedObjects() {
        var generator = JSONTestGenerator(seed: 0x5CA9_0002)
        let interesting: [UInt8] =
            Array(#"{}[]",:\0-+.eEu tfnaZ"#.utf8) + [
                0x0A, 0x00, 0x1F, 0x7F, 0x80, 0xBF, 0xC3, 0xE2, 0xED, 0xF0, 0xF4, 0xFF,
            ]
        let seeds = objectCorpus.prefix(10).map { Array($0.utf8) }
        for _ in 0..<5000 {
            var bytes = seeds.randomElement(using: &generator)!
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let position = Int.random(in: 0...bytes.count, using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0 where position < bytes.count: bytes[position] = interesting.randomElement(using: &generator)!
                case 1 where position < bytes.count: bytes.remove(at: position)
                case 2: bytes.insert(interesting.randomElement(using: &generator)!, at: position)
                default: bytes.removeSubrange(position...)
                }
            }
            expectAgreement(bytes)
        }
    }
}
