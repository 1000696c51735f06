import Logging
import NIOCore
import NIOPosix
import RuleEngine
import RuleModel
import RuleWatcher
import ServiceLifecycle
import SystemdSupport
import UnixSignals

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// rulesd: loads the rules, serves the socket, reloads on change, shuts down cleanly.
public enum Daemon {
    /// Runs the daemon until SIGTERM or SIGINT.
    /// - Returns: the process exit status: 0 after a clean shutdown, 1 when the rules cannot be loaded at start.
    /// - Parameters:
    ///   - notifier: systemd's notify socket, or nothing.
    ///   - activatedSocket: a listening socket handed over by systemd, or nil to bind `settings.socketPath`.
    ///   - watchdog: systemd's watchdog settings, when it watches this process.
    public static func run(
        settings: DaemonSettings, notifier: LifecycleNotifier, activatedSocket: CInt?,
        watchdog: WatchdogSettings? = nil, logger: Logger
    ) async throws -> Int32 {
        // Trap the signals before anything can be asked of the daemon: their default action would end the
        // process at once (a SIGTERM right after READY=1 must still be a graceful stop).
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let stops = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        let store = GenerationStore()
        let pool = try await WorkerPool.start(count: settings.workers, store: store, logger: logger)
        let loader = NIOThreadPool(numberOfThreads: 1)
        loader.start()
        let watchHub = WatchHub()
        let metrics = DaemonMetrics()
        let reloads = ReloadCoordinator(
            settings: settings, store: store, pool: pool, loader: loader, watchHub: watchHub, notifier: notifier,
            reloadMetrics: metrics, logger: logger)

        logger.info(
            "starting",
            metadata: [
                "rules.dir": "\(settings.rulesDirectory)", "workers": "\(settings.workers)",
                "version": "\(DaemonServices.version)",
            ])
        // A long first load (many rule files on a slow machine) asks systemd for more time, so that the start
        // job does not time out while rules are still compiling.
        let extender = Task {
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(2))
                notifier.extendStartup(by: .seconds(10))
            }
        }
        let initial: ServingGeneration
        do {
            defer { extender.cancel() }
            initial = try await reloads.loadInitial()
        } catch {
            StandardError.write(Array("rulesd: cannot load the rules in \(settings.rulesDirectory):\n".utf8))
            for diagnostic in error.diagnostics {
                StandardError.write(Array("  \(diagnostic)\n".utf8))
            }
            let fallback =
                reloads.savedCopyProblem.map { "the last known good copy is corrupt: \($0)" }
                ?? "no last known good copy in \(settings.stateDirectory)"
            StandardError.write(Array("rulesd: \(fallback); not starting\n".utf8))
            await pool.shutdown()
            try? await loader.shutdownGracefully()
            return 1
        }

        // Who may reload depends on who can reach the socket: its mode and group are the unit's when systemd
        // created it.
        var socketMode = settings.socketMode
        var reloadGroup = settings.socketGroup.flatMap { GroupMembership.groupID(named: $0) }
        if let activatedSocket, let path = SocketActivation.boundPath(of: activatedSocket), !path.hasPrefix("@") {
            var st = stat()
            if stat(path, &st) == 0 {
                socketMode = st.st_mode & 0o777
                reloadGroup = st.st_gid
            }
        }
        let services = DaemonServices(
            settings: settings, store: store, pool: pool, reloads: reloads, watchHub: watchHub, metrics: metrics,
            socketMode: socketMode, reloadGroup: reloadGroup, logger: logger)
        let server = SocketServer(
            settings: settings, services: services, pool: pool, activatedSocket: activatedSocket, logger: logger)
        do {
            try await server.start()
        } catch {
            StandardError.write(Array("rulesd: \(error)\n".utf8))
            await pool.shutdown()
            try? await loader.shutdownGracefully()
            return 1
        }
        notifier.ready(status: reloads.statusLine(initial, failure: reloads.lastReload?.failure))

        var watcher: RuleDirectoryWatcher?
        if settings.watchMode != "off" {
            watcher = RuleDirectoryWatcher(root: settings.rulesDirectory, settings: settings.watch, logger: logger)
        }
        services.attach(watcher: watcher)

        // Started in this order, stopped in reverse: the server stops accepting first, reloads stop last.
        var serviceList: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: ReloadService(coordinator: reloads)),
            .init(service: SignalReloadService(signals: hangups, coordinator: reloads)),
        ]
        if let watcher {
            // The watcher ending on its own is logged by it; the daemon goes on (the safety rescans of
            // `reload` and SIGHUP still work), so its end does not stop the group.
            serviceList.append(
                .init(
                    service: WatcherService(watcher: watcher, coordinator: reloads), successTerminationBehavior: .ignore
                ))
        }
        if let watchdog, let systemd = notifier as? SystemdLifecycleNotifier {
            serviceList.append(
                .init(service: WatchdogService(settings: watchdog, notifier: systemd, pool: pool, logger: logger)))
        }
        if let address = settings.metricsListen {
            serviceList.append(
                .init(
                    service: MetricsHTTPService(
                        address: address, services: services, group: MultiThreadedEventLoopGroup.singleton,
                        logger: logger)
                ))
        }
        serviceList.append(
            .init(
                service: ServerService(
                    server: server, notifier: notifier, timeout: settings.shutdownTimeout, logger: logger)))
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: serviceList, gracefulShutdownSignals: [], logger: logger)
        )
        let stopper = Task {
            for await _ in stops {
                // Before anything logs `stopping`: a reload in progress is abandoned and nothing goes live after.
                reloads.abandonLoading()
                await group.triggerGracefulShutdown()
            }
        }
        defer { stopper.cancel() }
        try await group.run()
        watcher?.stop()
        await pool.shutdown()
        try? await loader.shutdownGracefully()
        logger.info("stopped")
        return 0
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
    let server: SocketServer
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
