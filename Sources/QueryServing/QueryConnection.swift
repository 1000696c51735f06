import CEventPoll
import NIOCore
import RulesProtocol
import Synchronization
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The life of a query connection, in one place.
///
/// ```
///            ┌──────── an operation that waits starts ────────┐
///            │                                                ▼
///          open ◀──────────── its answer is written ─────── awaitingAnswer
///            │ end of input / drain                           │ end of input / drain
///            ▼                                                ▼
///        inputEnded ◀─────────── its answer is written ─── inputEndedAwaitingAnswer
///            │ everything read is answered (and not watching)
///            ▼
///     closing(linger:) ── answers written ──▶ lingering ── client closes / timer ──▶ closed
///            └───────────── answers written, no linger ─────────────────────────────▶ closed
///
///   any state ── write error, hang-up, idle timeout ──▶ closed
///   open, awaitingAnswer ── line too long (answered in turn) ──▶ closing(linger: true)
/// ```
///
/// Requests are answered strictly in the order they were read: in `open` each complete line is answered at
/// once; from the moment an operation that waits (`status`, `metrics`, `reload`) starts, every later line
/// (the rest of the same read included) queues behind it and is answered when the state returns to `open`
/// (or `inputEnded`). So `open` and `inputEnded` always have an empty queue.
enum ConnectionState: Equatable, Sendable {
    /// Reading requests and answering them as they come.
    case open
    /// An operation that waits is in flight; lines read meanwhile queue behind it.
    case awaitingAnswer
    /// The client shut its sending side (or the daemon is stopping): what was read is answered, then the
    /// connection closes. A watcher stays until the daemon stops or the client closes.
    case inputEnded
    /// `inputEnded`, with an operation in flight.
    case inputEndedAwaitingAnswer
    /// The last answers are being written; nothing more is read or answered. With `linger`, the sending side
    /// is shut afterwards and input discarded for a moment: closing a Unix socket with unread input resets
    /// it, and the client would lose the answer that says why it was closed.
    case closing(linger: Bool)
    /// Answers written, sending side shut; input is discarded until the client closes or the timer fires.
    case lingering
    case closed

    /// Whether input is still read (and framed into requests).
    var readsRequests: Bool { self == .open || self == .awaitingAnswer }
    /// Whether an operation that waits is in flight.
    var isAwaitingAnswer: Bool { self == .awaitingAnswer || self == .inputEndedAwaitingAnswer }
    /// Whether requests are still answered (read ones, queued ones, watch events).
    var answers: Bool {
        switch self {
        case .open, .awaitingAnswer, .inputEnded, .inputEndedAwaitingAnswer: return true
        case .closing, .lingering, .closed: return false
        }
    }
}

/// Serves one client connection on its worker's ``ServingEventLoop``: reads request lines, answers each one
/// exactly once and in order, and pushes `watch` events. Its life is ``ConnectionState``; every change of
/// state happens in ``transition(to:)``.
///
/// Reading stops while too many lines wait or while the client is not reading its answers: a slow or stuck
/// client only ever costs its own connection a bounded amount of memory. A client that vanishes mid-answer
/// (EPIPE, ECONNRESET) costs only its own connection. Everything here runs on the connection's loop; the
/// only ways in from elsewhere are the loop's tasks.
///
/// A connection with nothing in flight can move to another loop (see ``LoopBalancer``): it stops being polled
/// on its loop and resumes on the other with everything it holds, so its requests stay in order. What other
/// threads send it goes through its ``ConnectionHome``, which always names the loop it lives on.
final class QueryConnection: EventPollSource {
    /// Unsent answer bytes beyond which reading pauses (the client is not reading its answers).
    static let outputHighWater = 64 << 10

    /// A request line kept behind an operation that waits, or the refusal of a line that was too long.
    private enum Queued {
        case line(ByteBuffer)
        case tooLarge(limit: Int)
    }

