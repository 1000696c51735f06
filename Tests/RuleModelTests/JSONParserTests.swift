import RuleModel
import Testing

/// The error parsing `bytes` gives, or nil when it parses.
func jsonParseError(_ bytes: [UInt8], limits: JSONLimits = JSONLimits()) -> JSONParseError? {
    do {
        _ = try JSONParser(limits: limits).parse(bytes)
        return nil
    } catch {
        return error
    }
}

/// The error parsing `text` gives, or nil when it parses.
func jsonParseError(_ text: String, limits: JSONLimits = JSONLimits()) -> JSONParseError? {
    jsonParseError(Array(text.utf8), limits: limits)
}

/// Valid documents in the spirit of JSONTestSuite's `y_` cases.
let jsonValidDocuments: [String] = [
    "null", "true", "false", "0", "-0", "1", "-1", "123", "1.5", "-1.5e10", "1E2", "1e+2", "1e-2", "0.0", "0e0",
    "-0.0e-0", "\"\"", "\"a\"", "\"\\u0000\"", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\uD834\\uDD1E\"", "\"\\uFFFF\"",
    "\"\u{7F}\"", "\"é€😀\"", "\"\u{10FFFF}\"", "[]", "[[]]", "[1,2,3]", "[ 1 , 2 ]", "{}", "{\"a\":1}",
    "{\"a\":{\"b\":[true,false,null]}}", "{\"\":0}", " \t\r\n[] \t\r\n", "[\"a\",{\"b\":\"c\"}]",
    "{\"a\":1,\"A\":2}", "{\"a\":{\"x\":1},\"b\":{\"x\":2}}", "[1e-400]", "123456789012345678901234567890",
    "[-9223372036854775808, 9223372036854775807]", "{\"\\u00e9\":1,\"e\\u0301\":2}",
]

/// Invalid documents in the spirit of JSONTestSuite's `n_` cases.
let jsonInvalidDocuments: [String] = [
    "", " ", "nul", "tru", "fals", "True", "NULL", "nan", "NaN", "Infinity", "-Infinity", "undefined", "01", "-01",
    "00", "1.", ".5", "+1", "-", "1e", "1e+", "1E-", "1.e5", "0x10", "1.5e", "- 1", "1 2", "[1,]", "[,1]", "[1,,2]",
    "[1 2]", "[", "]", "[[]", "[]]", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\" 1}", "{\"a\":1,}", "{,}", "{1:1}",
    "{'a':1}", "{a:1}", "['a']", "\"abc", "\"\\\"", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\uD800\"",
    "\"\\uDC00\"", "\"\\uD800\\u0041\"", "\"\\uD800\\uD800\"", "\"\t\"", "\"\n\"", "\"\u{1F}\"", "// c\n{}",
    "/* c */ {}", "{} /", "[1]x", "{\"a\":1}}", "\u{FEFF}{}", "\u{A0}{}", "\u{0B}{}", "\u{0C}[]", "[1e400]",
    "[-1e400]", "{\"a\":1,\"a\":2}", "[\"a\" \"b\"]", "[true false]", "{\"a\":1 \"b\":2}", "\"\\'\"", "[.1]",
]

@Suite("JSONParser")
struct JSONParserTests {
    @Test(arguments: jsonValidDocuments)
    func acceptsValidDocument(_ document: String) {
        #expect(jsonParseError(document) == nil)
    }

    @Test(arguments: jsonInvalidDocuments)
    func rejectsInvalidDocument(_ document: String) {
        #expect(jsonParseError(document) != nil)
    }

    @Test func parsesLiterals() throws {
        #expect(try JSONParser().parse("null") == .null)
        #expect(try JSONParser().parse("true") == .bool(true))
        #expect(try JSONParser().parse("false") == .bool(false))
    }

