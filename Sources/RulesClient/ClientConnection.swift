import NIOCore
import NIOPosix
import RuleModel

/// A request on its way to the handler: its members (without `id`), where its answer goes, and how long to
/// wait for it.
struct OutgoingRequest: Sendable {
    var members: JSONObject
    var answer: EventLoopPromise<JSONValue>
    var timeout: Duration?
}

/// Matches answers to requests by `id` on one pipelined connection, and passes event lines to `onEvent`.
///
/// All state lives on the channel's event loop: the ids, the waiting requests and their timeouts. Whoever
/// removes a request from `pending` completes its promise, so each is completed once.
final class ClientProtocolHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = OutgoingRequest
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        var answer: EventLoopPromise<JSONValue>
        var timeout: Scheduled<Void>?
    }

    private var nextID: Int64 = 1
    private var pending: [Int64: Pending] = [:]
    /// Why the connection is going away, for the requests still waiting: an answer without a matching id
    /// (`TOO_MANY_CONNECTIONS` before any request), or a decoding error.
    private var closingError: RulesdClientError?
    private let onEvent: (@Sendable (JSONObject) -> Void)?
    private let parser = JSONParser(limits: JSONLimits(maxDepth: 600))

    init(onEvent: (@Sendable (JSONObject) -> Void)?) {
        self.onEvent = onEvent
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        let id = nextID
        nextID += 1
        var members: [(String, JSONValue)] = [("id", .integer(id))]
        for (key, value) in request.members where key != "id" { members.append((key, value)) }
        var bytes: [UInt8] = []
        JSONWriter().write(.object(JSONObject(members)), to: &bytes)
        bytes.append(UInt8(ascii: "\n"))

        var entry = Pending(answer: request.answer, timeout: nil)
        if let timeout = request.timeout {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            entry.timeout = context.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
                loopBound.value.complete(id, with: .failure(RulesdClientError.timedOut(timeout)))
            }
        }
        pending[id] = entry
        let written = context.eventLoop.makePromise(of: Void.self)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        written.futureResult.whenFailure { error in
            loopBound.value.complete(id, with: .failure(RulesdClientError.connectionLost(reason: "\(error)")))
        }
        promise.map { written.futureResult.cascade(to: $0) }
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: written)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = unwrapInboundIn(data)
        guard case .object(let object)? = try? line.withUnsafeReadableBytes({ try parser.parse($0) }) else {
            closingError = .invalidAnswer("a line that is not a JSON object")
            context.close(promise: nil)
            return
        }
        if object["event"] != nil && object["ok"] == nil {
            onEvent?(object)
            return
        }
        if let id = object["id"]?.int64Value, pending[id] != nil {
            complete(id, with: .success(.object(object)))
            return
        }
        // An answer to no request of ours: the daemon's refusal of the connection itself, which it closes next.
        if object["ok"]?.boolValue == false, let error = object["error"] {
            closingError = .daemon(Self.daemonError(error))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if closingError == nil { closingError = .connectionLost(reason: "\(error)") }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = closingError ?? .connectionLost(reason: "rulesd closed the connection")
        for id in Array(pending.keys) { complete(id, with: .failure(error)) }
        context.fireChannelInactive()
    }

    private func complete(_ id: Int64, with result: Result<JSONValue, Error>) {
        guard let entry = pending.removeValue(forKey: id) else { return }
        entry.timeout?.cancel()
        entry.answer.completeWith(result)
    }

    /// A protocol `error` object as a ``DaemonError``; anything unexpected becomes `INTERNAL`.
    static func daemonError(_ error: JSONValue) -> DaemonError {
        let object = error.objectValue ?? JSONObject()
        return DaemonError(
            code: RulesErrorCode(rawValue: object["code"]?.stringValue ?? "INTERNAL"),
            message: object["message"]?.stringValue ?? "", details: object)
    }
}

/// One connection to the daemon, carrying any number of concurrent requests.
final class ClientConnection: Sendable {
    let channel: Channel

    private init(channel: Channel) {
        self.channel = channel
    }

    /// Connects to the daemon's socket.
    /// - Parameters:
    ///   - onEvent: receives the event lines (`watch`), on the connection's event loop.
    static func connect(
        to path: String, group: EventLoopGroup, timeout: Duration, maxLineBytes: Int,
        onEvent: (@Sendable (JSONObject) -> Void)? = nil
    ) async throws -> ClientConnection {
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(TimeAmount(timeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(LineSplitter(maxLineBytes: maxLineBytes)))
                    try channel.pipeline.syncOperations.addHandler(ClientProtocolHandler(onEvent: onEvent))
                }
            }
            .connect(unixDomainSocketPath: path).get()
        return ClientConnection(channel: channel)
    }

    /// Whether the connection can still carry requests.
    var isActive: Bool { channel.isActive }

    /// Sends one request (its `id` is chosen here) and returns the whole answer line.
    func send(_ members: JSONObject, timeout: Duration?) async throws -> JSONValue {
        let answer = channel.eventLoop.makePromise(of: JSONValue.self)
        channel.writeAndFlush(OutgoingRequest(members: members, answer: answer, timeout: timeout))
            .whenFailure { error in
                // The handler never saw the request (the channel had closed): nothing else completes it.
                answer.fail(RulesdClientError.connectionLost(reason: "\(error)"))
            }
        // A cancelled caller stops waiting at once; the answer, when it comes, finds its promise completed.
        return try await withTaskCancellationHandler {
            try await answer.futureResult.get()
        } onCancel: {
            answer.fail(RulesdClientError.cancelled)
        }
    }

    func close() async {
        try? await channel.close()
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
