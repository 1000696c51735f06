#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// Who is on the other end of a Unix socket connection (SO_PEERCRED), as the kernel reports it.
struct PeerCredentials: Sendable, Hashable {
    // Laid out like Linux's `struct ucred`, which Swift's Glibc module does not import.
    var pid: Int32
    var uid: UInt32
    var gid: UInt32

    /// Reads the peer of `channel`; call on the channel's event loop (the answer is then immediate).
    static func of(_ channel: any Channel) -> PeerCredentials? {
        #if os(Linux)
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        var credentials: PeerCredentials?
        let future: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        future.assumeIsolated().whenSuccess { credentials = $0 }
        return credentials
        #else
        return nil
        #endif
    }
}
