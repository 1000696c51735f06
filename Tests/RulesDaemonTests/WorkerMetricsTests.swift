import RuleModel
import Testing

@testable import RulesDaemon

/// A worker's flag-evaluation counters: counted per generation by flag index, and folded by key when the
/// generation changes, so that `rulesd_flag_evaluations_total` never goes backwards across reloads.
@Suite("a worker's flag-evaluation counters")
struct WorkerMetricsTests {
    private func count(_ metrics: WorkerMetrics, _ key: String, _ reason: EvaluationReason) -> Int {
        metrics.snapshot().evaluations[key]?[WorkerMetrics.reasonIndex(reason)] ?? 0
    }

    @Test("counts start at zero in every generation and carry over by key across generations")
    func countsCarryOverByKey() {
        let metrics = WorkerMetrics()
        metrics.beginGeneration(flagKeys: ["a", "b"])
        #expect(metrics.snapshot().evaluations.isEmpty)
        for _ in 0..<3 {
            metrics.flagEvaluated(index: 0, decision: FlagDecision(variantIndex: 0, reason: .staticValue))
        }
        metrics.flagEvaluated(index: 1, decision: FlagDecision(variantIndex: 1, reason: .targetingMatch))
        // The next generation renumbers the flags: `b` is now first, `a` is gone, `c` is new.
        metrics.beginGeneration(flagKeys: ["b", "c"])
        metrics.flagEvaluated(index: 0, decision: FlagDecision(variantIndex: 0, reason: .targetingMatch))
        metrics.flagEvaluated(index: 1, decision: FlagDecision(variantIndex: 0, reason: .defaultValue))
        #expect(count(metrics, "a", .staticValue) == 3)
        #expect(count(metrics, "b", .targetingMatch) == 2)
        #expect(count(metrics, "c", .defaultValue) == 1)
        #expect(count(metrics, "c", .targetingMatch) == 0)
        // A generation without flags, then one with many: counters of flags never evaluated stay zero.
        metrics.beginGeneration(flagKeys: [])
        metrics.beginGeneration(flagKeys: (0..<20_000).map { "flag-\($0)" })
        metrics.flagEvaluated(index: 19_999, decision: FlagDecision(variantIndex: 0, reason: .staticValue))
        let evaluations = metrics.snapshot().evaluations
        #expect(evaluations["flag-19999"]?[WorkerMetrics.reasonIndex(.staticValue)] == 1)
        #expect(evaluations.keys.filter { $0.hasPrefix("flag-") } == ["flag-19999"])
        #expect(count(metrics, "b", .targetingMatch) == 2)
    }
}
