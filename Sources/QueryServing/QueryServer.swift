import Logging
import NIOCore
import Synchronization
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Where and how the query socket listens.
public struct QueryServerConfiguration: Sendable {
    /// The socket's path, when rulesd binds it itself.
    public var socketPath: String
    /// The socket file's mode, when rulesd binds it itself.
    public var socketMode: mode_t
    /// The socket file's group, when rulesd binds it itself (nil: the daemon's own group).
    public var socketGroup: gid_t?
    /// A listening socket handed over by systemd, or nil to bind `socketPath`.
    public var activatedSocket: Int32?
    public var limits: ConnectionLimits

    public init(
        socketPath: String, socketMode: mode_t, socketGroup: gid_t?, activatedSocket: Int32?, limits: ConnectionLimits
    ) {
        self.socketPath = socketPath
        self.socketMode = socketMode
        self.socketGroup = socketGroup
        self.activatedSocket = activatedSocket
        self.limits = limits
    }
}

/// The query socket: binds it (or adopts a socket-activated listener), serves its connections on the
/// loops, and drains them at shutdown.
public final class QueryServer: Sendable {
    private let configuration: QueryServerConfiguration
    private let loops: [ServingEventLoop]
    private let backend: QueryBackend
    private let logger: Logger
    private let listener = Mutex<QueryListener?>(nil)
    /// Which loops take connections, and where each one lives.
    let balancer: LoopBalancer
    /// The open connections; their one owner.
    public let connections: ConnectionRegistry

    public init(
        configuration: QueryServerConfiguration, loops: [ServingEventLoop], backend: QueryBackend,
        connections: ConnectionRegistry = ConnectionRegistry(), logger: Logger
    ) {
        precondition(!loops.isEmpty, "a query server needs at least one loop")
        self.configuration = configuration
        self.connections = connections
        self.loops = loops
        self.backend = backend
        self.logger = logger
        self.balancer = LoopBalancer(loops: loops)
    }

    /// Whether this process created the socket file (and so removes it at exit).
    public var ownsSocketFile: Bool { configuration.activatedSocket == nil }

    /// Starts accepting connections.
    public func start() async throws {
        let descriptor: Int32
        if let activated = configuration.activatedSocket {
            descriptor = activated
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
            logger.info("serving on the socket handed over by systemd", metadata: ["socket.fd": "\(activated)"])
        } else {
            try prepareSocketPath()
            descriptor = try UnixListeningSocket.bind(
                path: configuration.socketPath, mode: configuration.socketMode, group: configuration.socketGroup)
            logger.info(
                "serving",
                metadata: [
                    "socket.path": "\(configuration.socketPath)",
                    "socket.mode": "\(String(configuration.socketMode, radix: 8))",
                ])
        }
        let listener = QueryListener(
            descriptor: descriptor, balancer: balancer, backend: backend, limits: configuration.limits,
            connections: connections, logger: logger)
        do {
            try await loops[0].submit { try listener.start() }.get()
        } catch {
            Glibc.close(descriptor)
            if ownsSocketFile { unlink(configuration.socketPath) }
            throw error
        }
        self.listener.withLock { $0 = listener }
        balancer.start()
    }

    /// Waits until the listener is closed.
    public func waitUntilClosed() async {
        guard let listener = listener.withLock({ $0 }) else { return }
        try? await listener.closed.futureResult.get()
    }

    /// Closes the listener: no new connections. Queries that arrive meanwhile get ECONNREFUSED (or wait
    /// in systemd's socket when socket-activated).
    public func stopAccepting() {
        guard let listener = listener.withLock({ $0 }) else { return }
        loops[0].execute { listener.close() }
    }

    /// Stops accepting, lets every connection finish what it has read, and waits until they have closed or
    /// `timeout` has passed. Removes the socket file if this process created it.
    /// - Returns: the connections still open at the end of the wait (the loops' shutdown closes them).
    @discardableResult
    public func shutdown(timeout: Duration) async -> Int {
        if let listener = listener.withLock({ $0 }) {
            try? await loops[0].submit { listener.close() }.get()
        }
        connections.drainAll()
        let allClosed = await connections.waitUntilEmpty(timeout: timeout)
        let remaining = allClosed ? 0 : connections.count
        if remaining > 0 {
            logger.warning(
                "closing connections still busy at the end of the shutdown wait",
                metadata: ["connections": "\(remaining)"])
        }
        if ownsSocketFile { unlink(configuration.socketPath) }
        return remaining
    }

