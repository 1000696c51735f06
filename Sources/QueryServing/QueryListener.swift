import CEventPoll
import Logging
import NIOCore
import RulesProtocol
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The listening socket, polled by the first loop: accepts connections, admits them through the
/// ``ConnectionRegistry`` (refusing those over the limit with an answer that says so), and hands the others
/// to the loop the ``LoopBalancer`` chooses.
final class QueryListener: EventPollSource, @unchecked Sendable {
    private let descriptor: Int32
    private let balancer: LoopBalancer
    private let backend: QueryBackend
    private let limits: ConnectionLimits
    private let connections: ConnectionRegistry
    private let logger: Logger
    private let loop: ServingEventLoop
    /// Completed when the listener is closed.
    let closed: EventLoopPromise<Void>
    // Owned by `loop`: `@unchecked Sendable` only so that tasks can carry the reference there.
    private var isClosed = false
    private var pausedUntilDescriptorsFree = false

    init(
        descriptor: Int32, balancer: LoopBalancer, backend: QueryBackend, limits: ConnectionLimits,
        connections: ConnectionRegistry, logger: Logger
    ) {
        self.descriptor = descriptor
        self.balancer = balancer
        self.backend = backend
        self.limits = limits
        self.connections = connections
        self.logger = logger
        self.loop = balancer.loops[0]
        self.closed = balancer.loops[0].makePromise(of: Void.self)
    }

    /// Starts polling the socket; on the first loop.
    func start() throws {
        guard loop.register(descriptor, interest: RULESD_EPOLLIN, source: self) else {
            throw StartupError("cannot poll the listening socket: \(String(cString: strerror(errno)))")
        }
    }

    /// Stops accepting and closes the socket; on the first loop.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        if !pausedUntilDescriptorsFree { loop.deregister(descriptor) }
        Glibc.close(descriptor)
        closed.succeed(())
    }

    func ready(_ events: UInt32) {
        for _ in 0..<64 where !isClosed && !pausedUntilDescriptorsFree {
            let client = accept(descriptor, nil, nil)
            if client < 0 {
                let failure = errno
                switch failure {
                case EINTR, ECONNABORTED: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of descriptors: the pending connection stays in the backlog, and polling would
                    // report it again at once. Look again in a moment instead of spinning.
                    logger.error(
                        "cannot accept a connection; retrying in 100 ms",
                        metadata: ["error": "\(String(cString: strerror(failure)))"])
                    pauseAccepting()
                default: break
                }
                return
            }
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
            _ = fcntl(client, F_SETFD, fcntl(client, F_GETFD) | FD_CLOEXEC)
            accepted(client)
        }
    }

    private func pauseAccepting() {
        pausedUntilDescriptorsFree = true
        loop.deregister(descriptor)
        loop.assumeIsolated().scheduleTask(in: .milliseconds(100)) { [self] in
            pausedUntilDescriptorsFree = false
            if !isClosed { _ = loop.register(descriptor, interest: RULESD_EPOLLIN, source: self) }
        }
    }

    private func accepted(_ client: Int32) {
        let key = ConnectionKey()
        guard let admission = connections.admit(key.id, limits: limits) else {
            refuse(client)
            return
        }
        // The groups the peer's process really has, read now: the daemon may not find them in the account
        // database (PrivateUsers=yes, a container's supplemental groups).
        let peer = peerCredentials(fd: client).map { credentials in
            var peer = credentials
            peer.supplementaryGroups = peerGroups(fd: client)
            return peer
        }
        let target = balancer.place()
        let backend = self.backend
        let limits = self.limits
        let connections = self.connections
        let balancer = self.balancer
        target.execute {
            let connection = QueryConnection(
                descriptor: client, loop: target, responder: backend.responder(on: target), backend: backend,
                limits: limits, admission: admission, peer: peer,
                onClose: { loop in
                    balancer.closed(on: loop)
                    connections.remove(key.id)
                })
            let home = connection.home
            guard connection.start() else { return }
            connections.setDrain(key.id) { home.run { $0.drain() } }
        }
    }

    /// Answers TOO_MANY_CONNECTIONS and closes.
    private func refuse(_ client: Int32) {
        var answer = ByteBufferAllocator().buffer(capacity: 160)
        ResponseWriter.writeFailure(
            id: nil,
            error: ProtocolError(
                .tooManyConnections,
                "rulesd is serving its maximum of \(limits.maxConnections) connections (and its reserve of "
                    + "\(limits.reservedConnections) for ping and status); try again"),
            into: &answer)
        // A fresh socket's send buffer is empty: the short answer goes out whole or not at all.
        _ = answer.withUnsafeReadableBytes {
            send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        }
        Glibc.close(client)
    }
}

/// A unique key for a connection in the ``ConnectionRegistry``, valid while the key object lives.
final class ConnectionKey: Sendable {
    var id: ObjectIdentifier { ObjectIdentifier(self) }
}
