import RuleEngine
import RuleModel

/// A question about a rule set: the evaluation operations of the protocol.
public enum RuleQuestion {
    case ping
    /// One flag, named by its key's UTF-8 bytes; `context` is a JSON object's text (empty for none).
    case flag(key: UnsafeRawBufferPointer, context: UnsafeRawBufferPointer)
    case flags(context: UnsafeRawBufferPointer)
    case route(request: UnsafeRawBufferPointer)
    case config(key: String)
    case configPrefix(String)
    /// `flag`, answered with a trace of what the rule did.
    case explainFlag(key: UnsafeRawBufferPointer, context: UnsafeRawBufferPointer)
    /// `route`, answered with a trace of every route tried up to the winner.
    case explainRoute(request: UnsafeRawBufferPointer)
}

/// Sees what an answer evaluated (the daemon counts it in its metrics).
public protocol EvaluationObserver {
    func flagEvaluated(index: Int, decision: FlagDecision)
    func ruleFailed(_ code: RuleErrorCode)
}

/// Observes nothing.
public struct NoEvaluationObserver: EvaluationObserver {
    public init() {}
    public func flagEvaluated(index: Int, decision: FlagDecision) {}
    public func ruleFailed(_ code: RuleErrorCode) {}
}

/// Answers questions about a rule set: the daemon's workers and `rulesctl eval` both use this, so the same
/// question gets the same answer, error codes and messages included, online and offline.
public enum EvaluationAnswers {
    /// Answers `question` with `evaluator`, appending the `result` object's JSON to `result`.
    /// - Parameters:
    ///   - now: what `now()` returns to rules, in seconds since the epoch.
    ///   - observer: told about every flag evaluated and every rule failure.
    ///   - unvalidated: for a `flag`, `flags` or `route` question, called whenever the answer would be given
    ///     without the rule sandbox having validated all of its context or request (no such flag, a flag without a
    ///     rule, any failure): a non-nil error it returns is the answer instead, and nothing is observed. For a
    ///     request whose context the decoder only skimmed (``DecodedRequest/isValidated``). The other questions
    ///     never call it.
    /// - Returns: nil when `result` holds the answer, else the error to answer instead.
    @inline(__always)
    public static func answer<Observer: EvaluationObserver>(
        _ question: RuleQuestion, evaluator: RuleEvaluator, now: Double, observer: Observer,
        into result: inout [UInt8], unvalidated: () -> ProtocolError? = { nil }
    ) -> ProtocolError? {
        let ruleSet = evaluator.ruleSet
        switch question {
        case .ping:
            result.append(contentsOf: "{}".utf8)
        case .flag(let key, let context):
            guard let index = ruleSet.flagIndex(forUTF8: key) else {
                if let refusal = unvalidated() { return refusal }
                let name = String(decoding: key, as: UTF8.self)
                return ProtocolError(.flagNotFound, RuleAnswers.flagNotFound(name).message)
            }
            let decision = evaluator.evaluateFlag(at: index, context: context, now: now)
            if !readWholeContext(decision), let refusal = unvalidated() { return refusal }
            observer.flagEvaluated(index: index, decision: decision)
            RuleAnswers.appendFlag(ruleSet, flag: index, decision, to: &result)
        case .flags(let context):
            switch evaluator.evaluateAllFlags(context: context, now: now) {
            case .success(let decisions):
                for (index, decision) in decisions.enumerated() {
                    observer.flagEvaluated(index: index, decision: decision)
                }
                RuleAnswers.appendFlags(ruleSet, decisions, to: &result)
            case .failure(let problem):
                if let refusal = unvalidated() { return refusal }
                return ProtocolError(.invalidRequest, "context: \(problem.message)")
            }
        case .route(let request):
            switch evaluator.route(request: request, now: now) {
            case .matched(let index, let target):
                RuleAnswers.appendRoute(ruleSet.routes[index], target: target, to: &result)
            case .noRoute:
                return ProtocolError(.noRoute, RuleAnswers.noRoute.message)
            case .failed(let index, let problem):
                if let refusal = unvalidated() { return refusal }
                if problem.code == .invalidContext {
                    return ProtocolError(.invalidRequest, "request: \(problem.message)")
                }
                observer.ruleFailed(problem.code)
                let failure = RuleAnswers.routeFailure(index.map { ruleSet.routes[$0] }, problem)
                return ProtocolError(
                    .ruleError, failure.message, details: Dictionary(uniqueKeysWithValues: failure.extra))
            }
        case .config(let key):
            guard let entry = ruleSet.config(key: key) else {
                return ProtocolError(.configNotFound, RuleAnswers.configNotFound(key).message)
            }
            RuleAnswers.appendConfig(entry, to: &result)
        case .configPrefix(let prefix):
            let entries = ruleSet.configs(prefix: prefix)
            if entries.isEmpty && !prefix.isEmpty {
                return ProtocolError(.configNotFound, RuleAnswers.configPrefixNotFound(prefix).message)
            }
            RuleAnswers.appendConfigs(entries, to: &result)
        case .explainFlag(let key, let context):
            guard let index = ruleSet.flagIndex(forUTF8: key) else {
                let name = String(decoding: key, as: UTF8.self)
                return ProtocolError(.flagNotFound, RuleAnswers.flagNotFound(name).message)
            }
            let (decision, trace) = evaluator.explainFlag(at: index, context: context, now: now)
            observer.flagEvaluated(index: index, decision: decision)
            RuleAnswers.appendFlag(ruleSet, flag: index, decision, to: &result)
            appendTrace(trace, to: &result)
        case .explainRoute(let request):
            let (decision, trace) = evaluator.explainRoute(request: request, now: now)
            switch decision {
            case .matched(let index, let target):
                RuleAnswers.appendRoute(ruleSet.routes[index], target: target, to: &result)
            case .noRoute:
                // An explained route that matches nothing is still an answer: the trace says why.
                result.append(contentsOf: #"{"route":null,"error":"#.utf8)
                RuleAnswers.appendError(
                    code: RuleAnswers.noRoute.code, message: RuleAnswers.noRoute.message, to: &result)
                result.append(UInt8(ascii: "}"))
            case .failed(let index, let problem):
                if problem.code == .invalidContext {
                    return ProtocolError(.invalidRequest, "request: \(problem.message)")
                }
                observer.ruleFailed(problem.code)
                let failure = RuleAnswers.routeFailure(index.map { ruleSet.routes[$0] }, problem)
                result.append(contentsOf: #"{"route":null,"error":"#.utf8)
                RuleAnswers.appendError(code: failure.code, message: failure.message, extra: failure.extra, to: &result)
                result.append(UInt8(ascii: "}"))
            }
            appendTrace(trace, to: &result)
        }
        return nil
    }

    /// Whether the sandbox validated the whole context to reach `decision`: the flag's rule ran (the context is
    /// validated in full before it runs) and did not fail in a way the context could have caused.
    @inline(__always)
    static func readWholeContext(_ decision: FlagDecision) -> Bool {
        switch decision.reason {
        case .targetingMatch, .defaultValue: return true
        case .error: return decision.failure?.code == .typeMismatch
        case .staticValue, .disabled: return false
        }
    }

    /// Turns the answer object just appended, `{...}`, into `{...,"trace":TRACE}`.
    private static func appendTrace(_ trace: RuleTrace, to result: inout [UInt8]) {
        guard result.last == UInt8(ascii: "}") else { return }
        result.removeLast()
        result.append(contentsOf: #","trace":"#.utf8)
        result.append(contentsOf: JSONWriter.string(trace.json).utf8)
        result.append(UInt8(ascii: "}"))
    }
}