    @Test func parsesNestedStructure() throws {
        let value = try JSONParser().parse(#"{"a":[1,2.5,"x",{"b":null}],"c":true}"#)
        let expected: JSONValue = ["a": [1, 2.5, "x", ["b": nil]], "c": true]
        #expect(value == expected)
    }

    @Test func keepsObjectMembersInDocumentOrder() throws {
        let value = try JSONParser().parse(#"{"b":1,"a":2,"c":3}"#)
        #expect(value.objectValue?.keys == ["b", "a", "c"])
    }

    @Test func parsesSameValueFromBytesStringAndBuffer() throws {
        let text = #"{"k":[1,"é"]}"#
        let bytes = Array(text.utf8)
        let fromString = try JSONParser().parse(text)
        let fromBytes = try JSONParser().parse(bytes)
        let fromBuffer = try bytes.withUnsafeBytes { try JSONParser().parse($0) }
        #expect(fromString == fromBytes)
        #expect(fromBytes == fromBuffer)
    }

    // MARK: Numbers

    @Test func keepsInt64MaxAsInteger() throws {
        #expect(try JSONParser().parse("9223372036854775807") == .integer(.max))
    }

    @Test func keepsInt64MinAsInteger() throws {
        #expect(try JSONParser().parse("-9223372036854775808") == .integer(.min))
    }

    @Test func turnsIntegerAboveInt64MaxIntoNumber() throws {
        #expect(try JSONParser().parse("9223372036854775808") == .number(9_223_372_036_854_775_808.0))
    }

    @Test func turnsIntegerBelowInt64MinIntoNumber() throws {
        #expect(try JSONParser().parse("-9223372036854775809") == .number(-9_223_372_036_854_775_809.0))
    }

    @Test func turnsLongIntegerIntoNumber() throws {
        let text = "1" + String(repeating: "0", count: 30)
        #expect(try JSONParser().parse(text) == .number(1e30))
    }

    @Test func keepsNumberWithFractionAsNumber() throws {
        #expect(try JSONParser().parse("1.0") == .number(1.0))
    }

    @Test func keepsNumberWithExponentAsNumber() throws {
        #expect(try JSONParser().parse("1e2") == .number(100))
        #expect(try JSONParser().parse("1E+2") == .number(100))
    }

    @Test func readsMinusZeroIntegerAsZero() throws {
        #expect(try JSONParser().parse("-0") == .integer(0))
    }

    @Test func keepsSignOfMinusZeroNumber() throws {
        let value = try JSONParser().parse("-0.0")
        #expect(value.doubleValue?.sign == .minus)
        #expect(value.doubleValue == 0)
    }

    @Test(arguments: [
        "0.1", "3.141592653589793", "2.2250738585072014e-308", "4.9e-324", "1.7976931348623157e308", "1e23",
        "123456789012345678901234567890.5", "0.30000000000000004", "9007199254740993",
        "1.00000000000000011102230246251565",
        "-2.5e-5", "6.02214076e23", "1e22", "123456.789e-3", "0.000000000000000000001",
    ])
    func convertsNumberToNearestDouble(_ text: String) throws {
        let value = try JSONParser().parse("[" + text + "]")
        let expected = try #require(Double(text))
        #expect(value[0]?.doubleValue?.bitPattern == expected.bitPattern)
    }

    @Test func flushesUnderflowToZero() throws {
        #expect(try JSONParser().parse("1e-400") == .number(0))
    }

    @Test func rejectsNumberThatOverflowsToInfinity() {
        #expect(jsonParseError("1e400") == JSONParseError(offset: 0, message: "number out of range at byte 0"))
        #expect(jsonParseError("[-1.8e308]") == JSONParseError(offset: 1, message: "number out of range at byte 1"))
        #expect(jsonParseError(String(repeating: "9", count: 400)) != nil)
    }

    @Test func acceptsLargestFiniteDouble() throws {
        #expect(try JSONParser().parse("1.7976931348623157e308") == .number(.greatestFiniteMagnitude))
        #expect(try JSONParser().parse("0.00017976931348623157e312") == .number(.greatestFiniteMagnitude))
    }

    @Test(arguments: ["01", "-", "1.", "-01", "1e", "1e+", "1.e5", "-x", "2.5E"])
    func rejectsMalformedNumber(_ text: String) {
        #expect(jsonParseError(text) == JSONParseError(offset: 0, message: "invalid number at byte 0"))
    }

    @Test func rejectsNumberWithLeadingPlusOrDot() {
        #expect(jsonParseError("+1") == JSONParseError(offset: 0, message: "unexpected character '+' at byte 0"))
        #expect(jsonParseError(".5") == JSONParseError(offset: 0, message: "unexpected character '.' at byte 0"))
    }

    // MARK: Strings

    @Test func decodesSimpleEscapes() throws {
        #expect(try JSONParser().parse(#""\"\\\/\b\f\n\r\t""#) == .string("\"\\/\u{8}\u{C}\n\r\t"))
    }

    @Test func decodesUnicodeEscapes() throws {
        #expect(try JSONParser().parse(#""\u0041\u00e9\u20AC\uFFFF""#) == .string("Aé€\u{FFFF}"))
    }

    @Test func decodesSurrogatePairEscape() throws {
        #expect(try JSONParser().parse(#""\uD83D\uDE00""#) == .string("😀"))
    }

    @Test func decodesEscapedNul() throws {
        #expect(try JSONParser().parse(#""a\u0000b""#).stringValue?.unicodeScalars.map(\.value) == [0x61, 0, 0x62])
    }

    @Test func passesThroughMultibyteUTF8() throws {
        #expect(try JSONParser().parse("\"é€😀\u{10FFFF}\u{E000}\"") == .string("é€😀\u{10FFFF}\u{E000}"))
    }

    @Test func rejectsLoneHighSurrogateEscape() {
        #expect(
            jsonParseError(#""a\uD800""#)
                == JSONParseError(offset: 2, message: "lone surrogate \\uD800 in string at byte 2"))
    }

    @Test func rejectsLoneLowSurrogateEscape() {
        #expect(
            jsonParseError(#""\udc00""#)
                == JSONParseError(offset: 1, message: "lone surrogate \\uDC00 in string at byte 1")
        )
    }

    @Test func rejectsHighSurrogateFollowedByNonSurrogate() {
        #expect(jsonParseError(#""\uD800\u0041""#)?.message == "lone surrogate \\uD800 in string at byte 1")
        #expect(jsonParseError(#""\uD800\uD800""#)?.message == "lone surrogate \\uD800 in string at byte 1")
    }

    @Test func rejectsUnknownEscape() {
        #expect(
            jsonParseError(#""ab\q""#) == JSONParseError(offset: 3, message: "invalid escape '\\q' in string at byte 3")
        )
    }

    @Test func rejectsMalformedUnicodeEscape() {
        #expect(
            jsonParseError(#""\u12G4""#) == JSONParseError(offset: 1, message: "invalid \\u escape in string at byte 1")
        )
    }

    @Test func rejectsUnescapedControlCharacter() {
        #expect(
            jsonParseError("\"a\nb\"")
                == JSONParseError(offset: 2, message: "unescaped control character 0x0A in string at byte 2")
        )
    }

    @Test func reportsUnterminatedString() {
        #expect(jsonParseError(#"["abc"#) == JSONParseError(offset: 1, message: "unterminated string"))
        #expect(jsonParseError(#""abc\"#) == JSONParseError(offset: 0, message: "unterminated string"))
        #expect(jsonParseError(#""\u12"#) == JSONParseError(offset: 0, message: "unterminated string"))
    }

    @Test(
        arguments: [
            [0x80], [0xBF], [0xC0, 0xAF], [0xC1, 0xBF], [0xE0, 0x80, 0xAF], [0xE0, 0x9F, 0xBF], [0xED, 0xA0, 0x80],
            [0xED, 0xBF, 0xBF], [0xF0, 0x80, 0x80, 0xAF], [0xF0, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80],
            [0xF5, 0x80, 0x80, 0x80], [0xFE], [0xFF], [0xE2, 0x82], [0xC3], [0xC3, 0x41], [0xF0, 0x9F, 0x98],
        ] as [[UInt8]])
    func rejectsInvalidUTF8InString(_ sequence: [UInt8]) {
        let document: [UInt8] = [0x22, 0x61] + sequence + [0x22]
        #expect(jsonParseError(document) == JSONParseError(offset: 2, message: "invalid UTF-8 in string at byte 2"))
    }

    @Test(
        arguments: [
            [0x7F], [0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xEE, 0x80, 0x80],
            [0xEF, 0xBF, 0xBF], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF],
        ] as [[UInt8]])
    func acceptsBoundaryUTF8InString(_ sequence: [UInt8]) throws {
        let document: [UInt8] = [0x22] + sequence + [0x22]
        #expect(try JSONParser().parse(document) == .string(String(decoding: sequence, as: UTF8.self)))
    }

