import CoreMetrics
import Prometheus
import RuleModel
import RuleWatcher
import RulesProtocol
import Synchronization
import SystemClock

/// What the reload path reports to metrics.
protocol ReloadMetrics: Sendable {
    func recordReload(ok: Bool, seconds: Double)
    func recordGeneration(_ generation: ServingGeneration)
    /// A save of the last known good copy into the state directory succeeded or failed.
    func recordSave(ok: Bool)
}

/// The daemon's metrics, in Prometheus text format, through swift-metrics with swift-prometheus.
///
/// Reload-side metrics are recorded as they happen. Request-side metrics are counted per worker in
/// thread-owned memory (no lock, no shared cache line on the request path) and merged here when metrics
/// are read: counters are brought up to date through swift-metrics; the request-latency histogram is
/// rendered here from the merged buckets, because swift-prometheus's histogram takes a lock per
/// observation.
final class DaemonMetrics: ReloadMetrics, Sendable {
    let registry: PrometheusCollectorRegistry
    private let factory: MetricsFactory
    /// The default namespace's rule-set and reload series.
    let defaultRuleSet: RuleSetMetrics
    private let connections: CoreMetrics.Gauge
    private let watchers: CoreMetrics.Gauge
    private let startTime: CoreMetrics.Gauge
    private let captureEntries: CoreMetrics.Gauge
    private let captureBytes: CoreMetrics.Gauge

    private struct Merged {
        var requests: [String: Int] = [:]
        var evaluations: [String: Int] = [:]
        var ruleErrors: [String: Int] = [:]
        var counters: [String: CoreMetrics.Counter] = [:]
        var modes: [String: CoreMetrics.Gauge] = [:]
    }

    private let merged = Mutex(Merged())

