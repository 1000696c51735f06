// The parser and JSONObjectScanner share one validating core (JSONDriver): both walk the input with the same
// code and so accept the same documents and report the same errors. Only what they do with each value differs
// (the parser builds JSONValues, the scanner reports the top-level members' byte ranges).

// MARK: - Limits and errors

/// Limits that bound the work and memory spent on one JSON document.
///
/// The same limits apply to ``JSONParser`` and ``JSONObjectScanner``, and both report a violation as a
/// ``JSONParseError``.
public struct JSONLimits: Sendable, Hashable {
    /// The deepest nesting of arrays and objects; the outermost container is at depth 1. Default 64.
    ///
    /// Parsing never recurses, whatever this limit is, but very deep ``JSONValue``s are destroyed and written
    /// recursively: keep the limit in the hundreds at most when the parser builds values.
    public var maxDepth: Int
    /// The most values in one document, counting every scalar and container (object keys are not counted).
    public var maxValues: Int
    /// The longest string, in bytes of its encoded form between the quotes (escapes count as written).
    public var maxStringBytes: Int
    /// Whether numbers whose magnitude rounds to infinity as a `Double` (such as `1e400`) are refused. Default
    /// true. When false they are valid JSON like any other (the grammar has no range), and ``JSONParser`` reads
    /// them as an infinite `.number`: for readers that keep a number's text rather than its value.
    public var rejectsNumbersBeyondDouble: Bool

    /// Creates limits.
    ///
    /// - Parameters:
    ///   - maxDepth: The deepest nesting of arrays and objects (default 64).
    ///   - maxValues: The most values in one document (default 1,000,000).
    ///   - maxStringBytes: The longest string in encoded bytes (default 16 MiB).
    ///   - rejectsNumbersBeyondDouble: Whether numbers that round to an infinite `Double` are refused (default
    ///     true).
    public init(
        maxDepth: Int = 64, maxValues: Int = 1_000_000, maxStringBytes: Int = 1 << 24,
        rejectsNumbersBeyondDouble: Bool = true
    ) {
        self.maxDepth = maxDepth
        self.maxValues = maxValues
        self.maxStringBytes = maxStringBytes
        self.rejectsNumbersBeyondDouble = rejectsNumbersBeyondDouble
    }
}

/// Why a JSON document was rejected, and where.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The byte offset in the input where the problem was found (for example the unexpected byte, the opening quote
    /// of an unterminated string or duplicate key, or the input's length for a premature end).
    public var offset: Int
    /// A plain-English message, such as `unexpected character 'x' at byte 12` or `duplicate key "a"`.
    public var message: String

    /// Creates an error.
    ///
    /// - Parameters:
    ///   - offset: The byte offset of the problem.
    ///   - message: The message.
    public init(offset: Int, message: String) {
        self.offset = offset
        self.message = message
    }

    /// The message.
    public var description: String { message }
}

extension JSONParseError {
    @inline(never)
    static func unexpectedEnd(_ offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "unexpected end of input")
    }

    @inline(never)
    static func unexpected(_ byte: UInt8, at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "unexpected character \(describe(byte)) at byte \(offset)")
    }

    @inline(never)
    static func notAnObject(at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "expected a JSON object at byte \(offset)")
    }

    @inline(never)
    static func trailingData(at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "trailing data after JSON value")
    }

    @inline(never)
    static func unterminatedString(at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "unterminated string")
    }

    @inline(never)
    static func invalidUTF8(at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "invalid UTF-8 in string at byte \(offset)")
    }

    @inline(never)
    static func controlCharacter(_ byte: UInt8, at offset: Int) -> JSONParseError {
        JSONParseError(
            offset: offset, message: "unescaped control character \(describe(byte)) in string at byte \(offset)")
    }

    @inline(never)
    static func invalidEscape(_ byte: UInt8, at offset: Int) -> JSONParseError {
        let shown = byte >= 0x20 && byte < 0x7F ? "'\\\(Character(Unicode.Scalar(byte)))'" : describe(byte)
        return JSONParseError(offset: offset, message: "invalid escape \(shown) in string at byte \(offset)")
    }

    @inline(never)
    static func invalidUnicodeEscape(at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "invalid \\u escape in string at byte \(offset)")
    }

    @inline(never)
    static func loneSurrogate(_ unit: UInt32, at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "lone surrogate \\u\(hex(unit, digits: 4)) in string at byte \(offset)")
    }

    @inline(never)
    static func invalidNumber(at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "invalid number at byte \(offset)")
    }

    @inline(never)
    static func numberOutOfRange(at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "number out of range at byte \(offset)")
    }

    @inline(never)
    static func tooDeep(_ limit: Int, at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "nesting deeper than \(limit)")
    }

    @inline(never)
    static func tooManyValues(_ limit: Int, at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "more than \(limit) values")
    }

    @inline(never)
    static func stringTooLong(_ limit: Int, at offset: Int) -> JSONParseError {
        JSONParseError(offset: offset, message: "string longer than \(limit) bytes")
    }

    /// `duplicate key "name"`, the key written as a JSON string (cut after 64 bytes).
    @inline(never)
    static func duplicateKey(_ key: UnsafeRawBufferPointer, at offset: Int) -> JSONParseError {
        var shown = key.count
        var cut = false
        if shown > 64 {
            shown = 64
            while shown > 0 && key[shown] & 0xC0 == 0x80 {
                shown -= 1
            }
            cut = true
        }
        var text: [UInt8] = Array("duplicate key ".utf8)
        JSONWriter.appendEscapedString(utf8: UnsafeRawBufferPointer(rebasing: key[0..<shown]), to: &text)
        if cut {
            text.append(contentsOf: "...".utf8)
        }
        return JSONParseError(offset: offset, message: String(decoding: text, as: UTF8.self))
    }

    private static func describe(_ byte: UInt8) -> String {
        if byte > 0x20 && byte < 0x7F {
            return "'\(Character(Unicode.Scalar(byte)))'"
        }
        return "0x" + hex(UInt32(byte), digits: 2)
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}

