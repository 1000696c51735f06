import Atomics
import Logging
import NIOCore
import ServiceLifecycle
import SystemClock
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Tells systemd about start-up, reloads and shutdown (sd_notify), when rulesd runs under it.
public struct SystemdLifecycleNotifier: LifecycleNotifier {
    let notifier: SystemdNotifier
    let logger: Logger

    public init(notifier: SystemdNotifier, logger: Logger) {
        self.notifier = notifier
        self.logger = logger
    }

    public func ready(status: String) { send(NotifyPayload.ready(status: status)) }
    public func reloading(status: String) { send(NotifyPayload.reloading(status: status)) }
    public func stopping(status: String) { send(NotifyPayload.stopping(status: status)) }
    public func status(_ status: String) { send(NotifyPayload.status(status)) }
    public func extendStartup(by duration: Duration) { send(NotifyPayload.extendTimeout(duration)) }
    func watchdog() { send("WATCHDOG=1") }

    private func send(_ payload: String) {
        do {
            try notifier.send(payload)
        } catch {
            logger.warning("cannot notify the service manager", metadata: ["error": "\(error)"])
        }
    }
}

/// Pings systemd's watchdog (WATCHDOG=1) at half its interval, but only while every worker's event loop
/// keeps running: each loop records a heartbeat from a task scheduled on it, so a wedged evaluator on any
/// worker stops the pings and systemd restarts the service.
struct WatchdogService: Service {
    let settings: WatchdogSettings
    let notifier: SystemdLifecycleNotifier
    let pool: WorkerPool
    let logger: Logger

    func run() async throws {
        let period = settings.pingPeriod
        let heartbeats = pool.loops.map { _ in ManagedAtomic<UInt64>(Self.now()) }
        var tasks: [RepeatedTask] = []
        for (index, loop) in pool.loops.enumerated() {
            let heartbeat = heartbeats[index]
            tasks.append(
                loop.scheduleRepeatedTask(initialDelay: .zero, delay: TimeAmount(period / 4)) { _ in
                    heartbeat.store(Self.now(), ordering: .relaxed)
                })
        }
        defer { for task in tasks { task.cancel() } }
        logger.info("systemd watchdog enabled", metadata: ["watchdog.interval_us": "\(settings.intervalMicroseconds)"])
        let stale = UInt64(settings.intervalMicroseconds / 2) * 1000
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                let now = Self.now()
                let lagging = heartbeats.enumerated().filter { now &- $0.element.load(ordering: .relaxed) > stale }
                if lagging.isEmpty {
                    notifier.watchdog()
                } else {
                    logger.error(
                        "a worker's event loop is not running: withholding the watchdog ping",
                        metadata: ["workers": "\(lagging.map(\.offset))"])
                }
                try await Task.sleep(for: period)
            }
        }
    }

    private static func now() -> UInt64 { SystemClock.monotonicNanoseconds() }
}
