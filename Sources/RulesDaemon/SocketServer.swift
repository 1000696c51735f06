import Logging
import NIOCore
import RulesProtocol
import Synchronization
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The Unix-socket listener: binds (or adopts a socket-activated listener), accepts connections up to the
/// limit and deals them out to the workers' loops in turn, and drains them at shutdown.
final class SocketServer: Sendable {
    private let settings: DaemonSettings
    private let services: DaemonServices
    private let pool: WorkerPool
    private let logger: Logger
    private let activatedSocket: CInt?
    private let listener = Mutex<QueryListener?>(nil)
    private let connections = ConnectionRegistry()

    /// - Parameter activatedSocket: a listening socket handed over by systemd, or nil to bind our own.
    init(settings: DaemonSettings, services: DaemonServices, pool: WorkerPool, activatedSocket: CInt?, logger: Logger) {
        self.settings = settings
        self.services = services
        self.pool = pool
        self.activatedSocket = activatedSocket
        self.logger = logger
    }

    /// Whether this process created the socket file (and so removes it at exit).
    var ownsSocketFile: Bool { activatedSocket == nil }

    /// Starts accepting connections.
    func start() async throws {
        let descriptor: CInt
        if let activatedSocket {
            descriptor = activatedSocket
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
            logger.info("serving on the socket handed over by systemd", metadata: ["socket.fd": "\(activatedSocket)"])
        } else {
            try prepareSocketPath()
            descriptor = try Self.bindListener(settings.socketPath)
            do {
                try applyPermissions()
            } catch {
                Glibc.close(descriptor)
                unlink(settings.socketPath)
                throw error
            }
            logger.info(
                "serving",
                metadata: [
                    "socket.path": "\(settings.socketPath)", "socket.mode": "\(String(settings.socketMode, radix: 8))",
                ])
        }
        let listener = QueryListener(
            descriptor: descriptor, pool: pool, services: services, connections: connections, logger: logger)
        try await pool.loops[0].submit { try listener.start() }.get()
        self.listener.withLock { $0 = listener }
    }

    /// Waits until the listener is closed.
    func waitUntilClosed() async {
        guard let listener = listener.withLock({ $0 }) else { return }
        try? await listener.closed.futureResult.get()
    }

    /// Closes the listener: no new connections. Queries that arrive meanwhile get ECONNREFUSED (or wait
    /// in systemd's socket when socket-activated).
    func stopAccepting() {
        guard let listener = listener.withLock({ $0 }) else { return }
        pool.loops[0].execute { listener.close() }
    }

    /// Stops accepting, lets every connection finish what it has read, and closes them; connections still
    /// busy after `timeout` are closed anyway. Removes the socket file if this process created it.
    func shutdown(timeout: Duration) async {
        if let listener = listener.withLock({ $0 }) {
            try? await pool.loops[0].submit { listener.close() }.get()
        }
        for drain in connections.all() { drain() }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline, services.openConnections.load(ordering: .relaxed) > 0 {
            try? await Task.sleep(for: .milliseconds(10))
        }
        let remaining = services.openConnections.load(ordering: .relaxed)
        if remaining > 0 {
            logger.warning(
                "closing connections still busy at the end of the shutdown wait",
                metadata: ["connections": "\(remaining)"])
        }
        if ownsSocketFile { unlink(settings.socketPath) }
    }

    /// A listening, non-blocking Unix stream socket at `path`.
    private static func bindListener(_ path: String) throws -> CInt {
        var address = sockaddr_un()
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw StartupError(
                "socket path \(path) is \(bytes.count) bytes; Unix sockets allow at most "
                    + "\(MemoryLayout.size(ofValue: address.sun_path) - 1)")
        }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let descriptor = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard descriptor >= 0 else { throw StartupError("socket: \(String(cString: strerror(errno)))") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, listen(descriptor, 1024) == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(descriptor)
            throw StartupError("cannot listen on \(path): \(reason)")
        }
        return descriptor
    }

    /// A socket file left behind by a crash is replaced; one that a live process still answers on is not.
    private func prepareSocketPath() throws {
        let path = settings.socketPath
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
        switch Self.probe(path) {
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

    private enum ProbeResult {
        case answering
        case stale
        case unknown(String)
    }

    private static func probe(_ path: String) -> ProbeResult {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .unknown(String(cString: strerror(errno))) }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result == 0 { return .answering }
        switch errno {
        case ECONNREFUSED, ENOENT: return .stale
        default: return .unknown(String(cString: strerror(errno)))
        }
    }

    private func applyPermissions() throws {
        let path = settings.socketPath
        guard chmod(path, settings.socketMode) == 0 else {
            throw StartupError("cannot set the mode of \(path): \(String(cString: strerror(errno)))")
        }
        if let group = settings.socketGroup {
            guard let gid = group.groupID else {
                throw StartupError("no group named '\(group)' for the socket")
            }
            guard chown(path, uid_t.max, gid) == 0 else {
                throw StartupError("cannot give \(path) to group \(group): \(String(cString: strerror(errno)))")
            }
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// The open connections, each with the way to drain it at shutdown.
final class ConnectionRegistry: Sendable {
    private let entries = Mutex<[ObjectIdentifier: @Sendable () -> Void]>([:])

    func add(_ key: ObjectIdentifier, drain: @escaping @Sendable () -> Void) {
        entries.withLock { $0[key] = drain }
    }

    func remove(_ key: ObjectIdentifier) {
        _ = entries.withLock { $0.removeValue(forKey: key) }
    }

    func all() -> [@Sendable () -> Void] {
        entries.withLock { Array($0.values) }
    }
}
