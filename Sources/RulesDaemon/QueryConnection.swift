import CEventPoll
import Logging
import NIOCore
import RuleModel
import RulesProtocol
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Serves one client connection on its worker's ``ServingEventLoop``: reads request lines, answers them in
/// order, and pushes `watch` events.
///
/// Synchronous requests are evaluated on the connection's own loop by its ``Worker`` and answered at once;
/// the few operations that wait for something (`reload`, `status`, `metrics`) hold the lines that follow
/// them until they are answered, so answers always come back in request order. Reading stops while too many
/// lines wait or while the client is not reading its answers: a slow or stuck client only ever costs its own
/// connection a bounded amount of memory. A client that vanishes mid-answer (EPIPE, ECONNRESET) costs only
/// its own connection.
///
/// Everything here runs on the connection's loop; the only ways in from elsewhere are the loop's tasks.
final class QueryConnection: EventPollSource {
    /// Unsent answer bytes beyond which reading pauses (the client is not reading its answers).
    static let outputHighWater = 64 << 10

    private let descriptor: Int32
    private let loop: ServingEventLoop
    private let worker: Worker
    private let services: DaemonServices
    private let onClose: () -> Void
    private var decoder: RequestDecoder
    private var framer: LineFrameDecoder
    /// Input after the last complete line, waiting for the rest of its line.
    private var pending: ByteBuffer?
    /// Answers not yet written; while a write is blocked they wait here and the loop polls for writability.
    private var output: ByteBuffer
    private var waiting = CircularBuffer<ByteBuffer>()
    private var busy = false
    private var inputClosed = false
    private var watching = false
    /// The connection is finishing: what is read is discarded, and it closes once its answers are out.
    private var closing = false
    private var lingerAfterFlush = false
    /// The answers are out and the sending side is shut; input is discarded until the client closes.
    private var lingering = false
    private var closed = false
    private var interest: UInt32 = 0
    private var peer: PeerCredentials?
    /// Reads since the idle timer last looked, and how many of its looks in a row found none: counting
    /// spares every read a clock reading.
    private var readsSinceIdleCheck = 0
    private var quietIdleChecks = 0
    private var idleCheck: Scheduled<Void>?
    private var lingerTimer: Scheduled<Void>?

    /// - Parameter onClose: runs once, on the loop, when the connection is closed.
    init(
        descriptor: Int32, loop: ServingEventLoop, worker: Worker, services: DaemonServices,
        onClose: @escaping () -> Void
    ) {
        self.descriptor = descriptor
        self.loop = loop
        self.worker = worker
        self.services = services
        self.onClose = onClose
        self.decoder = RequestDecoder(maxDepth: max(services.settings.limits.maxContextDepth + 2, 8))
        self.framer = LineFrameDecoder(maxLineBytes: services.settings.maxRequestBytes)
        self.output = ByteBufferAllocator().buffer(capacity: 4096)
    }

    /// Starts serving; false (and the descriptor closed) when the loop cannot poll it.
    func start() -> Bool {
        peer = peerCredentials(fd: descriptor)
        interest = RULESD_EPOLLIN
        guard loop.register(descriptor, interest: interest, source: self) else {
            closed = true
            Glibc.close(descriptor)
            onClose()
            return false
        }
        scheduleIdleCheck()
        return true
    }

    // MARK: - readiness

    func ready(_ events: UInt32) {
        if closed { return }
        if events & RULESD_EPOLLOUT != 0 { writeOutput() }
        if closed { return }
        if events & (RULESD_EPOLLIN | RULESD_EPOLLHUP | RULESD_EPOLLERR) != 0 {
            if wantsRead {
                readInput()
            } else if events & (RULESD_EPOLLHUP | RULESD_EPOLLERR) != 0 {
                // The client closed both directions (or the socket failed) while we were not reading:
                // nothing more can be delivered.
                close()
            }
        }
        if closed { return }
        flushOutput()
        updateInterest()
    }

    private var wantsRead: Bool {
        if closed || inputClosed { return false }
        if closing { return lingering }
        return !shouldHoldReads
    }

    private var shouldHoldReads: Bool {
        waiting.count >= services.settings.maxPipelinedRequests || output.readableBytes >= Self.outputHighWater
    }

    private func updateInterest() {
        guard !closed else { return }
        var wanted: UInt32 = 0
        if wantsRead { wanted |= RULESD_EPOLLIN }
        if output.readableBytes > 0 && !lingering { wanted |= RULESD_EPOLLOUT }
        if wanted != interest {
            interest = wanted
            loop.modify(descriptor, interest: wanted)
        }
    }

