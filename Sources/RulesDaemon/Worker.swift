import Atomics
import Logging
import NIOCore
import QueryServing
import RuleEngine
import RuleModel
import RulesProtocol
import SystemClock

/// Counters a worker keeps for `status`, readable from any thread. Only the owning worker writes them,
/// so the relaxed increments never contend.
final class WorkerCounters: Sendable {
    let requests = ManagedAtomic<Int>(0)
    /// Requests the worker's capture holds, and their bytes (see ``CaptureRecorder``).
    let captureEntries = ManagedAtomic<Int>(0)
    let captureBytes = ManagedAtomic<Int>(0)
}

/// One namespace as one worker serves it: the namespace's serving generation, this worker's Lua state of it,
/// and the overrides resolved against it. Owned by the worker's event loop, like the worker.
final class WorkerNamespace {
    let name: String
    /// The name's UTF-8 bytes, compared against a request's `namespace` without making a string.
    let nameBytes: [UInt8]
    let store: GenerationStore
    /// Whether its rules run in a rule process (`store.isolated` is fixed): asked at every request.
    let isolated: Bool
    /// Counts this namespace's flag evaluations: flag indexes mean something only within its own rule set.
    let metrics: WorkerMetrics
    var generation: ServingGeneration?
    var evaluator: RuleEvaluator?
    var overrides = WorkerOverrides()

    init(name: String, store: GenerationStore, metrics: WorkerMetrics) {
        self.name = name
        self.nameBytes = Array(name.utf8)
        self.store = store
        self.isolated = store.isolated != nil
        self.metrics = metrics
    }
}

/// One event-loop thread's share of the daemon: its Lua states for each namespace's serving generation, and the
/// evaluation of every synchronous request of the connections on that loop.
///
/// Owned by its event loop: created there and only ever used there (see ``WorkerPool``).
final class Worker: QueryResponder {
    let index: Int
    let store: GenerationStore
    let counters: WorkerCounters
    let metrics: WorkerMetrics
    private let logger: Logger
    /// `default` first (the namespace of requests that name none), then the declared ones in order.
    let namespaces: [WorkerNamespace]
    /// Whether any namespace runs its rules in a rule process (fixed with the namespaces): most daemons have none,
    /// and their requests skip looking for one.
    private let anyIsolated: Bool
    private var result: [UInt8] = []
    private var batchStarted: UInt64 = 0
    private var batchRequests = 0
    private var batchDepth = 0
    /// The time rules see as `now()` for the requests of one batch (one read's lines).
    private var batchNow: Double = 0
    private var ruleLogBudget = RateLimiter(perSecond: 20)
    /// Recent distinct requests, when `capture = on`.
    let capture: CaptureRecorder?

    /// - Parameter namespaces: the declared namespaces besides `default` (whose store is `store`), each with
    ///   its own generation store.
    init(
        index: Int, store: GenerationStore, counters: WorkerCounters, metrics: WorkerMetrics, logger: Logger,
        capture: CaptureRecorder? = nil, namespaces: [(name: String, store: GenerationStore)] = []
    ) {
        self.index = index
        self.capture = capture
        self.store = store
        self.counters = counters
        self.metrics = metrics
        self.logger = logger
        self.namespaces =
            [WorkerNamespace(name: NamespaceSettings.defaultName, store: store, metrics: metrics)]
            + namespaces.map { WorkerNamespace(name: $0.name, store: $0.store, metrics: WorkerMetrics()) }
        self.anyIsolated = self.namespaces.contains { $0.isolated }
        result.reserveCapacity(1024)
    }

    /// Switches every namespace to its newest published generation; the previous Lua states are closed here,
    /// on their own thread, once nothing uses them.
    func refresh() {
        for namespace in namespaces { refresh(namespace) }
    }

