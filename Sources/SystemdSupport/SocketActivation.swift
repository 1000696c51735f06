import Glibc

/// A file descriptor handed over by systemd's socket activation.
public struct ActivatedSocket: Sendable, Equatable {
    /// The descriptor, 3 or higher.
    public let fd: Int32
    /// Its name from `$LISTEN_FDNAMES` (`FileDescriptorName=`), or nil when no names were passed.
    public let name: String?

    /// Creates a value; the descriptor is not checked.
    /// - Parameters:
    ///   - fd: The descriptor.
    ///   - name: Its name, if any.
    public init(fd: Int32, name: String?) {
        self.fd = fd
        self.name = name
    }
}

/// Why the sockets handed over by systemd cannot be used.
public enum SocketActivationError: Error, Equatable, CustomStringConvertible {
    /// A variable holds something that is not a number (or not a sane one).
    case invalidVariable(name: String, value: String)
    /// `$LISTEN_FDNAMES` does not hold one name per descriptor.
    case nameCountMismatch(descriptors: Int, names: [String])
    /// The descriptor is not open.
    case badDescriptor(fd: Int32, name: String?)
    /// The descriptor is open but is not a socket (e.g. a file or a pipe).
    case notASocket(fd: Int32, name: String?)
    /// The socket is not a stream socket; `type` is `SOCK_DGRAM`, `SOCK_SEQPACKET`, ….
    case wrongType(fd: Int32, name: String?, type: Int32)
    /// The socket is not an AF_UNIX socket; `family` is `AF_INET`, `AF_INET6`, ….
    case wrongFamily(fd: Int32, name: String?, family: Int32)
    /// The socket is a Unix stream socket but nobody called `listen()` on it.
    case notListening(fd: Int32, name: String?)
    /// A system call failed while inspecting the descriptor.
    case systemCallFailed(call: String, fd: Int32, errno: Int32)
    /// Several sockets were passed and none carries the wanted name.
    case noSocketNamed(String, available: [String?])

    /// A one-line explanation for the log, saying what to fix where it can.
    public var description: String {
        switch self {
        case .invalidVariable(let name, let value):
            return "\(name)='\(value)' is not a valid value"
        case .nameCountMismatch(let count, let names):
            return "LISTEN_FDS=\(count) but LISTEN_FDNAMES has \(names.count) names (\(names.joined(separator: ":")))"
        case .badDescriptor(let fd, let name):
            return "\(describe(fd, name)) is not an open file descriptor"
        case .notASocket(let fd, let name):
            return "\(describe(fd, name)) is not a socket; expected a listening AF_UNIX stream socket"
        case .wrongType(let fd, let name, let type):
            return "\(describe(fd, name)) is a \(socketTypeName(type)) socket; expected a listening AF_UNIX stream "
                + "socket (ListenStream= in the .socket unit)"
        case .wrongFamily(let fd, let name, let family):
            return "\(describe(fd, name)) is an \(familyName(family)) socket; expected a listening AF_UNIX stream "
                + "socket (ListenStream= with an absolute path)"
        case .notListening(let fd, let name):
            return "\(describe(fd, name)) is an AF_UNIX stream socket that is not listening (Accept=yes, or a "
                + "connected socket?); expected a listening one"
        case .systemCallFailed(let call, let fd, let code):
            return "\(call) on fd \(fd) failed: \(errorText(code))"
        case .noSocketNamed(let wanted, let available):
            let names = available.map { $0 ?? "(unnamed)" }.joined(separator: ", ")
            return "no socket named '\(wanted)' among the \(available.count) passed (\(names)); set "
                + "FileDescriptorName=\(wanted) in the .socket unit"
        }
    }

    private func describe(_ fd: Int32, _ name: String?) -> String {
        name.map { "fd \(fd) ('\($0)')" } ?? "fd \(fd)"
    }
}

/// systemd's socket activation (sd_listen_fds(3)), without libsystemd.
public enum SocketActivation {
    /// The first passed descriptor (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: Int32 = 3

    /// The `FileDescriptorName=` of rulesd's query socket.
    public static let queryName = "query"