// MARK: - Parser

/// Parses one JSON document (RFC 8259) into a ``JSONValue``.
///
/// The parser is strict: it accepts exactly the grammar of RFC 8259 with optional whitespace around the value,
/// requires well-formed UTF-8 in strings (no overlong forms, no encoded surrogates), rejects lone surrogate escapes
/// and rejects objects with duplicate keys (compared by decoded UTF-8 bytes). Numbers without a fraction or an
/// exponent that fit in `Int64` become `.integer` (`-0` becomes `.integer(0)`); all other numbers become `.number`,
/// and numbers too large for a finite `Double` are rejected. It never recurses, so hostile nesting cannot overflow
/// the stack; ``JSONLimits`` bound depth, value count and string length.
public struct JSONParser: Sendable {
    /// The limits applied to every document.
    public var limits: JSONLimits

    /// Creates a parser.
    ///
    /// - Parameter limits: The limits applied to every document.
    public init(limits: JSONLimits = JSONLimits()) {
        self.limits = limits
    }

    /// Parses one JSON document.
    ///
    /// - Parameter bytes: The UTF-8 encoded document, optionally surrounded by whitespace.
    /// - Returns: The value.
    /// - Throws: ``JSONParseError`` when the document is not valid JSON or exceeds the limits.
    public func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONParseError) -> JSONValue {
        try parse(bytes, range: 0..<bytes.count)
    }

    /// Parses one JSON document.
    ///
    /// - Parameter bytes: The UTF-8 encoded document, optionally surrounded by whitespace.
    /// - Returns: The value.
    /// - Throws: ``JSONParseError`` when the document is not valid JSON or exceeds the limits.
    public func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(JSONParseError) in try parse(buffer) }
        }
        return try result.get()
    }

    /// Parses one JSON document.
    ///
    /// - Parameter text: The document, optionally surrounded by whitespace.
    /// - Returns: The value.
    /// - Throws: ``JSONParseError`` when the document is not valid JSON or exceeds the limits.
    public func parse(_ text: String) throws(JSONParseError) -> JSONValue {
        var text = text
        let result = text.withUTF8 { buffer in
            Result { () throws(JSONParseError) in try parse(UnsafeRawBufferPointer(buffer)) }
        }
        return try result.get()
    }

    /// Parses the document in `range` of `bytes`; error offsets are offsets in `bytes`.
    func parse(_ bytes: UnsafeRawBufferPointer, range: Range<Int>) throws(JSONParseError) -> JSONValue {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count, "range out of bounds")
        var sink = ValueBuilder(base: bytes.baseAddress?.assumingMemoryBound(to: UInt8.self))
        do {
            try JSONDriver.run(bytes, range: range, limits: limits, objectOnly: false, sink: &sink)
        } catch let error as JSONParseError {
            throw error
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
        guard let result = sink.result else { preconditionFailure("parser finished without a value") }
        return result
    }
}

/// Builds JSONValues from the driver's events without recursion.
private struct ValueBuilder: JSONEventSink {
    let base: UnsafePointer<UInt8>?
    /// For each open container from the outermost: whether it is an object.
    var isObjectStack: [Bool] = []
    var arrays: [[JSONValue]] = []
    var objects: [JSONObject] = []
    /// The key waiting for its value, for each open object.
    var pendingKeys: [String] = []
    var result: JSONValue?

    mutating func add(_ value: JSONValue) {
        guard let isObject = isObjectStack.last else {
            result = value
            return
        }
        if isObject {
            objects[objects.count - 1].appendNew(key: pendingKeys.removeLast(), value: value)
        } else {
            arrays[arrays.count - 1].append(value)
        }
    }

    mutating func key(_ bytes: UnsafeRawBufferPointer, content: Range<Int>, escaped: Bool, depth: Int) {
        pendingKeys.append(String(decoding: bytes, as: UTF8.self))
    }

    mutating func string(_ token: Range<Int>, escaped: Bool, depth: Int) {
        add(
            .string(JSONLexer.makeString(base!, content: token.lowerBound + 1..<token.upperBound - 1, escaped: escaped))
        )
    }

    mutating func number(_ token: Range<Int>, integer: Int64?, depth: Int) {
        if let integer {
            add(.integer(integer))
        } else {
            add(.number(JSONLexer.parseDouble(base!, token.lowerBound, token.upperBound)))
        }
    }

    mutating func literal(_ kind: JSONKind, _ token: Range<Int>, depth: Int) {
        switch kind {
        case .true: add(.bool(true))
        case .false: add(.bool(false))
        default: add(.null)
        }
    }

    mutating func open(object: Bool, at offset: Int, depth: Int) {
        isObjectStack.append(object)
        if object {
            objects.append(JSONObject())
        } else {
            arrays.append([])
        }
    }

    mutating func close(object: Bool, end: Int, depth: Int) {
        isObjectStack.removeLast()
        add(object ? .object(objects.removeLast()) : .array(arrays.removeLast()))
    }
}

// MARK: - Shared core