    @Test func rejectsNonASCIIOutsideStrings() {
        #expect(
            jsonParseError([0x5B, 0xC3, 0xA9, 0x5D])
                == JSONParseError(offset: 1, message: "unexpected character 0xC3 at byte 1"))
    }

    @Test func appliesStringLengthLimitToValuesAndKeys() {
        let limits = JSONLimits(maxStringBytes: 4)
        #expect(jsonParseError(#"["abcd"]"#, limits: limits) == nil)
        #expect(
            jsonParseError(#"["abcde"]"#, limits: limits)
                == JSONParseError(offset: 1, message: "string longer than 4 bytes"))
        #expect(
            jsonParseError(#"{"abcde":1}"#, limits: limits)
                == JSONParseError(offset: 1, message: "string longer than 4 bytes"))
    }

    // MARK: Structure and whitespace

    @Test func allowsWhitespaceAroundValue() throws {
        #expect(try JSONParser().parse(" \t\r\n{ \"a\" : [ 1 , 2 ] } \n\t") == ["a": [1, 2]])
    }

    @Test(arguments: ["\u{0C}1", "\u{0B}1", "\u{A0}1", "\u{FEFF}1"])
    func rejectsNonJSONWhitespace(_ text: String) {
        #expect(jsonParseError(text)?.offset == 0)
    }

    @Test func reportsEmptyInputAsUnexpectedEnd() {
        #expect(jsonParseError("") == JSONParseError(offset: 0, message: "unexpected end of input"))
        #expect(jsonParseError("  ") == JSONParseError(offset: 2, message: "unexpected end of input"))
    }

    @Test func reportsTruncatedDocumentAsUnexpectedEnd() {
        #expect(jsonParseError(#"{"a":[1,"#) == JSONParseError(offset: 8, message: "unexpected end of input"))
        #expect(jsonParseError("tru") == JSONParseError(offset: 3, message: "unexpected end of input"))
    }

    @Test func reportsUnexpectedCharacterWithOffset() {
        #expect(jsonParseError("[1,x]") == JSONParseError(offset: 3, message: "unexpected character 'x' at byte 3"))
        #expect(jsonParseError("trUe") == JSONParseError(offset: 2, message: "unexpected character 'U' at byte 2"))
        #expect(jsonParseError(#"{"a" 1}"#) == JSONParseError(offset: 5, message: "unexpected character '1' at byte 5"))
    }

    @Test func rejectsTrailingComma() {
        #expect(jsonParseError("[1,]") == JSONParseError(offset: 3, message: "unexpected character ']' at byte 3"))
        #expect(
            jsonParseError(#"{"a":1,}"#) == JSONParseError(offset: 7, message: "unexpected character '}' at byte 7"))
    }

    @Test func rejectsTrailingData() {
        #expect(jsonParseError("{} x") == JSONParseError(offset: 3, message: "trailing data after JSON value"))
        #expect(jsonParseError("1 2") == JSONParseError(offset: 2, message: "trailing data after JSON value"))
        #expect(jsonParseError("[]]") == JSONParseError(offset: 2, message: "trailing data after JSON value"))
        #expect(jsonParseError("01") == JSONParseError(offset: 0, message: "invalid number at byte 0"))
    }

    // MARK: Duplicate keys

    @Test func rejectsDuplicateKey() {
        #expect(jsonParseError(#"{"a":1,"a":2}"#) == JSONParseError(offset: 7, message: #"duplicate key "a""#))
    }

    @Test func rejectsDuplicateKeyInNestedObject() {
        #expect(jsonParseError(#"[{"x":{"k":1,"k":2}}]"#) == JSONParseError(offset: 13, message: #"duplicate key "k""#))
    }

    @Test func rejectsDuplicateKeyWrittenWithEscapes() {
        #expect(jsonParseError(#"{"ab":1,"\u0061\u0062":2}"#)?.message == #"duplicate key "ab""#)
        #expect(jsonParseError(#"{"\n":1,"\u000a":2}"#)?.message == #"duplicate key "\n""#)
    }

    @Test func rejectsDuplicateKeyInLargeObject() {
        let members = (0..<100).map { "\"key\($0)\":\($0)" }.joined(separator: ",")
        #expect(jsonParseError("{" + members + #","key57":0}"#)?.message == #"duplicate key "key57""#)
    }

    @Test func acceptsLargeObjectWithDistinctKeys() throws {
        let members = (0..<1000).map { "\"key\($0)\":\($0)" }.joined(separator: ",")
        let value = try JSONParser().parse("{" + members + "}")
        #expect(value.objectValue?.count == 1000)
        #expect(value["key999"] == .integer(999))
    }

    @Test func allowsSameKeyInSiblingObjects() {
        #expect(jsonParseError(#"[{"a":1},{"a":2},{"b":{"a":3}}]"#) == nil)
    }

    @Test func treatsCanonicallyEquivalentKeysAsDistinct() throws {
        let value = try JSONParser().parse(#"{"\u00e9":1,"e\u0301":2}"#)
        #expect(value.objectValue?.count == 2)
        #expect(value["\u{E9}"] == .integer(1))
    }

    @Test func shortensLongDuplicateKeyInMessage() {
        let key = String(repeating: "x", count: 200)
        let message = jsonParseError("{\"\(key)\":1,\"\(key)\":2}")?.message
        #expect(message == "duplicate key \"" + String(repeating: "x", count: 64) + "\"...")
    }

    // MARK: Limits

    @Test func rejectsNestingBeyondDefaultLimit() {
        let text = String(repeating: "[", count: 100_000)
        #expect(jsonParseError(text) == JSONParseError(offset: 64, message: "nesting deeper than 64"))
    }

    @Test func acceptsNestingAtLimit() throws {
        let text = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(jsonParseError(text) == nil)
        let deeper = String(repeating: "{\"a\":", count: 65) + "1" + String(repeating: "}", count: 65)
        #expect(jsonParseError(deeper) == JSONParseError(offset: 320, message: "nesting deeper than 64"))
    }

    @Test func appliesCustomDepthLimit() {
        let limits = JSONLimits(maxDepth: 2)
        #expect(jsonParseError("[[1]]", limits: limits) == nil)
        #expect(
            jsonParseError("[[[1]]]", limits: limits) == JSONParseError(offset: 2, message: "nesting deeper than 2"))
    }

    @Test func walksHugeNestingWithoutRecursion() {
        let text = String(repeating: "[", count: 100_000)
        let limits = JSONLimits(maxDepth: 1_000_000)
        #expect(
            jsonParseError(text, limits: limits) == JSONParseError(offset: 100_000, message: "unexpected end of input"))
    }

    @Test func limitsTotalValueCount() {
        let limits = JSONLimits(maxValues: 3)
        #expect(jsonParseError("[1,2]", limits: limits) == nil)
        #expect(jsonParseError(#"{"a":1,"b":2}"#, limits: limits) == nil)
        #expect(jsonParseError("[1,2,3]", limits: limits) == JSONParseError(offset: 5, message: "more than 3 values"))
    }

    @Test func describesErrorByItsMessage() {
        let error = JSONParseError(offset: 4, message: "trailing data after JSON value")
        #expect(String(describing: error) == "trailing data after JSON value")
    }
}