    private func refresh(_ namespace: WorkerNamespace) {
        guard let latest = namespace.store.generation, latest.number != namespace.generation?.number else { return }
        guard let next = latest.takeEvaluator(worker: index) else {
            logger.error(
                "generation has no Lua state for this worker",
                metadata: ["worker": "\(index)", "namespace": "\(namespace.name)"])
            return
        }
        namespace.evaluator = next
        namespace.generation = latest
        namespace.metrics.beginGeneration(flagKeys: latest.ruleSet.flags.map(\.key))
        if namespace === namespaces[0] { capture?.beginGeneration(flagCount: latest.ruleSet.flags.count) }
    }

    /// The generation and evaluator to answer with in `namespace` (the overrides brought up to date): two
    /// atomic loads when nothing changed.
    @inline(__always)
    private func current(_ namespace: WorkerNamespace) -> (ServingGeneration, RuleEvaluator)? {
        if let generation = namespace.generation, let evaluator = namespace.evaluator,
            generation.number == namespace.store.publishedNumber
        {
            namespace.overrides.sync(namespace.store.overrides, generation, evaluator)
            return (generation, evaluator)
        }
        refresh(namespace)
        guard let generation = namespace.generation, let evaluator = namespace.evaluator else { return nil }
        namespace.overrides.sync(namespace.store.overrides, generation, evaluator)
        return (generation, evaluator)
    }

    @inline(__always)
    private func current() -> (ServingGeneration, RuleEvaluator)? { current(namespaces[0]) }

    /// The namespace a request names, by its bytes; nil when no namespace of that name is served.
    @inline(__always)
    private func namespace(of request: DecodedRequest, in line: UnsafeRawBufferPointer) -> WorkerNamespace? {
        guard request.namesNamespace else { return namespaces[0] }
        return request.withNamespaceBytes(in: line) { bytes in
            namespaces.first { $0.nameBytes.elementsEqual(bytes) }
        }
    }

    /// The serving generation as this worker sees it (for answers that only need the model).
    var servingGeneration: ServingGeneration? { current()?.0 }

    /// Starts a batch of requests read together: one clock reading serves them all.
    func beginBatch() {
        batchDepth += 1
        if batchDepth > 1 { return }
        batchStarted = metrics.clock()
        batchNow = RuleClock.now()
        batchRequests = 0
    }

    func endBatch() {
        batchDepth -= 1
        if batchDepth > 0 || batchRequests == 0 { return }
        metrics.recordLatency(nanoseconds: Int(metrics.clock() &- batchStarted), requests: batchRequests)
        counters.requests.wrappingIncrement(by: batchRequests, ordering: .relaxed)
        if let capture {
            counters.captureEntries.store(capture.entries, ordering: .relaxed)
            counters.captureBytes.store(capture.bytes, ordering: .relaxed)
        }
        batchRequests = 0
    }

