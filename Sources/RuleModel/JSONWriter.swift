/// Writes ``JSONValue``s as JSON text, compact by default.
///
/// Integers are written as integers and doubles always with a fraction or an exponent (the shortest text that
/// reads back to the same `Double`, as Swift's `description` gives it: `1.0`, `0.1`, `1e+20`), so that
/// ``JSONParser`` reads back the same case. Object members are written in insertion order unless
/// ``Options/sortedKeys`` is set.
///
/// - Precondition: Every `.number` is finite. JSON has no NaN or infinity; callers must never pass them (the
///   parser never produces them), and the writer stops the program if they do.
///
/// Writing recurses once per nesting level, which is fine for values within the parser's depth limit.
public struct JSONWriter: Sendable {
    /// Output options.
    public struct Options: OptionSet, Sendable, Hashable {
        /// The option bits.
        public let rawValue: UInt8

        /// Creates options from their bits.
        public init(rawValue: UInt8) {
            self.rawValue = rawValue
        }

        /// Object members ordered by the UTF-8 bytes of their keys (Unicode code point order), for canonical output.
        public static let sortedKeys = Options(rawValue: 1 << 0)
        /// Line breaks and 2-space indentation, with `": "` between key and value (for people reading CLI output).
        public static let prettyPrinted = Options(rawValue: 1 << 1)
    }

    /// The options used by ``write(_:to:)``.
    public var options: Options

    /// Creates a writer.
    ///
    /// - Parameter options: Output options; none gives compact output in insertion order.
    public init(options: Options = []) {
        self.options = options
    }

    /// Appends `value` as JSON text to `output`.
    ///
    /// - Parameters:
    ///   - value: The value; every `.number` in it must be finite.
    ///   - output: The buffer to append to.
    public func write(_ value: JSONValue, to output: inout [UInt8]) {
        write(value, to: &output, allowNonFinite: false)
    }

    /// Returns `value` as JSON text.
    ///
    /// - Parameter value: The value; every `.number` in it must be finite.
    /// - Returns: The JSON text.
    public func string(_ value: JSONValue) -> String {
        var output: [UInt8] = []
        write(value, to: &output)
        return String(decoding: output, as: UTF8.self)
    }

    /// Returns `value` as JSON text.
    ///
    /// - Parameters:
    ///   - value: The value; every `.number` in it must be finite.
    ///   - options: Output options; none gives compact output in insertion order.
    /// - Returns: The JSON text.
    public static func string(_ value: JSONValue, options: Options = []) -> String {
        JSONWriter(options: options).string(value)
    }

    func write(_ value: JSONValue, to output: inout [UInt8], allowNonFinite: Bool) {
        writeValue(value, to: &output, indent: 0, allowNonFinite: allowNonFinite)
    }

    private func writeValue(_ value: JSONValue, to output: inout [UInt8], indent: Int, allowNonFinite: Bool) {
        switch value {
        case .null:
            output.append(contentsOf: "null".utf8)
        case .bool(let flag):
            output.append(contentsOf: flag ? "true".utf8 : "false".utf8)
        case .integer(let integer):
            Self.appendInteger(integer, to: &output)
        case .number(let number):
            if allowNonFinite && !number.isFinite {
                output.append(contentsOf: number.isNaN ? "NaN".utf8 : number < 0 ? "-Infinity".utf8 : "Infinity".utf8)
            } else {
                Self.appendDouble(number, to: &output)
            }
        case .string(let string):
            Self.appendEscapedString(string, to: &output)
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            for (position, element) in elements.enumerated() {
                if position > 0 {
                    output.append(UInt8(ascii: ","))
                }
                newline(&output, indent: indent + 1)
                writeValue(element, to: &output, indent: indent + 1, allowNonFinite: allowNonFinite)
            }
            if !elements.isEmpty {
                newline(&output, indent: indent)
            }
            output.append(UInt8(ascii: "]"))
        case .object(let object):
            output.append(UInt8(ascii: "{"))
            var first = true
            func member(_ key: String, _ value: JSONValue) {
                if !first {
                    output.append(UInt8(ascii: ","))
                }
                first = false
                newline(&output, indent: indent + 1)
                Self.appendEscapedString(key, to: &output)
                output.append(UInt8(ascii: ":"))
                if options.contains(.prettyPrinted) {
                    output.append(UInt8(ascii: " "))
                }
                writeValue(value, to: &output, indent: indent + 1, allowNonFinite: allowNonFinite)
            }
            if options.contains(.sortedKeys) {
                let sorted = object.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
                for (key, value) in sorted {
                    member(key, value)
                }
            } else {
                for (key, value) in object {
                    member(key, value)
                }
            }
            if !object.isEmpty {
                newline(&output, indent: indent)
            }
            output.append(UInt8(ascii: "}"))
        }
    }

