/// The first eight (or fewer) bytes of a key as one integer, in memory order and zero above the key's length: with
/// the key's length it identifies any key of up to eight bytes, so that a decoder recognises its short member names
/// with one integer comparison each instead of a byte loop. Both sides of a comparison must come from this function
/// (the byte order is the machine's).
@inlinable
public func packedPrefix(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    guard let p = bytes.baseAddress else { return 0 }
    let count = bytes.count
    if count >= 8 { return p.loadUnaligned(as: UInt64.self) }
    // Two overlapping loads cover 2 to 7 bytes; the overlap holds the same bytes in both, so OR keeps them.
    if count >= 4 {
        let low = UInt64(p.loadUnaligned(as: UInt32.self))
        let high = UInt64((p + count - 4).loadUnaligned(as: UInt32.self))
        return low | high &<< UInt64((count - 4) * 8)
    }
    if count >= 2 {
        let low = UInt64(p.loadUnaligned(as: UInt16.self))
        let high = UInt64((p + count - 2).loadUnaligned(as: UInt16.self))
        return low | high &<< UInt64((count - 2) * 8)
    }
    return count == 1 ? UInt64(p.load(as: UInt8.self)) : 0
}

/// ``packedPrefix(_:)-(UnsafeRawBufferPointer)`` of a name written in the source.
@inlinable
public func packedPrefix(_ name: StaticString) -> UInt64 {
    packedPrefix(UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
}
