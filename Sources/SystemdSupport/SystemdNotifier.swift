import Glibc

/// Where systemd listens for notifications, parsed from `$NOTIFY_SOCKET`.
public enum NotifySocketAddress: Sendable, Equatable, CustomStringConvertible {
    /// A filesystem path such as `/run/systemd/notify`.
    case path(String)
    /// A name in the abstract namespace, without the '@' that marks it in `$NOTIFY_SOCKET`.
    case abstract(String)

    /// Parses a `$NOTIFY_SOCKET` value.
    /// - Parameters:
    ///   - value: A path, or '@' followed by an abstract name.
    /// - Throws: ``NotifyError/invalidAddress(_:)`` for an empty, too long or `vsock:` value.
    public init(parsing value: String) throws(NotifyError) {
        if value.hasPrefix("@") {
            self = .abstract(String(value.dropFirst()))
        } else if value.hasPrefix("vsock:") {
            // Only used by systemd in virtual machines talking to the host; not a case for rulesd.
            throw .invalidAddress(value)
        } else {
            self = .path(value)
        }
        guard unixAddress != nil else { throw .invalidAddress(value) }
    }

    /// The value as it appears in `$NOTIFY_SOCKET`.
    public var description: String {
        switch self {
        case .path(let path): path
        case .abstract(let name): "@" + name
        }
    }

    var unixAddress: UnixSocketAddress? {
        switch self {
        case .path(let path): UnixSocketAddress(path: path)
        case .abstract(let name): UnixSocketAddress(abstractName: name)
        }
    }
}

/// Why a notification could not be set up or sent.
public enum NotifyError: Error, Equatable, CustomStringConvertible {
    /// `$NOTIFY_SOCKET` holds something that is not a usable AF_UNIX address.
    case invalidAddress(String)
    /// `socket()` failed with this errno.
    case socketFailed(errno: Int32)
    /// `sendto()` failed with this errno.
    case sendFailed(errno: Int32)
    /// The payload is empty or longer than ``NotifyPayload/maxPayloadBytes``.
    case invalidPayloadSize(Int)

    /// A one-line explanation for the log, saying what to fix where it can.
    public var description: String {
        switch self {
        case .invalidAddress(let value):
            "NOTIFY_SOCKET='\(value)' is not a usable AF_UNIX path or @abstract name"
        case .socketFailed(let code):
            "cannot create the notify socket: \(errorText(code))"
        case .sendFailed(let code):
            "cannot send to the notify socket: \(errorText(code))"
        case .invalidPayloadSize(let size):
            "notify payload of \(size) bytes; expected 1 to \(NotifyPayload.maxPayloadBytes)"
        }
    }
}

/// Sends sd_notify messages to systemd (or anything else listening on `$NOTIFY_SOCKET`).
///
/// Each message is one datagram. The kernel attaches the sender's credentials because the
/// receiver asks for them (SO_PASSCRED), so nothing but the payload is sent, and any thread may
/// send: under `NotifyAccess=main` systemd checks the process id, not the thread.
/// All stored state is immutable and `sendto` on a datagram socket is atomic, hence `Sendable`.
public final class SystemdNotifier: Sendable {
    /// The address datagrams are sent to.
    public let address: NotifySocketAddress
    private let unixAddress: UnixSocketAddress
    private let descriptor: Int32