    /// Reads what the socket holds (a bounded number of times, so other connections get their turn).
    private func readInput() {
        var reads = 0
        while !closed && wantsRead && reads < 16 {
            reads += 1
            loop.readBuffer.clear()
            var failure: Int32 = 0
            let capacity = loop.readBuffer.writableBytes
            let count = loop.readBuffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { bytes in
                let result = Glibc.read(descriptor, bytes.baseAddress, bytes.count)
                if result < 0 { failure = errno }
                return max(result, 0)
            }
            if failure != 0 {
                if failure == EINTR { continue }
                if failure == EAGAIN || failure == EWOULDBLOCK { return }
                close()
                return
            }
            if count == 0 {
                endOfInput()
                return
            }
            var input = loop.readBuffer
            received(&input)
            if count < capacity { return }
        }
    }

    private func received(_ input: inout ByteBuffer) {
        if closing { return }
        readsSinceIdleCheck &+= 1
        if var buffered = pending {
            // The rare case: the last read ended inside a line.
            pending = nil
            buffered.writeBuffer(&input)
            frame(&buffered)
            if buffered.readableBytes > 0 {
                buffered.discardReadBytes()
                pending = buffered
            }
        } else {
            frame(&input)
            if input.readableBytes > 0 { pending = input }
        }
    }

    /// Hands every frame `input` holds to ``handle(_:)``, leaving an unfinished line in it.
    private func frame(_ input: inout ByteBuffer) {
        while !closing, let frame = framer.nextFrame(&input) {
            handle(frame)
        }
    }

    private func handle(_ frame: RequestFrame) {
        switch frame {
        case .tooLarge(let limit):
            waiting.removeAll()
            refuseTooLarge(limit: limit)
        case .line(let line):
            if busy || !waiting.isEmpty {
                waiting.append(line)
            } else {
                worker.beginBatch()
                _ = line.withUnsafeReadableBytes { process($0) }
                worker.endBatch()
            }
        case .lines(let lines):
            processLines(lines)
        }
    }

    /// Answers the complete lines of one read in place; whatever follows an operation that has to wait
    /// is kept, line by line, until it is answered.
    private func processLines(_ lines: ByteBuffer) {
        let limit = services.settings.maxRequestBytes
        worker.beginBatch()
        RequestFrame.forEachLine(lines) { bytes, range in
            if closing { return false }
            if busy || !waiting.isEmpty {
                waiting.append(lines.getSlice(at: lines.readerIndex + range.lowerBound, length: range.count)!)
                return true
            }
            if bytes.count > limit {
                refuseTooLarge(limit: limit)
                return false
            }
            if bytes.isEmpty { return true }
            return process(bytes)
        }
        worker.endBatch()
    }

    /// The client shut its sending side (or closed).
    private func endOfInput() {
        if lingering {
            close()
            return
        }
        if !closing, var rest = pending {
            // A last line without a terminator (`printf '{"op":"ping"}' | socat ...`) is still a request.
            pending = nil
            for frame in framer.lastFrames(&rest) where !closing { handle(frame) }
        }
        inputClosed = true
        closeIfDone()
    }

    /// Shutdown: answer what was already read (and any reload in progress), then close.
    func drainAndClose() {
        guard !closed else { return }
        if watching {
            services.watchHub.unsubscribe(ObjectIdentifier(self))
            watching = false
        }
        inputClosed = true
        flushOutput()
        closeIfDone()
        updateInterest()
    }

    // MARK: - requests