    /// A socket file left behind by a crash is replaced; one that a live process still answers on is not.
    private func prepareSocketPath() throws {
        let path = configuration.socketPath
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            let parent = String(path[..<slash])
            var st = stat()
            if stat(parent, &st) != 0 {
                guard mkdir(parent, 0o755) == 0 || errno == EEXIST else {
                    throw StartupError(
                        "cannot create the socket directory \(parent): \(String(cString: strerror(errno)))")
                }
            }
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw StartupError("\(path) exists and is not a socket; refusing to replace it")
        }
        switch UnixListeningSocket.probe(path) {
        case .answering:
            throw StartupError(
                "another process is already serving on \(path) (is rulesd running?); refusing to start")
        case .stale:
            unlink(path)
            logger.info("removed a stale socket file", metadata: ["socket.path": "\(path)"])
        case .unknown(let reason):
            throw StartupError("cannot tell whether \(path) is in use: \(reason)")
        }
    }
}

/// Creating the listening Unix socket with its final mode and group.
enum UnixListeningSocket {
    /// A listening, non-blocking Unix stream socket at `path`, with `mode` and `group` from the first moment
    /// anyone can reach it.
    ///
    /// `bind` creates the file with the process umask, and `chmod` can only follow; in between, a permissive
    /// umask would let anyone connect. So the socket is bound inside a fresh directory that only this user
    /// can enter, given its mode and group there, and then renamed into place: a rename is atomic, and the
    /// kernel finds a socket by its inode, so connections through the final path reach the listener.
    static func bind(path: String, mode: mode_t, group: gid_t?) throws -> Int32 {
        guard UnixSocketAddress(path: path) != nil else {
            throw StartupError(
                "socket path \(path) is \(path.utf8.count) bytes; Unix sockets allow at most "
                    + "\(UnixSocketAddress.pathCapacity - 1)")
        }
        let slash = path.lastIndex(of: "/")
        let parent = slash.map { $0 == path.startIndex ? "" : String(path[..<$0]) } ?? "."
        var template = Array((parent + "/.rXXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw StartupError(
                "cannot create a private directory in \(parent.isEmpty ? "/" : parent): \(String(cString: strerror(errno)))"
            )
        }
        let privateDirectory = String(cString: made)
        defer { rmdir(privateDirectory) }
        let temporary = privateDirectory + "/s"
        // A final path within a few bytes of the limit leaves no room for the private one: then the socket is
        // bound in place, its mode set on the descriptor first (Linux creates the file with that mode less the
        // umask, so it is never wider than asked; only the group change follows).
        let bindPath = UnixSocketAddress(path: temporary) != nil ? temporary : path
        let address = UnixSocketAddress(path: bindPath)!
        let descriptor = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard descriptor >= 0 else { throw StartupError("socket: \(String(cString: strerror(errno)))") }
        func fail(_ what: String) -> StartupError {
            let reason = String(cString: strerror(errno))
            Glibc.close(descriptor)
            unlink(bindPath)
            return StartupError("\(what): \(reason)")
        }
        guard fchmod(descriptor, mode) == 0 else { throw fail("cannot set the mode of \(path)") }
        guard address.withSockaddr({ Glibc.bind(descriptor, $0, $1) }) == 0 else {
            throw fail("cannot bind \(path)")
        }
        guard chmod(bindPath, mode) == 0 else { throw fail("cannot set the mode of \(path)") }
        if let group {
            guard chown(bindPath, uid_t.max, group) == 0 else { throw fail("cannot give \(path) to group \(group)") }
        }
        guard listen(descriptor, 1024) == 0 else { throw fail("cannot listen on \(path)") }
        if bindPath != path {
            guard rename(bindPath, path) == 0 else { throw fail("cannot move the socket into place at \(path)") }
        }
        return descriptor
    }

    enum ProbeResult {
        case answering
        case stale
        case unknown(String)
    }

    /// Whether a process answers on the socket file at `path`.
    static func probe(_ path: String) -> ProbeResult {
        guard let address = UnixSocketAddress(path: path) else { return .unknown("path too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .unknown(String(cString: strerror(errno))) }
        defer { close(fd) }
        if address.withSockaddr({ connect(fd, $0, $1) }) == 0 { return .answering }
        switch errno {
        case ECONNREFUSED, ENOENT: return .stale
        default: return .unknown(String(cString: strerror(errno)))
        }
    }
}