    private(set) var state = ConnectionState.open
    private let descriptor: Int32
    private(set) var loop: ServingEventLoop
    private var responder: QueryResponder
    /// Where other threads reach this connection.
    let home: ConnectionHome
    private let backend: QueryBackend
    private let limits: ConnectionLimits
    private let admission: Admission
    private let peer: PeerCredentials?
    /// The peer's roles, asked of the backend at the first request; looked up again with the account database
    /// once, when a request needs a role the quick answer lacks.
    private var roles: AccessRoles?
    private var rolesLookedUp = false
    private let onClose: (ServingEventLoop) -> Void
    private var decoder: RequestDecoder
    private var framer: LineFrameDecoder
    /// Input after the last complete line, waiting for the rest of its line.
    private var partialLine: ByteBuffer?
    /// Answers not yet written; while a write is blocked they wait here and the loop polls for writability.
    private var output: ByteBuffer
    private var queue = CircularBuffer<Queued>()
    private var watching = false
    private var interest: UInt32 = 0
    /// Complete requests since the idle timer last looked, and how many of its looks in a row found none:
    /// counting spares every read a clock reading. Bytes of an unfinished line are not activity.
    private var requestsSinceIdleCheck = 0
    private var quietIdleChecks = 0
    private var idleCheck: Scheduled<Void>?
    /// When the pending idle check is due: a connection that moves keeps it, so moving never extends the timeout.
    private var idleCheckDue = NIODeadline.uptimeNanoseconds(0)
    private var lingerTimer: Scheduled<Void>?
    /// Calls to `send` that wrote something: the answers to the lines of one read go out in one.
    private(set) var writes = 0

    /// - Parameter onClose: runs once, on the loop the connection is on then, when the connection is closed.
    init(
        descriptor: Int32, loop: ServingEventLoop, responder: QueryResponder, backend: QueryBackend,
        limits: ConnectionLimits, admission: Admission = .ordinary, peer: PeerCredentials?,
        onClose: @escaping (ServingEventLoop) -> Void
    ) {
        self.descriptor = descriptor
        self.loop = loop
        self.responder = responder
        self.backend = backend
        self.limits = limits
        self.admission = admission
        self.peer = peer
        self.onClose = onClose
        // Contexts are validated once, by the sandbox that reads them (the worker refuses them when they are not).
        self.decoder = RequestDecoder(
            maxDepth: max(limits.maxContextDepth + 2, RequestDecoder.defaultMaxDepth), skimmingContexts: true)
        self.framer = LineFrameDecoder(maxLineBytes: limits.maxRequestBytes)
        self.output = ByteBufferAllocator().buffer(capacity: 4096)
        self.home = ConnectionHome(loop: loop)
        home.connection = self
    }

    /// Starts serving; false (and the descriptor closed) when the loop cannot poll it.
    func start() -> Bool {
        interest = RULESD_EPOLLIN
        guard loop.register(descriptor, interest: interest, source: self) else {
            state = .closed
            home.connection = nil
            Glibc.close(descriptor)
            onClose(loop)
            return false
        }
        scheduleIdleCheck()
        return true
    }

    // MARK: - the state machine

    /// The one place where the state changes; what each new state needs done on entry happens here.
    private func transition(to next: ConnectionState) {
        guard state != .closed, state != next else { return }
        state = next
        switch next {
        case .open, .awaitingAnswer, .inputEndedAwaitingAnswer:
            break
        case .inputEnded:
            partialLine = nil
            finishIfAllAnswered()
        case .closing:
            partialLine = nil
            queue.removeAll()
            stopWatching()
            if output.readableBytes == 0 { answersWritten() } else { flushOutput() }
        case .lingering:
            shutdown(descriptor, Int32(SHUT_WR))
            lingerTimer = loop.assumeIsolated().scheduleTask(in: limits.lingerTime) { [self] in
                transition(to: .closed)
            }
        case .closed:
            idleCheck?.cancel()
            idleCheck = nil
            lingerTimer?.cancel()
            lingerTimer = nil
            stopWatching()
            queue.removeAll()
            home.connection = nil
            loop.deregister(descriptor)
            // Counted out before the descriptor closes, so a client that saw the end of its connection never
            // finds it still counted against the limit.
            onClose(loop)
            Glibc.close(descriptor)
        }
    }

