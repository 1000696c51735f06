import Logging
import NIOCore
import NIOPosix
import QueryServing
import RuleEngine
import RuleModel
import RuleWatcher
import ServiceLifecycle
import Synchronization
import SystemClock
import SystemdSupport
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// rulesd's entry point: the daemon as the one service of a `ServiceGroup` that stops it gracefully on
/// SIGTERM and SIGINT.
public enum Daemon {
    /// Runs the daemon until SIGTERM or SIGINT.
    /// - Parameters:
    ///   - settings: the daemon's settings.
    ///   - notifier: systemd's notify socket, or nothing.
    ///   - activatedSocket: a listening socket handed over by systemd, or nil to bind `settings.socketPath`.
    ///   - watchdog: systemd's watchdog settings, when it watches this process.
    ///   - logger: where everything is logged, start-up failures included.
    /// - Returns: the process exit status: 0 after a clean shutdown, 1 when rulesd could not start (or a
    ///   serving loop failed).
    public static func run(
        settings: DaemonSettings, notifier: LifecycleNotifier, activatedSocket: CInt?,
        watchdog: WatchdogSettings? = nil, logger: Logger
    ) async -> Int32 {
        let daemon = DaemonService(
            settings: settings, notifier: notifier, activatedSocket: activatedSocket, watchdog: watchdog,
            logger: logger)
        // The group traps SIGTERM and SIGINT before the daemon starts: their default action would end the
        // process at once (a SIGTERM right after READY=1 must still be a graceful stop).
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: daemon)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
            logger.info("stopped")
            return 0
        } catch let failure as DaemonStartupFailure {
            failure.log(to: logger)
            return 1
        } catch {
            logger.critical("rulesd stopped on an error", metadata: ["error": "\(error)"])
            return 1
        }
    }
}

/// Why the daemon could not start (or had to stop), as it is logged.
public struct DaemonStartupFailure: Error, CustomStringConvertible {
    public var message: String
    /// Rule problems behind it, each at `file:line`.
    public var diagnostics: [RuleDiagnostic]
    var metadata: Logger.Metadata

    init(_ message: String, diagnostics: [RuleDiagnostic] = [], metadata: Logger.Metadata = [:]) {
        self.message = message
        self.diagnostics = diagnostics
        self.metadata = metadata
    }

    public var description: String {
        ([message] + diagnostics.map { "  \($0)" }).joined(separator: "\n")
    }

    func log(to logger: Logger) {
        for diagnostic in diagnostics {
            logger.error("rule problem", metadata: ["rules.problem": "\(diagnostic)"])
        }
        logger.critical("\(message)", metadata: metadata)
    }
}

/// rulesd as a swift-service-lifecycle `Service`: loads the rules, serves the socket, reloads on change, and
/// on graceful shutdown stops accepting, finishes what it has read and stops.
///
/// Its parts run as services of an inner group, started in dependency order and stopped in reverse: reloads
/// first up and last down, the socket server last up and first down. The worker loops and the loader thread
/// are started before the group and released once, after it, whatever way the daemon ends.
public struct DaemonService: Service {
    let settings: DaemonSettings
    let notifier: LifecycleNotifier
    let activatedSocket: CInt?
    let watchdog: WatchdogSettings?
    let logger: Logger
    let onReady: (@Sendable (ServingGeneration) -> Void)?

    /// - Parameter onReady: the readiness hook: called once the first rules serve and the socket accepts
    ///   connections (after systemd was told READY=1).
    public init(
        settings: DaemonSettings, notifier: LifecycleNotifier, activatedSocket: CInt?, watchdog: WatchdogSettings?,
        logger: Logger, onReady: (@Sendable (ServingGeneration) -> Void)? = nil
    ) {
        self.settings = settings
        self.notifier = notifier
        self.activatedSocket = activatedSocket
        self.watchdog = watchdog
        self.logger = logger
        self.onReady = onReady
    }

