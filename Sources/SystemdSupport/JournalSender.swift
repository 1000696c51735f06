import Glibc

/// Structured entries for the journal, sent over its native protocol (`/run/systemd/journal/socket`), the way
/// libsystemd's `sd_journal_send` does: one datagram per entry, one field per line.
///
/// The stream rulesd's stderr is connected to carries only a message and its priority; fields such as
/// `MESSAGE_ID` (stable ids for `journalctl MESSAGE_ID=...`) need this socket.
public final class JournalSender: Sendable {
    /// journald's native socket.
    public static let defaultPath = "/run/systemd/journal/socket"

    private let descriptor: Int32
    private let address: UnixSocketAddress

    /// A sender to `path`, or nil when no datagram socket can be made or the path is not an AF_UNIX address.
    public init?(path: String = JournalSender.defaultPath) {
        guard let address = UnixSocketAddress(path: path) else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        self.descriptor = fd
        self.address = address
    }

    deinit { close(descriptor) }

    /// Encodes fields as the native protocol wants them: `NAME=value\n`, or, for a value holding a newline,
    /// `NAME\n`, its length as 64-bit little-endian, the bytes, `\n`.
    /// - Parameters:
    ///   - fields: field names (upper-case letters, digits and `_`, not starting with `_`) and values.
    /// - Returns: the datagram.
    public static func encode(_ fields: [(name: String, value: String)]) -> [UInt8] {
        var bytes: [UInt8] = []
        for (name, value) in fields {
            bytes.append(contentsOf: name.utf8)
            if value.utf8.contains(UInt8(ascii: "\n")) {
                bytes.append(UInt8(ascii: "\n"))
                withUnsafeBytes(of: UInt64(value.utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
            } else {
                bytes.append(UInt8(ascii: "="))
            }
            bytes.append(contentsOf: value.utf8)
            bytes.append(UInt8(ascii: "\n"))
        }
        return bytes
    }

    /// Sends one entry.
    /// - Parameters:
    ///   - fields: the entry's fields; `MESSAGE` and `PRIORITY` among them, as journald expects.
    /// - Returns: 0, or the errno of a failed send (ENOENT or ECONNREFUSED: no journal listens).
    @discardableResult
    public func send(_ fields: [(name: String, value: String)]) -> Int32 {
        let datagram = Self.encode(fields)
        while true {
            let sent = datagram.withUnsafeBytes { buffer in
                address.withSockaddr { pointer, length in
                    sendto(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), pointer, length)
                }
            }
            if sent >= 0 { return 0 }
            if errno != EINTR { return errno }
        }
    }
}
