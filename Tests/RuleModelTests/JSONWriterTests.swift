import RuleModel
import RulesTestSupport
import Testing

/// The random JSON tests' generator: seeded, so they repeat exactly.
typealias JSONTestGenerator = SeededGenerator

/// Scalars that stress escaping and UTF-8: controls, quotes, separators, every UTF-8 length and the extremes.
private let interestingScalars: [Unicode.Scalar] = [
    "a", "Z", "0", " ", "\"", "\\", "/", "\n", "\r", "\t", "\u{0}", "\u{1}", "\u{8}", "\u{C}", "\u{1F}", "\u{7F}",
    "\u{80}", "é", "\u{7FF}", "\u{800}", "€", "\u{2028}", "\u{2029}", "\u{D7FF}", "\u{E000}", "\u{FFFD}", "\u{FFFF}",
    "\u{10000}", "😀", "\u{10FFFF}",
]

func randomJSONString(_ generator: inout JSONTestGenerator) -> String {
    var scalars = String.UnicodeScalarView()
    for _ in 0..<Int.random(in: 0...10, using: &generator) {
        if Bool.random(using: &generator) {
            scalars.append(interestingScalars.randomElement(using: &generator)!)
        } else {
            scalars.append(Unicode.Scalar(UInt8.random(in: 0x20...0x7E, using: &generator)))
        }
    }
    return String(scalars)
}

func randomJSONDouble(_ generator: inout JSONTestGenerator) -> Double {
    switch Int.random(in: 0..<4, using: &generator) {
    case 0:
        while true {
            let value = Double(bitPattern: generator.next())
            if value.isFinite { return value }
        }
    case 1: return Double(Int.random(in: -1000...1000, using: &generator)) / 8
    case 2: return Double.random(in: -1e6...1e6, using: &generator)
    default:
        return [
            0.0, -0.0, 1.0, 1e20, 1e-7, .leastNonzeroMagnitude, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
            0.1, 1e16,
            9_007_199_254_740_993.0, 2.2250738585072014e-308,
        ].randomElement(using: &generator)!
    }
}

func randomJSONValue(_ generator: inout JSONTestGenerator, depth: Int = 0) -> JSONValue {
    let kinds = depth >= 4 ? 5 : 7
    switch Int.random(in: 0..<kinds, using: &generator) {
    case 0: return .null
    case 1: return .bool(Bool.random(using: &generator))
    case 2:
        let choices: [Int64] = [
            0, -1, 1, .max, .min, Int64(bitPattern: generator.next()), Int64.random(in: -999...999, using: &generator),
        ]
        return .integer(choices.randomElement(using: &generator)!)
    case 3: return .number(randomJSONDouble(&generator))
    case 4: return .string(randomJSONString(&generator))
    case 5:
        return .array(
            (0..<Int.random(in: 0...4, using: &generator)).map { _ in randomJSONValue(&generator, depth: depth + 1) })
    default:
        var object = JSONObject()
        for _ in 0..<Int.random(in: 0...4, using: &generator) {
            object[randomJSONString(&generator)] = randomJSONValue(&generator, depth: depth + 1)
        }
        return .object(object)
    }
}

/// Equality that also tells -0.0 from 0.0 and compares object members in order.
func jsonIdentical(_ lhs: JSONValue, _ rhs: JSONValue) -> Bool {
    switch (lhs, rhs) {
    case (.number(let a), .number(let b)): return a.bitPattern == b.bitPattern
    case (.array(let a), .array(let b)): return a.count == b.count && zip(a, b).allSatisfy { jsonIdentical($0, $1) }
    case (.object(let a), .object(let b)):
        return a.count == b.count
            && zip(a, b).allSatisfy { Array($0.key.utf8) == Array($1.key.utf8) && jsonIdentical($0.value, $1.value) }
    default: return lhs == rhs
    }
}

private func written(_ value: JSONValue, _ options: JSONWriter.Options = []) -> String {
    JSONWriter.string(value, options: options)
}

