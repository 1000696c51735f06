/// A JSON value that keeps the distinction between integers and floating-point numbers.
///
/// Numbers written without a fraction or an exponent that fit in `Int64` are `.integer`; every other number is
/// `.number`. Two values of different cases are never equal, so `.integer(1) != .number(1.0)`.
public enum JSONValue: Sendable, Hashable {
    /// The JSON literal `null`.
    case null
    /// The JSON literals `true` and `false`.
    case bool(Bool)
    /// A number written without fraction or exponent that fits in `Int64`.
    case integer(Int64)
    /// Any other number. Always finite when produced by ``JSONParser``.
    case number(Double)
    /// A string, decoded from its escapes.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object whose members keep their order.
    case object(JSONObject)
}

// MARK: - Accessors

extension JSONValue {
    /// Whether this value is `null`.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The string, or `nil` when this value is not a string.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The integer, or `nil` when this value is not an `.integer` (floating-point numbers are not converted).
    public var int64Value: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    /// The integer as `Int`, or `nil` when this value is not an `.integer` or does not fit in `Int`.
    public var intValue: Int? {
        if case .integer(let value) = self { return Int(exactly: value) }
        return nil
    }

    /// The number as a `Double`; integers are converted (possibly rounding beyond 2^53). `nil` for non-numbers.
    public var doubleValue: Double? {
        switch self {
        case .integer(let value): return Double(value)
        case .number(let value): return value
        default: return nil
        }
    }

    /// The Boolean, or `nil` when this value is not `true` or `false`.
    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The elements, or `nil` when this value is not an array.
    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// The object, or `nil` when this value is not an object.
    public var objectValue: JSONObject? {
        if case .object(let value) = self { return value }
        return nil
    }

    /// The member named `key` when this value is an object; `nil` when it is not an object or has no such member.
    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    /// The element at `index` when this value is an array and `index` is in range; otherwise `nil`.
    public subscript(index: Int) -> JSONValue? {
        if case .array(let elements) = self, elements.indices.contains(index) { return elements[index] }
        return nil
    }
}

// MARK: - Literals

extension JSONValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) {
        self = .null
    }
}

extension JSONValue: ExpressibleByBooleanLiteral {
    public init(booleanLiteral value: Bool) {
        self = .bool(value)
    }
}

extension JSONValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int64) {
        self = .integer(value)
    }
}

extension JSONValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) {
        self = .number(value)
    }
}

extension JSONValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) {
        self = .string(value)
    }
}

extension JSONValue: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: JSONValue...) {
        self = .array(elements)
    }
}

extension JSONValue: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(JSONObject(elements))
    }
}

extension JSONValue: CustomStringConvertible {
    /// Compact JSON text for this value. Unlike ``JSONWriter``, non-finite numbers are shown as `NaN`, `Infinity`
    /// and `-Infinity` instead of stopping the program, so that any value can be printed for diagnostics.
    public var description: String {
        var output: [UInt8] = []
        JSONWriter(options: []).write(self, to: &output, allowNonFinite: true)
        return String(decoding: output, as: UTF8.self)
    }
}

// MARK: - JSONObject

/// The members of a JSON object in insertion order, with constant-time lookup by key.
///
/// Keys are compared by their UTF-8 bytes (that is, by Unicode scalars), not by Swift's canonical equivalence:
/// `"\u{E9}"` and `"e\u{301}"` are two different keys, as in RFC 8259 §8.3 and in ``JSONObjectScanner``.
/// An object never holds the same key twice: setting an existing key replaces its value in place.
///
/// Two objects are equal when they have the same keys with equal values, in any order; iteration, ``keys`` and
/// ``JSONWriter`` use the insertion order.
public struct JSONObject: Sendable {
    /// One member: its key and its value.
    public typealias Element = (key: String, value: JSONValue)

    /// Up to this many members, lookups scan the members; beyond it a hash index is kept.
    static let indexThreshold = 8

    private var members: [Element]
    private var index: [IndexKey: Int]?

    /// Creates an empty object.
    public init() {
        members = []
        index = nil
    }

