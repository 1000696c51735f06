import CRuleSandbox
import Glibc
import RuleModel
import SystemClock

/// Evaluates one rule set in its own sandboxed Lua state.
///
/// Not thread-safe, by design: a Lua state is used by one thread at a time. A daemon keeps one evaluator
/// per worker thread and per rule-set generation, so evaluation needs no lock. Run it on a thread with a
/// stack of at least 1 MiB.
public final class RuleEvaluator {
    /// The rule set this evaluator answers for.
    public let ruleSet: RuleSet
    let state: OpaquePointer
    private var outcomes: [rs_outcome]

    init(state: OpaquePointer, ruleSet: RuleSet) {
        self.state = state
        self.ruleSet = ruleSet
        self.outcomes = Array(repeating: rs_outcome(), count: ruleSet.flags.count)
    }

    deinit {
        rs_state_free(state)
    }

    /// Bytes the Lua state holds.
    public var memoryInUse: Int { Int(rs_memory_in_use(state)) }

    /// Makes `flag_value()` in rules answer `variant` (an index into the flag's variants) for the flag at `index`,
    /// as an override forces it; nil gives the decision back to the flag's rule.
    public func setOverride(flag index: Int, variant: Int?) {
        rs_set_override(state, index, Int32(variant ?? -1))
    }

    /// Evaluates the flag at `index` (into `ruleSet.flags`) for a context given as JSON text.
    /// - Parameters:
    ///   - index: the flag's index in ``RuleSet/flags``.
    ///   - context: a JSON object (empty bytes mean an empty context).
    ///   - now: what `now()` returns to the rule, in seconds since the epoch.
    /// - Returns: the variant and reason; on a rule failure the default variant with reason ERROR.
    public func evaluateFlag(at index: Int, context: UnsafeRawBufferPointer, now: Double) -> FlagDecision {
        var outcome = rs_outcome()
        rs_eval_flag(
            state, index, context.baseAddress?.assumingMemoryBound(to: CChar.self), context.count, now, &outcome)
        return decision(outcome, flag: index)
    }

    /// Evaluates the flag named `key` for a context given as a JSON value.
    /// - Returns: nil when the rule set has no such flag.
    public func evaluateFlag(key: String, context: JSONValue = .object(JSONObject()), now: Double = RuleClock.now())
        -> FlagDecision?
    {
        guard let index = ruleSet.flagIndex(forKey: key) else { return nil }
        let json = JSONWriter.string(context)
        return Array(json.utf8).withUnsafeBytes { evaluateFlag(at: index, context: $0, now: now) }
    }

    /// Evaluates every flag for one context, converted once.
    /// - Returns: one decision per flag (in ``RuleSet/flags`` order), or the context's problem.
    public func evaluateAllFlags(context: UnsafeRawBufferPointer, now: Double) -> Result<[FlagDecision], RuleFailure> {
        var contextError = rs_outcome()
        let count = outcomes.count
        let status = outcomes.withUnsafeMutableBufferPointer { buffer in
            rs_eval_all_flags(
                state, context.baseAddress?.assumingMemoryBound(to: CChar.self), context.count, now,
                buffer.baseAddress, &contextError)
        }
        if status != Int32(RS_OK.rawValue) {
            return .failure(failure(contextError) ?? RuleFailure(code: .invalidContext, message: "invalid context"))
        }
        var decisions: [FlagDecision] = []
        decisions.reserveCapacity(count)
        for index in 0..<count { decisions.append(decision(outcomes[index], flag: index)) }
        return .success(decisions)
    }

    /// Evaluates every flag for a context given as a JSON value.
    public func evaluateAllFlags(context: JSONValue = .object(JSONObject()), now: Double = RuleClock.now())
        -> Result<[FlagDecision], RuleFailure>
    {
        Array(JSONWriter.string(context).utf8).withUnsafeBytes { evaluateAllFlags(context: $0, now: now) }
    }

