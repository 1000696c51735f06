/// The kind of a JSON value, as reported by ``JSONObjectScanner``.
public enum JSONKind: Sendable, Hashable, CaseIterable {
    /// An object, `{...}`.
    case object
    /// An array, `[...]`.
    case array
    /// A string, quotes included in its range.
    case string
    /// A number, integer or not (read it with ``JSONObjectScanner/int64(in:range:)`` or
    /// ``JSONObjectScanner/double(in:range:)``).
    case number
    /// The literal `true`.
    case `true`
    /// The literal `false`.
    case `false`
    /// The literal `null`.
    case null
}

/// One top-level member found by ``JSONObjectScanner/scan(_:into:)``: byte ranges into the scanned line.
public struct JSONMember: Sendable, Hashable {
    /// The key's raw bytes between its quotes (still escaped when ``keyIsEscaped``).
    public var keyRange: Range<Int>
    /// Whether the key contains escapes, so that its raw bytes differ from its decoded text.
    public var keyIsEscaped: Bool
    /// The value's bytes: the whole token or container, quotes and brackets included.
    public var valueRange: Range<Int>
    /// The value's kind.
    public var kind: JSONKind

    /// Creates a member description.
    ///
    /// - Parameters:
    ///   - keyRange: The key's raw bytes between its quotes.
    ///   - keyIsEscaped: Whether the key contains escapes.
    ///   - valueRange: The value's bytes.
    ///   - kind: The value's kind.
    public init(keyRange: Range<Int>, keyIsEscaped: Bool, valueRange: Range<Int>, kind: JSONKind) {
        self.keyRange = keyRange
        self.keyIsEscaped = keyIsEscaped
        self.valueRange = valueRange
        self.kind = kind
    }

    /// The decoded key.
    ///
    /// - Parameter bytes: The line that was scanned.
    /// - Returns: The key as a String.
    public func keyString(in bytes: UnsafeRawBufferPointer) -> String {
        precondition(keyRange.upperBound <= bytes.count, "member is not from these bytes")
        return JSONLexer.makeString(
            bytes.baseAddress!.assumingMemoryBound(to: UInt8.self),
            content: keyRange,
            escaped: keyIsEscaped
        )
    }

    /// Whether the decoded key equals `name`, compared as UTF-8 bytes.
    ///
    /// - Parameters:
    ///   - name: The expected key.
    ///   - bytes: The line that was scanned.
    /// - Returns: Whether they are equal.
    public func keyEquals(_ name: StaticString, in bytes: UnsafeRawBufferPointer) -> Bool {
        precondition(keyRange.upperBound <= bytes.count, "member is not from these bytes")
        let name = UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        if !keyIsEscaped {
            return JSONObjectScanner.key(UnsafeRawBufferPointer(rebasing: bytes[keyRange]), equals: name)
        }
        return Array(keyString(in: bytes).utf8).elementsEqual(name)
    }
}

/// Validates one request line as a single JSON object and reports its top-level members without building
/// ``JSONValue``s: the protocol's hot path.
///
/// Validation is exactly that of ``JSONParser`` (the two share their core): the same documents are accepted,
/// with the same ``JSONParseError`` for the same fault, plus `expected a JSON object at byte N` when the line holds
/// another kind of value. Nested values are validated completely (including duplicate keys in nested objects) but
/// reported only as byte ranges; use ``string(in:range:)``, ``int64(in:range:)``, ``double(in:range:)`` or
/// ``value(in:range:)`` to read the ones you need.
///
/// Scanning allocates no memory in the common case: keys are handed out as raw bytes (escaped keys are decoded
/// into a reused buffer) and bookkeeping lives on the stack, moving to the heap only for very large or deep input.
public struct JSONObjectScanner: Sendable {
    /// The limits applied to every line.
    public var limits: JSONLimits

    /// Creates a scanner.
    ///
    /// - Parameter limits: The limits applied to every line.
    public init(limits: JSONLimits = JSONLimits()) {
        self.limits = limits
    }

