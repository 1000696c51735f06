import NIOCore
import RulesProtocol
import SystemdSupport

/// What the serving core asks of the daemon, for all connections: the answers that wait for something, and
/// `watch` subscriptions. The core knows nothing of rules, reloads or metrics beyond this.
public protocol QueryBackend: Sendable {
    /// The evaluator of synchronous requests for the connections of `loop`; called on `loop`, once per
    /// connection. It stays on that loop.
    func responder(on loop: ServingEventLoop) -> QueryResponder

    /// Answers one of the operations that wait for something (`status`, `metrics`, `reload`): the whole
    /// answer line, ending in `\n`.
    /// - Parameters:
    ///   - operation: the request's operation.
    ///   - id: the raw JSON text of the request's `id`, to echo.
    ///   - peer: the connection's peer credentials, when known.
    func answerWaiting(_ operation: RequestOperation, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer

    /// Answers a waiting operation that carries members of its own (`show`'s `revision` and `path`, ...); the
    /// request holds them decoded, so it outlives its line.
    func answerWaiting(_ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer

    /// Delivers every later event line (without its newline) to `deliver`, on `loop`, until ``unwatch(_:)``.
    func watch(_ key: ObjectIdentifier, on loop: ServingEventLoop, deliver: @escaping @Sendable ([UInt8]) -> Void)

    /// Like ``watch(_:on:deliver:)``, for the events of one namespace only when `namespace` is set.
    func watch(
        _ key: ObjectIdentifier, namespace: String?, on loop: ServingEventLoop,
        deliver: @escaping @Sendable ([UInt8]) -> Void)

    /// Why a `watch` may not follow `namespace` (it is not served), or nil when it may. Called on the
    /// connection's loop.
    func watchRefusal(namespace: String) -> ProtocolError?

    /// Ends a subscription made by ``watch(_:on:deliver:)``.
    func unwatch(_ key: ObjectIdentifier)

    /// The roles a connection's peer holds; asked once per connection without group lookups, and once more with
    /// them when a request needs a role the first answer lacks. Called on the connection's loop.
    func roles(for peer: PeerCredentials?, lookingUpGroups: Bool) -> AccessRoles

    /// The roles a connection's peer holds for requests in `namespace`: the daemon-wide ones and what that
    /// namespace's own policy grants. Asked only when the daemon-wide roles do not permit a request that names a
    /// namespace. Called on the connection's loop.
    func roles(for peer: PeerCredentials?, namespace: String, lookingUpGroups: Bool) -> AccessRoles

    /// A request was answered `FORBIDDEN` (for the audit log). Called on the connection's loop: must not block.
    func refused(_ operation: RequestOperation, peer: PeerCredentials?, held: AccessRoles)
}

extension QueryBackend {
    /// A backend without an access policy serves every operation to everyone who can connect.
    public func roles(for peer: PeerCredentials?, lookingUpGroups: Bool) -> AccessRoles { .all }

    public func refused(_ operation: RequestOperation, peer: PeerCredentials?, held: AccessRoles) {}

    /// A backend without namespaces' policies grants the same roles in every namespace.
    public func roles(for peer: PeerCredentials?, namespace: String, lookingUpGroups: Bool) -> AccessRoles {
        roles(for: peer, lookingUpGroups: lookingUpGroups)
    }

    /// A backend of one namespace lets a watch name any.
    public func watchRefusal(namespace: String) -> ProtocolError? { nil }

    /// A backend of one namespace delivers every event.
    public func watch(
        _ key: ObjectIdentifier, namespace: String?, on loop: ServingEventLoop,
        deliver: @escaping @Sendable ([UInt8]) -> Void
    ) {
        watch(key, on: loop, deliver: deliver)
    }

    public func answerWaiting(_ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer {
        await answerWaiting(request.operation, id: id, peer: peer)
    }
}

/// Evaluates the synchronous requests of one loop's connections. Used only on its loop.
public protocol QueryResponder: AnyObject {
    /// Starts a batch of requests read together (one clock reading serves them all); batches nest.
    func beginBatch()
    func endBatch()
    /// Answers a synchronous request (`ping`, `flag`, `flags`, `route`, `config`) into `out`.
    func answer(_ request: DecodedRequest, line: UnsafeRawBufferPointer, into out: inout ByteBuffer)
    /// Acknowledges a `watch` request into `out`.
    func acknowledgeWatch(id: UnsafeRawBufferPointer?, into out: inout ByteBuffer)
    /// Counts a line that could not be decoded (its failure answer is written by the connection).
    func recordUndecodable()
    /// Answers a synchronous request later instead of into the output at once (its rule set is evaluated in
    /// another process): the whole answer line, on `loop`; the connection's later requests wait behind it. Nil
    /// to have ``answer(_:line:into:)`` answer it now.
    func answerLater(
        _ request: DecodedRequest, line: UnsafeRawBufferPointer, on loop: ServingEventLoop
    ) -> EventLoopFuture<ByteBuffer>?
    /// Acknowledges a `watch` of one namespace into `out`, with that namespace's revision and generation.
    func acknowledgeWatch(id: UnsafeRawBufferPointer?, namespace: String, into out: inout ByteBuffer)
}

extension QueryResponder {
    public func answerLater(
        _ request: DecodedRequest, line: UnsafeRawBufferPointer, on loop: ServingEventLoop
    ) -> EventLoopFuture<ByteBuffer>? { nil }

    /// A responder of one namespace acknowledges every watch alike.
    public func acknowledgeWatch(id: UnsafeRawBufferPointer?, namespace: String, into out: inout ByteBuffer) {
        acknowledgeWatch(id: id, into: &out)
    }
}

/// The limits every connection is held to.
public struct ConnectionLimits: Sendable {
    /// Longest request line, in bytes.
    public var maxRequestBytes: Int
    /// Request lines read ahead while an earlier one waits for its answer, before reading pauses.
    public var maxPipelinedRequests: Int
    /// A connection with no complete request for this long is closed (watchers and connections waiting for
    /// an answer are exempt). Bytes of a line that never ends do not count as activity.
    public var idleTimeout: TimeAmount
    /// Deepest JSON nesting in a request's context.
    public var maxContextDepth: Int
    /// Connections served at once.
    public var maxConnections: Int
    /// Connections beyond `maxConnections` kept for the liveness and health path (see ``Admission/reserve``).
    public var reservedConnections: Int
    /// The idle timeout of a reserve connection.
    public var reserveIdleTimeout: TimeAmount
    /// How long a connection that is closed for a protocol error keeps discarding input after its last
    /// answer, so that the client reads that answer rather than a reset.
    public var lingerTime: TimeAmount

    public init(
        maxRequestBytes: Int, maxPipelinedRequests: Int, idleTimeout: TimeAmount, maxContextDepth: Int,
        maxConnections: Int, reservedConnections: Int = 8, reserveIdleTimeout: TimeAmount = .seconds(10),
        lingerTime: TimeAmount = .seconds(2)
    ) {
        self.maxRequestBytes = maxRequestBytes
        self.maxPipelinedRequests = maxPipelinedRequests
        self.idleTimeout = idleTimeout
        self.maxContextDepth = maxContextDepth
        self.maxConnections = maxConnections
        self.reservedConnections = reservedConnections
        self.reserveIdleTimeout = reserveIdleTimeout
        self.lingerTime = lingerTime
    }
}

/// A reason the serving core cannot start.
public struct StartupError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
