// Temporary stand-in for the watcher's public API while the module is written elsewhere; removed when it lands.
import Logging

public struct WatchSettings: Sendable {
    public var quietWindow: Duration = .milliseconds(300)
    public var maxDelay: Duration = .seconds(5)
    public var safetyRescanInterval: Duration = .seconds(60)
    public var pollInterval: Duration = .seconds(2)
    public var forcePolling = false
    public init() {}
}

public enum WatcherMode: Sendable, Equatable {
    case inotify
    case polling(reason: String)
}

public struct ChangeSignal: Sendable {
    public enum Cause: Sendable, Equatable {
        case filesChanged, watchesRebuilt(String), safetyRescan, pollDetectedChange
    }
    public var cause: Cause
    public var eventCount: Int
}

public final class RuleDirectoryWatcher: Sendable {
    public init(root: String, settings: WatchSettings, logger: Logger) {}
    public func changes() -> AsyncStream<ChangeSignal> { AsyncStream { $0.finish() } }
    public func stop() {}
    public var mode: WatcherMode { .inotify }
}