    /// Validates `bytes` as one JSON object and calls `body` for each top-level member in order.
    ///
    /// Members are reported as soon as their value has been read, so `body` may have seen some members of a line
    /// that later turns out to be invalid; discard what it gathered when this method throws.
    ///
    /// - Parameters:
    ///   - bytes: One JSON document, optionally surrounded by whitespace.
    ///   - body: Called with the decoded key's UTF-8 bytes (valid only during the call), the byte range of the
    ///     value in `bytes` (quotes and brackets included) and its kind.
    /// - Throws: ``JSONParseError`` when the line is not one valid JSON object or exceeds the limits, or whatever
    ///   `body` throws.
    public func scan(
        _ bytes: UnsafeRawBufferPointer,
        _ body: (_ key: UnsafeRawBufferPointer, _ valueRange: Range<Int>, _ kind: JSONKind) throws -> Void
    ) throws {
        try withoutActuallyEscaping(body) { body in
            var sink = CallbackSink(body: body)
            try JSONDriver.run(bytes, range: 0..<bytes.count, limits: limits, objectOnly: true, sink: &sink)
        }
    }

    /// Validates `bytes` as one JSON object and calls `body` for each top-level member in order.
    ///
    /// - Parameters:
    ///   - bytes: One JSON document, optionally surrounded by whitespace.
    ///   - body: Called with the decoded key's UTF-8 bytes (valid only during the call), the byte range of the
    ///     value in `bytes` and its kind.
    /// - Throws: ``JSONParseError``, or whatever `body` throws.
    public func scan(
        _ bytes: [UInt8],
        _ body: (_ key: UnsafeRawBufferPointer, _ valueRange: Range<Int>, _ kind: JSONKind) throws -> Void
    ) throws {
        try bytes.withUnsafeBytes { try scan($0, body) }
    }