private func escaped(_ text: String) -> String {
    var output: [UInt8] = []
    JSONWriter.appendEscapedString(text, to: &output)
    return String(decoding: output, as: UTF8.self)
}

@Suite("JSONWriter")
struct JSONWriterTests {
    @Test func writesLiterals() {
        #expect(written(.null) == "null")
        #expect(written(.bool(true)) == "true")
        #expect(written(.bool(false)) == "false")
    }

    @Test func writesIntegersIncludingExtremes() {
        #expect(written(.integer(0)) == "0")
        #expect(written(.integer(-7)) == "-7")
        #expect(written(.integer(.max)) == "9223372036854775807")
        #expect(written(.integer(.min)) == "-9223372036854775808")
    }

    @Test func writesWholeDoubleWithFraction() {
        #expect(written(.number(1.0)) == "1.0")
        #expect(written(.number(-0.0)) == "-0.0")
        #expect(written(.number(100)) == "100.0")
    }

    @Test func writesLargeAndSmallDoublesWithExponent() {
        #expect(written(.number(1e20)) == "1e+20")
        #expect(written(.number(1e-7)) == "1e-07")
        #expect(written(.number(.leastNonzeroMagnitude)) == "5e-324")
        #expect(written(.number(.greatestFiniteMagnitude)) == "1.7976931348623157e+308")
    }

    @Test func writesShortestRoundTripDouble() {
        #expect(written(.number(0.1)) == "0.1")
        #expect(written(.number(0.1 + 0.2)) == "0.30000000000000004")
    }

    @Test func escapesQuoteAndBackslash() {
        #expect(escaped(#"a"b\c"#) == #""a\"b\\c""#)
    }

    @Test func escapesNamedControlCharacters() {
        #expect(escaped("\n\r\t\u{8}\u{C}") == #""\n\r\t\b\f""#)
    }

    @Test func escapesOtherControlCharactersAsHex() {
        #expect(escaped("\u{0}\u{1}\u{1F}") == #""\u0000\u0001\u001f""#)
    }

    @Test func escapesLineAndParagraphSeparators() {
        #expect(escaped("a\u{2028}b\u{2029}c") == #""a\u2028b\u2029c""#)
    }

    @Test func passesOtherTextThrough() {
        #expect(escaped("/é€😀\u{7F}\u{2027}\u{202A}") == "\"/é€😀\u{7F}\u{2027}\u{202A}\"")
    }

    @Test func escapesSubstring() {
        let text = "xx\"yy"
        var output: [UInt8] = []
        JSONWriter.appendEscapedString(text.dropFirst(), to: &output)
        #expect(String(decoding: output, as: UTF8.self) == #""x\"yy""#)
    }

    @Test func escapesRawUTF8Bytes() {
        let bytes: [UInt8] = Array("a\n\u{2028}é".utf8)
        var output: [UInt8] = []
        bytes.withUnsafeBytes { JSONWriter.appendEscapedString(utf8: $0, to: &output) }
        #expect(String(decoding: output, as: UTF8.self) == "\"a\\n\\u2028é\"")
    }

    @Test func replacesInvalidUTF8InRawBytes() {
        let bytes: [UInt8] = [0x61, 0xFF, 0xC0, 0xAF, 0xED, 0xA0, 0x80, 0x62]
        var output: [UInt8] = []
        bytes.withUnsafeBytes { JSONWriter.appendEscapedString(utf8: $0, to: &output) }
        let text = String(decoding: output, as: UTF8.self)
        #expect(text == "\"a" + String(repeating: "\u{FFFD}", count: 6) + "b\"")
        #expect(throws: Never.self) { try JSONParser().parse(output) }
    }

    @Test func appendsToExistingOutput() {
        var output = Array("x=".utf8)
        JSONWriter().write(["a": 1], to: &output)
        #expect(String(decoding: output, as: UTF8.self) == #"x={"a":1}"#)
    }