@Suite("JSONValue")
struct JSONValueTests {
    @Test func returnsPayloadFromMatchingAccessor() {
        #expect(JSONValue.string("s").stringValue == "s")
        #expect(JSONValue.integer(7).int64Value == 7)
        #expect(JSONValue.integer(7).intValue == 7)
        #expect(JSONValue.number(2.5).doubleValue == 2.5)
        #expect(JSONValue.bool(true).boolValue == true)
        #expect(JSONValue.array([1]).arrayValue == [1])
        #expect(JSONValue.object(["a": 1]).objectValue == ["a": 1])
        #expect(JSONValue.null.isNull)
    }

    @Test func returnsNilFromMismatchedAccessor() {
        #expect(JSONValue.integer(1).stringValue == nil)
        #expect(JSONValue.number(1.0).int64Value == nil)
        #expect(JSONValue.string("1").doubleValue == nil)
        #expect(JSONValue.null.boolValue == nil)
        #expect(JSONValue.object([:]).arrayValue == nil)
        #expect(JSONValue.array([]).objectValue == nil)
        #expect(!JSONValue.bool(false).isNull)
    }

    @Test func convertsIntegerInDoubleAccessor() {
        #expect(JSONValue.integer(-3).doubleValue == -3.0)
    }

    @Test func subscriptsObjectsByKeyAndArraysByIndex() {
        let value: JSONValue = ["a": [10, 20]]
        #expect(value["a"]?[1] == 20)
        #expect(value["missing"] == nil)
        #expect(value["a"]?[2] == nil)
        #expect(JSONValue.array([1])["a"] == nil)
        #expect(JSONValue.string("x")[0] == nil)
    }

