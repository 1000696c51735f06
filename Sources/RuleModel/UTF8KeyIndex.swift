/// Finds a key's position among a fixed set of keys straight from UTF-8 bytes.
///
/// The request path looks flags up by name for every request; going through `String` would mean decoding
/// and, for names over 15 bytes, allocating, then hashing with a per-process seed. This table hashes the
/// raw bytes (FNV-1a) and compares them with bytesEqual. Built once per rule set; immutable afterwards.
public struct UTF8KeyIndex: Sendable {
    private let slots: [Int32]
    private let hashes: [UInt64]
    /// Every key's bytes, one after another: key `i` is `bytes[starts[i]..<starts[i + 1]]`. One array rather than
    /// one per key, which for 10,000 flags saved 10,000 allocations (about 0.5 MiB).
    private let bytes: [UInt8]
    private let starts: [Int32]
    private let mask: Int

    /// - Parameter keys: the keys; a key's index is its position here (the first wins for duplicates).
    public init(_ keys: [String]) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(keys.reduce(0) { $0 + $1.utf8.count })
        var starts: [Int32] = [0]
        starts.reserveCapacity(keys.count + 1)
        for key in keys {
            bytes.append(contentsOf: key.utf8)
            starts.append(Int32(bytes.count))
        }
        var capacity = 8
        while capacity < keys.count * 2 { capacity *= 2 }
        var slots = [Int32](repeating: -1, count: capacity)
        var hashes = [UInt64](repeating: 0, count: keys.count)
        bytes.withUnsafeBytes { all in
            func key(_ index: Int) -> UnsafeRawBufferPointer {
                UnsafeRawBufferPointer(rebasing: all[Int(starts[index])..<Int(starts[index + 1])])
            }
            for index in keys.indices {
                let hash = Self.hash(key(index))
                hashes[index] = hash
                var slot = Int(truncatingIfNeeded: hash) & (capacity - 1)
                var duplicate = false
                while slots[slot] >= 0 {
                    if key(Int(slots[slot])).elementsEqual(key(index)) {
                        duplicate = true
                        break
                    }
                    slot = (slot + 1) & (capacity - 1)
                }
                if !duplicate { slots[slot] = Int32(index) }
            }
        }
        self.slots = slots
        self.hashes = hashes
        self.bytes = bytes
        self.starts = starts
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
                let start = Int(starts[candidate])
                let count = Int(starts[candidate + 1]) - start
                let equal =
                    count == bytes.count
                    && (count == 0
                        || self.bytes.withUnsafeBytes { bytesEqual($0.baseAddress! + start, bytes.baseAddress!, count) })
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
