import Logging
import NIOCore
import RuleModel
import RulesProtocol
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Serves one client connection: decodes request lines, answers them in order, and pushes `watch` events.
///
/// Synchronous requests are evaluated on the connection's own event loop by its ``Worker`` and answered
/// immediately; the few operations that wait for something (`reload`, `status`, `metrics`) hold the lines
/// that follow them until they are answered, so answers always come back in request order. Reading stops
/// while too many lines wait or while the client is not reading its answers: a slow or stuck client only
/// ever costs its own connection a bounded amount of memory.
final class ConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = RequestFrame
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let worker: Worker
    private let services: DaemonServices
    private var decoder: RequestDecoder
    private var output: ByteBuffer
    private var waiting = CircularBuffer<ByteBuffer>()
    private var busy = false
    private var heldRead = false
    private var inputClosed = false
    private var watching = false
    private var closing = false
    private var peer: PeerCredentials?
    private var context: ChannelHandlerContext?

    init(worker: Worker, services: DaemonServices, allocator: ByteBufferAllocator) {
        self.worker = worker
        self.services = services
        self.decoder = RequestDecoder(maxDepth: max(services.settings.limits.maxContextDepth + 2, 8))
        self.output = allocator.buffer(capacity: 4096)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        peer = Self.peer(of: context.channel)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if watching {
            services.watchHub.unsubscribe(ObjectIdentifier(self))
            watching = false
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if closing {
            context.read()
            return
        }
        switch unwrapInboundIn(data) {
        case .tooLarge(let limit):
            waiting.removeAll()
            refuseTooLarge(limit: limit, context: context)
        case .line(let line):
            if busy || !waiting.isEmpty {
                waiting.append(line)
            } else {
                worker.beginBatch()
                _ = line.withUnsafeReadableBytes { process($0, context: context) }
                worker.endBatch()
            }
        case .lines(let lines):
            processLines(lines, context: context)
        }
    }

    /// Answers the complete lines of one read in place; whatever follows an operation that has to wait
    /// is kept, line by line, until it is answered.
    private func processLines(_ lines: ByteBuffer, context: ChannelHandlerContext) {
        let limit = services.settings.maxRequestBytes
        worker.beginBatch()
        RequestFrame.forEachLine(lines) { bytes, range in
            if closing { return false }
            if busy || !waiting.isEmpty {
                waiting.append(lines.getSlice(at: lines.readerIndex + range.lowerBound, length: range.count)!)
                return true
            }
            if bytes.count > limit {
                refuseTooLarge(limit: limit, context: context)
                return false
            }
            if bytes.isEmpty { return true }
            return process(bytes, context: context)
        }
        worker.endBatch()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushOutput(context: context)
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if shouldHoldReads(context: context) {
            heldRead = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReadingIfPossible(context: context)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            // Watchers are quiet by design, and a connection waiting for a reload is not idle.
            if !watching && !busy && waiting.isEmpty { context.close(promise: nil) }
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosed = true
            if closing {
                context.close(promise: nil)
            } else {
                closeIfDone(context: context)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A client that vanishes mid-answer (EPIPE, ECONNRESET) costs only its own connection.
        context.close(promise: nil)
    }

    /// Shutdown: answer what was already read (and any reload in progress), then close.
    func drainAndClose() {
        guard let context else { return }
        if watching {
            services.watchHub.unsubscribe(ObjectIdentifier(self))
            watching = false
        }
        inputClosed = true
        flushOutput(context: context)
        closeIfDone(context: context)
    }

    /// Who connected (SO_PEERCRED); on the channel's event loop the answer is immediate.
    private static func peer(of channel: any Channel) -> PeerCredentials? {
        #if os(Linux)
            guard let provider = channel as? any SocketOptionProvider else { return nil }
            var credentials: PeerCredentials?
            // PeerCredentials is laid out like Linux's struct ucred (pid, uid, gid).
            let future: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
            future.assumeIsolated().whenSuccess { credentials = $0 }
            return credentials
        #else
            return nil
        #endif
    }

    // MARK: - requests

    /// Answers one request line. Returns false when the lines after it must wait (an asynchronous
    /// operation started).
    private func process(_ line: UnsafeRawBufferPointer, context: ChannelHandlerContext) -> Bool {
        switch decoder.decode(line) {
        case .failure(let failure):
            ResponseWriter.writeFailure(
                id: failure.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }, error: failure.error, into: &output)
            worker.metrics.recordRequest(.ping, ok: false)
        case .success(let request):
            switch request.operation {
            case .ping, .flag, .flags, .route, .config:
                worker.answer(request, line: line, into: &output)
            case .watch:
                startWatching(request, line: line, context: context)
            case .status, .metrics, .reload:
                startWaiting(request, line: line, context: context)
            }
        }
        if output.readableBytes >= 64 << 10 { flushOutput(context: context) }
        return !busy
    }

    private func idBytes(_ request: DecodedRequest, _ line: UnsafeRawBufferPointer) -> [UInt8]? {
        request.id.map { Array(line[$0]) }
    }

    private func startWatching(_ request: DecodedRequest, line: UnsafeRawBufferPointer, context: ChannelHandlerContext)
    {
        let generation = worker.servingGeneration
        let id = idBytes(request, line)
        var result: [UInt8] = []
        result.append(contentsOf: #"{"watching":true}"#.utf8)
        id.withUnsafeOptionalBytes { idBuffer in
            ResponseWriter.writeSuccess(
                id: idBuffer, revision: generation?.shortRevision ?? "", generation: generation?.number ?? 0,
                result: result, into: &output)
        }
        if !watching {
            watching = true
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            services.watchHub.subscribe(ObjectIdentifier(self), eventLoop: context.eventLoop) { event in
                loopBound.value.push(event)
            }
        }
    }

    /// Writes a pushed event line; called on this connection's event loop.
    private func push(_ event: [UInt8]) {
        guard let context, !closing else { return }
        if !context.channel.isWritable {
            // A watcher that stopped reading: drop it rather than buffer without bound.
            context.close(promise: nil)
            return
        }
        ResponseWriter.writeEvent(event, into: &output)
        flushOutput(context: context)
    }

    private func startWaiting(_ request: DecodedRequest, line: UnsafeRawBufferPointer, context: ChannelHandlerContext) {
        busy = true
        let id = idBytes(request, line)
        let services = self.services
        let peer = self.peer
        let promise = context.eventLoop.makePromise(of: ByteBuffer.self)
        let allocator = context.channel.allocator
        promise.completeWithTask {
            var buffer = allocator.buffer(capacity: 512)
            await services.answerWaiting(request.operation, id: id, peer: peer, into: &buffer)
            return buffer
        }
        promise.futureResult.assumeIsolated().whenComplete { [self] outcome in
            busy = false
            guard let context = self.context else { return }
            switch outcome {
            case .success(var answer): output.writeBuffer(&answer)
            case .failure(let error):
                id.withUnsafeOptionalBytes { idBuffer in
                    ResponseWriter.writeFailure(
                        id: idBuffer, error: ProtocolError(.internal, "\(error)"), into: &output)
                }
            }
            drainWaiting(context: context)
            flushOutput(context: context)
            closeIfDone(context: context)
            resumeReadingIfPossible(context: context)
        }
    }

    private func drainWaiting(context: ChannelHandlerContext) {
        worker.beginBatch()
        defer { worker.endBatch() }
        while !busy, !closing, let line = waiting.popFirst() {
            var bytes = line
            // Lines kept from a batch still carry their terminator.
            if bytes.readableBytes > 0, bytes.getInteger(at: bytes.writerIndex - 1, as: UInt8.self) == 0x0A {
                bytes.moveWriterIndex(to: bytes.writerIndex - 1)
                if bytes.readableBytes > 0, bytes.getInteger(at: bytes.writerIndex - 1, as: UInt8.self) == 0x0D {
                    bytes.moveWriterIndex(to: bytes.writerIndex - 1)
                }
            }
            if bytes.readableBytes > services.settings.maxRequestBytes {
                refuseTooLarge(limit: services.settings.maxRequestBytes, context: context)
                return
            }
            if bytes.readableBytes == 0 { continue }
            _ = bytes.withUnsafeReadableBytes { process($0, context: context) }
        }
    }

    // MARK: - flow control

    private func shouldHoldReads(context: ChannelHandlerContext) -> Bool {
        waiting.count >= services.settings.maxPipelinedRequests || !context.channel.isWritable
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        if heldRead && !shouldHoldReads(context: context) {
            heldRead = false
            context.read()
        }
    }

    private func flushOutput(context: ChannelHandlerContext) {
        guard output.readableBytes > 0 else { return }
        let buffer = output
        output = context.channel.allocator.buffer(capacity: 4096)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// Answers REQUEST_TOO_LARGE for a line over `limit` bytes and closes: the rest of the stream cannot be framed.
    private func refuseTooLarge(limit: Int, context: ChannelHandlerContext) {
        ResponseWriter.writeFailure(
            id: nil,
            error: ProtocolError(.requestTooLarge, "request line longer than \(limit) bytes; closing the connection"),
            into: &output)
        closeAfterFlush(context: context, linger: true)
    }

    private func closeIfDone(context: ChannelHandlerContext) {
        guard inputClosed, !busy, waiting.isEmpty, !watching else { return }
        closeAfterFlush(context: context)
    }

    /// Closes once the pending answers are written. With `linger`, only the sending side closes at first
    /// and input is discarded for a moment: closing a Unix socket with unread input resets it, and the
    /// client could lose the answer that says why.
    private func closeAfterFlush(context: ChannelHandlerContext, linger: Bool = false) {
        guard !closing else { return }
        closing = true
        let buffer = output
        output = context.channel.allocator.buffer(capacity: 0)
        context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in
            guard linger else {
                context.close(promise: nil)
                return
            }
            context.close(mode: .output, promise: nil)
            context.read()
            context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) {
                context.close(promise: nil)
            }
        }
    }
}

extension Optional where Wrapped == [UInt8] {
    func withUnsafeOptionalBytes<R>(_ body: (UnsafeRawBufferPointer?) -> R) -> R {
        switch self {
        case .some(let bytes): return bytes.withUnsafeBytes { body($0) }
        case .none: return body(nil)
        }
    }
}
