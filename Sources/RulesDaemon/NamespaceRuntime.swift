import Logging
import NIOCore
import NIOPosix
import RuleEngine
import RuleWatcher
import RulesProtocol
import Synchronization
import SystemClock

/// One namespace at run time: its generations, reloads (on a loader thread of its own), watcher, overrides and
/// state directory. Namespaces share the worker threads (each worker keeps a Lua state of every namespace) and
/// nothing else: a namespace whose files do not load, or load slowly, never holds up another's reloads.
final class NamespaceRuntime: Sendable {
    let namespace: NamespaceSettings
    /// The daemon's settings as this namespace sees them: its rules directory, limits, history size and state
    /// directory in place of the top-level ones.
    let settings: DaemonSettings
    let store: GenerationStore
    /// This namespace's own loader thread: a slow or broken load of one namespace never queues another's.
    let loader: NIOThreadPool
    let reloads: ReloadCoordinator
    let overrides: OverrideStore
    let metrics: ReloadMetrics
    /// The audit log as this namespace writes to it (its lines name it when several namespaces are served).
    let audit: AuditLog?
    let logger: Logger
    private let watcherBox = Mutex<RuleDirectoryWatcher?>(nil)

    var name: String { namespace.name }

    /// - Parameters:
    ///   - namespace: the namespace served.
    ///   - daemon: the daemon's settings.
    ///   - store: where its generations are published (the workers read it).
    ///   - notifier: systemd's notifier for the default namespace; the others tell systemd nothing.
    init(
        namespace: NamespaceSettings, daemon: DaemonSettings, store: GenerationStore, pool: WorkerPool,
        watchHub: WatchHub, notifier: LifecycleNotifier, metrics: ReloadMetrics, audit: AuditLog?, logger: Logger
    ) {
        self.namespace = namespace
        let settings = daemon.serving(namespace)
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.audit = audit
        var logger = logger
        if !daemon.namespaces.isEmpty { logger[metadataKey: "namespace"] = "\(namespace.name)" }
        self.logger = logger
        let loader = NIOThreadPool(numberOfThreads: 1)
        loader.start()
        self.loader = loader
        let name = namespace.name
        reloads = ReloadCoordinator(
            settings: settings, store: store, pool: pool, loader: loader, watchHub: watchHub, notifier: notifier,
            reloadMetrics: metrics, logger: logger, audit: audit, namespace: name)
        overrides = OverrideStore(
            board: store.overrides, stateDirectory: settings.stateDirectory, maxTTL: settings.overrideMaxTTL,
            loop: MultiThreadedEventLoopGroup.singleton.next(), logger: logger, audit: audit,
            announce: { watchHub.publish($0, namespace: name) })
        let overrides = self.overrides
        // A reload that removes an overridden flag or its variant drops the override, and says so.
        reloads.observePublications { overrides.reconcile(with: $0, now: SystemClock.epochSeconds()) }
        // With `isolation = process`, every generation published goes to the namespace's rule process too.
        if let isolated = store.isolated { reloads.observePublications { isolated.publish($0) } }
    }

    /// Makes the watchers of every namespace whose watching is on, all read through the process's one inotify
    /// instance (libinotifytools allows no second one, so separate watchers would leave all but one polling).
    /// - Returns: each namespace's watcher, nil where watching is off.
    static func startWatching(_ runtimes: [NamespaceRuntime]) -> [RuleDirectoryWatcher?] {
        let watched = runtimes.filter { $0.settings.watchMode != .off }
        let watchers = RuleDirectoryWatcher.sharingInotify(
            watched.map { ($0.settings.rulesDirectory, $0.settings.watch, $0.logger) })
        for (runtime, watcher) in zip(watched, watchers) { runtime.watcherBox.withLock { $0 = watcher } }
        return runtimes.map(\.watcher)
    }

    var watcher: RuleDirectoryWatcher? { watcherBox.withLock { $0 } }

    /// Stops the watcher, the overrides' timer and the loader thread.
    func shutdown() async {
        watcher?.stop()
        overrides.stop()
        try? await loader.shutdownGracefully()
    }
}

extension DaemonSettings {
    /// These settings as `namespace` sees them: its rules directory, limits, history size, isolation and state
    /// directory in place of the top-level ones; everything daemon-wide (socket, workers, watching) unchanged.
    func serving(_ namespace: NamespaceSettings) -> DaemonSettings {
        var settings = self
        settings.rulesDirectory = namespace.rulesDirectory
        settings.limits = namespace.limits
        settings.historySize = namespace.historySize
        settings.isolation = namespace.isolation
        settings.stateDirectory = namespace.stateDirectory(under: stateDirectory)
        settings.namespaces = []
        return settings
    }
}