    /// Validates `bytes` as one JSON object and stores its top-level members in `members`.
    ///
    /// - Parameters:
    ///   - bytes: One JSON document, optionally surrounded by whitespace.
    ///   - members: Emptied (keeping its capacity, so it can be reused across lines) and filled with the members in
    ///     order. Empty when this method throws.
    /// - Throws: ``JSONParseError`` when the line is not one valid JSON object or exceeds the limits.
    public func scan(_ bytes: UnsafeRawBufferPointer, into members: inout [JSONMember]) throws(JSONParseError) {
        var sink = CollectingSink()
        swap(&sink.members, &members)
        sink.members.removeAll(keepingCapacity: true)
        defer { swap(&sink.members, &members) }
        do {
            try JSONDriver.run(bytes, range: 0..<bytes.count, limits: limits, objectOnly: true, sink: &sink)
        } catch let error as JSONParseError {
            sink.members.removeAll(keepingCapacity: true)
            throw error
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
    }

    /// Like ``scan(_:into:)``, except that the object values of the top-level members named in `names` are only
    /// skimmed for their extent (strings and bracket nesting), not validated: for a reader that validates them
    /// itself as it reads them, so that their bytes are walked once.
    ///
    /// The rest of the line is validated as ``scan(_:into:)`` does, and whatever it refuses is refused with the
    /// same error. A skimmed object is only known to be where its range says if it turns out to be valid: whoever
    /// finds it is not must answer with the error ``scan(_:into:)`` throws for the line. An object is validated
    /// rather than skimmed when a member of it has the value `null` (see ``JSONDriver/skimObject(from:depth:)``),
    /// and when the line is too long for the value and string limits to be certain to hold without counting.
    ///
    /// - Parameters:
    ///   - bytes: One JSON document, optionally surrounded by whitespace.
    ///   - members: Emptied and filled with the members in order. Empty when this method throws.
    ///   - names: The (decoded) keys of the top-level members whose object values are to be skimmed.
    /// - Returns: Whether some member's value was skimmed rather than validated.
    /// - Throws: ``JSONParseError`` when the line is not one valid JSON object (skimmed objects aside) or exceeds
    ///   the limits.
    public func scan(
        _ bytes: UnsafeRawBufferPointer, into members: inout [JSONMember], skimmingObjectsNamed names: JSONSkimmedNames
    ) throws(JSONParseError) -> Bool {
        // A value takes at least one byte of its own, so a line no longer than these limits cannot exceed them.
        if bytes.count <= limits.maxValues && bytes.count <= limits.maxStringBytes {
            var sink = SkimmingSink(names: names)
            swap(&sink.collecting.members, &members)
            sink.collecting.members.removeAll(keepingCapacity: true)
            defer { swap(&sink.collecting.members, &members) }
            do {
                try JSONDriver.run(bytes, range: 0..<bytes.count, limits: limits, objectOnly: true, sink: &sink)
                return sink.skimmed
            } catch {
                // Not valid, or not to be skimmed: validated in full below, which finds the exact fault if any.
            }
        }
        try scan(bytes, into: &members)
        return false
    }

    /// Validates `bytes` as one JSON object and stores its top-level members in `members`.
    ///
    /// - Parameters:
    ///   - bytes: One JSON document, optionally surrounded by whitespace.
    ///   - members: Emptied and filled with the members in order. Empty when this method throws.
    /// - Throws: ``JSONParseError`` when the line is not one valid JSON object or exceeds the limits.
    public func scan(_ bytes: [UInt8], into members: inout [JSONMember]) throws(JSONParseError) {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(JSONParseError) in try scan(buffer, into: &members) }
        }
        try result.get()
    }

    // MARK: Reading values

    /// Parses the value at `range` of `bytes` (for example a member's `valueRange`) into a ``JSONValue``.
    ///
    /// - Parameters:
    ///   - bytes: The scanned line.
    ///   - range: The value's byte range.
    /// - Returns: The value.
    /// - Throws: ``JSONParseError`` (with offsets in `bytes`) when the range does not hold exactly one valid value.
    public func value(in bytes: UnsafeRawBufferPointer, range: Range<Int>) throws(JSONParseError) -> JSONValue {
        try JSONParser(limits: limits).parse(bytes, range: range)
    }

    /// Decodes the string value at `range` of `bytes` (its `valueRange`, quotes included).
    ///
    /// - Parameters:
    ///   - bytes: The scanned line.
    ///   - range: The string's byte range, quotes included.
    /// - Returns: The decoded string.
    /// - Throws: ``JSONParseError`` when the range does not hold exactly one valid JSON string.
    public static func string(in bytes: UnsafeRawBufferPointer, range: Range<Int>) throws(JSONParseError) -> String {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count, "range out of bounds")
        guard !range.isEmpty, let raw = bytes.baseAddress else { throw .unexpectedEnd(range.upperBound) }
        let p = raw.assumingMemoryBound(to: UInt8.self)
        var i = range.lowerBound
        guard p[i] == UInt8(ascii: "\"") else { throw .unexpected(p[i], at: i) }
        let escaped = try JSONLexer.scanString(p, &i, range.upperBound, maxBytes: .max)
        guard i == range.upperBound else { throw .trailingData(at: i) }
        return JSONLexer.makeString(p, content: range.lowerBound + 1..<i - 1, escaped: escaped)
    }

    /// Reads the number at `range` of `bytes` as an integer.
    ///
    /// - Parameters:
    ///   - bytes: The scanned line.
    ///   - range: The number's byte range.
    /// - Returns: The integer, or `nil` when the range is not exactly a number written without fraction or
    ///   exponent that fits in `Int64` (so `1.0` gives `nil`, as ``JSONValue/int64Value`` does for `.number`).
    public static func int64(in bytes: UnsafeRawBufferPointer, range: Range<Int>) -> Int64? {
        guard let (integer, _) = readNumber(bytes, range) else { return nil }
        return integer
    }

    /// Reads the number at `range` of `bytes` as a `Double`, accepting integers too.
    ///
    /// - Parameters:
    ///   - bytes: The scanned line.
    ///   - range: The number's byte range.
    /// - Returns: The nearest `Double`, or `nil` when the range is not exactly one valid JSON number.
    public static func double(in bytes: UnsafeRawBufferPointer, range: Range<Int>) -> Double? {
        guard let (integer, double) = readNumber(bytes, range) else { return nil }
        if let integer {
            return Double(integer)
        }
        return double
    }

    private static func readNumber(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> (Int64?, Double)? {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count, "range out of bounds")
        guard !range.isEmpty, let raw = bytes.baseAddress else { return nil }
        let p = raw.assumingMemoryBound(to: UInt8.self)
        let first = p[range.lowerBound]
        guard first == UInt8(ascii: "-") || first &- 0x30 < 10 else { return nil }
        var i = range.lowerBound
        let integer: Int64?
        do {
            integer = try JSONLexer.scanNumber(p, &i, range.upperBound)
        } catch {
            return nil
        }
        guard i == range.upperBound else { return nil }
        if let integer {
            return (integer, Double(integer))
        }
        return (nil, JSONLexer.parseDouble(p, range.lowerBound, range.upperBound))
    }

    /// Whether a key handed to the ``scan(_:_:)`` callback equals `name`, compared as UTF-8 bytes.
    ///
    /// - Parameters:
    ///   - key: The key bytes from the callback.
    ///   - name: The expected key.
    /// - Returns: Whether they are equal.
    @inline(__always)
    public static func key(_ key: UnsafeRawBufferPointer, equals name: StaticString) -> Bool {
        self.key(key, equals: UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
    }

    /// Whether two UTF-8 byte sequences are equal.
    ///
    /// - Parameters:
    ///   - key: The key bytes from the callback.
    ///   - name: The expected key's UTF-8 bytes.
    /// - Returns: Whether they are equal.
    public static func key(_ key: UnsafeRawBufferPointer, equals name: UnsafeRawBufferPointer) -> Bool {
        guard key.count == name.count else { return false }
        guard let a = key.baseAddress, let b = name.baseAddress else { return true }
        return bytesEqual(a, b, key.count)
    }
}

