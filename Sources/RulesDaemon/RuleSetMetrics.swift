import CoreMetrics
import Prometheus
import Synchronization

/// One namespace's rule-set and reload series: reloads, their duration, the serving generation and its counts,
/// the state directory's saves, and the `rulesd_rules_info` series naming the revision.
///
/// With only the default namespace the series carry no `namespace` label, as they always did; once namespaces
/// are declared every namespace's series (the default's too) carry one. Names come from the configuration only,
/// never from requests, so the label's cardinality is the number of configured namespaces.
final class RuleSetMetrics: ReloadMetrics, Sendable {
    let namespace: String?
    private let registry: PrometheusCollectorRegistry
    private let reloadsOK: CoreMetrics.Counter
    private let reloadsFailed: CoreMetrics.Counter
    private let reloadDuration: CoreMetrics.Timer
    private let generationGauge: CoreMetrics.Gauge
    private let files: CoreMetrics.Gauge
    private let flags: CoreMetrics.Gauge
    private let routes: CoreMetrics.Gauge
    private let configs: CoreMetrics.Gauge
    private let luaMemory: CoreMetrics.Gauge
    private let savedCopyStale: CoreMetrics.Gauge
    private let saveFailures: CoreMetrics.Counter
    private let info = Mutex<Prometheus.Gauge?>(nil)

    /// - Parameter namespace: the `namespace` label's value, or nil for unlabelled series.
    init(namespace: String?, registry: PrometheusCollectorRegistry, factory: MetricsFactory) {
        self.namespace = namespace
        self.registry = registry
        let label: [(String, String)] = namespace.map { [("namespace", $0)] } ?? []
        reloadsOK = CoreMetrics.Counter(
            label: "rulesd_reloads_total", dimensions: label + [("outcome", "ok")], factory: factory)
        reloadsFailed = CoreMetrics.Counter(
            label: "rulesd_reloads_total", dimensions: label + [("outcome", "failed")], factory: factory)
        reloadDuration = CoreMetrics.Timer(
            label: "rulesd_reload_duration_seconds", dimensions: label, factory: factory)
        generationGauge = CoreMetrics.Gauge(label: "rulesd_generation", dimensions: label, factory: factory)
        files = CoreMetrics.Gauge(label: "rulesd_rule_files", dimensions: label, factory: factory)
        flags = CoreMetrics.Gauge(label: "rulesd_flags", dimensions: label, factory: factory)
        routes = CoreMetrics.Gauge(label: "rulesd_routes", dimensions: label, factory: factory)
        configs = CoreMetrics.Gauge(label: "rulesd_configs", dimensions: label, factory: factory)
        luaMemory = CoreMetrics.Gauge(label: "rulesd_lua_state_bytes", dimensions: label, factory: factory)
        savedCopyStale = CoreMetrics.Gauge(
            label: "rulesd_state_dir_save_failing", dimensions: label, factory: factory)
        savedCopyStale.record(0)
        saveFailures = CoreMetrics.Counter(
            label: "rulesd_state_dir_save_failures_total", dimensions: label, factory: factory)
    }

    func recordSave(ok: Bool) {
        // 1 from a failed save until the next one succeeds: the saved copy is then older than what serves.
        savedCopyStale.record(ok ? 0 : 1)
        if !ok { saveFailures.increment() }
    }

    func recordReload(ok: Bool, seconds: Double) {
        (ok ? reloadsOK : reloadsFailed).increment()
        reloadDuration.recordNanoseconds(Int64(seconds * 1e9))
    }

    func recordGeneration(_ generation: ServingGeneration) {
        generationGauge.record(Int64(generation.number))
        let ruleSet = generation.ruleSet
        files.record(ruleSet.files.count)
        flags.record(ruleSet.flags.count)
        routes.record(ruleSet.routes.count)
        configs.record(ruleSet.configs.count)
        luaMemory.record(generation.stateMemory)
        // An info metric: one series whose labels carry the revision; the previous one is removed.
        info.withLock { info in
            if let previous = info { registry.unregisterGauge(previous) }
            let gauge = registry.makeGauge(
                descriptor: MetricNameDescriptor(
                    metricName: "rulesd_rules", unitName: "info",
                    helpText: "The serving rule set: its revision and where it was loaded from"),
                labels: (namespace.map { [("namespace", $0)] } ?? [])
                    + [("revision", ruleSet.revision.short), ("origin", generation.origin.rawValue)])
            gauge.set(Int64(1))
            info = gauge
        }
    }
}