    /// Creates an object from key-value pairs in order.
    ///
    /// - Parameter pairs: The members. When a key occurs more than once, the member keeps the position of its first
    ///   occurrence and the value of its last one.
    public init(_ pairs: [(String, JSONValue)]) {
        self.init()
        members.reserveCapacity(pairs.count)
        for (key, value) in pairs {
            self[key] = value
        }
    }

    /// The number of members.
    public var count: Int { members.count }

    /// Whether the object has no members.
    public var isEmpty: Bool { members.isEmpty }

    /// The keys in insertion order.
    public var keys: [String] { members.map(\.key) }

    /// The values in insertion order.
    public var values: [JSONValue] { members.map(\.value) }

    /// The value for `key`, or `nil` when there is no such member.
    ///
    /// Setting a value replaces an existing member in place or appends a new one; setting `nil` removes the member
    /// (in linear time).
    public subscript(key: String) -> JSONValue? {
        get {
            guard let position = position(of: key) else { return nil }
            return members[position].value
        }
        set {
            if let position = position(of: key) {
                if let newValue {
                    members[position].value = newValue
                } else {
                    members.remove(at: position)
                    rebuildIndex()
                }
            } else if let newValue {
                appendNew(key: key, value: newValue)
            }
        }
    }

    /// Whether the object has a member named `key`.
    public func contains(key: String) -> Bool {
        position(of: key) != nil
    }

    /// Removes the member named `key`.
    ///
    /// - Returns: The removed value, or `nil` when there was no such member.
    @discardableResult
    public mutating func removeValue(forKey key: String) -> JSONValue? {
        guard let position = position(of: key) else { return nil }
        let removed = members.remove(at: position)
        rebuildIndex()
        return removed.value
    }

    /// Appends a member whose key the caller knows is not present yet (the parser has already rejected duplicates).
    mutating func appendNew(key: String, value: JSONValue) {
        members.append((key: key, value: value))
        if index != nil {
            index![IndexKey(key)] = members.count - 1
        } else if members.count > Self.indexThreshold {
            rebuildIndex()
        }
    }

    private func position(of key: String) -> Int? {
        if let index {
            return index[IndexKey(key)]
        }
        let count = key.utf8.count
        for position in members.indices {
            let candidate = members[position].key
            if candidate.utf8.count == count && candidate.utf8.elementsEqual(key.utf8) {
                return position
            }
        }
        return nil
    }

    private mutating func rebuildIndex() {
        guard members.count > Self.indexThreshold else {
            index = nil
            return
        }
        var newIndex: [IndexKey: Int] = [:]
        newIndex.reserveCapacity(members.count)
        for (position, member) in members.enumerated() {
            newIndex[IndexKey(member.key)] = position
        }
        index = newIndex
    }

    /// A dictionary key that compares strings by their UTF-8 bytes.
    private struct IndexKey: Hashable {
        let string: String

        init(_ string: String) {
            self.string = string
        }

        static func == (lhs: IndexKey, rhs: IndexKey) -> Bool {
            lhs.string.utf8.count == rhs.string.utf8.count && lhs.string.utf8.elementsEqual(rhs.string.utf8)
        }

        func hash(into hasher: inout Hasher) {
            var copy = string
            copy.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }
}

extension JSONObject: Sequence {
    /// Iterates over the members in insertion order.
    public func makeIterator() -> IndexingIterator<[Element]> {
        members.makeIterator()
    }

    /// The number of members.
    public var underestimatedCount: Int { members.count }
}

extension JSONObject: Hashable {
    /// Whether both objects have the same keys with equal values, regardless of order.
    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        guard lhs.members.count == rhs.members.count else { return false }
        for (key, value) in lhs.members {
            guard let other = rhs[key], other == value else { return false }
        }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        // Order-independent: the members' own hashes are summed.
        var sum = 0
        for (key, value) in members {
            var memberHasher = Hasher()
            memberHasher.combine(IndexKey(key))
            memberHasher.combine(value)
            sum &+= memberHasher.finalize()
        }
        hasher.combine(members.count)
        hasher.combine(sum)
    }
}

extension JSONObject: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init(elements)
    }
}

extension JSONObject: CustomStringConvertible {
    /// Compact JSON text for this object (see ``JSONValue/description``).
    public var description: String {
        JSONValue.object(self).description
    }
}
