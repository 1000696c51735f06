import Logging
import Synchronization

/// The state shared by the watcher thread, the coordinator task and the public API.
///
/// The thread records events and rebuilds; the coordinator turns them into signals at the right time; readers
/// of `mode` and `statistics` take snapshots. Every field is behind one `Mutex` or is an `Atomic`.
final class WatcherCore: Sendable {
    let settings: WatchSettings
    let logger: Logger
    let doorbell = Doorbell()
    /// Set once by `stop()`; read by the thread between two reads of the event queue.
    let stopRequested = Atomic<Bool>(false)
    /// While the watcher thread runs (it may outlive `stop()` by up to a second).
    let threadRunning = Atomic<Bool>(false)
    /// Test hook: the thread stops reading events while this is set, so the kernel queue can overflow.
    let readingPaused = Atomic<Bool>(false)
    /// Test hook: set by the thread while it honours `readingPaused`.
    let readingPauseObserved = Atomic<Bool>(false)

    private struct Shared {
        var batch = PendingBatch()
        var mode: WatcherMode = .inotify
        var statistics = WatcherStatistics()
    }

    private let shared = Mutex(Shared())

    init(settings: WatchSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    var isStopping: Bool { stopRequested.load(ordering: .acquiring) }

    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        doorbell.ring()
    }

    var mode: WatcherMode { shared.withLock { $0.mode } }

    var statistics: WatcherStatistics { shared.withLock { $0.statistics } }

    // MARK: - Called by the watcher thread

    func setMode(_ mode: WatcherMode) {
        shared.withLock { $0.mode = mode }
    }

    /// Counts an event read from inotify, relevant or not.
    func countEvent(overflow: Bool) {
        shared.withLock {
            $0.statistics.events += 1
            if overflow { $0.statistics.overflows += 1 }
        }
    }

    func countPoll() {
        shared.withLock { $0.statistics.polls += 1 }
    }

    func setWatchedDirectories(_ count: Int) {
        shared.withLock { $0.statistics.watchedDirectories = count }
    }

    /// A relevant event: the tree is dirty.
    func recordChange(opened: String?, closed: String?) {
        let now = ContinuousClock.now
        // A burst of thousands of events wakes the coordinator once, not once per event.
        let wake = shared.withLock { $0.batch.record(at: now, opened: opened, closed: closed) }
        if wake { doorbell.ring() }
    }

    /// Holds signals until `finishRebuild` (the tree may be half watched until then).
    func beginRebuild() {
        let now = ContinuousClock.now
        shared.withLock { $0.batch.beginRebuild(at: now) }
        doorbell.ring()
    }

    /// Every watch is in place again (or polling took over): a rescan is due.
    func finishRebuild(reason: String, countsAsRebuild: Bool = true) {
        let now = ContinuousClock.now
        shared.withLock {
            $0.batch.finishRebuild(reason: reason, at: now)
            if countsAsRebuild { $0.statistics.rebuilds += 1 }
        }
        doorbell.ring()
    }

    func pollDetectedChange() {
        let now = ContinuousClock.now
        shared.withLock { $0.batch.pollDetectedChange(at: now) }
        doorbell.ring()
    }

    // MARK: - The coordinator

    private enum Step {
        case finish
        case emit(ChangeSignal)
        case wait(until: ContinuousClock.Instant)
    }

    /// Turns recorded changes into signals until `stop()`: after the quiet window, within the cap, never while a
    /// rebuild is under way, and a safety rescan when nothing was signalled for a while.
    func coordinate(into continuation: AsyncStream<ChangeSignal>.Continuation) async {
        var lastSignal = ContinuousClock.now
        while true {
            let now = ContinuousClock.now
            let safetyDue = lastSignal + settings.safetyRescanInterval
            let step = shared.withLock { shared -> Step in
                if stopRequested.load(ordering: .acquiring) { return .finish }
                switch shared.batch.decide(now: now, quietWindow: settings.quietWindow, maxDelay: settings.maxDelay) {
                case .emit(let signal):
                    shared.statistics.signals += 1
                    return .emit(signal)
                case .wait(let until):
                    return .wait(until: until)
                case .hold:
                    return .wait(until: now + settings.maxDelay)
                case .idle:
                    guard now >= safetyDue else { return .wait(until: safetyDue) }
                    shared.statistics.signals += 1
                    return .emit(ChangeSignal(cause: .safetyRescan, eventCount: 0))
                }
            }
            switch step {
            case .finish:
                continuation.finish()
                return
            case .emit(let signal):
                lastSignal = now
                logger.debug(
                    "rules directory may have changed",
                    metadata: [
                        "rules.watcher.cause": "\(Self.describe(signal.cause))",
                        "rules.watcher.events": "\(signal.eventCount)",
                    ])
                continuation.yield(signal)
            case .wait(let until):
                await doorbell.wait(until: until)
            }
        }
    }

    static func describe(_ cause: ChangeSignal.Cause) -> String {
        switch cause {
        case .filesChanged: "files changed"
        case .watchesRebuilt(let reason): "watches rebuilt: \(reason)"
        case .safetyRescan: "safety rescan"
        case .pollDetectedChange: "poll detected a change"
        }
    }
}