    @inline(__always)
    private func newline(_ output: inout [UInt8], indent: Int) {
        guard options.contains(.prettyPrinted) else { return }
        output.append(UInt8(ascii: "\n"))
        output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: 2 * indent))
    }

    // MARK: Scalars

    /// Appends the decimal text of `value`.
    ///
    /// - Parameters:
    ///   - value: The integer.
    ///   - output: The buffer to append to.
    public static func appendInteger(_ value: Int64, to output: inout [UInt8]) {
        var magnitude = value.magnitude
        if value < 0 {
            output.append(UInt8(ascii: "-"))
        }
        if magnitude < 10 {
            output.append(UInt8(truncatingIfNeeded: magnitude) &+ 0x30)
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var position = 20
            while magnitude > 0 {
                position -= 1
                digits[position] = UInt8(truncatingIfNeeded: magnitude % 10) &+ 0x30
                magnitude /= 10
            }
            output.append(contentsOf: UnsafeMutableBufferPointer(rebasing: digits[position..<20]))
        }
    }

    /// Appends `value` as the shortest text that reads back as the same `Double`, always with a fraction or an
    /// exponent (`1.0`, `1e+20`, `-0.0`).
    ///
    /// - Precondition: `value` is finite.
    /// - Parameters:
    ///   - value: The number.
    ///   - output: The buffer to append to.
    public static func appendDouble(_ value: Double, to output: inout [UInt8]) {
        precondition(value.isFinite, "JSON cannot represent \(value)")
        let text = value.description
        var isFloatText = false
        for byte in text.utf8 where byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") {
            isFloatText = true
            break
        }
        output.append(contentsOf: text.utf8)
        if !isFloatText {
            output.append(contentsOf: ".0".utf8)
        }
    }

    // MARK: Strings

    /// Appends `string` as a JSON string literal, including the surrounding quotes.
    ///
    /// `"` and `\` are escaped, control characters are written as `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`, and
    /// U+2028 and U+2029 as `\u2028` and `\u2029` (so the output is also valid JavaScript); everything else is
    /// copied as UTF-8.
    ///
    /// - Parameters:
    ///   - string: The text.
    ///   - output: The buffer to append to.
    public static func appendEscapedString(_ string: some StringProtocol, to output: inout [UInt8]) {
        let done: Void? = string.utf8.withContiguousStorageIfAvailable { buffer in
            appendEscaped(UnsafeRawBufferPointer(buffer), validate: false, to: &output)
        }
        if done == nil {
            var copy = String(string)
            copy.withUTF8 { appendEscaped(UnsafeRawBufferPointer($0), validate: false, to: &output) }
        }
    }

    /// Appends UTF-8 bytes as a JSON string literal, including the surrounding quotes, escaped as
    /// ``appendEscapedString(_:to:)`` does.
    ///
    /// Each ill-formed UTF-8 sequence in `bytes` is replaced by U+FFFD, so the output is always valid.
    ///
    /// - Parameters:
    ///   - bytes: The text as UTF-8.
    ///   - output: The buffer to append to.
    public static func appendEscapedString(utf8 bytes: UnsafeRawBufferPointer, to output: inout [UInt8]) {
        appendEscaped(bytes, validate: true, to: &output)
    }

    private static func appendEscaped(_ bytes: UnsafeRawBufferPointer, validate: Bool, to output: inout [UInt8]) {
        output.append(UInt8(ascii: "\""))
        guard let raw = bytes.baseAddress else {
            output.append(UInt8(ascii: "\""))
            return
        }
        let p = raw.assumingMemoryBound(to: UInt8.self)
        let end = bytes.count
        var runStart = 0
        var i = 0
        @inline(__always)
        func flush(_ upTo: Int, _ output: inout [UInt8]) {
            if upTo > runStart {
                output.append(contentsOf: UnsafeBufferPointer(start: p + runStart, count: upTo - runStart))
            }
        }
        while i < end {
            let byte = p[i]
            if byte >= 0x20 && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\") && byte < 0x80 {
                i &+= 1
                continue
            }
            if byte >= 0x80 {
                let length = validate ? JSONLexer.utf8SequenceLength(p, i, end) : utf8LengthOfValid(byte)
                if length == 0 {
                    flush(i, &output)
                    output.append(contentsOf: [0xEF, 0xBF, 0xBD])
                    i &+= 1
                    runStart = i
                } else if length == 3 && byte == 0xE2 && p[i + 1] == 0x80 && (p[i + 2] == 0xA8 || p[i + 2] == 0xA9) {
                    flush(i, &output)
                    output.append(contentsOf: p[i + 2] == 0xA8 ? "\\u2028".utf8 : "\\u2029".utf8)
                    i &+= 3
                    runStart = i
                } else {
                    i &+= length
                }
                continue
            }
            flush(i, &output)
            output.append(UInt8(ascii: "\\"))
            switch byte {
            case UInt8(ascii: "\""): output.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): output.append(UInt8(ascii: "\\"))
            case 0x0A: output.append(UInt8(ascii: "n"))
            case 0x0D: output.append(UInt8(ascii: "r"))
            case 0x09: output.append(UInt8(ascii: "t"))
            case 0x08: output.append(UInt8(ascii: "b"))
            case 0x0C: output.append(UInt8(ascii: "f"))
            default:
                let hexDigits: StaticString = "0123456789abcdef"
                output.append(contentsOf: "u00".utf8)
                output.append(hexDigits.utf8Start[Int(byte >> 4)])
                output.append(hexDigits.utf8Start[Int(byte & 0x0F)])
            }
            i &+= 1
            runStart = i
        }
        flush(end, &output)
        output.append(UInt8(ascii: "\""))
    }

    /// The sequence length from the lead byte of already valid UTF-8.
    @inline(__always)
    private static func utf8LengthOfValid(_ lead: UInt8) -> Int {
        lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
    }
}