/// What the driver reports while it walks a document. `depth` is the depth of the container holding the value or
/// key (0 for a top-level scalar); for `open` and `close` it is the depth of the container itself.
protocol JSONEventSink {
    /// A member's key. `bytes` are its decoded UTF-8 and stay valid until that member's value has been reported
    /// when `depth` is 1; `content` is the raw range between the quotes.
    mutating func key(_ bytes: UnsafeRawBufferPointer, content: Range<Int>, escaped: Bool, depth: Int) throws
    /// A string; `token` includes the quotes.
    mutating func string(_ token: Range<Int>, escaped: Bool, depth: Int) throws
    /// A number; `integer` is its value when it is written as an integer and fits in Int64.
    mutating func number(_ token: Range<Int>, integer: Int64?, depth: Int) throws
    /// `true`, `false` or `null`.
    mutating func literal(_ kind: JSONKind, _ token: Range<Int>, depth: Int) throws
    /// An array or object starts at `offset`.
    mutating func open(object: Bool, at offset: Int, depth: Int) throws
    /// An array or object ends just before `end`.
    mutating func close(object: Bool, end: Int, depth: Int) throws
    /// Whether the object about to open as the value of the top-level member just keyed is only to be skimmed for
    /// its extent (see ``JSONDriver/skimObject(from:depth:)``) instead of validated; it is then reported by `open`
    /// and `close` alone.
    mutating func skimsObject() -> Bool
}

extension JSONEventSink {
    @inline(__always)
    mutating func skimsObject() -> Bool { false }
}

/// Thrown by the driver when an object it was asked to skim may not be valid JSON, or holds a member whose value
/// is `null`: the document is then to be validated in full, which finds the exact fault if there is one.
struct JSONSkimRefused: Error {}

/// The iterative validating walk over one document shared by the parser and the scanner.
struct JSONDriver {
    // The initial frame and key buffers stay within 1 KiB each, which Swift always allocates on the stack (larger
    // temporary allocations ask the runtime, which costs more than a whole scan).
    struct Frame {
        /// Where this object's keys start in the key stack.
        var keyBase: Int
        /// One bit per key hash modulo 64 for the keys seen so far: a clear bit proves a key new without comparing.
        var keyBits: UInt64
        /// Index in `bigSets` once the object has too many keys for linear duplicate checks, else -1.
        var bigSet: Int32
        var isObject: Bool
    }

    struct KeyEntry {
        var hash: UInt64
        var start: Int
        var end: Int
        var escaped: Bool
    }

    /// Objects with more keys than this check duplicates with a hash set instead of comparing hashes linearly.
    static let linearKeyLimit = 32

    let p: UnsafePointer<UInt8>
    let end: Int
    let limits: JSONLimits
    var frames: GrowableBuffer<Frame>
    var keys: GrowableBuffer<KeyEntry>
    var bigSets: [Set<[UInt8]>] = []
    /// Decoded escaped keys: [0] for top-level members (kept while their value is walked), [1] for nested ones.
    var scratch: (ScratchBytes, ScratchBytes) = (ScratchBytes(), ScratchBytes())
    var valueCount = 0

    /// Validates the document in `range` of `bytes`, reporting it to `sink`.
    ///
    /// - Parameter objectOnly: Whether the top-level value must be an object.
    static func run<Sink: JSONEventSink>(
        _ bytes: UnsafeRawBufferPointer,
        range: Range<Int>,
        limits: JSONLimits,
        objectOnly: Bool,
        sink: inout Sink
    ) throws {
        guard let raw = bytes.baseAddress, !range.isEmpty else {
            throw JSONParseError.unexpectedEnd(range.upperBound)
        }
        let p = raw.assumingMemoryBound(to: UInt8.self)
        let frameCapacity = min(max(limits.maxDepth, 0), 41) + 1
        try withUnsafeTemporaryAllocation(of: Frame.self, capacity: frameCapacity) { frameMemory in
            try withUnsafeTemporaryAllocation(of: KeyEntry.self, capacity: 32) { keyMemory in
                var driver = JSONDriver(
                    p: p,
                    end: range.upperBound,
                    limits: limits,
                    frames: GrowableBuffer(frameMemory),
                    keys: GrowableBuffer(keyMemory)
                )
                defer { driver.release() }
                try driver.walk(from: range.lowerBound, objectOnly: objectOnly, sink: &sink)
            }
        }
    }

    mutating func release() {
        frames.release()
        keys.release()
        scratch.0.release()
        scratch.1.release()
    }

    @inline(__always)
    func skipWhitespace(_ i: inout Int) {
        while i < end {
            let byte = p[i]
            if byte > 0x20 || (byte != 0x20 && byte != 0x0A && byte != 0x0D && byte != 0x09) {
                return
            }
            i &+= 1
        }
    }