    public func run() async throws {
        // SIGHUP is trapped before anything can be asked of the daemon: its default action ends the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let namespaces = settings.allNamespaces
        // A namespace with `isolation = process` has its rules evaluated in a rule process of its own.
        let stores = namespaces.map { namespace in
            GenerationStore(
                isolated: namespace.isolation == .process
                    ? IsolatedRuleProcess(namespace: namespace.name, limits: namespace.limits, logger: logger) : nil)
        }
        defer { for store in stores { store.isolated?.stop() } }
        let loopFailure = Mutex<Error?>(nil)
        let shutdownRequests = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let pool: WorkerPool
        do {
            pool = try await WorkerPool.start(
                count: settings.workers, store: stores[0],
                namespaces: zip(namespaces, stores).dropFirst().map { (name: $0.0.name, store: $0.1) }, logger: logger,
                capture: settings.capture
            ) {
                [logger] error in
                logger.critical("a serving loop stopped", metadata: ["error": "\(error)"])
                loopFailure.withLock { $0 = error }
                shutdownRequests.continuation.yield()
            }
        } catch {
            throw DaemonStartupFailure("cannot start the worker threads: \(error)")
        }
        // Under systemd, audit events also go to the journal's native socket, with their MESSAGE_IDs.
        let audit = AuditLog(
            directory: settings.stateDirectory + "/audit", maxBytes: settings.auditMaxBytes,
            journal: JournalStream.isConnected() ? JournalSender() : nil, logger: logger)
        let several = namespaces.count > 1
        let watchHub = WatchHub(namesNamespaces: several)
        let metrics = DaemonMetrics(labelsNamespaces: several)
        let runtimes = zip(namespaces, stores).map { namespace, store in
            let isDefault = namespace.name == NamespaceSettings.defaultName
            return NamespaceRuntime(
                namespace: namespace, daemon: settings, store: store, pool: pool, watchHub: watchHub,
                notifier: isDefault ? notifier : NoLifecycleNotifier(),
                metrics: isDefault ? metrics.defaultRuleSet : metrics.ruleSetMetrics(namespace: namespace.name),
                audit: several ? audit.namespaced(namespace.name) : audit, logger: logger)
        }
        var outcome: Error?
        do {
            try await serve(
                runtimes: runtimes, pool: pool, audit: audit, watchHub: watchHub, metrics: metrics, hangups: hangups,
                shutdownRequests: shutdownRequests.stream)
        } catch {
            outcome = error
        }
        // The one clean-up, for every way out.
        await pool.shutdown()
        for runtime in runtimes { await runtime.shutdown() }
        await audit.close()
        if let outcome { throw outcome }
        if let failure = loopFailure.withLock({ $0 }) {
            throw DaemonStartupFailure("a serving loop stopped: \(failure)")
        }
    }