    /// Answers one synchronous request (ping, flag, flags, route, config) into `out`.
    func answer(_ request: DecodedRequest, line: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        if batchDepth == 0 {
            beginBatch()
            defer { endBatch() }
            return answer(request, line: line, into: &out)
        }
        batchRequests += 1
        let id = request.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }
        guard let namespace = namespace(of: request, in: line) else {
            if refuseUnvalidated(request, line: line, into: &out) { return }
            metrics.recordRequest(request.operation, ok: false)
            let name = request.withNamespaceBytes(in: line) { String(decoding: $0, as: UTF8.self) }
            ResponseWriter.writeFailure(
                id: id, error: Self.unknownNamespace(name, among: namespaces.map(\.name)), into: &out)
            return
        }
        guard let (generation, evaluator) = current(namespace) else {
            if refuseUnvalidated(request, line: line, into: &out) { return }
            let error =
                namespaces.count == 1
                ? ProtocolError(.internal, "no rule set is loaded")
                : ProtocolError(
                    .namespaceUnavailable,
                    "namespace '\(namespace.name)' has no rules loaded (they did not load at start); "
                        + "its status names the problems", details: ["namespace": namespace.name])
            ResponseWriter.writeFailure(id: id, error: error, into: &out)
            return
        }
        // A context the decoder only skimmed is validated by the sandbox as flag, flags and route evaluate it (they
        // refuse it below if it is not valid); an explain, an override and a rule process answer without that.
        if !request.isValidated,
            request.operation == .explain || namespace.overrides.isActive || namespace.isolated,
            refuseUnvalidated(request, line: line, into: &out)
        {
            return
        }
        // The capture records the default namespace only; each namespace counts its own flags' evaluations.
        let capture = namespace === namespaces[0] ? self.capture : nil
        let observer = namespace.metrics
        result.removeAll(keepingCapacity: true)
        let now = request.at ?? batchNow
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        let question: RuleQuestion
        switch request.operation {
        case .ping:
            question = .ping
        case .flag:
            if namespace.overrides.isActive,
                let entry = namespace.overrides.override(
                    at: request.withFlagBytes(in: line) { generation.ruleSet.flagIndex(forUTF8: $0) }, now: batchNow)
            {
                result.append(contentsOf: entry.flagAnswer)
                finish(request, id: id, generation: generation, evaluator: evaluator, failure: nil, into: &out)
                return
            }
            let context = request.context.map { UnsafeRawBufferPointer(rebasing: line[$0]) } ?? empty
            let failure = request.withFlagBytes(in: line) { key in
                let failure = EvaluationAnswers.answer(
                    .flag(key: key, context: context), evaluator: evaluator, now: now, observer: observer, into: &result
                ) { request.validationFailure(in: line)?.error }
                if let capture, failure == nil, let index = generation.ruleSet.flagIndex(forUTF8: key) {
                    capture.recordFlag(
                        index: index, key: { generation.ruleSet.flags[index].key }, context: context, at: now,
                        seenAt: batchNow)
                }
                return failure
            }
            if let failure, failure.code == .parseError { return refuse(failure, into: &out) }
            finish(request, id: id, generation: generation, evaluator: evaluator, failure: failure, into: &out)
            return
        case .flags:
            let context = request.context.map { UnsafeRawBufferPointer(rebasing: line[$0]) } ?? empty
            let failure =
                namespace.overrides.isActive
                ? namespace.overrides.answerFlags(
                    evaluator: evaluator, context: context, now: now, clock: batchNow, observer: observer, into: &result
                )
                : EvaluationAnswers.answer(
                    .flags(context: context), evaluator: evaluator, now: now, observer: observer, into: &result
                ) { request.validationFailure(in: line)?.error }
            if let failure, failure.code == .parseError { return refuse(failure, into: &out) }
            if let capture, failure == nil {
                let flags = generation.ruleSet.flags
                capture.recordAllFlags(
                    count: flags.count, key: { flags[$0].key }, context: context, at: now, seenAt: batchNow)
            }
            finish(request, id: id, generation: generation, evaluator: evaluator, failure: failure, into: &out)
            return
        case .route:
            let routed = request.request.map { UnsafeRawBufferPointer(rebasing: line[$0]) } ?? empty
            let failure = EvaluationAnswers.answer(
                .route(request: routed), evaluator: evaluator, now: now, observer: observer, into: &result
            ) { request.validationFailure(in: line)?.error }
            if let failure, failure.code == .parseError { return refuse(failure, into: &out) }
            if let capture, failure?.code != .invalidRequest {
                capture.recordRoute(request: routed, at: now, seenAt: batchNow)
            }
            finish(request, id: id, generation: generation, evaluator: evaluator, failure: failure, into: &out)
            return
        case .config:
            question = request.key.map { .config(key: $0) } ?? .configPrefix(request.prefix ?? "")
        case .explain:
            let context = request.context.map { UnsafeRawBufferPointer(rebasing: line[$0]) } ?? empty
            let failure: ProtocolError?
            if let routed = request.request {
                failure = EvaluationAnswers.answer(
                    .explainRoute(request: UnsafeRawBufferPointer(rebasing: line[routed])), evaluator: evaluator,
                    now: now, observer: observer, into: &result)
            } else {
                failure = request.withFlagBytes(in: line) { key in
                    EvaluationAnswers.answer(
                        .explainFlag(key: key, context: context), evaluator: evaluator, now: now, observer: observer,
                        into: &result)
                }
                if failure == nil, namespace.overrides.isActive,
                    let entry = namespace.overrides.override(
                        at: request.withFlagBytes(in: line) { generation.ruleSet.flagIndex(forUTF8: $0) },
                        now: batchNow)
                {
                    WorkerOverrides.explainOverridden(entry, explained: &result)
                }
            }
            finish(request, id: id, generation: generation, evaluator: evaluator, failure: failure, into: &out)
            return
        case .status, .watch, .reload, .metrics, .history, .show, .rollback, .resume, .capture, .overrideSet,
            .overrideList, .overrideClear:
            ResponseWriter.writeFailure(
                id: id, error: ProtocolError(.internal, "operation \(request.operation.rawValue) is not synchronous"),
                into: &out)
            return
        }
        let failure = EvaluationAnswers.answer(
            question, evaluator: evaluator, now: now, observer: observer, into: &result)
        finish(request, id: id, generation: generation, evaluator: evaluator, failure: failure, into: &out)
    }

    /// Answers a request whose skimmed context or request turns out not to be valid JSON as a decoder validating
    /// the whole line answers it: `PARSE_ERROR` without the id, counted as a line that could not be decoded.
    /// - Returns: whether it was refused.
    private func refuseUnvalidated(
        _ request: DecodedRequest, line: UnsafeRawBufferPointer, into out: inout ByteBuffer
    ) -> Bool {
        guard let failure = request.validationFailure(in: line) else { return false }
        refuse(failure.error, into: &out)
        return true
    }

    private func refuse(_ error: ProtocolError, into out: inout ByteBuffer) {
        batchRequests -= 1
        recordUndecodable()
        ResponseWriter.writeFailure(id: nil, error: error, into: &out)
    }

    @inline(__always)
    private func finish(
        _ request: DecodedRequest, id: UnsafeRawBufferPointer?, generation: ServingGeneration, evaluator: RuleEvaluator,
        failure: ProtocolError?, into out: inout ByteBuffer
    ) {
        if evaluator.hasLogs { forwardRuleLogs(evaluator) }
        if let failure {
            metrics.recordRequest(request.operation, ok: false)
            ResponseWriter.writeFailure(id: id, error: failure, into: &out)
        } else {
            metrics.recordRequest(request.operation, ok: true)
            ResponseWriter.writeSuccess(id: id, header: generation.answerHeader, result: result, into: &out)
        }
    }

    /// Runs `body` with the generation and evaluator this worker serves, as one request of `operation` (counted,
    /// timed, its rule log lines forwarded): the path the HTTP listeners answer through, so that they answer
    /// from the same generations as the socket. Nil when no rule set is loaded.
    /// - Parameter body: gets the generation, its evaluator, this worker's metrics and the time rules see as
    ///   `now()`; returns its result and whether the request succeeded.
    func evaluate<T>(
        _ operation: RequestOperation,
        _ body: (ServingGeneration, RuleEvaluator, WorkerMetrics, Double) -> (result: T, ok: Bool)
    ) -> T? {
        beginBatch()
        defer { endBatch() }
        batchRequests += 1
        guard let (generation, evaluator) = current() else {
            metrics.recordRequest(operation, ok: false)
            return nil
        }
        let (result, ok) = body(generation, evaluator, metrics, batchNow)
        if evaluator.hasLogs { forwardRuleLogs(evaluator) }
        metrics.recordRequest(operation, ok: ok)
        return result
    }

    /// In a namespace with `isolation = process`, the requests that run rules go to its rule process; nil for the others (and
    /// while overrides are in force, which this worker's evaluator applies).
    func answerLater(
        _ request: DecodedRequest, line: UnsafeRawBufferPointer, on loop: ServingEventLoop
    ) -> EventLoopFuture<ByteBuffer>? {
        guard anyIsolated else { return nil }
        switch request.operation {
        case .flag, .flags, .route, .explain: break
        default: return nil
        }
        guard let namespace = namespace(of: request, in: line), let isolated = namespace.store.isolated,
            current(namespace) != nil, !namespace.overrides.isActive
        else { return nil }
        // answer(_:line:into:) refuses it, as a decoder validating the whole line would have.
        if request.validationFailure(in: line) != nil { return nil }
        beginBatch()
        defer { endBatch() }
        batchRequests += 1
        let operation = request.operation
        let id = request.id.map { Array(line[$0]) }
        let now = batchNow
        return isolated.submit(line: line, now: now, on: loop).assumeIsolated().map {
            [self] (reply: RuleProcessReply) -> ByteBuffer in
            switch reply {
            case .answered(let ok, let bytes):
                metrics.recordRequest(operation, ok: ok)
                var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
                buffer.writeBytes(bytes)
                return buffer
            case .unavailable(let error):
                metrics.recordRequest(operation, ok: false)
                var buffer = ByteBufferAllocator().buffer(capacity: 128)
                id.withUnsafeOptionalBytes { ResponseWriter.writeFailure(id: $0, error: error, into: &buffer) }
                return buffer
            }
        }.nonisolated()
    }

    /// `NAMESPACE_NOT_FOUND`, naming the namespaces that are served.
    static func unknownNamespace(_ name: String, among namespaces: [String]) -> ProtocolError {
        let clipped = name.count > 64 ? String(name.prefix(64)) + "..." : name
        return ProtocolError(
            .namespaceNotFound,
            "no namespace '\(clipped)'; rulesd serves " + namespaces.map { "'\($0)'" }.joined(separator: ", "))
    }

    func acknowledgeWatch(id: UnsafeRawBufferPointer?, namespace name: String, into out: inout ByteBuffer) {
        let generation = namespaces.first { $0.name == name }.flatMap { current($0)?.0 }
        ResponseWriter.writeSuccess(
            id: id, revision: generation?.shortRevision ?? "", generation: generation?.number ?? 0,
            result: Array(#"{"watching":true}"#.utf8), into: &out)
    }

    func acknowledgeWatch(id: UnsafeRawBufferPointer?, into out: inout ByteBuffer) {
        let generation = servingGeneration
        ResponseWriter.writeSuccess(
            id: id, revision: generation?.shortRevision ?? "", generation: generation?.number ?? 0,
            result: Array(#"{"watching":true}"#.utf8), into: &out)
    }

    func recordUndecodable() {
        metrics.recordRequest(.ping, ok: false)
    }

    /// Rule `log()` lines go to the daemon's log, at most a few per second per worker so that a chatty rule
    /// on a busy path cannot flood the journal.
    private func forwardRuleLogs(_ evaluator: RuleEvaluator) {
        for line in evaluator.takeLogs() {
            guard ruleLogBudget.allow(now: SystemClock.monotonicSeconds()) else { continue }
            let dropped = ruleLogBudget.takeDropped()
            if dropped > 0 {
                logger.warning("rule log lines suppressed", metadata: ["rules.suppressed": "\(dropped)"])
            }
            let level: Logger.Level
            switch line.level {
            case .debug: level = .debug
            case .info: level = .info
            case .warning: level = .warning
            case .error: level = .error
            }
            logger.log(level: level, "\(line.text)", metadata: ["rules.origin": "\(line.origin)", "source": "rule"])
        }
    }
}

/// A token bucket: `perSecond` events per second, with bursts of the same size.
struct RateLimiter {
    let perSecond: Double
    private var tokens: Double
    private var last: Double = 0
    private var dropped = 0

    init(perSecond: Double) {
        self.perSecond = perSecond
        self.tokens = perSecond
    }

    mutating func allow(now: Double) -> Bool {
        tokens = min(perSecond, tokens + (now - last) * perSecond)
        last = now
        if tokens >= 1 {
            tokens -= 1
            return true
        }
        dropped += 1
        return false
    }

    mutating func takeDropped() -> Int {
        defer { dropped = 0 }
        return dropped
    }
}