    mutating func walk<Sink: JSONEventSink>(from start: Int, objectOnly: Bool, sink: inout Sink) throws {
        var i = start
        var depth = 0
        if objectOnly {
            skipWhitespace(&i)
            guard i < end else { throw JSONParseError.unexpectedEnd(end) }
            let byte = p[i]
            if byte != UInt8(ascii: "{") {
                switch byte {
                case UInt8(ascii: "["), UInt8(ascii: "\""), UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                    UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
                    throw JSONParseError.notAnObject(at: i)
                default:
                    throw JSONParseError.unexpected(byte, at: i)
                }
            }
        }
        valueLoop: while true {
            // A value is expected at i (after optional whitespace).
            skipWhitespace(&i)
            guard i < end else { throw JSONParseError.unexpectedEnd(end) }
            let valueStart = i
            valueCount &+= 1
            if valueCount > limits.maxValues {
                throw JSONParseError.tooManyValues(limits.maxValues, at: valueStart)
            }
            switch p[i] {
            case UInt8(ascii: "\""):
                let escaped = try JSONLexer.scanString(p, &i, end, maxBytes: limits.maxStringBytes)
                try sink.string(valueStart..<i, escaped: escaped, depth: depth)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                let integer = try JSONLexer.scanNumber(
                    p, &i, end, rejectingBeyondDouble: limits.rejectsNumbersBeyondDouble)
                try sink.number(valueStart..<i, integer: integer, depth: depth)
            case UInt8(ascii: "t"):
                try JSONLexer.matchLiteral(p, &i, end, "true")
                try sink.literal(.true, valueStart..<i, depth: depth)
            case UInt8(ascii: "f"):
                try JSONLexer.matchLiteral(p, &i, end, "false")
                try sink.literal(.false, valueStart..<i, depth: depth)
            case UInt8(ascii: "n"):
                try JSONLexer.matchLiteral(p, &i, end, "null")
                try sink.literal(.null, valueStart..<i, depth: depth)
            case UInt8(ascii: "{") where depth == 1 && sink.skimsObject():
                guard depth < limits.maxDepth else { throw JSONSkimRefused() }
                i = try skimObject(from: valueStart, depth: depth &+ 1)
                try sink.open(object: true, at: valueStart, depth: depth &+ 1)
                try sink.close(object: true, end: i, depth: depth &+ 1)
            case UInt8(ascii: "{"):
                depth &+= 1
                if depth > limits.maxDepth {
                    throw JSONParseError.tooDeep(limits.maxDepth, at: valueStart)
                }
                i &+= 1
                pushFrame(depth, isObject: true)
                try sink.open(object: true, at: valueStart, depth: depth)
                skipWhitespace(&i)
                if i < end && p[i] == UInt8(ascii: "}") {
                    i &+= 1
                    popFrame(depth)
                    try sink.close(object: true, end: i, depth: depth)
                    depth &-= 1
                } else {
                    try readKey(&i, depth: depth, sink: &sink)
                    continue valueLoop
                }
            case UInt8(ascii: "["):
                depth &+= 1
                if depth > limits.maxDepth {
                    throw JSONParseError.tooDeep(limits.maxDepth, at: valueStart)
                }
                i &+= 1
                pushFrame(depth, isObject: false)
                try sink.open(object: false, at: valueStart, depth: depth)
                skipWhitespace(&i)
                if i < end && p[i] == UInt8(ascii: "]") {
                    i &+= 1
                    try sink.close(object: false, end: i, depth: depth)
                    depth &-= 1
                } else {
                    continue valueLoop
                }
            default:
                throw JSONParseError.unexpected(p[i], at: i)
            }
            // A value ended just before i: continue or close the enclosing containers.
            while true {
                skipWhitespace(&i)
                guard depth > 0 else {
                    if i < end {
                        throw JSONParseError.trailingData(at: i)
                    }
                    return
                }
                guard i < end else { throw JSONParseError.unexpectedEnd(end) }
                let byte = p[i]
                if frames[depth].isObject {
                    if byte == UInt8(ascii: ",") {
                        i &+= 1
                        skipWhitespace(&i)
                        try readKey(&i, depth: depth, sink: &sink)
                        continue valueLoop
                    }
                    if byte == UInt8(ascii: "}") {
                        i &+= 1
                        popFrame(depth)
                        try sink.close(object: true, end: i, depth: depth)
                        depth &-= 1
                        continue
                    }
                } else {
                    if byte == UInt8(ascii: ",") {
                        i &+= 1
                        continue valueLoop
                    }
                    if byte == UInt8(ascii: "]") {
                        i &+= 1
                        try sink.close(object: false, end: i, depth: depth)
                        depth &-= 1
                        continue
                    }
                }
                throw JSONParseError.unexpected(byte, at: i)
            }
        }
    }

    /// Finds the end of the object whose `{` is at `start`, at nesting `depth`, looking only at strings (for their
    /// quotes and escapes) and brackets; returns the offset after its `}`.
    ///
    /// What is skimmed must be validated by whoever reads it. Its reader (the rule sandbox) accepts exactly the
    /// objects the driver does, except that there a member whose value is `null` is absent, so that the same key
    /// may follow it: such objects are refused here, to be validated in full.
    ///
    /// - Throws: ``JSONSkimRefused`` when the object does not end, nests deeper than the limit, or holds a member
    ///   whose value is `null`.
    func skimObject(from start: Int, depth: Int) throws(JSONSkimRefused) -> Int {
        var i = start &+ 1
        var depth = depth
        try Self.skimClasses.withUnsafeBufferPointer { classes throws(JSONSkimRefused) in
            while true {
                // Most bytes are of no interest: one table lookup each.
                while i < end && classes[Int(p[i])] == 0 { i &+= 1 }
                guard i < end else { throw JSONSkimRefused() }
                let kind = classes[Int(p[i])]
                i &+= 1
                switch kind {
                case 1:
                    i = try skimString(from: i)
                case 2:
                    depth &+= 1
                    if depth > limits.maxDepth { throw JSONSkimRefused() }
                case 3:
                    depth &-= 1
                    if depth < 2 { return }
                default:
                    var j = i
                    skipWhitespace(&j)
                    if j < end && p[j] == UInt8(ascii: "n") { throw JSONSkimRefused() }
                }
            }
        }
        return i
    }

    /// What ``skimObject(from:depth:)`` looks at: 1 a quote, 2 an opening bracket, 3 a closing one, 4 a colon.
    static let skimClasses: [UInt8] = (0..<256).map { byte in
        switch UInt8(byte) {
        case UInt8(ascii: "\""): return 1
        case UInt8(ascii: "{"), UInt8(ascii: "["): return 2
        case UInt8(ascii: "}"), UInt8(ascii: "]"): return 3
        case UInt8(ascii: ":"): return 4
        default: return 0
        }
    }

    /// The offset after the closing quote of the string whose content starts at `start`.
    @inline(__always)
    func skimString(from start: Int) throws(JSONSkimRefused) -> Int {
        var j = start
        while true {
            while j &+ 8 <= end {
                let mask = JSONLexer.quoteOrBackslashMask(
                    UInt64(littleEndian: UnsafeRawPointer(p + j).loadUnaligned(as: UInt64.self)))
                if mask != 0 {
                    j &+= mask.trailingZeroBitCount &>> 3
                    break
                }
                j &+= 8
            }
            guard j < end else { throw JSONSkimRefused() }
            let byte = p[j]
            if byte == UInt8(ascii: "\"") { return j &+ 1 }
            j &+= byte == UInt8(ascii: "\\") ? 2 : 1
        }
    }

