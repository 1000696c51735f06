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
        let store = GenerationStore(
            isolated: settings.isolation == .process
                ? IsolatedRuleProcess(namespace: NamespaceSettings.defaultName, limits: settings.limits, logger: logger)
                : nil)
        defer { store.isolated?.stop() }
        let loopFailure = Mutex<Error?>(nil)
        let shutdownRequests = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let pool: WorkerPool
        do {
            pool = try await WorkerPool.start(
                count: settings.workers, store: store, logger: logger, capture: settings.capture
            ) {
                [logger] error in
                logger.critical("a serving loop stopped", metadata: ["error": "\(error)"])
                loopFailure.withLock { $0 = error }
                shutdownRequests.continuation.yield()
            }
        } catch {
            throw DaemonStartupFailure("cannot start the worker threads: \(error)")
        }
        let loader = NIOThreadPool(numberOfThreads: 1)
        loader.start()
        // Under systemd, audit events also go to the journal's native socket, with their MESSAGE_IDs.
        let audit = AuditLog(
            directory: settings.stateDirectory + "/audit", maxBytes: settings.auditMaxBytes,
            journal: JournalStream.isConnected() ? JournalSender() : nil, logger: logger)
        var outcome: Error?
        do {
            try await serve(
                store: store, pool: pool, loader: loader, audit: audit, hangups: hangups,
                shutdownRequests: shutdownRequests.stream)
        } catch {
            outcome = error
        }
        // The one clean-up, for every way out.
        await pool.shutdown()
        try? await loader.shutdownGracefully()
        await audit.close()
        if let outcome { throw outcome }
        if let failure = loopFailure.withLock({ $0 }) {
            throw DaemonStartupFailure("a serving loop stopped: \(failure)")
        }
    }

    private func serve(
        store: GenerationStore, pool: WorkerPool, loader: NIOThreadPool, audit: AuditLog,
        hangups: UnixSignalsSequence, shutdownRequests: AsyncStream<Void>
    ) async throws {
        let access: ResolvedAccessPolicy
        do {
            access = try settings.accessPolicy.resolved()
        } catch {
            throw DaemonStartupFailure("\(error.message); not starting")
        }
        let watchHub = WatchHub()
        let metrics = DaemonMetrics()
        let reloads = ReloadCoordinator(
            settings: settings, store: store, pool: pool, loader: loader, watchHub: watchHub, notifier: notifier,
            reloadMetrics: metrics, logger: logger, audit: audit)
        let overrides = OverrideStore(
            board: store.overrides, stateDirectory: settings.stateDirectory, maxTTL: settings.overrideMaxTTL,
            loop: MultiThreadedEventLoopGroup.singleton.next(), logger: logger, audit: audit,
            announce: watchHub.publish)
        defer { overrides.stop() }
        overrides.loadSaved(now: SystemClock.epochSeconds())
        // A reload that removes an overridden flag or its variant drops the override, and says so.
        reloads.observePublications { overrides.reconcile(with: $0, now: SystemClock.epochSeconds()) }
        if let isolated = store.isolated { reloads.observePublications { isolated.publish($0) } }
        logger.info(
            "starting",
            metadata: [
                "rules.dir": "\(settings.rulesDirectory)", "workers": "\(settings.workers)",
                "version": "\(DaemonServices.version)",
            ])
        // A stop during the first load abandons it (loading is cancellable between files and Lua steps).
        let initial: ServingGeneration
        do {
            initial = try await withGracefulShutdownHandler {
                try await loadInitialRules(reloads)
            } onGracefulShutdown: {
                reloads.abandonLoading()
            }
        } catch  where Task.isShuttingDownGracefully {
            logger.info("stopped while loading the first rules")
            return
        }
        if Task.isShuttingDownGracefully { return }

        let services = DaemonServices(
            settings: settings, store: store, pool: pool, reloads: reloads, watchHub: watchHub, metrics: metrics,
            access: access, audit: audit, logger: logger, overrides: overrides)
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
        notifier.ready(status: reloads.statusLine(initial, failure: reloads.lastReload?.failure))
        onReady?(initial)

        let watcher =
            settings.watchMode == .off
            ? nil : RuleDirectoryWatcher(root: settings.rulesDirectory, settings: settings.watch, logger: logger)
        services.attach(watcher: watcher)
        defer { watcher?.stop() }

        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: parts(
                    reloads: reloads, hangups: hangups, watcher: watcher, pool: pool, services: services,
                    server: server, socketGroup: socketGroup),
                gracefulShutdownSignals: [], logger: logger))
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                // A serving loop that failed stops the daemon as a signal would. This task only ends when it is
                // cancelled, so the first task to finish is always the group, after its graceful shutdown.
                tasks.addTask {
                    for await _ in shutdownRequests {
                        reloads.abandonLoading()
                        await group.triggerGracefulShutdown()
                    }
                }
                try await tasks.next()
                tasks.cancelAll()
            }
        } onGracefulShutdown: {
            // Before anything logs `stopping`: a reload in progress is abandoned and nothing goes live after.
            reloads.abandonLoading()
            Task { await group.triggerGracefulShutdown() }
        }
    }

    /// The daemon's parts, in start order (stopped in reverse: the server stops accepting first, reloads stop
    /// last).
    private func parts(
        reloads: ReloadCoordinator, hangups: UnixSignalsSequence, watcher: RuleDirectoryWatcher?, pool: WorkerPool,
        services: DaemonServices, server: QueryServer, socketGroup: gid_t?
    ) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        var parts: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: ReloadService(coordinator: reloads)),
            .init(service: SignalReloadService(signals: hangups, coordinator: reloads)),
        ]
        if let watcher {
            // The watcher ending on its own is logged by it; the daemon goes on (the safety rescans of
            // `reload` and SIGHUP still work), so its end does not stop the group.
            parts.append(
                .init(
                    service: WatcherService(watcher: watcher, coordinator: reloads), successTerminationBehavior: .ignore
                ))
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

    /// The first rules: the rules directory, or the last known good copy when it does not load.
    private func loadInitialRules(_ reloads: ReloadCoordinator) async throws -> ServingGeneration {
        // A long first load (many rule files on a slow machine) asks systemd for more time, so that the start
        // job does not time out while rules are still compiling.
        let extender = Task {
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(2))
                notifier.extendStartup(by: .seconds(10))
            }
        }
        defer { extender.cancel() }
        do {
            return try await reloads.loadInitial()
        } catch {
            let fallback =
                reloads.savedCopyProblem.map { "the last known good copy is corrupt: \($0)" }
                ?? "there is no last known good copy in \(settings.stateDirectory)"
            throw DaemonStartupFailure(
                "cannot load the rules in \(settings.rulesDirectory), and \(fallback); not starting",
                diagnostics: error.diagnostics,
                metadata: ["rules.dir": "\(settings.rulesDirectory)", "state.dir": "\(settings.stateDirectory)"])
        }
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
    let coordinator: ReloadCoordinator

    func run() async throws {
        for await _ in signals.cancelOnGracefulShutdown() {
            coordinator.requestReload(.signal)
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