    /// In `inputEnded` with nothing left to answer, the connection closes (a watcher stays).
    private func finishIfAllAnswered() {
        if state == .inputEnded, queue.isEmpty, !watching { transition(to: .closing(linger: false)) }
    }

    /// Every pending answer is written.
    private func answersWritten() {
        guard case .closing(let linger) = state else { return }
        transition(to: linger ? .lingering : .closed)
    }

    /// The client shut its sending side (read returned 0).
    private func inputDidEnd() {
        if state.readsRequests, var rest = partialLine {
            // A last line without a terminator (`printf '{"op":"ping"}' | socat ...`) is still a request.
            partialLine = nil
            for frame in framer.lastFrames(&rest) { handle(frame) }
        }
        switch state {
        case .open: transition(to: .inputEnded)
        case .awaitingAnswer: transition(to: .inputEndedAwaitingAnswer)
        case .lingering: transition(to: .closed)
        case .inputEnded, .inputEndedAwaitingAnswer, .closing, .closed: break
        }
    }

    /// Shutdown: stop reading and watching, answer what was already read (and any operation in flight),
    /// then close.
    func drain() {
        stopWatching()
        switch state {
        case .open: transition(to: .inputEnded)
        case .awaitingAnswer: transition(to: .inputEndedAwaitingAnswer)
        case .inputEnded: finishIfAllAnswered()
        case .inputEndedAwaitingAnswer, .closing, .lingering, .closed: break
        }
        flushOutput()
        updateInterest()
    }

    // MARK: - readiness

    func ready(_ events: UInt32) {
        if state == .closed { return }
        if events & RULESD_EPOLLOUT != 0 { writeOutput() }
        if state == .closed { return }
        if events & (RULESD_EPOLLIN | RULESD_EPOLLHUP | RULESD_EPOLLERR) != 0 {
            if wantsRead {
                readInput()
            } else if events & (RULESD_EPOLLHUP | RULESD_EPOLLERR) != 0 {
                // The client closed both directions (or the socket failed) while we were not reading:
                // nothing more can be delivered.
                transition(to: .closed)
            }
        }
        if state == .closed { return }
        flushOutput()
        updateInterest()
    }

    private var wantsRead: Bool {
        switch state {
        case .open, .awaitingAnswer:
            return queue.count < limits.maxPipelinedRequests && output.readableBytes < Self.outputHighWater
        case .lingering:
            return true
        case .inputEnded, .inputEndedAwaitingAnswer, .closing, .closed:
            return false
        }
    }

    private func updateInterest() {
        guard state != .closed else { return }
        var wanted: UInt32 = 0
        if wantsRead { wanted |= RULESD_EPOLLIN }
        if output.readableBytes > 0 && state != .lingering { wanted |= RULESD_EPOLLOUT }
        if wanted != interest {
            interest = wanted
            loop.modify(descriptor, interest: wanted)
        }
    }