    @Test func buildsCasesFromLiterals() {
        let values: [JSONValue] = [nil, true, 1, 1.5, "s", [1], ["k": 1]]
        #expect(
            values == [
                .null, .bool(true), .integer(1), .number(1.5), .string("s"), .array([.integer(1)]),
                .object(JSONObject([("k", .integer(1))])),
            ])
    }

    @Test func distinguishesIntegerFromEqualNumber() {
        #expect(JSONValue.integer(1) != JSONValue.number(1.0))
    }

    @Test func describesValueAsCompactJSON() {
        let value: JSONValue = ["a": [1, 2.0, "x"], "b": nil]
        #expect(value.description == #"{"a":[1,2.0,"x"],"b":null}"#)
    }

    @Test func describesNonFiniteNumberWithoutStopping() {
        #expect(JSONValue.array([.number(.nan), .number(-.infinity)]).description == "[NaN,-Infinity]")
    }
}

@Suite("JSONObject")
struct JSONObjectTests {
    @Test func keepsInsertionOrder() {
        let object = JSONObject([("z", 1), ("a", 2), ("m", 3)])
        #expect(object.keys == ["z", "a", "m"])
        #expect(object.values == [1, 2, 3])
        #expect(object.map(\.key) == ["z", "a", "m"])
    }

