import Glibc

/// An AF_UNIX socket address in the form the kernel takes it: a `sockaddr_un` and its exact length.
///
/// The length matters for abstract names: the kernel treats every byte up to `length` as part of the
/// name, so padding the address to `sizeof(sockaddr_un)` would make trailing NULs part of it and the
/// datagram would go to a socket nobody listens on.
public struct UnixSocketAddress: Sendable {
    /// Bytes available in `sun_path` (108 on Linux).
    public static let pathCapacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
    /// Offset of `sun_path` inside `sockaddr_un` (2 on Linux).
    public static let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!

    public private(set) var storage = sockaddr_un()
    public let length: socklen_t

    /// An address for a filesystem path: the path bytes plus one NUL terminator.
    /// - Parameters:
    ///   - path: The path; must not contain NUL and must fit in `sun_path` with its terminator.
    public init?(path: String) {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, !bytes.contains(0), bytes.count < Self.pathCapacity else { return nil }
        storage.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &storage.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
            buffer[bytes.count] = 0
        }
        length = socklen_t(Self.pathOffset + bytes.count + 1)
    }

    /// An address in the abstract namespace: a leading NUL, then the name, and nothing after it.
    /// - Parameters:
    ///   - abstractName: The name without the leading '@'.
    public init?(abstractName: String) {
        let bytes = Array(abstractName.utf8)
        guard !bytes.isEmpty, bytes.count + 1 <= Self.pathCapacity else { return nil }
        storage.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &storage.sun_path) { buffer in
            buffer[0] = 0
            UnsafeMutableRawBufferPointer(rebasing: buffer[1...]).copyBytes(from: bytes)
        }
        length = socklen_t(Self.pathOffset + 1 + bytes.count)
    }

    /// Calls `body` with the address as a `sockaddr` pointer and its length.
    public func withSockaddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result {
        withUnsafePointer(to: storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    /// Renders the address a socket is bound to, as returned by `getsockname`/`getpeername`.
    /// - Parameters:
    ///   - address: The address filled in by the kernel.
    ///   - length: The length the kernel reported.
    /// - Returns: The path, "@name" for an abstract name, or nil for an unnamed socket.
    public static func describe(_ address: sockaddr_un, length: socklen_t) -> String? {
        let pathLength = min(Int(length) - pathOffset, pathCapacity)
        guard pathLength > 0 else { return nil }
        return withUnsafeBytes(of: address.sun_path) { raw -> String? in
            let bytes = raw.prefix(pathLength)
            if bytes.first == 0 {
                // Abstract: every byte after the leading NUL is part of the name, NULs included.
                return "@" + String(decoding: bytes.dropFirst(), as: UTF8.self)
            }
            let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
            return String(decoding: bytes[..<end], as: UTF8.self)
        }
    }
}