    /// - Parameter labelsNamespaces: whether the rule-set and reload series carry a `namespace` label (when the
    ///   daemon serves namespaces besides `default`).
    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), labelsNamespaces: Bool = false) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["rulesd_reload_duration_seconds"] = [
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
        ]
        self.factory = factory
        defaultRuleSet = RuleSetMetrics(
            namespace: labelsNamespaces ? NamespaceSettings.defaultName : nil, registry: registry, factory: factory)
        connections = CoreMetrics.Gauge(label: "rulesd_open_connections", factory: factory)
        watchers = CoreMetrics.Gauge(label: "rulesd_watch_subscribers", factory: factory)
        startTime = CoreMetrics.Gauge(label: "rulesd_start_time_seconds", factory: factory)
        startTime.record(SystemClock.epochSeconds())
        captureEntries = CoreMetrics.Gauge(label: "rulesd_capture_entries", factory: factory)
        captureEntries.record(0)
        captureBytes = CoreMetrics.Gauge(label: "rulesd_capture_bytes", factory: factory)
        captureBytes.record(0)
    }

    /// What the capture holds (all workers), brought up to date when metrics are read.
    func recordCapture(entries: Int, bytes: Int) {
        captureEntries.record(entries)
        captureBytes.record(bytes)
    }

    /// The rule-set and reload series of a declared namespace (labelled with its name).
    func ruleSetMetrics(namespace: String) -> RuleSetMetrics {
        RuleSetMetrics(namespace: namespace, registry: registry, factory: factory)
    }

    func recordSave(ok: Bool) { defaultRuleSet.recordSave(ok: ok) }

    func recordReload(ok: Bool, seconds: Double) { defaultRuleSet.recordReload(ok: ok, seconds: seconds) }

    func recordGeneration(_ generation: ServingGeneration) { defaultRuleSet.recordGeneration(generation) }

    /// Brings the counters up to date and renders every metric in Prometheus text format.
    /// - Parameter namespaceWorkers: each declared namespace's flag evaluations and rule errors, by worker.
    func render(
        workers: [WorkerMetricsSnapshot], openConnections: Int, watchSubscribers: Int, watcherMode: WatcherMode?,
        namespaceWorkers: [String: [WorkerMetricsSnapshot]] = [:]
    ) -> [UInt8] {
        connections.record(openConnections)
        watchers.record(watchSubscribers)
        var requests: [String: Int] = [:]
        var evaluations: [String: Int] = [:]
        var ruleErrors: [String: Int] = [:]
        var latency = [Int](repeating: 0, count: WorkerMetrics.latencyBuckets.count + 1)
        var latencySum = 0
        for worker in workers {
            for (index, count) in worker.requests.enumerated() where count > 0 {
                let op = WorkerMetrics.operations[index / 2].rawValue
                requests["\(op)\u{0}\(index % 2 == 0 ? "ok" : "error")", default: 0] += count
            }
            for (key, counts) in worker.evaluations {
                for (reason, count) in counts.enumerated() where count > 0 {
                    evaluations["\(key)\u{0}\(EvaluationReason.allCases[reason].rawValue)\u{0}", default: 0] += count
                }
            }
            for (index, count) in worker.ruleErrors.enumerated() where count > 0 {
                ruleErrors[RuleErrorCode.allCases[index].rawValue, default: 0] += count
            }
            for (index, count) in worker.latencyCounts.enumerated() { latency[index] += count }
            latencySum += worker.latencySumNanoseconds
        }
        for (namespace, snapshots) in namespaceWorkers {
            for worker in snapshots {
                for (key, counts) in worker.evaluations {
                    for (reason, count) in counts.enumerated() where count > 0 {
                        let reasonName = EvaluationReason.allCases[reason].rawValue
                        evaluations["\(key)\u{0}\(reasonName)\u{0}\(namespace)", default: 0] += count
                    }
                }
                for (index, count) in worker.ruleErrors.enumerated() where count > 0 {
                    ruleErrors[RuleErrorCode.allCases[index].rawValue, default: 0] += count
                }
            }
        }
        let defaultNamespace = defaultRuleSet.namespace
        merged.withLock { state in
            advance(&state.counters, &state.requests, requests, label: "rulesd_requests_total") { key in
                let parts = key.split(separator: "\u{0}", omittingEmptySubsequences: false)
                return [("op", String(parts[0])), ("outcome", String(parts[1]))]
            }
            advance(&state.counters, &state.evaluations, evaluations, label: "rulesd_flag_evaluations_total") { key in
                let parts = key.split(separator: "\u{0}", omittingEmptySubsequences: false)
                // Declared namespaces' series name theirs; the default's does when namespaces are declared.
                let namespace = parts[2].isEmpty ? defaultNamespace : String(parts[2])
                return (namespace.map { [("namespace", $0)] } ?? []) + [
                    ("flag", String(parts[0])), ("reason", String(parts[1])),
                ]
            }
            advance(&state.counters, &state.ruleErrors, ruleErrors, label: "rulesd_rule_errors_total") { key in
                [("code", key)]
            }
            let modeName: String
            switch watcherMode {
            case .inotify: modeName = "inotify"
            case .polling: modeName = "polling"
            case nil: modeName = "off"
            }
            for mode in ["inotify", "polling", "off"] {
                let gauge =
                    state.modes[mode]
                    ?? CoreMetrics.Gauge(
                        label: "rulesd_watcher_mode", dimensions: [("mode", mode)], factory: factory)
                state.modes[mode] = gauge
                gauge.record(mode == modeName ? 1 : 0)
            }
        }
        var out = registry.emitToBuffer()
        appendLatencyHistogram(latency, sumNanoseconds: latencySum, to: &out)
        return out
    }

    private func advance(
        _ counters: inout [String: CoreMetrics.Counter], _ last: inout [String: Int], _ totals: [String: Int],
        label: String,
        dimensions: (String) -> [(String, String)]
    ) {
        for (key, total) in totals {
            let delta = total - (last[key] ?? 0)
            guard delta > 0 else { continue }
            let counterKey = label + "\u{1}" + key
            let counter =
                counters[counterKey]
                ?? CoreMetrics.Counter(
                    label: label, dimensions: dimensions(key), factory: factory)
            counters[counterKey] = counter
            counter.increment(by: delta)
            last[key] = total
        }
    }

    /// `0.000002` rather than `2e-06`: the bounds are whole microseconds.
    static func decimal(_ seconds: Double) -> String {
        let micros = Int((seconds * 1e6).rounded())
        var fraction = String(micros % 1_000_000)
        fraction = String(repeating: "0", count: 6 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return fraction.isEmpty ? "\(micros / 1_000_000)" : "\(micros / 1_000_000).\(fraction)"
    }

    private func appendLatencyHistogram(_ counts: [Int], sumNanoseconds: Int, to out: inout [UInt8]) {
        let name = "rulesd_request_duration_seconds"
        var text = "# HELP \(name) Time to answer one request, from decoding to encoding\n# TYPE \(name) histogram\n"
        var cumulative = 0
        for (index, bound) in WorkerMetrics.latencyBuckets.enumerated() {
            cumulative += counts[index]
            text += "\(name)_bucket{le=\"\(Self.decimal(bound))\"} \(cumulative)\n"
        }
        cumulative += counts[WorkerMetrics.latencyBuckets.count]
        text += "\(name)_bucket{le=\"+Inf\"} \(cumulative)\n"
        text += "\(name)_sum \(Double(sumNanoseconds) / 1e9)\n"
        text += "\(name)_count \(cumulative)\n"
        out.append(contentsOf: text.utf8)
    }
}