    private func serve(
        runtimes: [NamespaceRuntime], pool: WorkerPool, audit: AuditLog, watchHub: WatchHub, metrics: DaemonMetrics,
        hangups: UnixSignalsSequence, shutdownRequests: AsyncStream<Void>
    ) async throws {
        let access: ResolvedAccessPolicy
        var namespaceAccess: [String: ResolvedAccessPolicy] = [:]
        do {
            access = try settings.accessPolicy.resolved()
        } catch {
            throw DaemonStartupFailure("\(error.message); not starting")
        }
        for namespace in settings.namespaces {
            // A section's role_* settings are grants added to the daemon-wide ones (a section that sets none
            // grants nothing more).
            do {
                namespaceAccess[namespace.name] = try namespace.accessPolicy.resolved()
            } catch {
                throw DaemonStartupFailure("namespace '\(namespace.name)': \(error.message); not starting")
            }
        }
        for runtime in runtimes { runtime.overrides.loadSaved(now: SystemClock.epochSeconds()) }
        logger.info(
            "starting",
            metadata: [
                "rules.dir": "\(settings.rulesDirectory)", "workers": "\(settings.workers)",
                "version": "\(DaemonServices.version)",
            ].merging(
                runtimes.count > 1 ? ["namespaces": "\(runtimes.map(\.name).joined(separator: ","))"] : [:]
            ) { first, _ in first })
        // A stop during the first load abandons it (loading is cancellable between files and Lua steps).
        let initial: [ServingGeneration?]
        do {
            initial = try await withGracefulShutdownHandler {
                try await loadInitialRules(runtimes)
            } onGracefulShutdown: {
                for runtime in runtimes { runtime.reloads.abandonLoading() }
            }
        } catch  where Task.isShuttingDownGracefully {
            logger.info("stopped while loading the first rules")
            return
        }
        if Task.isShuttingDownGracefully { return }

        let services = DaemonServices(
            settings: settings, runtimes: runtimes, pool: pool, watchHub: watchHub, metrics: metrics, access: access,
            namespaceAccess: namespaceAccess, audit: audit, logger: logger)
        let socketGroup = try socketGroupID()
        let server = QueryServer(
            configuration: QueryServerConfiguration(
                socketPath: settings.socketPath, socketMode: settings.socketMode, socketGroup: socketGroup,
                activatedSocket: activatedSocket, limits: services.connectionLimits),
            loops: pool.loops, backend: services, connections: services.connections, logger: logger)
        do {
            try await server.start()
        } catch {
            throw DaemonStartupFailure("\(error)")
        }
        // systemd's STATUS= speaks of the default namespace, or of the first that serves when it cannot.
        let first = zip(runtimes, initial).first { $0.1 != nil } ?? (runtimes[0], nil)
        var status = first.0.reloads.statusLine(first.1, failure: first.0.reloads.lastReload?.failure)
        if runtimes.count > 1 {
            status += "; \(initial.compactMap { $0 }.count) of \(runtimes.count) namespaces serving"
        }
        notifier.ready(status: status)
        if let generation = first.1 { onReady?(generation) }

        for (view, watcher) in zip(services.views, NamespaceRuntime.startWatching(runtimes)) {
            view.attach(watcher: watcher)
        }

        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: parts(
                    runtimes: runtimes, hangups: hangups, pool: pool, services: services, server: server,
                    socketGroup: socketGroup),
                gracefulShutdownSignals: [], logger: logger))
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                // A serving loop that failed stops the daemon as a signal would. This task only ends when it is
                // cancelled, so the first task to finish is always the group, after its graceful shutdown.
                tasks.addTask {
                    for await _ in shutdownRequests {
                        for runtime in runtimes { runtime.reloads.abandonLoading() }
                        await group.triggerGracefulShutdown()
                    }
                }
                try await tasks.next()
                tasks.cancelAll()
            }
        } onGracefulShutdown: {
            // Before anything logs `stopping`: a reload in progress is abandoned and nothing goes live after.
            for runtime in runtimes { runtime.reloads.abandonLoading() }
            Task { await group.triggerGracefulShutdown() }
        }
    }

    /// The daemon's parts, in start order (stopped in reverse: the server stops accepting first, reloads stop
    /// last).
    private func parts(
        runtimes: [NamespaceRuntime], hangups: UnixSignalsSequence, pool: WorkerPool, services: DaemonServices,
        server: QueryServer, socketGroup: gid_t?
    ) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        var parts: [ServiceGroupConfiguration.ServiceConfiguration] = runtimes.map {
            .init(service: ReloadService(coordinator: $0.reloads))
        }
        parts.append(.init(service: SignalReloadService(signals: hangups, coordinators: runtimes.map(\.reloads))))
        for runtime in runtimes {
            guard let watcher = runtime.watcher else { continue }
            // The watcher ending on its own is logged by it; the daemon goes on (the safety rescans of
            // `reload` and SIGHUP still work), so its end does not stop the group.
            parts.append(
                .init(
                    service: WatcherService(watcher: watcher, coordinator: runtime.reloads),
                    successTerminationBehavior: .ignore))
        }
        if let watchdog, let systemd = notifier as? SystemdLifecycleNotifier {
            parts.append(
                .init(service: WatchdogService(settings: watchdog, notifier: systemd, pool: pool, logger: logger)))
        }
        if let address = settings.metricsListen {
            parts.append(
                .init(
                    service: MetricsHTTPService(
                        address: address, services: services, group: MultiThreadedEventLoopGroup.singleton,
                        logger: logger)))
        }
        if let address = settings.ofrepListen {
            parts.append(
                .init(
                    service: OFREPHTTPService(
                        address: address, services: services, group: MultiThreadedEventLoopGroup.singleton,
                        logger: logger)))
        }
        if settings.flagdSocket != nil || settings.flagdListen != nil {
            parts.append(
                .init(
                    service: FlagdGRPCService(
                        socketPath: settings.flagdSocket, listenAddress: settings.flagdListen, services: services,
                        logger: logger, socketGroup: socketGroup)))
        }
        parts.append(
            .init(
                service: ServerService(
                    server: server, notifier: notifier, timeout: settings.shutdownTimeout, logger: logger)))
        return parts
    }

    /// One namespace's first load, as a result. (A function of its own: the release build of Swift 6.3 lost the
    /// results of a typed-throws `do` inside the task group's closure, and the daemon trapped at start.)
    private static func firstLoad(_ runtime: NamespaceRuntime) async -> Result<ServingGeneration, RuleLoadFailure> {
        do throws(RuleLoadFailure) {
            return .success(try await runtime.reloads.loadInitial())
        } catch {
            return .failure(error)
        }
    }

    /// Every namespace's first rules (loaded at once, each on its own loader thread): the rules directory, or
    /// the last known good copy when it does not load; nil for a namespace that has neither.
    /// - Throws: when no namespace can serve; with only the default namespace, when it cannot.
    private func loadInitialRules(_ runtimes: [NamespaceRuntime]) async throws -> [ServingGeneration?] {
        // A long first load (many rule files on a slow machine) asks systemd for more time, so that the start
        // job does not time out while rules are still compiling.
        let extender = Task {
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(2))
                notifier.extendStartup(by: .seconds(10))
            }
        }
        defer { extender.cancel() }
        let outcomes = await withTaskGroup(of: (Int, Result<ServingGeneration, RuleLoadFailure>).self) { group in
            for (index, runtime) in runtimes.enumerated() {
                group.addTask { (index, await Self.firstLoad(runtime)) }
            }
            var outcomes = [Result<ServingGeneration, RuleLoadFailure>?](repeating: nil, count: runtimes.count)
            while let (index, outcome) = await group.next() { outcomes[index] = outcome }
            return outcomes.map { $0! }
        }
        var failures: [DaemonStartupFailure] = []
        var generations: [ServingGeneration?] = []
        for (runtime, outcome) in zip(runtimes, outcomes) {
            switch outcome {
            case .success(let generation):
                generations.append(generation)
            case .failure(let error):
                generations.append(nil)
                failures.append(startupFailure(runtime, error))
            }
        }
        if generations.allSatisfy({ $0 == nil }) {
            for failure in failures.dropLast() { failure.log(to: logger) }
            var last = failures[failures.count - 1]
            last.message = (runtimes.count > 1 ? "no namespace can serve; " : "") + last.message + "; not starting"
            throw last
        }
        // The others serve; these answer NAMESPACE_UNAVAILABLE until a reload of theirs succeeds.
        for (failure, runtime) in zip(failures, zip(runtimes, generations).filter { $0.1 == nil }.map(\.0)) {
            for diagnostic in failure.diagnostics {
                runtime.logger.error("rule problem", metadata: ["rules.problem": "\(diagnostic)"])
            }
            runtime.logger.error(
                "the namespace does not serve until its rules load; the other namespaces serve",
                metadata: failure.metadata.merging(["error": "\(failure.message)"]) { first, _ in first })
        }
        return generations
    }

    private func startupFailure(_ runtime: NamespaceRuntime, _ error: RuleLoadFailure) -> DaemonStartupFailure {
        let settings = runtime.settings
        let fallback =
            runtime.reloads.savedCopyProblem.map { "the last known good copy is corrupt: \($0)" }
            ?? "there is no last known good copy in \(settings.stateDirectory)"
        let subject = self.settings.namespaces.isEmpty ? "" : "namespace '\(runtime.name)': "
        return DaemonStartupFailure(
            "\(subject)cannot load the rules in \(settings.rulesDirectory), and \(fallback)",
            diagnostics: error.diagnostics,
            metadata: ["rules.dir": "\(settings.rulesDirectory)", "state.dir": "\(settings.stateDirectory)"])
    }

    /// The socket's group, by name or number.
    private func socketGroupID() throws -> gid_t? {
        guard let group = settings.socketGroup else { return nil }
        guard let gid = group.groupID else { throw DaemonStartupFailure("no group named '\(group)' for the socket") }
        return gid
    }
}