    /// Reads what the socket holds (a bounded number of times, so other connections get their turn).
    private func readInput() {
        // Only a task moves the connection, so the loop stays the same throughout: one retain of it, not one per use.
        let loop = self.loop
        var reads = 0
        while wantsRead && reads < 16 {
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
                transition(to: .closed)
                return
            }
            if count == 0 {
                inputDidEnd()
                return
            }
            if state.readsRequests {
                var input = loop.readBuffer
                received(&input)
            }
            if count < capacity { return }
        }
    }

    private func received(_ input: inout ByteBuffer) {
        if var buffered = partialLine {
            // The rare case: the last read ended inside a line.
            partialLine = nil
            buffered.writeBuffer(&input)
            frame(&buffered)
            if buffered.readableBytes > 0 && state.readsRequests {
                buffered.discardReadBytes()
                partialLine = buffered
            }
        } else {
            frame(&input)
            if input.readableBytes > 0 && state.readsRequests { partialLine = input }
        }
    }

    /// Hands every frame `input` holds to ``handle(_:)``, leaving an unfinished line in it.
    private func frame(_ input: inout ByteBuffer) {
        while state.readsRequests, let frame = framer.nextFrame(&input) {
            handle(frame)
        }
    }

    private func handle(_ frame: RequestFrame) {
        switch frame {
        case .tooLarge(let limit):
            requestsSinceIdleCheck &+= 1
            if state.isAwaitingAnswer {
                queue.append(.tooLarge(limit: limit))
            } else {
                refuseTooLarge(limit: limit)
            }
        case .line(let line):
            responder.beginBatch()
            line.withUnsafeReadableBytes { accept($0) }
            responder.endBatch()
        case .lines(let lines):
            responder.beginBatch()
            RequestFrame.forEachLine(lines) { bytes, _ in
                guard state.answers else { return false }
                accept(bytes)
                return true
            }
            responder.endBatch()
        }
    }

    /// One complete request line as read: answered now, or queued behind an operation that waits.
    private func accept(_ line: UnsafeRawBufferPointer) {
        requestsSinceIdleCheck &+= 1
        loop.countRequests(1)
        if state.isAwaitingAnswer {
            // A copy, not a slice: a slice would pin the loop's whole 64 KiB read buffer per queued line.
            var copy = ByteBufferAllocator().buffer(capacity: line.count)
            copy.writeBytes(line)
            queue.append(.line(copy))
        } else if state.answers {
            answer(line)
        }
    }

    // MARK: - requests

    /// Answers one request line now (the state is `open` or `inputEnded`, so nothing is queued before it).
    private func answer(_ line: UnsafeRawBufferPointer) {
        if line.count > limits.maxRequestBytes {
            refuseTooLarge(limit: limits.maxRequestBytes)
            return
        }
        if line.isEmpty {
            // Every line gets one answer, so a client that sent a blank line never waits for nothing.
            ResponseWriter.writeFailure(
                id: nil, error: ProtocolError(.invalidRequest, "empty request line"), into: &output)
            responder.recordUndecodable()
            return
        }
        // The decoded request is bound once and never copied: each `case .success(let request)` tried on the
        // result copied it (retains included), three copies a request.
        defer { if output.readableBytes >= Self.outputHighWater { flushOutput() } }
        let request: DecodedRequest
        switch decoder.decode(line) {
        case .failure(let failure):
            return answerUndecodable(failure, line: line)
        case .success(let decoded):
            request = decoded
        }
        let permitted = permits(request.operation) || permitsInNamespace(request, line: line)
        // Only the worker's evaluation validates what the decoder skimmed: whatever else answers, validate first.
        if !request.isValidated, !permitted || admission == .reserve, let failure = request.validationFailure(in: line)
        {
            return answerUndecodable(failure, line: line)
        }
        if !permitted {
            let held = roles ?? []
            ResponseWriter.writeFailure(
                id: request.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) },
                error: .forbidden(request.operation, held: held), into: &output)
            backend.refused(request.operation, peer: peer, held: held)
            if admission == .reserve { transition(to: .closing(linger: false)) }
            return
        }
        if admission == .reserve { return answerInReserve(request, line: line) }
        switch request.operation {
        case .ping, .flag, .flags, .route, .config, .explain:
            if let later = responder.answerLater(request, line: line, on: loop) {
                awaitAnswer(later, id: request.id.map { Array(line[$0]) })
            } else {
                responder.answer(request, line: line, into: &output)
            }
        case .watch:
            startWatching(
                id: request.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }, namespace: request.namespace)
        case .metrics:
            startAwaiting(request.operation, id: request.id.map { Array(line[$0]) })
        case .status, .reload, .history, .show, .rollback, .resume, .capture, .overrideSet, .overrideList,
            .overrideClear:
            startAwaiting(request.operation, id: request.id.map { Array(line[$0]) }, request: request)
        }
    }

    /// Answers a line that could not be decoded (or whose skimmed part is not valid JSON).
    private func answerUndecodable(_ failure: RequestDecodingFailure, line: UnsafeRawBufferPointer) {
        ResponseWriter.writeFailure(
            id: failure.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }, error: failure.error, into: &output)
        responder.recordUndecodable()
    }

    /// Whether the peer's roles allow `operation`.
    private func permits(_ operation: RequestOperation) -> Bool {
        if let roles, roles.permits(operation) { return true }
        if roles == nil {
            let quick = backend.roles(for: peer, lookingUpGroups: false)
            roles = quick
            if quick.permits(operation) { return true }
        }
        guard !rolesLookedUp else { return false }
        rolesLookedUp = true
        let full = backend.roles(for: peer, lookingUpGroups: true)
        roles = full
        return full.permits(operation)
    }

    /// Whether a request that names a namespace is permitted by what that namespace's policy adds to the
    /// daemon-wide roles (asked only when those alone refuse it).
    private func permitsInNamespace(_ request: DecodedRequest, line: UnsafeRawBufferPointer) -> Bool {
        guard request.namesNamespace else { return false }
        let namespace = request.withNamespaceBytes(in: line) { String(decoding: $0, as: UTF8.self) }
        return backend.roles(for: peer, namespace: namespace, lookingUpGroups: true).permits(request.operation)
    }

    /// A reserve connection answers one `ping` or `status`, then closes; anything else is refused.
    private func answerInReserve(_ request: DecodedRequest, line: UnsafeRawBufferPointer) {
        switch request.operation {
        case .ping:
            responder.answer(request, line: line, into: &output)
            transition(to: .closing(linger: false))
        case .status:
            startAwaiting(.status, id: request.id.map { Array(line[$0]) }, request: request)
            transition(to: .inputEndedAwaitingAnswer)
        default:
            ResponseWriter.writeFailure(
                id: request.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) },
                error: ProtocolError(
                    .tooManyConnections,
                    "rulesd is serving its maximum of \(limits.maxConnections) connections; this reserve connection "
                        + "answers ping and status only; try again"),
                into: &output)
            transition(to: .closing(linger: false))
        }
    }

    private func startWatching(id: UnsafeRawBufferPointer?, namespace: String?) {
        if let namespace, let refusal = backend.watchRefusal(namespace: namespace) {
            ResponseWriter.writeFailure(id: id, error: refusal, into: &output)
            return
        }
        if let namespace {
            responder.acknowledgeWatch(id: id, namespace: namespace, into: &output)
        } else {
            responder.acknowledgeWatch(id: id, into: &output)
        }
        guard !watching else { return }
        watching = true
        let loopBound = NIOLoopBound(self, eventLoop: loop)
        backend.watch(ObjectIdentifier(self), namespace: namespace, on: loop) { event in
            loopBound.value.push(event)
        }
    }

    private func stopWatching() {
        guard watching else { return }
        watching = false
        backend.unwatch(ObjectIdentifier(self))
    }

    /// Writes a pushed event line; called on this connection's loop.
    private func push(_ event: [UInt8]) {
        guard watching, state.answers else { return }
        if output.readableBytes >= Self.outputHighWater {
            // A watcher that stopped reading: drop it rather than buffer without bound.
            transition(to: .closed)
            return
        }
        ResponseWriter.writeEvent(event, into: &output)
        flushOutput()
        updateInterest()
    }

    private func startAwaiting(_ operation: RequestOperation, id: [UInt8]?, request: DecodedRequest? = nil) {
        transition(to: state == .inputEnded ? .inputEndedAwaitingAnswer : .awaitingAnswer)
        let backend = self.backend
        let peer = self.peer
        let promise = loop.makePromise(of: ByteBuffer.self)
        promise.completeWithTask {
            await backend.answerWaiting(request ?? DecodedRequest(operation: operation), id: id, peer: peer)
        }
        promise.futureResult.assumeIsolated().whenComplete { [self] outcome in
            answerArrived(outcome, id: id)
        }
    }

    /// Waits for an answer the responder gives later; later lines queue behind it as behind any operation that
    /// waits. The future must complete on this connection's loop, and not before this returns.
    private func awaitAnswer(_ answer: EventLoopFuture<ByteBuffer>, id: [UInt8]?) {
        transition(to: state == .inputEnded ? .inputEndedAwaitingAnswer : .awaitingAnswer)
        answer.assumeIsolated().whenComplete { [self] outcome in
            answerArrived(outcome, id: id)
        }
    }

    private func answerArrived(_ outcome: Result<ByteBuffer, Error>, id: [UInt8]?) {
        let next: ConnectionState
        switch state {
        case .awaitingAnswer: next = .open
        case .inputEndedAwaitingAnswer: next = .inputEnded
        case .open, .inputEnded, .closing, .lingering, .closed: return
        }
        // The answer goes out before anything the new state may do (closing after the last answer).
        switch outcome {
        case .success(var answer): output.writeBuffer(&answer)
        case .failure(let error):
            id.withUnsafeOptionalBytes { idBuffer in
                ResponseWriter.writeFailure(id: idBuffer, error: ProtocolError(.internal, "\(error)"), into: &output)
            }
        }
        transition(to: next)
        answerQueued()
        finishIfAllAnswered()
        flushOutput()
        updateInterest()
    }

    /// Answers the queued lines in order, until one of them waits again or none is left.
    private func answerQueued() {
        responder.beginBatch()
        defer { responder.endBatch() }
        while state.answers, !state.isAwaitingAnswer, let item = queue.popFirst() {
            switch item {
            case .line(let line):
                line.withUnsafeReadableBytes { answer($0) }
            case .tooLarge(let limit):
                refuseTooLarge(limit: limit)
            }
        }
    }

    // MARK: - moving between loops

    /// Whether everything the connection holds moves with the object: nothing in flight (whose answer would
    /// arrive on this loop), queued, unsent or subscribed, and no timer but the idle check.
    var isMovable: Bool {
        state == .open && queue.isEmpty && !watching && output.readableBytes == 0 && interest == RULESD_EPOLLIN
    }

    /// Moves the connection to `target`, on its current loop: it is no longer polled here, and is polled there
    /// from the first task `target` runs after this call. False (and nothing changed) when `target` no longer
    /// takes work.
    func move(to target: ServingEventLoop) -> Bool {
        precondition(isMovable, "only a connection with nothing in flight can move")
        guard target !== loop else { return false }
        // Everything this loop holds of the connection is let go before the hand-over: from then on the
        // connection is `target`'s, which may already be running it.
        loop.deregister(descriptor)
        idleCheck?.cancel()
        idleCheck = nil
        let handOver = MovingConnection(connection: self)
        guard home.move(to: target, { handOver.connection.arrive(on: target) }) else {
            _ = loop.register(descriptor, interest: interest, source: self)
            scheduleIdleCheck(at: idleCheckDue)
            return false
        }
        return true
    }

    /// Resumes serving on `target`, the loop this runs on.
    private func arrive(on target: ServingEventLoop) {
        loop = target
        responder = backend.responder(on: target)
        guard state != .closed else { return }
        guard target.register(descriptor, interest: interest, source: self) else {
            transition(to: .closed)
            return
        }
        scheduleIdleCheck(at: idleCheckDue)
    }

    // MARK: - writing

    /// Writes the pending answers now, unless a blocked write is already waiting for the socket.
    private func flushOutput() {
        guard state != .closed, output.readableBytes > 0, interest & RULESD_EPOLLOUT == 0 else { return }
        writeOutput()
    }

    private func writeOutput() {
        while output.readableBytes > 0 {
            let written = output.withUnsafeReadableBytes { bytes in
                send(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                writes &+= 1
                output.moveReaderIndex(forwardBy: written)
                continue
            }
            if written < 0 && errno == EINTR { continue }
            if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            // EPIPE, ECONNRESET: the client is gone.
            transition(to: .closed)
            return
        }
        guard output.readableBytes == 0 else { return }
        if output.capacity > Self.outputHighWater {
            output = ByteBufferAllocator().buffer(capacity: 4096)
        } else {
            output.clear()
        }
        answersWritten()
    }

    /// Answers REQUEST_TOO_LARGE for a line over `limit` bytes and closes: the rest of the stream cannot be
    /// framed.
    private func refuseTooLarge(limit: Int) {
        ResponseWriter.writeFailure(
            id: nil,
            error: ProtocolError(.requestTooLarge, "request line longer than \(limit) bytes; closing the connection"),
            into: &output)
        let inputOpen = state == .open || state == .awaitingAnswer
        transition(to: .closing(linger: inputOpen))
    }

    /// Looks four times per idle timeout and closes the connection once four looks in a row found no complete
    /// request: an idle connection closes between one and one and a quarter timeouts after its last request.
    /// Watchers are quiet by design, and a connection waiting for an answer (or with answers queued) is not
    /// idle.
    /// - Parameter due: when the look happens; by default one look's interval from now.
    private func scheduleIdleCheck(at due: NIODeadline? = nil) {
        let looks = 4
        let timeout = admission == .reserve ? min(limits.idleTimeout, limits.reserveIdleTimeout) : limits.idleTimeout
        let interval = TimeAmount.nanoseconds(timeout.nanoseconds / Int64(looks))
        idleCheckDue = due ?? .now() + interval
        idleCheck = loop.assumeIsolated().scheduleTask(deadline: idleCheckDue) { [self] in
            guard state.answers else { return }
            if requestsSinceIdleCheck > 0 || watching || state.isAwaitingAnswer || !queue.isEmpty {
                quietIdleChecks = 0
            } else {
                quietIdleChecks += 1
            }
            requestsSinceIdleCheck = 0
            if quietIdleChecks >= looks {
                transition(to: .closed)
            } else {
                scheduleIdleCheck()
            }
        }
    }
}