    @inline(__always)
    mutating func pushFrame(_ depth: Int, isObject: Bool) {
        if depth >= frames.capacity {
            frames.grow(minimumCapacity: depth + 1)
        }
        frames[depth] = Frame(keyBase: keys.count, keyBits: 0, bigSet: -1, isObject: isObject)
    }

    @inline(__always)
    mutating func popFrame(_ depth: Int) {
        let frame = frames[depth]
        keys.count = frame.keyBase
        if frame.bigSet >= 0 {
            bigSets.removeLast()
        }
    }

    /// Reads `"key" :` at i (whitespace before it already skipped), rejecting duplicates.
    mutating func readKey<Sink: JSONEventSink>(_ i: inout Int, depth: Int, sink: inout Sink) throws {
        guard i < end else { throw JSONParseError.unexpectedEnd(end) }
        guard p[i] == UInt8(ascii: "\"") else { throw JSONParseError.unexpected(p[i], at: i) }
        let open = i
        let escaped = try JSONLexer.scanString(p, &i, end, maxBytes: limits.maxStringBytes)
        let content = open + 1..<i - 1
        let bytes: UnsafeRawBufferPointer
        if escaped {
            if depth == 1 {
                bytes = scratch.0.decode(p, content)
            } else {
                bytes = scratch.1.decode(p, content)
            }
        } else {
            bytes = UnsafeRawBufferPointer(start: p + content.lowerBound, count: content.count)
        }
        try checkDuplicate(bytes, content: content, escaped: escaped, depth: depth, at: open)
        try sink.key(bytes, content: content, escaped: escaped, depth: depth)
        skipWhitespace(&i)
        guard i < end else { throw JSONParseError.unexpectedEnd(end) }
        guard p[i] == UInt8(ascii: ":") else { throw JSONParseError.unexpected(p[i], at: i) }
        i &+= 1
    }

    /// Rejects `key` if the object at `depth` already has it, else records it.
    @inline(__always)
    mutating func checkDuplicate(
        _ key: UnsafeRawBufferPointer,
        content: Range<Int>,
        escaped: Bool,
        depth: Int,
        at offset: Int
    ) throws {
        let frame = frames[depth]
        guard frame.bigSet < 0 else {
            try checkDuplicateInSet(key, set: Int(frame.bigSet), at: offset)
            return
        }
        // Small objects: compare hashes with the object's earlier keys, confirming matches byte by byte; most keys
        // are proven new by their bit in keyBits alone.
        let hash = Self.keyHash(key)
        let bit: UInt64 = 1 &<< (hash & 63)
        let count = keys.count
        if frame.keyBits & bit != 0 {
            var k = frame.keyBase
            while k < count {
                if keys[k].hash == hash && sameKey(keys[k], key) {
                    throw JSONParseError.duplicateKey(key, at: offset)
                }
                k &+= 1
            }
        }
        if count &- frame.keyBase < Self.linearKeyLimit {
            frames[depth].keyBits = frame.keyBits | bit
            keys.append(KeyEntry(hash: hash, start: content.lowerBound, end: content.upperBound, escaped: escaped))
        } else {
            moveKeysToSet(key, depth: depth)
        }
    }

    @inline(never)
    mutating func checkDuplicateInSet(_ key: UnsafeRawBufferPointer, set: Int, at offset: Int) throws {
        if !bigSets[set].insert(Array(key)).inserted {
            throw JSONParseError.duplicateKey(key, at: offset)
        }
    }

    /// Too many keys for linear checks: moves the object's keys, and `key`, into a hash set.
    @inline(never)
    mutating func moveKeysToSet(_ key: UnsafeRawBufferPointer, depth: Int) {
        let frame = frames[depth]
        var set = Set<[UInt8]>(minimumCapacity: 2 * Self.linearKeyLimit)
        for k in frame.keyBase..<keys.count {
            set.insert(decodedKey(keys[k]))
        }
        set.insert(Array(key))
        keys.count = frame.keyBase
        frames[depth].bigSet = Int32(bigSets.count)
        bigSets.append(set)
    }

    /// A cheap hash of a key from its length and at most 16 of its bytes; equal hashes are confirmed byte by byte.
    @inline(__always)
    static func keyHash(_ key: UnsafeRawBufferPointer) -> UInt64 {
        let count = key.count
        var hash = UInt64(truncatingIfNeeded: count) &* 0x9E37_79B9_7F4A_7C15
        guard let p = key.baseAddress, count > 0 else { return hash }
        if count >= 8 {
            hash ^= p.loadUnaligned(as: UInt64.self)
            hash = (hash ^ (hash >> 31)) &* 0xBF58_476D_1CE4_E5B9
            hash ^= (p + count - 8).loadUnaligned(as: UInt64.self)
        } else if count >= 4 {
            let first = UInt64(p.loadUnaligned(as: UInt32.self))
            let last = UInt64((p + count - 4).loadUnaligned(as: UInt32.self))
            hash ^= first | last << 32
        } else {
            let first = UInt64(p.load(as: UInt8.self))
            let middle = UInt64(p.load(fromByteOffset: count >> 1, as: UInt8.self))
            let last = UInt64(p.load(fromByteOffset: count - 1, as: UInt8.self))
            hash ^= first | middle << 8 | last << 16
        }
        hash = (hash ^ (hash >> 29)) &* 0x94D0_49BB_1331_11EB
        return hash ^ (hash >> 32)
    }

