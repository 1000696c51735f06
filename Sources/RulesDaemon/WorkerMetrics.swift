import Glibc
import RuleModel
import RulesProtocol
import SystemClock

/// Per-request metrics, counted by the worker that served the request in plain (thread-owned) memory and
/// merged only when someone asks for metrics: the request path takes no lock and touches no shared cache
/// line for them.
final class WorkerMetrics: EvaluationObserver {
    /// Upper bounds of the evaluation-latency buckets, in seconds.
    static let latencyBuckets: [Double] = [
        0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
    ]
    static let operations = RequestOperation.allCases

    private(set) var requests = [Int](repeating: 0, count: RequestOperation.allCases.count * 2)
    private(set) var latencyCounts = [Int](repeating: 0, count: WorkerMetrics.latencyBuckets.count + 1)
    private(set) var latencySumNanoseconds = 0
    /// Evaluations of the current generation, by flag index and reason (flat: flag * reasons + reason).
    ///
    /// In memory from `calloc` rather than an array: an array of zeros is written whole, while the kernel hands
    /// out a large calloc'd block as untouched zero pages, so the counters of flags a worker never evaluates cost
    /// no resident memory (with 10,000 flags, 800 KB a worker of which a daemon asked about a few flags touches
    /// a page or two).
    private var evaluations = UnsafeMutableBufferPointer<Int>(start: nil, count: 0)

    deinit { free(evaluations.baseAddress) }
    private var flagKeys: [String] = []
    /// Evaluations of earlier generations, by flag key: counters never go backwards across reloads.
    private var retired: [String: [Int]] = [:]
    private(set) var ruleErrors = [Int](repeating: 0, count: RuleErrorCode.allCases.count)

    @inline(__always)
    func clock() -> UInt64 { SystemClock.monotonicNanoseconds() }

    @inline(__always)
    func recordRequest(_ operation: RequestOperation, ok: Bool) {
        requests[Self.operationIndex(operation) &* 2 &+ (ok ? 0 : 1)] &+= 1
    }

    /// Worker time for `count` requests answered together (the lines of one read): each is counted with
    /// the average, which is exact for unpipelined clients and avoids two clock reads per request.
    func recordLatency(nanoseconds elapsed: Int, requests count: Int) {
        guard count > 0 else { return }
        latencySumNanoseconds &+= elapsed
        let seconds = Double(elapsed) / Double(count) / 1e9
        var bucket = 0
        while bucket < Self.latencyBuckets.count && seconds > Self.latencyBuckets[bucket] { bucket += 1 }
        latencyCounts[bucket] &+= count
    }

    func flagEvaluated(index flag: Int, decision: FlagDecision) {
        evaluations[flag &* Self.reasons + Self.reasonIndex(decision.reason)] &+= 1
        if let failure = decision.failure { ruleFailed(failure.code) }
    }

    func ruleFailed(_ code: RuleErrorCode) {
        ruleErrors[RuleErrorCode.allCases.firstIndex(of: code)!] += 1
    }

    /// Flag indexes only mean something within one generation: fold the counts into per-key totals when
    /// the worker switches generations.
    func beginGeneration(flagKeys keys: [String]) {
        retired = evaluationsByKey()
        flagKeys = keys
        free(evaluations.baseAddress)
        let count = keys.count * Self.reasons
        guard count > 0, let counters = calloc(count, MemoryLayout<Int>.stride) else {
            precondition(count == 0, "out of memory for \(count) evaluation counters")
            evaluations = UnsafeMutableBufferPointer(start: nil, count: 0)
            return
        }
        evaluations = UnsafeMutableBufferPointer(start: counters.assumingMemoryBound(to: Int.self), count: count)
    }

    private func evaluationsByKey() -> [String: [Int]] {
        var merged = retired
        for (flag, key) in flagKeys.enumerated() {
            let counts = evaluations[(flag * Self.reasons)..<((flag + 1) * Self.reasons)]
            if counts.allSatisfy({ $0 == 0 }) { continue }
            var total = merged[key] ?? [Int](repeating: 0, count: Self.reasons)
            for (reason, count) in counts.enumerated() { total[reason] += count }
            merged[key] = total
        }
        return merged
    }

    func snapshot() -> WorkerMetricsSnapshot {
        WorkerMetricsSnapshot(
            requests: requests, latencyCounts: latencyCounts, latencySumNanoseconds: latencySumNanoseconds,
            evaluations: evaluationsByKey(), ruleErrors: ruleErrors)
    }

    static let reasons = EvaluationReason.allCases.count

    @inline(__always)
    static func operationIndex(_ operation: RequestOperation) -> Int {
        switch operation {
        case .ping: return 0
        case .flag: return 1
        case .flags: return 2
        case .route: return 3
        case .config: return 4
        case .status: return 5
        case .watch: return 6
        case .reload: return 7
        case .metrics: return 8
        case .history: return 9
        case .show: return 10
        case .rollback: return 11
        case .resume: return 12
        case .explain: return 13
        case .capture: return 14
        case .overrideSet: return 15
        case .overrideList: return 16
        case .overrideClear: return 17
        }
    }

    static func reasonIndex(_ reason: EvaluationReason) -> Int {
        EvaluationReason.allCases.firstIndex(of: reason)!
    }
}

/// A copy of one worker's counters, taken on its own thread.
struct WorkerMetricsSnapshot: Sendable {
    var requests: [Int]
    var latencyCounts: [Int]
    var latencySumNanoseconds: Int
    /// By flag key, then by reason (in `EvaluationReason.allCases` order).
    var evaluations: [String: [Int]]
    var ruleErrors: [Int]
}
