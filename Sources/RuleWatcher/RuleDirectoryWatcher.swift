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
    private let started = Mutex(false)

    /// Creates a watcher; nothing happens until ``changes()`` is called.
    /// - Parameters:
    ///   - root: the rules directory. It need not exist yet: its parent is watched until it appears.
    ///   - settings: pacing and fallback settings.
    ///   - logger: receives mode changes at info level and signals at debug level, with `rules.watcher.*` keys.
    public init(root: String, settings: WatchSettings = WatchSettings(), logger: Logger) {
        self.root = root
        self.settings = settings
        self.core = WatcherCore(settings: settings, logger: logger)
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
        let root = self.root
        // Nothing is signalled, not even a safety rescan, before the first watches are in place.
        core.beginRebuild()
        core.threadRunning.store(true, ordering: .releasing)
        let launched = DedicatedThread.start(name: "rules-watcher", stackBytes: WatcherThread.stackSize) {
            defer { core.threadRunning.store(false, ordering: .releasing) }
            WatchEngine(core: core, root: root).run()
        }
        guard launched != nil else {
            core.threadRunning.store(false, ordering: .releasing)
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