    func decodedKey(_ entry: KeyEntry) -> [UInt8] {
        if !entry.escaped {
            return Array(UnsafeBufferPointer(start: p + entry.start, count: entry.end - entry.start))
        }
        return [UInt8](unsafeUninitializedCapacity: entry.end - entry.start) { buffer, count in
            count = JSONLexer.decodeEscaped(p, entry.start..<entry.end, into: buffer.baseAddress!)
        }
    }

    @inline(never)
    func sameKey(_ entry: KeyEntry, _ key: UnsafeRawBufferPointer) -> Bool {
        if !entry.escaped {
            let count = entry.end - entry.start
            return count == key.count
                && (count == 0 || bytesEqual(UnsafeRawPointer(p + entry.start), key.baseAddress!, count))
        }
        return decodedKey(entry).elementsEqual(key)
    }
}

/// A stack buffer that starts in caller-provided (usually stack) memory and moves to the heap when it fills.
struct GrowableBuffer<Element: BitwiseCopyable> {
    var base: UnsafeMutablePointer<Element>
    var capacity: Int
    var count = 0
    var ownsMemory = false

    init(_ initial: UnsafeMutableBufferPointer<Element>) {
        base = initial.baseAddress!
        capacity = initial.count
    }

    subscript(index: Int) -> Element {
        @inline(__always) get { base[index] }
        @inline(__always) nonmutating set { base[index] = newValue }
    }

    @inline(__always)
    mutating func append(_ element: Element) {
        if count == capacity {
            grow(minimumCapacity: count + 1)
        }
        base[count] = element
        count &+= 1
    }

    mutating func grow(minimumCapacity: Int) {
        let newCapacity = max(minimumCapacity, capacity * 2)
        let newBase = UnsafeMutablePointer<Element>.allocate(capacity: newCapacity)
        newBase.update(from: base, count: capacity)
        if ownsMemory {
            base.deallocate()
        }
        base = newBase
        capacity = newCapacity
        ownsMemory = true
    }

    func release() {
        if ownsMemory {
            base.deallocate()
        }
    }
}

/// A lazily allocated heap buffer for decoding escaped keys.
struct ScratchBytes {
    var base: UnsafeMutablePointer<UInt8>?
    var capacity = 0

    /// Decodes the validated escaped string content at `content` and returns the decoded bytes.
    mutating func decode(_ p: UnsafePointer<UInt8>, _ content: Range<Int>) -> UnsafeRawBufferPointer {
        if capacity < content.count {
            base?.deallocate()
            capacity = max(content.count, 64)
            base = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        }
        let count = JSONLexer.decodeEscaped(p, content, into: base!)
        return UnsafeRawBufferPointer(start: base, count: count)
    }

    func release() {
        base?.deallocate()
    }
}

// MARK: - Lexer

/// Token-level scanning and decoding shared by the parser, the scanner and the writer.
enum JSONLexer {
    /// For 8 bytes loaded little-endian: a mask whose lowest set bit lies in the first byte that is a quote, a
    /// backslash, a control character or non-ASCII; zero when there is none. (Each term can flag false positives
    /// only above a true match, so the lowest set bit is exact.)
    @inline(__always)
    static func attentionMask(_ word: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        let hasControl = (word &- ones &* 0x20) & ~word
        return quoteOrBackslashMask(word) | ((hasControl | word) & high)
    }

    /// For 8 bytes loaded little-endian: a mask whose lowest set bit lies in the first byte that is a quote or a
    /// backslash; zero when there is none.
    @inline(__always)
    static func quoteOrBackslashMask(_ word: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        let quote = word ^ (ones &* 0x22)
        let backslash = word ^ (ones &* 0x5C)
        return (((quote &- ones) & ~quote) | ((backslash &- ones) & ~backslash)) & high
    }

    /// Scans the string whose opening quote is at `i`, validating escapes and UTF-8; leaves `i` after the closing
    /// quote.
    ///
    /// - Returns: Whether the string contains escapes.
    @inline(__always)
    static func scanString(
        _ p: UnsafePointer<UInt8>,
        _ i: inout Int,
        _ end: Int,
        maxBytes: Int
    ) throws(JSONParseError) -> Bool {
        let open = i
        var j = i &+ 1
        var escaped = false
        while true {
            // Skip plain ASCII eight bytes at a time, landing on the first byte that needs a look.
            while j &+ 8 <= end {
                let mask = attentionMask(UInt64(littleEndian: UnsafeRawPointer(p + j).loadUnaligned(as: UInt64.self)))
                if mask != 0 {
                    j &+= mask.trailingZeroBitCount &>> 3
                    break
                }
                j &+= 8
            }
            guard j < end else { throw .unterminatedString(at: open) }
            let byte = p[j]
            if byte == UInt8(ascii: "\"") {
                break
            }
            if byte == UInt8(ascii: "\\") {
                try scanEscape(p, &j, end, open: open)
                escaped = true
            } else if byte < 0x20 {
                throw .controlCharacter(byte, at: j)
            } else if byte < 0x80 {
                j &+= 1
            } else {
                let length = utf8SequenceLength(p, j, end)
                guard length > 0 else { throw .invalidUTF8(at: j) }
                j &+= length
            }
        }
        if j &- open &- 1 > maxBytes {
            throw .stringTooLong(maxBytes, at: open)
        }
        i = j &+ 1
        return escaped
    }