    /// Creates a notifier for an address.
    /// - Parameters:
    ///   - address: Where to send.
    /// - Throws: ``NotifyError/socketFailed(errno:)`` when no socket can be created.
    public init(address: NotifySocketAddress) throws(NotifyError) {
        guard let unixAddress = address.unixAddress else { throw .invalidAddress(address.description) }
        // CLOEXEC so that no child process can impersonate the daemon towards systemd.
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw .socketFailed(errno: Glibc.errno) }
        self.address = address
        self.unixAddress = unixAddress
        self.descriptor = descriptor
    }

    /// Creates a notifier from a `$NOTIFY_SOCKET` value.
    /// - Parameters:
    ///   - notifySocket: The value; nil or empty means the process is not supervised.
    /// - Returns: nil when `notifySocket` is nil or empty.
    /// - Throws: ``NotifyError`` for an unusable address or when no socket can be created.
    public convenience init?(notifySocket: String?) throws(NotifyError) {
        guard let notifySocket, !notifySocket.isEmpty else { return nil }
        try self.init(address: NotifySocketAddress(parsing: notifySocket))
    }

    /// Creates a notifier from `$NOTIFY_SOCKET`.
    /// - Parameters:
    ///   - environment: Where to read the variable; the process environment by default.
    ///   - unsetEnvironment: Remove `NOTIFY_SOCKET` afterwards, so child processes cannot use it.
    /// - Returns: nil when `NOTIFY_SOCKET` is unset or empty: the process is not supervised and
    ///   every notification is then simply skipped by the caller.
    /// - Throws: ``NotifyError`` for an unusable address or when no socket can be created.
    public static func fromEnvironment(
        _ environment: SystemdEnvironment = .process,
        unsetEnvironment: Bool = false
    ) throws(NotifyError) -> SystemdNotifier? {
        let value = environment.nonEmpty("NOTIFY_SOCKET")
        if unsetEnvironment { environment.unset("NOTIFY_SOCKET") }
        return try SystemdNotifier(notifySocket: value)
    }

    deinit {
        close(descriptor)
    }

    /// Sends one raw payload as one datagram.
    ///
    /// Like libsystemd's sd_notify, this blocks while the receiver's queue is full
    /// (`net.unix.max_dgram_qlen` datagrams); PID 1 drains it promptly, and dropping a `READY=1`
    /// would be worse than waiting for it.
    /// - Parameters:
    ///   - payload: Newline-separated `KEY=VALUE` lines, see ``NotifyPayload``.
    /// - Throws: ``NotifyError/invalidPayloadSize(_:)`` or ``NotifyError/sendFailed(errno:)``.
    public func send(_ payload: String) throws(NotifyError) {
        let bytes = Array(payload.utf8)
        guard !bytes.isEmpty, bytes.count <= NotifyPayload.maxPayloadBytes else {
            throw .invalidPayloadSize(bytes.count)
        }
        while true {
            let sent = bytes.withUnsafeBytes { buffer in
                unixAddress.withSockaddr { address, length in
                    // MSG_NOSIGNAL: a vanished receiver must give an error, never a SIGPIPE.
                    sendto(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), address, length)
                }
            }
            if sent >= 0 { return }
            let code = Glibc.errno
            if code != EINTR { throw .sendFailed(errno: code) }
        }
    }

    /// Tells systemd that start-up (or a reload) is complete: `READY=1`.
    /// - Parameters:
    ///   - status: Optional status line.
    /// - Throws: ``NotifyError`` when the datagram cannot be sent.
    public func ready(status: String? = nil) throws(NotifyError) {
        try send(NotifyPayload.ready(status: status))
    }

    /// Tells systemd that a reload has begun: `RELOADING=1` plus `MONOTONIC_USEC=`.
    ///
    /// Must be followed by ``ready(status:)`` when the reload is over, whether it worked or not.
    /// - Parameters:
    ///   - status: Optional status line.
    /// - Throws: ``NotifyError`` when the datagram cannot be sent.
    public func reloading(status: String? = nil) throws(NotifyError) {
        try send(NotifyPayload.reloading(status: status))
    }

    /// Tells systemd that the daemon is shutting down: `STOPPING=1`.
    /// - Parameters:
    ///   - status: Optional status line.
    /// - Throws: ``NotifyError`` when the datagram cannot be sent.
    public func stopping(status: String? = nil) throws(NotifyError) {
        try send(NotifyPayload.stopping(status: status))
    }

    /// Updates the line `systemctl status` shows: `STATUS=`.
    /// - Parameters:
    ///   - text: Any text; made single-line and shortened.
    /// - Throws: ``NotifyError`` when the datagram cannot be sent.
    public func status(_ text: String) throws(NotifyError) {
        try send(NotifyPayload.status(text))
    }

    /// The watchdog keep-alive: `WATCHDOG=1`.
    /// - Throws: ``NotifyError`` when the datagram cannot be sent.
    public func watchdog() throws(NotifyError) {
        try send(NotifyPayload.watchdog)
    }

    /// Asks for more time for the current start, reload or stop: `EXTEND_TIMEOUT_USEC=`.
    /// - Parameters:
    ///   - duration: How much time from now.
    /// - Throws: ``NotifyError`` when the datagram cannot be sent.
    public func extendTimeout(_ duration: Duration) throws(NotifyError) {
        try send(NotifyPayload.extendTimeout(duration))
    }

    /// Reports the error that is about to end the process: `ERRNO=`.
    /// - Parameters:
    ///   - code: An errno value.
    ///   - status: Optional status line.
    /// - Throws: ``NotifyError`` when the datagram cannot be sent.
    public func errno(_ code: Int32, status: String? = nil) throws(NotifyError) {
        try send(NotifyPayload.errno(code, status: status))
    }
}

/// `strerror` text for an errno value, e.g. "Permission denied (errno 13)".
func errorText(_ code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    // The XSI strerror_r is what Swift imports: it fills the buffer and returns 0 on success.
    let filled = strerror_r(code, &buffer, buffer.count) == 0
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    let text = filled ? String(decoding: bytes, as: UTF8.self) : "unknown error"
    return "\(text) (errno \(code))"
}
