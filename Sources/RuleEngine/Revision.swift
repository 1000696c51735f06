import Crypto
import RuleModel

/// The identity of a rule set's content: SHA-256 over its files.
///
/// The digest covers, for each file in bytewise order of relative path: the path's UTF-8 bytes, a zero
/// byte, the content length as 8 bytes big-endian, and the content. Two directories with the same files
/// and bytes have the same revision, whatever their timestamps.
public struct RuleRevision: Sendable, Hashable, CustomStringConvertible {
    /// 64 lowercase hex digits.
    public let hex: String

    public init(hex: String) {
        self.hex = hex
    }

    /// Computes the revision of a set of rule files.
    public init(sources: [RuleSource]) {
        var hasher = SHA256()
        // Each path's bytes once, not two arrays per comparison: 10,000 files made 260,000 of them.
        let sorted = sources.map { (key: Array($0.path.utf8), source: $0) }.sorted {
            $0.key.lexicographicallyPrecedes($1.key)
        }
        for (_, source) in sorted {
            hasher.update(data: Array(source.path.utf8))
            hasher.update(data: [0])
            var length = UInt64(source.content.count).bigEndian
            withUnsafeBytes(of: &length) { hasher.update(bufferPointer: $0) }
            hasher.update(data: source.content)
        }
        hex = Self.hex(hasher.finalize())
    }

    /// The first 16 hex digits, as answers carry it.
    public var short: String { String(hex.prefix(16)) }

    public var description: String { short }

    /// SHA-256 of one file's content, hex.
    public static func digest(of content: [UInt8]) -> String {
        hex(SHA256.hash(data: content))
    }

    private static func hex(_ digest: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