    /// Takes over the sockets systemd passed, as sd_listen_fds_with_names(3) does.
    ///
    /// Nothing is passed unless `$LISTEN_PID` is our pid and `$LISTEN_FDS` is set: the variables
    /// may have been inherited from a parent that was activated itself. Every passed descriptor
    /// gets FD_CLOEXEC (so no child process keeps the listener alive) and must be a listening
    /// AF_UNIX stream socket; anything else is a unit-file mistake worth a clear error at start.
    /// - Parameters:
    ///   - environment: Where to read the variables; the process environment by default.
    ///   - pid: Our process id; `getpid()` by default.
    ///   - fdBase: The first descriptor; ``firstDescriptor`` (3) by default.
    ///   - unsetEnvironment: Remove `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` afterwards
    ///     (also when they were not meant for us), so that no child process sees them.
    /// - Returns: The sockets in unit-file order; empty when the process was not socket-activated.
    /// - Throws: ``SocketActivationError`` for unparsable variables or unusable descriptors.
    public static func listeningSockets(
        environment: SystemdEnvironment = .process,
        pid: pid_t = getpid(),
        fdBase: Int32 = firstDescriptor,
        unsetEnvironment: Bool = true
    ) throws(SocketActivationError) -> [ActivatedSocket] {
        let listenPID = environment.nonEmpty("LISTEN_PID")
        let listenFDs = environment.nonEmpty("LISTEN_FDS")
        let listenFDNames = environment.value("LISTEN_FDNAMES")
        if unsetEnvironment {
            for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { environment.unset(name) }
        }
        guard let listenPID, let listenFDs else { return [] }
        guard let owner = pid_t(listenPID), owner > 0 else {
            throw .invalidVariable(name: "LISTEN_PID", value: listenPID)
        }
        guard owner == pid else { return [] }
        guard let count = Int32(listenFDs), count >= 0, fdBase >= 0, count <= Int32.max - fdBase else {
            throw .invalidVariable(name: "LISTEN_FDS", value: listenFDs)
        }
        var names: [String?] = Array(repeating: nil, count: Int(count))
        if let listenFDNames {
            let given = listenFDNames.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard given.count == Int(count) else {
                throw .nameCountMismatch(descriptors: Int(count), names: given)
            }
            names = given
        }
        let sockets = (0..<count).map { ActivatedSocket(fd: fdBase + $0, name: names[Int($0)]) }
        // CLOEXEC on all of them first, as libsystemd does, so even a rejected set does not leak.
        for socket in sockets {
            let flags = fcntl(socket.fd, F_GETFD)
            guard flags >= 0 else { throw .badDescriptor(fd: socket.fd, name: socket.name) }
            if flags & FD_CLOEXEC == 0, fcntl(socket.fd, F_SETFD, flags | FD_CLOEXEC) < 0 {
                throw .systemCallFailed(call: "fcntl(F_SETFD)", fd: socket.fd, errno: Glibc.errno)
            }
        }
        for socket in sockets {
            try checkListeningUnixStream(fd: socket.fd, name: socket.name)
        }
        return sockets
    }

    /// Picks the query socket: the one named ``queryName`` if there is one, else the only socket.
    /// - Parameters:
    ///   - sockets: What ``listeningSockets(environment:pid:fdBase:unsetEnvironment:)`` returned.
    ///   - name: The wanted `FileDescriptorName=`.
    /// - Returns: The socket to serve on, or nil when `sockets` is empty.
    /// - Throws: ``SocketActivationError/noSocketNamed(_:available:)`` when several sockets were
    ///   passed and none has the name.
    public static func querySocket(
        in sockets: [ActivatedSocket],
        named name: String = queryName
    ) throws(SocketActivationError) -> ActivatedSocket? {
        if let named = sockets.first(where: { $0.name == name }) { return named }
        // One socket under another name (a unit without FileDescriptorName= passes "rulesd.socket")
        // is still unambiguous.
        if sockets.count <= 1 { return sockets.first }
        throw .noSocketNamed(name, available: sockets.map(\.name))
    }