    /// Routes a request given as JSON text: the first route (in priority order) whose `match` accepts it.
    public func route(request: UnsafeRawBufferPointer, now: Double) -> RouteDecision {
        var outcome = rs_outcome()
        rs_eval_route(state, request.baseAddress?.assumingMemoryBound(to: CChar.self), request.count, now, &outcome)
        return routeDecision(outcome)
    }

    /// Whether routing decides the route at `index` (into ``RuleSet/routes``) without calling its `match`
    /// function: the function only tests the request's top-level fields against constants, and was compiled when
    /// the rule set was loaded. Answers are the same either way.
    public func routeMatchIsCompiled(at index: Int) -> Bool {
        rs_route_match_compiled(state, index) != 0
    }

    /// Routes a request calling every `match` function, compiled or not: the reference that compiled matches are
    /// tested against.
    func routeCallingEveryMatch(request: UnsafeRawBufferPointer, now: Double) -> RouteDecision {
        rs_set_compiled_routing(state, 0)
        defer { rs_set_compiled_routing(state, 1) }
        return route(request: request, now: now)
    }

    /// How evaluations turn a context's JSON into the table rules read: the answers are the same either way.
    enum ContextConversion: Int32 {
        /// Small contexts whole, larger ones member by member on first read (the default).
        case bySize = 0
        /// Every member before the rule runs: the reference the lazy conversion is tested against.
        case whole = 1
        /// The text checked whole, each top-level member converted on its first read.
        case lazy = 2
    }

    /// Sets how this evaluator's evaluations convert their contexts.
    func setContextConversion(_ conversion: ContextConversion) {
        rs_set_context_conversion(state, conversion.rawValue)
    }

    func routeDecision(_ outcome: rs_outcome) -> RouteDecision {
        switch Int(outcome.status) {
        case Int(RS_OK.rawValue):
            return .matched(routeIndex: Int(outcome.index), target: text(outcome.target_offset, outcome.target_length))
        case Int(RS_NO_DECISION.rawValue):
            return .noRoute
        default:
            let failure = failure(outcome) ?? RuleFailure(code: .general, message: "routing failed")
            return .failed(routeIndex: outcome.index >= 0 ? Int(outcome.index) : nil, failure)
        }
    }

    /// Routes a request given as a JSON value.
    public func route(request: JSONValue, now: Double = RuleClock.now()) -> RouteDecision {
        Array(JSONWriter.string(request).utf8).withUnsafeBytes { route(request: $0, now: now) }
    }

    /// Runs the function test at `index` (among the rule set's tests) in this evaluator's state.
    /// - Parameter remote: where the test's flag(), route() and config() questions go; nil: this state's rules.
    func runTest(
        at index: Int, now: Double, timeoutNanoseconds: UInt64, remote: (any RuleTestRemoteAnswers)? = nil
    ) -> FunctionTestOutcome {
        var outcome = rs_test_outcome()
        if let remote {
            let asker = RemoteAsker(remote)
            withExtendedLifetime(asker) {
                rs_set_test_answers(
                    state,
                    { context, request, length, answerLength in
                        guard let context, let request, let answerLength else { return nil }
                        let asker = Unmanaged<RemoteAsker>.fromOpaque(context).takeUnretainedValue()
                        return asker.ask(UnsafeRawBufferPointer(start: request, count: length), answerLength)
                    }, Unmanaged.passUnretained(asker).toOpaque())
                rs_run_test(state, index, now, timeoutNanoseconds, &outcome)
                rs_set_test_answers(state, nil, nil)
            }
        } else {
            rs_run_test(state, index, now, timeoutNanoseconds, &outcome)
        }
        let file = text(outcome.file_offset, outcome.file_length)
        return FunctionTestOutcome(
            passed: outcome.passed != 0, outOfBudget: outcome.out_of_budget != 0,
            location: outcome.line > 0 ? SourceLocation(file: file, line: Int(outcome.line)) : nil,
            message: text(outcome.message_offset, outcome.message_length))
    }