    @Test func writesCompactOutputInInsertionOrder() {
        let value: JSONValue = ["b": [1, "two", nil, true], "a": ["x": 1.5], "c": [], "d": [:]]
        #expect(written(value) == #"{"b":[1,"two",null,true],"a":{"x":1.5},"c":[],"d":{}}"#)
    }

    @Test func sortsKeysByUTF8BytesAtEveryLevel() {
        let value: JSONValue = ["é": 1, "b": ["z": 1, "a": 2], "B": 3, "a": 4, "": 5]
        #expect(written(value, .sortedKeys) == #"{"":5,"B":3,"a":4,"b":{"a":2,"z":1},"é":1}"#)
    }

    @Test func prettyPrintsWithTwoSpaceIndent() {
        let value: JSONValue = ["a": [1, ["b": nil]], "c": [], "d": [:]]
        let expected = """
            {
              "a": [
                1,
                {
                  "b": null
                }
              ],
              "c": [],
              "d": {}
            }
            """
        #expect(written(value, .prettyPrinted) == expected)
    }

    @Test func prettyPrintsScalarWithoutNewline() {
        #expect(written("x", .prettyPrinted) == #""x""#)
    }

    @Test func combinesSortedKeysAndPrettyPrinting() {
        #expect(written(["b": 1, "a": 2], [.sortedKeys, .prettyPrinted]) == "{\n  \"a\": 2,\n  \"b\": 1\n}")
    }

    @Test func offersInstanceAndStaticStringConveniences() {
        let value: JSONValue = ["k": [1.5]]
        #expect(JSONWriter().string(value) == JSONWriter.string(value))
    }

    // MARK: Round trips

    @Test(arguments: [
        JSONValue.null, true, false, 0, -0.0, 1.0, .integer(.max), .integer(.min), 9_223_372_036_854_775_808.0, 1e20,
        "", "\u{0}\u{1F}\"\\/\u{2028}😀", [], [:], [[[]]], ["a": ["b": ["c": [1, 2.5, "x"]]]],
        .number(.leastNonzeroMagnitude), .number(.greatestFiniteMagnitude), .number(-.leastNormalMagnitude),
    ])
    func roundTripsValue(_ value: JSONValue) throws {
        for options: JSONWriter.Options in [[], [.sortedKeys], [.prettyPrinted]] {
            var output: [UInt8] = []
            JSONWriter(options: options).write(value, to: &output)
            #expect(jsonIdentical(try JSONParser().parse(output), value))
        }
    }

    @Test func roundTripsRandomValues() throws {
        var generator = JSONTestGenerator(seed: 0x5EED_0001)
        for _ in 0..<3000 {
            let value = randomJSONValue(&generator)
            let text = written(value)
            let parsed = try JSONParser().parse(text)
            #expect(jsonIdentical(parsed, value), "\(text)")
            #expect(written(parsed) == text)
        }
    }

    @Test func roundTripsRandomValuesPrettyAndSorted() throws {
        var generator = JSONTestGenerator(seed: 0x5EED_0002)
        for _ in 0..<1000 {
            let value = randomJSONValue(&generator)
            #expect(try JSONParser().parse(written(value, .prettyPrinted)) == value)
            #expect(try JSONParser().parse(written(value, .sortedKeys)) == value)
        }
    }

    @Test func roundTripsRandomDoublesBitExactly() throws {
        var generator = JSONTestGenerator(seed: 0x5EED_0003)
        for _ in 0..<20_000 {
            let number = randomJSONDouble(&generator)
            let parsed = try JSONParser().parse(written(.number(number)))
            guard case .number(let back) = parsed else {
                Issue.record("\(number) came back as \(parsed)")
                continue
            }
            #expect(back.bitPattern == number.bitPattern)
        }
    }

    @Test func roundTripsRandomIntegers() throws {
        var generator = JSONTestGenerator(seed: 0x5EED_0004)
        for _ in 0..<20_000 {
            let integer = Int64(bitPattern: generator.next()) >> Int64.random(in: 0..<64, using: &generator)
            #expect(try JSONParser().parse(written(.integer(integer))) == .integer(integer))
        }
    }
}