// MARK: - Sinks

/// Reports top-level members to a callback.
private struct CallbackSink: JSONEventSink {
    let body: (UnsafeRawBufferPointer, Range<Int>, JSONKind) throws -> Void
    var key = UnsafeRawBufferPointer(start: nil, count: 0)
    var valueStart = 0

    @inline(__always)
    mutating func key(_ bytes: UnsafeRawBufferPointer, content: Range<Int>, escaped: Bool, depth: Int) {
        if depth == 1 {
            key = bytes
        }
    }

    @inline(__always)
    mutating func string(_ token: Range<Int>, escaped: Bool, depth: Int) throws {
        if depth == 1 {
            try body(key, token, .string)
        }
    }

    @inline(__always)
    mutating func number(_ token: Range<Int>, integer: Int64?, depth: Int) throws {
        if depth == 1 {
            try body(key, token, .number)
        }
    }

    @inline(__always)
    mutating func literal(_ kind: JSONKind, _ token: Range<Int>, depth: Int) throws {
        if depth == 1 {
            try body(key, token, kind)
        }
    }

    @inline(__always)
    mutating func open(object: Bool, at offset: Int, depth: Int) {
        if depth == 2 {
            valueStart = offset
        }
    }

    @inline(__always)
    mutating func close(object: Bool, end: Int, depth: Int) throws {
        if depth == 2 {
            try body(key, valueStart..<end, object ? .object : .array)
        }
    }
}

/// Collects top-level members as ranges.
private struct CollectingSink: JSONEventSink {
    var members: [JSONMember] = []
    var keyRange = 0..<0
    var keyIsEscaped = false
    var valueStart = 0