    /// Answers one request line. Returns false when the lines after it must wait (an asynchronous
    /// operation started).
    private func process(_ line: UnsafeRawBufferPointer) -> Bool {
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
                startWatching(request, line: line)
            case .status, .metrics, .reload:
                startWaiting(request, line: line)
            }
        }
        if output.readableBytes >= Self.outputHighWater { flushOutput() }
        return !busy
    }

    private func idBytes(_ request: DecodedRequest, _ line: UnsafeRawBufferPointer) -> [UInt8]? {
        request.id.map { Array(line[$0]) }
    }

    private func startWatching(_ request: DecodedRequest, line: UnsafeRawBufferPointer) {
        let generation = worker.servingGeneration
        let id = idBytes(request, line)
        id.withUnsafeOptionalBytes { idBuffer in
            ResponseWriter.writeSuccess(
                id: idBuffer, revision: generation?.shortRevision ?? "", generation: generation?.number ?? 0,
                result: Array(#"{"watching":true}"#.utf8), into: &output)
        }
        if !watching {
            watching = true
            let loopBound = NIOLoopBound(self, eventLoop: loop)
            services.watchHub.subscribe(ObjectIdentifier(self), eventLoop: loop) { event in
                loopBound.value.push(event)
            }
        }
    }

    /// Writes a pushed event line; called on this connection's loop.
    private func push(_ event: [UInt8]) {
        guard !closed, !closing else { return }
        if output.readableBytes >= Self.outputHighWater {
            // A watcher that stopped reading: drop it rather than buffer without bound.
            close()
            return
        }
        ResponseWriter.writeEvent(event, into: &output)
        flushOutput()
        updateInterest()
    }

    private func startWaiting(_ request: DecodedRequest, line: UnsafeRawBufferPointer) {
        busy = true
        let id = idBytes(request, line)
        let services = self.services
        let peer = self.peer
        let promise = loop.makePromise(of: ByteBuffer.self)
        promise.completeWithTask {
            var buffer = ByteBufferAllocator().buffer(capacity: 512)
            await services.answerWaiting(request.operation, id: id, peer: peer, into: &buffer)
            return buffer
        }
        promise.futureResult.assumeIsolated().whenComplete { [self] outcome in
            busy = false
            guard !closed else { return }
            switch outcome {
            case .success(var answer): output.writeBuffer(&answer)
            case .failure(let error):
                id.withUnsafeOptionalBytes { idBuffer in
                    ResponseWriter.writeFailure(
                        id: idBuffer, error: ProtocolError(.internal, "\(error)"), into: &output)
                }
            }
            drainWaiting()
            flushOutput()
            closeIfDone()
            updateInterest()
        }
    }

    private func drainWaiting() {
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
                refuseTooLarge(limit: services.settings.maxRequestBytes)
                return
            }
            if bytes.readableBytes == 0 { continue }
            _ = bytes.withUnsafeReadableBytes { process($0) }
        }
    }

    // MARK: - writing and closing

    /// Writes the pending answers now, unless a blocked write is already waiting for the socket.
    private func flushOutput() {
        guard !closed, output.readableBytes > 0, interest & RULESD_EPOLLOUT == 0 else { return }
        writeOutput()
    }

    private func writeOutput() {
        while output.readableBytes > 0 {
            let written = output.withUnsafeReadableBytes { bytes in
                send(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                output.moveReaderIndex(forwardBy: written)
                continue
            }
            if written < 0 && errno == EINTR { continue }
            if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            // EPIPE, ECONNRESET: the client is gone.
            close()
            return
        }
        guard output.readableBytes == 0 else { return }
        if output.capacity > Self.outputHighWater {
            output = ByteBufferAllocator().buffer(capacity: 4096)
        } else {
            output.clear()
        }
        if closing && !lingering { finishClosing() }
    }

    /// Answers REQUEST_TOO_LARGE for a line over `limit` bytes and closes: the rest of the stream cannot be framed.
    private func refuseTooLarge(limit: Int) {
        ResponseWriter.writeFailure(
            id: nil,
            error: ProtocolError(.requestTooLarge, "request line longer than \(limit) bytes; closing the connection"),
            into: &output)
        closeAfterFlush(linger: true)
    }

    private func closeIfDone() {
        guard inputClosed, !busy, waiting.isEmpty, !watching else { return }
        closeAfterFlush()
    }

    /// Closes once the pending answers are written. With `linger`, only the sending side closes at first
    /// and input is discarded for a moment: closing a Unix socket with unread input resets it, and the
    /// client could lose the answer that says why.
    private func closeAfterFlush(linger: Bool = false) {
        guard !closing else { return }
        closing = true
        lingerAfterFlush = linger
        pending = nil
        if output.readableBytes == 0 {
            finishClosing()
        } else {
            flushOutput()
        }
    }

    private func finishClosing() {
        guard !closed, !lingering else { return }
        guard lingerAfterFlush && !inputClosed else {
            close()
            return
        }
        lingering = true
        shutdown(descriptor, Int32(SHUT_WR))
        lingerTimer = loop.assumeIsolated().scheduleTask(in: .seconds(2)) { [self] in close() }
        updateInterest()
    }

    /// Closes the connection now.
    private func close() {
        guard !closed else { return }
        closed = true
        idleCheck?.cancel()
        idleCheck = nil
        lingerTimer?.cancel()
        lingerTimer = nil
        if watching {
            services.watchHub.unsubscribe(ObjectIdentifier(self))
            watching = false
        }
        waiting.removeAll()
        loop.deregister(descriptor)
        Glibc.close(descriptor)
        onClose()
    }

    /// Looks four times per idle timeout and closes the connection once four looks in a row found nothing
    /// read: an idle connection closes between one and one and a quarter timeouts after its last request.
    /// Watchers are quiet by design, and a connection waiting for an answer is not idle.
    private func scheduleIdleCheck() {
        let looks = 4
        let interval = TimeAmount.nanoseconds(TimeAmount(services.settings.idleTimeout).nanoseconds / Int64(looks))
        idleCheck = loop.assumeIsolated().scheduleTask(in: interval) { [self] in
            guard !closed, !closing else { return }
            if readsSinceIdleCheck > 0 || watching || busy || !waiting.isEmpty {
                quietIdleChecks = 0
            } else {
                quietIdleChecks += 1
            }
            readsSinceIdleCheck = 0
            if quietIdleChecks >= looks {
                close()
            } else {
                scheduleIdleCheck()
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
