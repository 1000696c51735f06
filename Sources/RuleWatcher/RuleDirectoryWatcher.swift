import Glibc
import Logging
import RuleEngine
import Synchronization

/// Watches a rules directory and says when to rescan it.
///
/// Every change that can alter what `RuleTreeReader` reads only marks the tree dirty; after a quiet window
/// (with a cap) one ``ChangeSignal`` is sent, and the consumer rescans the whole tree and compares revisions.
/// The watcher never says *what* changed: editors, `git`, `rsync` and the kubelet change files in too many
/// ways for individual events to be trusted.
///
/// inotify (through libinotifytools) is read by one dedicated thread, the only one that ever calls the library;
/// a coordinator task turns what the thread records into signals. When inotify cannot be used (the instance or
/// watch limit is reached, `forcePolling`, another watcher in the process holds the library) the same thread
/// polls a stat fingerprint of the tree instead, says so in ``mode`` and the logs, and tries inotify again every
/// ``WatchSettings/inotifyRetryInterval``.
///
/// The first signal, ``ChangeSignal/Cause/watchesRebuilt(_:)``, comes once watching has started: anything that
/// changed before it may have been missed, so the consumer should rescan then.
public final class RuleDirectoryWatcher: Sendable {
    /// The rules directory as given (made absolute against the current directory when the watch starts).
    public let root: String
    /// The settings the watcher was created with.
    public let settings: WatchSettings
    private let core: WatcherCore
    private let launcher: EngineLauncher
    private let started = Mutex(false)

    /// Creates a watcher; nothing happens until ``changes()`` is called.
    /// - Parameters:
    ///   - root: the rules directory. It need not exist yet: its parent is watched until it appears.
    ///   - settings: pacing and fallback settings.
    ///   - logger: receives mode changes at info level and signals at debug level, with `rules.watcher.*` keys.
    public init(root: String, settings: WatchSettings = WatchSettings(), logger: Logger) {
        self.root = root
        self.settings = settings
        let core = WatcherCore(settings: settings, logger: logger)
        self.core = core
        self.launcher = EngineLauncher(members: [(core, root)])
    }

    private init(root: String, settings: WatchSettings, core: WatcherCore, launcher: EngineLauncher) {
        self.root = root
        self.settings = settings
        self.core = core
        self.launcher = launcher
    }

    /// Creates watchers of several rules directories that share one inotify instance.
    ///
    /// libinotifytools allows one instance per process, so separate watchers would leave every directory but
    /// the first to polling. These are read by one thread: each watcher is used like one made by
    /// ``init(root:settings:logger:)`` and signals only for changes in its own directory. The thread starts
    /// with the first ``changes()`` call and watches every directory from then on; it ends once every watcher is
    /// stopped. A rebuild of the watches (the queue overflowed, a directory was replaced) concerns the shared
    /// instance, so every watcher of the group then signals ``ChangeSignal/Cause/watchesRebuilt(_:)``. A
    /// directory whose settings say `forcePolling` gets a polling watcher of its own.
    /// - Parameter roots: each directory with its settings and logger; the shortest of the groups' intervals
    ///   paces the shared thread, each watcher's own quiet window, cap and safety rescan its signals.
    /// - Returns: one watcher per directory, in the same order.
    public static func sharingInotify(
        _ roots: [(root: String, settings: WatchSettings, logger: Logger)]
    ) -> [RuleDirectoryWatcher] {
        let cores = roots.map { WatcherCore(settings: $0.settings, logger: $0.logger) }
        let shared = zip(roots, cores).filter { !$0.0.settings.forcePolling }.map { ($1, $0.root) }
        let launcher = shared.isEmpty ? nil : EngineLauncher(members: shared)
        return zip(roots, cores).map { root, core in
            let launcher = root.settings.forcePolling ? EngineLauncher(members: [(core, root.root)]) : launcher!
            return RuleDirectoryWatcher(root: root.root, settings: root.settings, core: core, launcher: launcher)
        }
    }

    deinit {
        core.requestStop()
    }

    /// Starts watching and returns the signals.
    ///
    /// For one consumer: the first call starts the watcher thread and returns its stream; later calls return a
    /// stream that is already finished. A signal that arrives while the previous one is still unconsumed replaces
    /// it (one rescan covers both). The stream ends after ``stop()``; ending the iteration stops the watcher.
    public func changes() -> AsyncStream<ChangeSignal> {
        let (stream, continuation) = AsyncStream.makeStream(of: ChangeSignal.self, bufferingPolicy: .bufferingNewest(1))
        let first = started.withLock { started in
            defer { started = true }
            return !started
        }
        guard first, !core.isStopping else {
            continuation.finish()
            return stream
        }
        let core = self.core
        continuation.onTermination = { _ in core.requestStop() }
        guard launcher.start() else {
            core.logger.info("cannot start the rules watcher thread; the change stream ends")
            continuation.finish()
            return stream
        }
        Task.detached {
            await core.coordinate(into: continuation)
        }
        return stream
    }

    /// Stops watching: the stream finishes at once, and the thread lets go of libinotifytools and exits within
    /// about a second (it may be blocked in a one-second read). Safe to call more than once.
    public func stop() {
        core.requestStop()
    }

    /// How changes are detected right now.
    public var mode: WatcherMode { core.mode }

    /// Counters since the start.
    public var statistics: WatcherStatistics { core.statistics }

    /// Whether the watcher thread is still running (it outlives ``stop()`` by up to a second).
    var isThreadRunning: Bool { core.threadRunning.load(ordering: .acquiring) }

    /// Test hook: stops (or resumes) reading the inotify queue so that it can overflow.
    func pauseEventReading(_ paused: Bool) {
        core.readingPaused.store(paused, ordering: .releasing)
    }

    /// Test hook: whether the thread has seen the pause and stopped reading (it may be inside a read for up to a
    /// second after `pauseEventReading(true)`).
    var isEventReadingPaused: Bool { core.readingPauseObserved.load(ordering: .acquiring) }
}

/// The watcher's thread: it blocks, so it must not run on the concurrency pool.
enum WatcherThread {
    /// Ample for the watcher's recursion (directory walks at most `maxDepth` deep, small frames).
    static let stackSize = 1 << 20
}

/// Starts the thread of a group of watchers once, when the first of them is started.
final class EngineLauncher: Sendable {
    private enum State {
        case waiting
        case running
        case failed
    }

    private let members: [(core: WatcherCore, root: String)]
    private let state = Mutex(State.waiting)

    init(members: [(core: WatcherCore, root: String)]) {
        self.members = members
    }

    /// Starts the thread unless it was started already.
    /// - Returns: whether the thread runs (or ran): false when it could not be started.
    func start() -> Bool {
        state.withLock { state in
            switch state {
            case .running: return true
            case .failed: return false
            case .waiting: break
            }
            let members = self.members
            for member in members {
                // Nothing is signalled, not even a safety rescan, before the first watches are in place.
                member.core.beginRebuild()
                member.core.threadRunning.store(true, ordering: .releasing)
            }
            let launched = DedicatedThread.start(name: "rules-watcher", stackBytes: WatcherThread.stackSize) {
                defer {
                    for member in members { member.core.threadRunning.store(false, ordering: .releasing) }
                }
                WatchEngine(members: members).run()
            }
            guard launched != nil else {
                for member in members { member.core.threadRunning.store(false, ordering: .releasing) }
                state = .failed
                return false
            }
            state = .running
            return true
        }
    }
}
