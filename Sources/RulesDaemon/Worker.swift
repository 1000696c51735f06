import Atomics
import Logging
import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol

/// Counters a worker keeps for `status`, readable from any thread. Only the owning worker writes them,
/// so the relaxed increments never contend.
final class WorkerCounters: Sendable {
    let requests = ManagedAtomic<Int>(0)
}

/// One event-loop thread's share of the daemon: its Lua states for the serving generation, and the
/// evaluation of every synchronous request of the connections on that loop.
///
/// Owned by its event loop: created there and only ever used there (see ``WorkerPool``).
final class Worker {
    let index: Int
    let store: GenerationStore
    let counters: WorkerCounters
    let metrics: WorkerMetrics
    private let logger: Logger
    private var generation: ServingGeneration?
    private var evaluator: RuleEvaluator?
    private var result: [UInt8] = []
    private var ruleLogBudget = RateLimiter(perSecond: 20)

    init(index: Int, store: GenerationStore, counters: WorkerCounters, metrics: WorkerMetrics, logger: Logger) {
        self.index = index
        self.store = store
        self.counters = counters
        self.metrics = metrics
        self.logger = logger
        result.reserveCapacity(1024)
    }

    /// Switches to the newest published generation if there is one; the previous Lua state is closed here,
    /// on its own thread, once nothing uses it.
    func refresh() {
        guard let latest = store.generation, latest.number != generation?.number else { return }
        guard let next = latest.takeEvaluator(worker: index) else {
            logger.error("generation has no Lua state for this worker", metadata: ["worker": "\(index)"])
            return
        }
        evaluator = next
        generation = latest
        metrics.beginGeneration(flagKeys: latest.ruleSet.flags.map(\.key))
    }

    /// The generation and evaluator to answer with: one atomic load when nothing changed.
    @inline(__always)
    private func current() -> (ServingGeneration, RuleEvaluator)? {
        if let generation, let evaluator, generation.number == store.publishedNumber {
            return (generation, evaluator)
        }
        refresh()
        guard let generation, let evaluator else { return nil }
        return (generation, evaluator)
    }

    /// The serving generation as this worker sees it (for answers that only need the model).
    var servingGeneration: ServingGeneration? { current()?.0 }

    /// Answers one synchronous request (ping, flag, flags, route, config) into `out`.
    func answer(_ request: DecodedRequest, line: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        counters.requests.wrappingIncrement(ordering: .relaxed)
        let id = request.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }
        guard let (generation, evaluator) = current() else {
            ResponseWriter.writeFailure(id: id, error: ProtocolError(.internal, "no rule set is loaded"), into: &out)
            return
        }
        let ruleSet = generation.ruleSet
        let started = metrics.clock()
        result.removeAll(keepingCapacity: true)
        var failure: ProtocolError?
        switch request.operation {
        case .ping:
            result.append(contentsOf: "{}".utf8)
        case .flag:
            let key = request.flag ?? ""
            guard let index = ruleSet.flagIndex(forKey: key) else {
                failure = ProtocolError(.flagNotFound, RuleAnswers.flagNotFound(key).message)
                break
            }
            let context = request.context.map { UnsafeRawBufferPointer(rebasing: line[$0]) }
            let decision = evaluator.evaluateFlag(
                at: index, context: context ?? UnsafeRawBufferPointer(start: nil, count: 0),
                now: request.at ?? RuleClock.now())
            metrics.recordEvaluation(flag: index, decision: decision)
            RuleAnswers.appendFlag(ruleSet.flags[index], decision, to: &result)
        case .flags:
            let context = request.context.map { UnsafeRawBufferPointer(rebasing: line[$0]) }
            switch evaluator.evaluateAllFlags(
                context: context ?? UnsafeRawBufferPointer(start: nil, count: 0), now: request.at ?? RuleClock.now())
            {
            case .success(let decisions):
                for (index, decision) in decisions.enumerated() { metrics.recordEvaluation(flag: index, decision: decision) }
                RuleAnswers.appendFlags(ruleSet, decisions, to: &result)
            case .failure(let problem):
                failure = ProtocolError(.invalidRequest, "context: \(problem.message)")
            }
        case .route:
            let body = request.request.map { UnsafeRawBufferPointer(rebasing: line[$0]) }
            switch evaluator.route(
                request: body ?? UnsafeRawBufferPointer(start: nil, count: 0), now: request.at ?? RuleClock.now())
            {
            case .matched(let routeIndex, let target):
                RuleAnswers.appendRoute(ruleSet.routes[routeIndex], target: target, to: &result)
            case .noRoute:
                failure = ProtocolError(.noRoute, RuleAnswers.noRoute.message)
            case .failed(let routeIndex, let problem):
                if problem.code == .invalidContext {
                    failure = ProtocolError(.invalidRequest, "request: \(problem.message)")
                } else {
                    let route = routeIndex.map { ruleSet.routes[$0] }
                    let answer = RuleAnswers.routeFailure(route, problem)
                    metrics.recordRuleError(problem.code)
                    failure = ProtocolError(
                        .ruleError, answer.message, details: Dictionary(uniqueKeysWithValues: answer.extra))
                }
            }
        case .config:
            if let key = request.key {
                guard let entry = ruleSet.config(key: key) else {
                    failure = ProtocolError(.configNotFound, RuleAnswers.configNotFound(key).message)
                    break
                }
                RuleAnswers.appendConfig(entry, to: &result)
            } else {
                let prefix = request.prefix ?? ""
                let entries = ruleSet.configs(prefix: prefix)
                if entries.isEmpty && !prefix.isEmpty {
                    failure = ProtocolError(.configNotFound, "no config values under the prefix '\(prefix)'")
                    break
                }
                RuleAnswers.appendConfigs(entries, to: &result)
            }
        case .status, .watch, .reload, .metrics:
            failure = ProtocolError(.internal, "operation \(request.operation.rawValue) is not synchronous")
        }
        if evaluator.hasLogs { forwardRuleLogs(evaluator) }
        if let failure {
            metrics.recordRequest(request.operation, ok: false, since: started)
            ResponseWriter.writeFailure(id: id, error: failure, into: &out)
        } else {
            metrics.recordRequest(request.operation, ok: true, since: started)
            ResponseWriter.writeSuccess(
                id: id, revision: generation.shortRevision, generation: generation.number, result: result, into: &out)
        }
    }

    /// Rule `log()` lines go to the daemon's log, at most a few per second per worker so that a chatty rule
    /// on a busy path cannot flood the journal.
    private func forwardRuleLogs(_ evaluator: RuleEvaluator) {
        for line in evaluator.takeLogs() {
            guard ruleLogBudget.allow(now: RuleClockTime.monotonic()) else { continue }
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