/// Where a connection lives, for what other threads send it (the shutdown's drain): tasks go to the loop it is
/// on, and follow it when it moved after they were sent.
final class ConnectionHome: Sendable {
    private let current: Mutex<ServingEventLoop>
    /// The connection until it closes; touched only on the thread of the loop `current` names, which ``run(_:)``
    /// checks. A strong reference the connection drops as it closes, not a weak one: a weak reference gives
    /// the connection a side table, and every retain and release of it (several per request) takes the slow
    /// path.
    private nonisolated(unsafe) var _connection: QueryConnection?

    init(loop: ServingEventLoop) {
        current = Mutex(loop)
    }

    /// The loop the connection lives on now.
    var loop: ServingEventLoop { current.withLock { $0 } }

    fileprivate var connection: QueryConnection? {
        get { _connection }
        set { _connection = newValue }
    }

    /// Runs `body` with the connection on the loop it lives on (not at all once it has closed).
    func run(_ body: @escaping @Sendable (QueryConnection) -> Void) {
        let loop = current.withLock { $0 }
        loop.execute { [self] in
            // It may have moved after the task was sent: follow it.
            guard current.withLock({ $0 }) === loop else { return run(body) }
            if let connection = _connection { body(connection) }
        }
    }

    /// Names `target` as the connection's loop and queues `arrival` there, as one step: a task sent after
    /// this reads `target` and queues behind the arrival.
    fileprivate func move(to target: ServingEventLoop, _ arrival: @escaping @Sendable () -> Void) -> Bool {
        current.withLock { loop in
            guard target.executeIfOpen(arrival) else { return false }
            loop = target
            return true
        }
    }
}

/// A connection on its way between loops: the loop it leaves no longer touches it once it is handed over, and
/// the loop it goes to touches it only from the arrival on.
private struct MovingConnection: @unchecked Sendable {
    let connection: QueryConnection
}