    /// Takes over the passed sockets and picks the query socket, in one call.
    /// - Parameters:
    ///   - environment: Where to read the variables; the process environment by default.
    ///   - pid: Our process id; `getpid()` by default.
    ///   - fdBase: The first descriptor; ``firstDescriptor`` (3) by default.
    ///   - name: The wanted `FileDescriptorName=`.
    /// - Returns: The socket to serve on, or nil when the process was not socket-activated (then
    ///   the daemon binds its socket itself).
    /// - Throws: ``SocketActivationError`` as the two steps do.
    public static func querySocket(
        environment: SystemdEnvironment = .process,
        pid: pid_t = getpid(),
        fdBase: Int32 = firstDescriptor,
        named name: String = queryName
    ) throws(SocketActivationError) -> ActivatedSocket? {
        try querySocket(in: listeningSockets(environment: environment, pid: pid, fdBase: fdBase), named: name)
    }

    /// Checks that a descriptor is a listening AF_UNIX stream socket.
    /// - Parameters:
    ///   - fd: The descriptor.
    ///   - name: Its name, used in the error only.
    /// - Throws: ``SocketActivationError`` saying what the descriptor is instead.
    public static func checkListeningUnixStream(fd: Int32, name: String? = nil) throws(SocketActivationError) {
        var type: Int32 = 0
        guard getIntOption(fd, SO_TYPE, &type) else {
            switch Glibc.errno {
            case ENOTSOCK: throw .notASocket(fd: fd, name: name)
            case EBADF: throw .badDescriptor(fd: fd, name: name)
            case let code: throw .systemCallFailed(call: "getsockopt(SO_TYPE)", fd: fd, errno: code)
            }
        }
        guard type == Int32(SOCK_STREAM.rawValue) else { throw .wrongType(fd: fd, name: name, type: type) }
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            throw .systemCallFailed(call: "getsockname", fd: fd, errno: Glibc.errno)
        }
        guard Int32(address.ss_family) == AF_UNIX else {
            throw .wrongFamily(fd: fd, name: name, family: Int32(address.ss_family))
        }
        var listening: Int32 = 0
        guard getIntOption(fd, SO_ACCEPTCONN, &listening) else {
            throw .systemCallFailed(call: "getsockopt(SO_ACCEPTCONN)", fd: fd, errno: Glibc.errno)
        }
        guard listening != 0 else { throw .notListening(fd: fd, name: name) }
    }

    /// The address an AF_UNIX socket is bound to, for log messages.
    /// - Parameters:
    ///   - fd: A socket.
    /// - Returns: The path, "@name" for an abstract name, or nil for an unbound or non-Unix socket.
    public static func boundPath(of fd: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0, Int32(address.sun_family) == AF_UNIX else { return nil }
        return UnixSocketAddress.describe(address, length: length)
    }

    /// The group that owns the filesystem node a socket is bound to, i.e. `SocketGroup=`.
    ///
    /// `fstat` on the descriptor would describe the socket object, not the node in /run, so this
    /// looks the node up by path.
    /// - Parameters:
    ///   - fd: A socket bound to a filesystem path.
    /// - Returns: The node's group, or nil for an abstract or unbound socket or a vanished node.
    public static func socketFileGroup(of fd: Int32) -> gid_t? {
        guard let path = boundPath(of: fd), path.hasPrefix("/") else { return nil }
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else { return nil }
        return info.st_gid
    }

    private static func getIntOption(_ fd: Int32, _ option: Int32, _ value: inout Int32) -> Bool {
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, option, &value, &length) == 0
    }
}

private func socketTypeName(_ type: Int32) -> String {
    switch type {
    case Int32(SOCK_DGRAM.rawValue): "datagram (SOCK_DGRAM)"
    case Int32(SOCK_SEQPACKET.rawValue): "SOCK_SEQPACKET"
    case Int32(SOCK_RAW.rawValue): "SOCK_RAW"
    default: "type \(type)"
    }
}

private func familyName(_ family: Int32) -> String {
    switch family {
    case AF_INET: "AF_INET"
    case AF_INET6: "AF_INET6"
    case AF_NETLINK: "AF_NETLINK"
    case AF_VSOCK: "AF_VSOCK"
    default: "address family \(family)"
    }
}
