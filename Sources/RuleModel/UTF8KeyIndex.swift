/// Finds a key's position among a fixed set of keys straight from UTF-8 bytes.
///
/// The request path looks flags up by name for every request; going through `String` would mean decoding
/// and, for names over 15 bytes, allocating, then hashing with a per-process seed. This table hashes the
/// raw bytes (FNV-1a) and compares them with bytesEqual. Built once per rule set; immutable afterwards.
public struct UTF8KeyIndex: Sendable {
    private let slots: [Int32]
    private let hashes: [UInt64]
    private let keys: [[UInt8]]
    private let mask: Int

    /// - Parameter keys: the keys; a key's index is its position here (the first wins for duplicates).
    public init(_ keys: [String]) {
        let bytes = keys.map { Array($0.utf8) }
        var capacity = 8
        while capacity < bytes.count * 2 { capacity *= 2 }
        var slots = [Int32](repeating: -1, count: capacity)
        var hashes = [UInt64](repeating: 0, count: bytes.count)
        for (index, key) in bytes.enumerated() {
            let hash = key.withUnsafeBytes { Self.hash($0) }
            hashes[index] = hash
            var slot = Int(truncatingIfNeeded: hash) & (capacity - 1)
            var duplicate = false
            while slots[slot] >= 0 {
                if bytes[Int(slots[slot])] == key {
                    duplicate = true
                    break
                }
                slot = (slot + 1) & (capacity - 1)
            }
            if !duplicate { slots[slot] = Int32(index) }
        }
        self.slots = slots
        self.hashes = hashes
        self.keys = bytes
        self.mask = capacity - 1
    }

    /// The index of the key spelled by `bytes`, or nil.
    @inlinable
    public func index(of bytes: UnsafeRawBufferPointer) -> Int? {
        lookup(bytes)
    }

    /// The index of `key`, or nil.
    public func index(of key: String) -> Int? {
        var key = key
        return key.withUTF8 { lookup(UnsafeRawBufferPointer($0)) }
    }

    @usableFromInline
    func lookup(_ bytes: UnsafeRawBufferPointer) -> Int? {
        let hash = Self.hash(bytes)
        var slot = Int(truncatingIfNeeded: hash) & mask
        while true {
            let candidate = Int(slots[slot])
            if candidate < 0 { return nil }
            if hashes[candidate] == hash {
                let equal = keys[candidate].withUnsafeBytes { key in
                    key.count == bytes.count
                        && (key.count == 0 || bytesEqual(key.baseAddress!, bytes.baseAddress!, key.count))
                }
                if equal { return candidate }
            }
            slot = (slot + 1) & mask
        }
    }

    @usableFromInline
    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}

/// Whether `count` bytes at `a` and `b` are equal, eight at a time: the one byte comparison of the JSON
/// scanner, the parser and the key index.
@usableFromInline
func bytesEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    var index = 0
    while index + 8 <= count {
        if a.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            != b.loadUnaligned(fromByteOffset: index, as: UInt64.self)
        {
            return false
        }
        index += 8
    }
    while index < count {
        if a.load(fromByteOffset: index, as: UInt8.self) != b.load(fromByteOffset: index, as: UInt8.self) {
            return false
        }
        index += 1
    }
    return true
}