    /// Validates the escape whose backslash is at `j` and moves `j` past it.
    static func scanEscape(_ p: UnsafePointer<UInt8>, _ j: inout Int, _ end: Int, open: Int) throws(JSONParseError) {
        guard j + 1 < end else { throw .unterminatedString(at: open) }
        switch p[j + 1] {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
            UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
            j += 2
        case UInt8(ascii: "u"):
            var unit: UInt32 = 0
            for k in 2..<6 {
                guard j + k < end else { throw .unterminatedString(at: open) }
                guard let digit = hexValue(p[j + k]) else { throw .invalidUnicodeEscape(at: j) }
                unit = unit << 4 | digit
            }
            if unit >= 0xD800 && unit <= 0xDBFF {
                guard let low = followingLowSurrogate(p, j + 6, end) else { throw .loneSurrogate(unit, at: j) }
                _ = low
                j += 12
            } else if unit >= 0xDC00 && unit <= 0xDFFF {
                throw .loneSurrogate(unit, at: j)
            } else {
                j += 6
            }
        default:
            throw .invalidEscape(p[j + 1], at: j)
        }
    }

    /// The low surrogate written as `\uDC00`...`\uDFFF` at `j`, if there is one.
    static func followingLowSurrogate(_ p: UnsafePointer<UInt8>, _ j: Int, _ end: Int) -> UInt32? {
        guard j + 6 <= end, p[j] == UInt8(ascii: "\\"), p[j + 1] == UInt8(ascii: "u") else { return nil }
        var unit: UInt32 = 0
        for k in 2..<6 {
            guard let digit = hexValue(p[j + k]) else { return nil }
            unit = unit << 4 | digit
        }
        return unit >= 0xDC00 && unit <= 0xDFFF ? unit : nil
    }