/// Runs reloads until shutdown.
struct ReloadService: Service {
    let coordinator: ReloadCoordinator

    func run() async throws {
        await withGracefulShutdownHandler {
            await coordinator.run()
        } onGracefulShutdown: {
            coordinator.finish()
        }
    }
}

/// SIGHUP asks for a reload (asynchronously; `rulesctl reload` waits for the outcome).
struct SignalReloadService: Service {
    let signals: UnixSignalsSequence
    /// Every namespace's: SIGHUP reloads them all.
    let coordinators: [ReloadCoordinator]

    func run() async throws {
        for await _ in signals.cancelOnGracefulShutdown() {
            for coordinator in coordinators { coordinator.requestReload(.signal) }
        }
    }
}

/// Turns the directory watcher's change signals into reloads.
struct WatcherService: Service {
    let watcher: RuleDirectoryWatcher
    let coordinator: ReloadCoordinator

    func run() async throws {
        for await _ in watcher.changes().cancelOnGracefulShutdown() {
            coordinator.requestReload(.watcher)
        }
        watcher.stop()
    }
}

/// The socket server; shutting it down is the first step of a graceful stop.
struct ServerService: Service {
    let server: QueryServer
    let notifier: LifecycleNotifier
    let timeout: Duration
    let logger: Logger

    func run() async throws {
        // Graceful shutdown (SIGTERM) and cancellation (another service failed) both close the listener, so
        // the wait below always ends.
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await server.waitUntilClosed()
            } onGracefulShutdown: {
                logger.info("stopping: finishing in-flight requests")
                notifier.stopping(status: "stopping")
                server.stopAccepting()
            }
        } onCancel: {
            server.stopAccepting()
        }
        // The listener is closed; wait for the connections' drain before the group moves on.
        await server.shutdown(timeout: timeout)
    }
}

/// A notifier for when no service manager listens.
public struct NoLifecycleNotifier: LifecycleNotifier {
    public init() {}
    public func ready(status: String) {}
    public func reloading(status: String) {}
    public func stopping(status: String) {}
    public func status(_ status: String) {}
    public func extendStartup(by duration: Duration) {}
}