    /// Whether rules have logged lines that ``takeLogs()`` would return.
    public var hasLogs: Bool { rs_log_count(state) > 0 }

    /// The lines rules logged since the last call (escaped and length-limited by the sandbox).
    public func takeLogs() -> [RuleLogLine] {
        let count = rs_log_count(state)
        guard count > 0 else { return [] }
        var lines: [RuleLogLine] = []
        for index in 0..<count {
            let line = rs_log_at(state, index)
            lines.append(
                RuleLogLine(
                    level: RuleLogLine.Level(rawValue: Int(line.level)) ?? .info,
                    origin: line.key.map { String(cString: $0) } ?? "",
                    text: String(cString: line.text)))
        }
        rs_log_clear(state)
        return lines
    }

    func decision(_ outcome: rs_outcome, flag: Int) -> FlagDecision {
        let variant = Int(outcome.index) >= 0 ? Int(outcome.index) : ruleSet.flags[flag].defaultVariant
        switch Int(outcome.status) {
        case Int(RS_OK.rawValue): return FlagDecision(variantIndex: variant, reason: .targetingMatch)
        case Int(RS_NO_DECISION.rawValue): return FlagDecision(variantIndex: variant, reason: .defaultValue)
        case Int(RS_STATIC.rawValue): return FlagDecision(variantIndex: variant, reason: .staticValue)
        case Int(RS_DISABLED.rawValue): return FlagDecision(variantIndex: variant, reason: .disabled)
        default:
            return FlagDecision(
                variantIndex: ruleSet.flags[flag].defaultVariant, reason: .error,
                failure: failure(outcome) ?? RuleFailure(code: .general, message: "evaluation failed"))
        }
    }

    func failure(_ outcome: rs_outcome) -> RuleFailure? {
        let code: RuleErrorCode
        switch Int(outcome.status) {
        case Int(RS_ERR_GENERAL.rawValue), Int(RS_ERR_INTERNAL.rawValue): code = .general
        case Int(RS_ERR_RESOURCE_LIMIT.rawValue): code = .resourceLimit
        case Int(RS_ERR_TYPE_MISMATCH.rawValue): code = .typeMismatch
        case Int(RS_ERR_INVALID_CONTEXT.rawValue): code = .invalidContext
        case Int(RS_ERR_PARSE.rawValue): code = .parseError
        default: return nil
        }
        return RuleFailure(code: code, message: text(outcome.message_offset, outcome.message_length))
    }

    func text(_ offset: UInt32, _ length: UInt32) -> String {
        guard length > 0, let base = rs_text_buffer(state) else { return "" }
        let start = UnsafeRawPointer(base + Int(offset)).assumingMemoryBound(to: UInt8.self)
        return String(decoding: UnsafeBufferPointer(start: start, count: Int(length)), as: UTF8.self)
    }
}

/// Hands a function test's questions to a remote source, and keeps the last answer alive for the sandbox.
private final class RemoteAsker {
    let remote: any RuleTestRemoteAnswers
    private var answer: [CChar] = []

    init(_ remote: any RuleTestRemoteAnswers) { self.remote = remote }

    /// The answer line to one request; valid until the next call (the sandbox copies what it keeps).
    func ask(_ request: UnsafeRawBufferPointer, _ length: UnsafeMutablePointer<Int>) -> UnsafePointer<CChar>? {
        guard let line = remote.answerLine(to: Array(request)) else { return nil }
        answer = line.map { CChar(bitPattern: $0) } + [0]
        length.pointee = line.count
        return answer.withUnsafeBufferPointer { $0.baseAddress }
    }
}

/// Wall-clock time as rules see it through `now()`.
public enum RuleClock {
    /// Seconds since the epoch, with sub-second precision.
    public static func now() -> Double { SystemClock.epochSeconds() }
}
