/// How a ``RuleDirectoryWatcher`` paces its change signals and when it falls back to polling.
///
/// The defaults come from measurements of real edits: a 1,000-file `git checkout` spans up to a second with
/// single gaps above 100 ms on a starved host, so a 300 ms trailing quiet window gives one signal per checkout,
/// and the 5 s cap bounds how long a steady stream of events can postpone a rescan.
public struct WatchSettings: Sendable, Equatable {
    /// How long the tree must stay quiet after the last relevant event before a signal is sent.
    public var quietWindow: Duration = .milliseconds(300)
    /// The longest a signal waits after the first event of a batch, however busy the tree stays and even while a
    /// file is still open for writing.
    public var maxDelay: Duration = .seconds(5)
    /// How often a ``ChangeSignal/Cause/safetyRescan`` is sent when nothing else was, for changes inotify cannot
    /// see (network file systems, overlay lower layers, events lost while watches were rebuilt).
    public var safetyRescanInterval: Duration = .seconds(60)
    /// How often the tree's stat fingerprint is taken in polling mode.
    public var pollInterval: Duration = .seconds(2)
    /// How often polling mode tries to go back to inotify.
    public var inotifyRetryInterval: Duration = .seconds(60)
    /// Never use inotify; poll from the start (for file systems where inotify reports nothing).
    public var forcePolling: Bool = false

    /// The defaults: 300 ms quiet window, 5 s cap, 60 s safety rescans, polling every 2 s when inotify is not
    /// available, and a retry of inotify every 60 s.
    public init() {}
}

/// How the watcher currently learns about changes.
public enum WatcherMode: Sendable, Equatable, CustomStringConvertible {
    /// inotify watches on every directory that can change the scan result.
    case inotify
    /// A stat fingerprint of the tree taken every ``WatchSettings/pollInterval``.
    /// - Parameter reason: why inotify is not used, for `status` output and logs.
    case polling(reason: String)

    /// `inotify`, or `polling (reason)`.
    public var description: String {
        switch self {
        case .inotify: "inotify"
        case .polling(let reason): "polling (\(reason))"
        }
    }

    /// `inotify` or `polling`, without the reason: a stable value for metrics labels.
    public var name: String {
        switch self {
        case .inotify: "inotify"
        case .polling: "polling"
        }
    }
}

/// Tells the consumer to rescan the rules directory and compare revisions.
///
/// A signal says only that the tree *may* have changed. The consumer rescans the whole tree and compares its
/// revision with the serving one; most signals after `touch`, `chmod` or editor noise find the same revision.
public struct ChangeSignal: Sendable, Equatable {
    /// Why a rescan is due.
    public enum Cause: Sendable, Equatable {
        /// Events in the watched directories, followed by the quiet window.
        case filesChanged
        /// Every watch was set up again (start, a directory deleted or moved, the root replaced, a queue
        /// overflow, a change of mode); anything may have changed in between.
        /// - Parameter reason: what made the rebuild necessary.
        case watchesRebuilt(String)
        /// Nothing was signalled for ``WatchSettings/safetyRescanInterval``.
        case safetyRescan
        /// The stat fingerprint changed in polling mode.
        case pollDetectedChange
    }

    /// Why a rescan is due; when one batch had several causes, the strongest (a rebuild) is reported.
    public var cause: Cause
    /// How many relevant inotify events the batch held (0 for safety rescans and polling).
    public var eventCount: Int

    /// Creates a signal.
    public init(cause: Cause, eventCount: Int) {
        self.cause = cause
        self.eventCount = eventCount
    }
}

/// Counters since the watcher started, for `status` and metrics.
public struct WatcherStatistics: Sendable, Equatable {
    /// inotify events read, relevant or not.
    public var events: Int = 0
    /// Signals sent to the consumer.
    public var signals: Int = 0
    /// Times every watch was set up from scratch (the first setup included).
    public var rebuilds: Int = 0
    /// `IN_Q_OVERFLOW` events: the kernel dropped events because they were not read fast enough.
    public var overflows: Int = 0
    /// Directories watched right now (0 in polling mode).
    public var watchedDirectories: Int = 0
    /// Stat fingerprints taken in polling mode.
    public var polls: Int = 0

    /// All zero.
    public init() {}
}
