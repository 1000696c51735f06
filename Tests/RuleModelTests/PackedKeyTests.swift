import RuleModel
import Testing

/// `packedPrefix`: a key's first eight bytes as one integer, which with the key's length tells short keys apart.
@Suite("Packed key prefixes")
struct PackedKeyTests {
    /// The bytes folded in memory order, the first byte lowest, as little-endian machines load them.
    static func reference(_ bytes: [UInt8]) -> UInt64 {
        var word: UInt64 = 0
        for (index, byte) in bytes.prefix(8).enumerated() { word |= UInt64(byte) << UInt64(index * 8) }
        return word
    }

    @Test("every length from 0 to 12 bytes packs its first eight bytes, zero above the key")
    func packsPrefix() {
        var random = SystemRandomNumberGenerator()
        for length in 0...12 {
            for _ in 0..<200 {
                let bytes = (0..<length).map { _ in UInt8.random(in: 1...255, using: &random) }
                let packed = bytes.withUnsafeBytes { packedPrefix($0) }
                #expect(packed == Self.reference(bytes), "\(bytes)")
            }
        }
    }

    @Test("keys of up to eight bytes that differ in any one byte pack differently")
    func tellsApart() {
        for length in 1...8 {
            let base = Array(repeating: UInt8(ascii: "q"), count: length)
            let packedBase = base.withUnsafeBytes { packedPrefix($0) }
            for position in 0..<length {
                var other = base
                other[position] = UInt8(ascii: "r")
                #expect(other.withUnsafeBytes { packedPrefix($0) } != packedBase, "length \(length) at \(position)")
            }
        }
    }

    @Test("a name written in the source packs as its bytes do")
    func staticNames() {
        let name: StaticString = "context"
        #expect(packedPrefix(name) == Array("context".utf8).withUnsafeBytes { packedPrefix($0) })
        #expect(packedPrefix("") == 0)
    }
}