    @inline(__always)
    static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(byte &- 0x30)
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(byte &- 0x57)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(byte &- 0x37)
        default: return nil
        }
    }

    /// The length of the well-formed UTF-8 sequence starting with the non-ASCII byte at `j`, or 0 when it is
    /// ill-formed (stray continuation byte, overlong form, encoded surrogate, beyond U+10FFFF, or truncated).
    @inline(__always)
    static func utf8SequenceLength(_ p: UnsafePointer<UInt8>, _ j: Int, _ end: Int) -> Int {
        let lead = p[j]
        if lead < 0xC2 {
            return 0
        }
        if lead < 0xE0 {
            return j + 1 < end && p[j + 1] & 0xC0 == 0x80 ? 2 : 0
        }
        if lead < 0xF0 {
            guard j + 2 < end else { return 0 }
            let second = p[j + 1]
            let low: UInt8 = lead == 0xE0 ? 0xA0 : 0x80
            let high: UInt8 = lead == 0xED ? 0x9F : 0xBF
            return second >= low && second <= high && p[j + 2] & 0xC0 == 0x80 ? 3 : 0
        }
        if lead < 0xF5 {
            guard j + 3 < end else { return 0 }
            let second = p[j + 1]
            let low: UInt8 = lead == 0xF0 ? 0x90 : 0x80
            let high: UInt8 = lead == 0xF4 ? 0x8F : 0xBF
            return second >= low && second <= high && p[j + 2] & 0xC0 == 0x80 && p[j + 3] & 0xC0 == 0x80 ? 4 : 0
        }
        return 0
    }

    /// Decodes validated string content (between the quotes) into `out`, which must hold `content.count` bytes.
    ///
    /// - Returns: The number of bytes written.
    static func decodeEscaped(_ p: UnsafePointer<UInt8>, _ content: Range<Int>, into out: UnsafeMutablePointer<UInt8>)
        -> Int
    {
        var i = content.lowerBound
        let end = content.upperBound
        var o = 0
        while i < end {
            let byte = p[i]
            if byte != UInt8(ascii: "\\") {
                out[o] = byte
                o &+= 1
                i &+= 1
                continue
            }
            let escape = p[i + 1]
            i &+= 2
            switch escape {
            case UInt8(ascii: "b"): out[o] = 0x08
            case UInt8(ascii: "f"): out[o] = 0x0C
            case UInt8(ascii: "n"): out[o] = 0x0A
            case UInt8(ascii: "r"): out[o] = 0x0D
            case UInt8(ascii: "t"): out[o] = 0x09
            case UInt8(ascii: "u"):
                var scalar = hex4(p, i)
                i &+= 4
                if scalar >= 0xD800 && scalar <= 0xDBFF {
                    let low = hex4(p, i + 2)
                    i &+= 6
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                o &+= encodeUTF8(scalar, out + o)
                continue
            default: out[o] = escape  // \" \\ \/
            }
            o &+= 1
        }
        return o
    }

    @inline(__always)
    static func hex4(_ p: UnsafePointer<UInt8>, _ i: Int) -> UInt32 {
        var unit: UInt32 = 0
        for k in 0..<4 {
            unit = unit << 4 | (hexValue(p[i + k]) ?? 0)
        }
        return unit
    }

    @inline(__always)
    static func encodeUTF8(_ scalar: UInt32, _ out: UnsafeMutablePointer<UInt8>) -> Int {
        if scalar < 0x80 {
            out[0] = UInt8(scalar)
            return 1
        }
        if scalar < 0x800 {
            out[0] = UInt8(0xC0 | scalar >> 6)
            out[1] = UInt8(0x80 | scalar & 0x3F)
            return 2
        }
        if scalar < 0x10000 {
            out[0] = UInt8(0xE0 | scalar >> 12)
            out[1] = UInt8(0x80 | scalar >> 6 & 0x3F)
            out[2] = UInt8(0x80 | scalar & 0x3F)
            return 3
        }
        out[0] = UInt8(0xF0 | scalar >> 18)
        out[1] = UInt8(0x80 | scalar >> 12 & 0x3F)
        out[2] = UInt8(0x80 | scalar >> 6 & 0x3F)
        out[3] = UInt8(0x80 | scalar & 0x3F)
        return 4
    }

    /// Makes a String from validated string content.
    static func makeString(_ p: UnsafePointer<UInt8>, content: Range<Int>, escaped: Bool) -> String {
        if !escaped {
            return String(
                decoding: UnsafeBufferPointer(start: p + content.lowerBound, count: content.count), as: UTF8.self)
        }
        return String(unsafeUninitializedCapacity: content.count) { buffer in
            decodeEscaped(p, content, into: buffer.baseAddress!)
        }
    }

    /// Matches the literal `true`, `false` or `null` at `i`.
    @inline(__always)
    static func matchLiteral(
        _ p: UnsafePointer<UInt8>,
        _ i: inout Int,
        _ end: Int,
        _ literal: StaticString
    ) throws(JSONParseError) {
        let expected = literal.utf8Start
        let count = literal.utf8CodeUnitCount
        for k in 0..<count {
            let j = i + k
            guard j < end else { throw .unexpectedEnd(end) }
            guard p[j] == expected[k] else { throw .unexpected(p[j], at: j) }
        }
        i += count
    }

    /// Scans the number starting at `i` (a `-` or a digit) and leaves `i` after it.
    ///
    /// - Returns: The value when the number is written without fraction or exponent and fits in Int64, else `nil`.
    /// - Throws: For malformed numbers, and for numbers whose magnitude rounds to infinity when
    ///   `rejectingBeyondDouble`.
    @inline(__always)
    static func scanNumber(
        _ p: UnsafePointer<UInt8>, _ i: inout Int, _ end: Int, rejectingBeyondDouble: Bool = true
    ) throws(JSONParseError) -> Int64? {
        let start = i
        var j = i
        let negative = p[j] == UInt8(ascii: "-")
        if negative {
            j &+= 1
        }
        guard j < end, p[j] &- 0x30 < 10 else { throw .invalidNumber(at: start) }
        let digitsStart = j
        var magnitude: UInt64 = 0
        if p[j] == UInt8(ascii: "0") {
            j &+= 1
            if j < end && p[j] &- 0x30 < 10 {
                throw .invalidNumber(at: start)
            }
        } else {
            while j < end {
                let digit = p[j] &- 0x30
                if digit >= 10 { break }
                magnitude = magnitude &* 10 &+ UInt64(digit)
                j &+= 1
            }
        }
        let integerDigits = j &- digitsStart
        var isInteger = true
        var exponent = 0
        if j < end && p[j] == UInt8(ascii: ".") {
            isInteger = false
            j &+= 1
            guard j < end, p[j] &- 0x30 < 10 else { throw .invalidNumber(at: start) }
            repeat {
                j &+= 1
            } while j < end && p[j] &- 0x30 < 10
        }
        if j < end && p[j] | 0x20 == UInt8(ascii: "e") {
            isInteger = false
            j &+= 1
            var negativeExponent = false
            if j < end && (p[j] == UInt8(ascii: "+") || p[j] == UInt8(ascii: "-")) {
                negativeExponent = p[j] == UInt8(ascii: "-")
                j &+= 1
            }
            guard j < end, p[j] &- 0x30 < 10 else { throw .invalidNumber(at: start) }
            repeat {
                if exponent < 1_000_000 {
                    exponent = exponent &* 10 &+ Int(p[j] &- 0x30)
                }
                j &+= 1
            } while j < end && p[j] &- 0x30 < 10
            if negativeExponent {
                exponent = -exponent
            }
        }
        i = j
        if isInteger && integerDigits <= 19 {
            if negative {
                if magnitude <= 1 << 63 {
                    return Int64(bitPattern: 0 &- magnitude)
                }
            } else if magnitude <= UInt64(Int64.max) {
                return Int64(bitPattern: magnitude)
            }
        }
        // Below 10^308 a number cannot round to infinity; only larger-looking ones need converting.
        if rejectingBeyondDouble && integerDigits + exponent > 308 && !parseDouble(p, start, j).isFinite {
            throw .numberOutOfRange(at: start)
        }
        return nil
    }

    private static let powersOfTen: [Double] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
        1e20, 1e21, 1e22,
    ]

    /// Converts a validated JSON number to the nearest Double (correctly rounded).
    static func parseDouble(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int) -> Double {
        var i = start
        let negative = p[i] == UInt8(ascii: "-")
        if negative {
            i += 1
        }
        // Fast path: at most 15 significant digits and a power of ten up to 22 are both exact in a Double, so one
        // multiplication or division rounds correctly.
        var mantissa: UInt64 = 0
        var significantDigits = 0
        var exponent = 0
        var inFraction = false
        while i < end {
            let byte = p[i]
            if byte == UInt8(ascii: ".") {
                inFraction = true
            } else if byte &- 0x30 < 10 {
                if mantissa != 0 || byte != UInt8(ascii: "0") {
                    significantDigits += 1
                    if significantDigits > 15 { break }
                    mantissa = mantissa * 10 + UInt64(byte &- 0x30)
                }
                if inFraction {
                    exponent -= 1
                }
            } else {
                break
            }
            i += 1
        }
        if significantDigits <= 15 {
            if i < end {
                // Exponent part.
                i += 1
                var negativeExponent = false
                if p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-") {
                    negativeExponent = p[i] == UInt8(ascii: "-")
                    i += 1
                }
                var value = 0
                while i < end && value < 1_000_000 {
                    value = value * 10 + Int(p[i] &- 0x30)
                    i += 1
                }
                exponent += negativeExponent ? -value : value
            }
            var result: Double?
            if mantissa == 0 {
                result = 0
            } else if exponent >= 0 && exponent <= 22 {
                result = Double(mantissa) * powersOfTen[exponent]
            } else if exponent < 0 && exponent >= -22 {
                result = Double(mantissa) / powersOfTen[-exponent]
            }
            if let result {
                return negative ? -result : result
            }
        }
        let text = String(decoding: UnsafeBufferPointer(start: p + start, count: end - start), as: UTF8.self)
        guard let value = Double(text) else { preconditionFailure("validated number \(text) did not convert") }
        return value
    }
}