    @Test func looksUpKeysInLargeObject() {
        var object = JSONObject()
        for number in 0..<50 {
            object["k\(number)"] = .integer(Int64(number))
        }
        #expect(object.count == 50)
        #expect(object["k0"] == 0)
        #expect(object["k49"] == 49)
        #expect(object["k50"] == nil)
    }

    @Test func keepsFirstPositionAndLastValueForDuplicatePairs() {
        let object = JSONObject([("a", 1), ("b", 2), ("a", 3)])
        #expect(object.keys == ["a", "b"])
        #expect(object["a"] == 3)
    }

    @Test func replacesValueInPlace() {
        var object: JSONObject = ["a": 1, "b": 2]
        object["a"] = "x"
        #expect(object.keys == ["a", "b"])
        #expect(object["a"] == "x")
    }

    @Test func removesMemberWhenSetToNil() {
        var object: JSONObject = ["a": 1, "b": 2, "c": 3]
        object["b"] = nil
        #expect(object.keys == ["a", "c"])
        #expect(object.removeValue(forKey: "a") == 1)
        #expect(object.keys == ["c"])
        #expect(!object.contains(key: "a"))
    }

    @Test func removesMemberFromIndexedObject() {
        var object = JSONObject((0..<20).map { ("k\($0)", JSONValue.integer(Int64($0))) })
        object["k3"] = nil
        #expect(object["k3"] == nil)
        #expect(object["k4"] == 4)
        #expect(object.count == 19)
    }

    @Test func storesNullDistinctFromAbsence() {
        var object = JSONObject()
        object["a"] = .null
        #expect(object.contains(key: "a"))
        #expect(object["a"] == .null)
    }

    @Test func comparesEqualRegardlessOfOrder() {
        let first: JSONObject = ["a": 1, "b": [true]]
        let second: JSONObject = ["b": [true], "a": 1]
        #expect(first == second)
        #expect(first.hashValue == second.hashValue)
        #expect(first != ["a": 1, "b": [false]])
        #expect(first != ["a": 1])
    }

    @Test func comparesKeysByScalarsNotCanonicalEquivalence() {
        var object = JSONObject()
        object["\u{E9}"] = 1
        object["e\u{301}"] = 2
        #expect(object.count == 2)
        #expect(object["\u{E9}"] == 1)
        #expect(object["e\u{301}"] == 2)
    }
}