    mutating func add(_ valueRange: Range<Int>, _ kind: JSONKind) {
        members.append(JSONMember(keyRange: keyRange, keyIsEscaped: keyIsEscaped, valueRange: valueRange, kind: kind))
    }

    mutating func key(_ bytes: UnsafeRawBufferPointer, content: Range<Int>, escaped: Bool, depth: Int) {
        if depth == 1 {
            keyRange = content
            keyIsEscaped = escaped
        }
    }

    mutating func string(_ token: Range<Int>, escaped: Bool, depth: Int) {
        if depth == 1 {
            add(token, .string)
        }
    }

    mutating func number(_ token: Range<Int>, integer: Int64?, depth: Int) {
        if depth == 1 {
            add(token, .number)
        }
    }

    mutating func literal(_ kind: JSONKind, _ token: Range<Int>, depth: Int) {
        if depth == 1 {
            add(token, kind)
        }
    }

    mutating func open(object: Bool, at offset: Int, depth: Int) {
        if depth == 2 {
            valueStart = offset
        }
    }

    mutating func close(object: Bool, end: Int, depth: Int) {
        if depth == 2 {
            add(valueStart..<end, object ? .object : .array)
        }
    }
}

/// Collects top-level members as ranges, skimming the object values of the members it names.
/// The top-level members whose object values ``JSONObjectScanner/scan(_:into:skimmingObjectsNamed:)`` skims, by
/// key. Made once (a decoder keeps one): each name's length and ``packedPrefix(_:)-(StaticString)`` are worked out
/// here, so that telling whether a key is one of them is an integer comparison per name of its length.
public struct JSONSkimmedNames: Sendable, ExpressibleByArrayLiteral {
    private let names: [StaticString]
    private let packed: [(count: Int, word: UInt64)]

    public init(_ names: [StaticString]) {
        self.names = names
        packed = names.map { (count: $0.utf8CodeUnitCount, word: packedPrefix($0)) }
    }

    public init(arrayLiteral names: StaticString...) { self.init(names) }

    /// Whether `key` (decoded bytes) names one of them.
    @inline(__always)
    func contains(_ key: UnsafeRawBufferPointer) -> Bool {
        let count = key.count
        for index in packed.indices where packed[index].count == count {
            if count <= 8 ? packedPrefix(key) == packed[index].word : JSONObjectScanner.key(key, equals: names[index]) {
                return true
            }
        }
        return false
    }
}

private struct SkimmingSink: JSONEventSink {
    var collecting = CollectingSink()
    let names: JSONSkimmedNames
    /// Whether the member just keyed is one to skim.
    var skimsNext = false
    var skimmed = false

    init(names: JSONSkimmedNames) {
        self.names = names
    }

    @inline(__always)
    mutating func skimsObject() -> Bool {
        if skimsNext { skimmed = true }
        return skimsNext
    }

    @inline(__always)
    mutating func key(_ bytes: UnsafeRawBufferPointer, content: Range<Int>, escaped: Bool, depth: Int) {
        if depth == 1 {
            skimsNext = names.contains(bytes)
            collecting.key(bytes, content: content, escaped: escaped, depth: depth)
        }
    }

    @inline(__always)
    mutating func string(_ token: Range<Int>, escaped: Bool, depth: Int) {
        collecting.string(token, escaped: escaped, depth: depth)
    }

    @inline(__always)
    mutating func number(_ token: Range<Int>, integer: Int64?, depth: Int) {
        collecting.number(token, integer: integer, depth: depth)
    }

    @inline(__always)
    mutating func literal(_ kind: JSONKind, _ token: Range<Int>, depth: Int) {
        collecting.literal(kind, token, depth: depth)
    }

    @inline(__always)
    mutating func open(object: Bool, at offset: Int, depth: Int) {
        collecting.open(object: object, at: offset, depth: depth)
    }

    @inline(__always)
    mutating func close(object: Bool, end: Int, depth: Int) {
        collecting.close(object: object, end: end, depth: depth)
    }
}
