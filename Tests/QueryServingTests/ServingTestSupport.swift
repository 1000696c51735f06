import CEventPoll
import Foundation
import Glibc
import NIOCore
import RuleModel
import RulesProtocol
import RulesTestSupport
import Synchronization
import SystemdSupport

@testable import QueryServing

/// Answers every synchronous request with `{"op": <operation>}`, so tests see which request an answer is for.
final class EchoResponder: QueryResponder {
    /// When set, `flag` requests are answered later, when the test completes them.
    let later: LaterAnswers?

    init(later: LaterAnswers? = nil) {
        self.later = later
    }

    func beginBatch() {}
    func endBatch() {}

    func answer(_ request: DecodedRequest, line: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        ResponseWriter.writeSuccess(
            id: request.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }, revision: "r", generation: 1,
            result: Array(#"{"op":"\#(request.operation.rawValue)"}"#.utf8), into: &out)
    }

    func acknowledgeWatch(id: UnsafeRawBufferPointer?, into out: inout ByteBuffer) {
        ResponseWriter.writeSuccess(
            id: id, revision: "r", generation: 1, result: Array(#"{"watching":true}"#.utf8), into: &out)
    }

    func recordUndecodable() {}

    func answerLater(
        _ request: DecodedRequest, line: UnsafeRawBufferPointer, on loop: ServingEventLoop
    ) -> EventLoopFuture<ByteBuffer>? {
        guard let later, request.operation == .flag else { return nil }
        var answer = ByteBufferAllocator().buffer(capacity: 128)
        self.answer(request, line: line, into: &answer)
        let promise = loop.makePromise(of: ByteBuffer.self)
        later.add(promise, answer)
        return promise.futureResult
    }
}

/// Answers an ``EchoResponder`` gives later: held until the test completes them.
final class LaterAnswers: Sendable {
    private let waiting = Mutex<[(EventLoopPromise<ByteBuffer>, ByteBuffer)]>([])

    func add(_ promise: EventLoopPromise<ByteBuffer>, _ answer: ByteBuffer) {
        waiting.withLock { $0.append((promise, answer)) }
    }

    /// How many answers are held.
    var count: Int { waiting.withLock { $0.count } }

    /// Completes every held answer.
    func completeAll() {
        for (promise, answer) in waiting.withLock({ list in
            defer { list.removeAll() }; return list
        }) {
            promise.succeed(answer)
        }
    }
}

/// A backend whose waiting operations answer after `delay` (and, when held, not before ``release()``), and whose
/// watchers can be sent events.
final class EchoBackend: QueryBackend {
    let delay: @Sendable () -> Duration
    private let held: Bool
    private let released = Flag()
    private let watchers = Mutex<[ObjectIdentifier: (ServingEventLoop, @Sendable ([UInt8]) -> Void)]>([:])

    /// - Parameters:
    ///   - delay: how long each waiting operation takes.
    ///   - held: whether waiting operations also wait for ``release()``, so that a test can act while one is
    ///     certainly in flight, however slowly the machine runs.
    /// Answers `flag` requests later, when given.
    let later: LaterAnswers?

    init(
        delay: @escaping @Sendable () -> Duration = { .milliseconds(20) }, held: Bool = false,
        later: LaterAnswers? = nil
    ) {
        self.delay = delay
        self.held = held
        self.later = later
    }

    /// Lets held operations answer.
    func release() { released.set() }

    func responder(on loop: ServingEventLoop) -> QueryResponder { EchoResponder(later: later) }

    func answerWaiting(_ operation: RequestOperation, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer {
        try? await Task.sleep(for: delay())
        while held && !released.isSet { try? await Task.sleep(for: .milliseconds(5)) }
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        id.withUnsafeOptionalBytes { id in
            ResponseWriter.writeSuccess(
                id: id, revision: "r", generation: 1, result: Array(#"{"op":"\#(operation.rawValue)"}"#.utf8),
                into: &buffer)
        }
        return buffer
    }

    func watch(_ key: ObjectIdentifier, on loop: ServingEventLoop, deliver: @escaping @Sendable ([UInt8]) -> Void) {
        watchers.withLock { $0[key] = (loop, deliver) }
    }

    func unwatch(_ key: ObjectIdentifier) {
        _ = watchers.withLock { $0.removeValue(forKey: key) }
    }

    var watcherCount: Int { watchers.withLock { $0.count } }

    func publish(_ event: String) {
        for (loop, deliver) in watchers.withLock({ Array($0.values) }) {
            loop.execute { deliver(Array(event.utf8)) }
        }
    }
}

/// One ``QueryConnection`` on its own loop, served over a socketpair; the test holds the other end.
final class ConnectionHarness: Sendable {
    let loop: ServingEventLoop
    let client: LineClient
    let backend: EchoBackend
    let closed = Flag()
    private let connection: NIOLoopBound<QueryConnection>

    static func limits(
        maxRequestBytes: Int = 1 << 20, maxPipelined: Int = 1024, idleTimeout: TimeAmount = .seconds(300)
    ) -> ConnectionLimits {
        ConnectionLimits(
            maxRequestBytes: maxRequestBytes, maxPipelinedRequests: maxPipelined, idleTimeout: idleTimeout,
            maxContextDepth: 32, maxConnections: 16, lingerTime: .milliseconds(300))
    }

    init(
        limits: ConnectionLimits = ConnectionHarness.limits(), admission: Admission = .ordinary,
        backend: EchoBackend = EchoBackend(), clientTimeout: Double = 20
    ) async throws {
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else {
            throw HarnessError("socketpair: \(errno)")
        }
        let served = pair[0]
        _ = fcntl(served, F_SETFL, fcntl(served, F_GETFL) | O_NONBLOCK)
        let loop = try ServingEventLoop(name: "test-connection")
        self.loop = loop
        self.backend = backend
        self.client = LineClient(descriptor: pair[1], timeout: clientTimeout)
        let closed = self.closed
        connection = try await loop.submit {
            let connection = QueryConnection(
                descriptor: served, loop: loop, responder: backend.responder(on: loop), backend: backend,
                limits: limits, admission: admission, peer: nil,
                onClose: { _ in closed.set() })
            _ = connection.start()
            return NIOLoopBound(connection, eventLoop: loop)
        }.get()
    }

    /// Reads the next answer on a thread of its own: a blocking read on one of the few threads of Swift's
    /// concurrency pool could starve the tasks that compute the answers being waited for.
    func readJSON() async throws -> JSONValue {
        let client = self.client
        return try await offPool { try client.readJSON() }
    }

    /// Reads the next line (nil at the end of the stream) on a thread of its own.
    func readLine() async throws -> String? {
        let client = self.client
        return try await offPool { try client.readLine() }
    }

    /// Sends one request line and reads its answer.
    func request(_ line: String) async throws -> JSONValue {
        try client.send(line + "\n")
        return try await readJSON()
    }

    /// The connection's state, read on its loop.
    func state() async throws -> ConnectionState {
        let connection = self.connection
        return try await loop.submit { connection.value.state }.get()
    }

    /// Calls to `send` that wrote answer bytes so far, read on the loop.
    func writes() async throws -> Int {
        let connection = self.connection
        return try await loop.submit { connection.value.writes }.get()
    }

    /// Asks the connection to drain, as the daemon's shutdown does.
    func drain() {
        let connection = self.connection
        loop.execute { connection.value.drain() }
    }

    func stop() async {
        try? await loop.shutdownGracefully()
    }
}

/// Runs blocking work on a new thread and waits for it without holding a thread of the concurrency pool.
func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try work() }) }
        thread.start()
    }
}

/// A flag set from any thread.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// A counter bumped from any thread.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func add() { value.add(1, ordering: .relaxed) }
    var current: Int { value.load(ordering: .relaxed) }
}
