import Glibc
import Logging
import RuleEngine
import RuleModel
import RulesTestSupport
import Synchronization
import Testing

@testable import RuleWatcher

/// Settings for tests: a short quiet window where the window's length does not change what is tested, and no
/// safety rescans (they would be extra signals).
extension WatchSettings {
    static var testing: WatchSettings {
        var settings = WatchSettings()
        settings.quietWindow = .milliseconds(100)
        settings.safetyRescanInterval = .seconds(3600)
        settings.pollInterval = .milliseconds(200)
        return settings
    }

    /// Settings for tests that count signals: a quiet window wide enough that the test process being
    /// descheduled between two steps of one edit (a loaded 2-core machine stalls for hundreds of milliseconds)
    /// does not split the edit in two, and no maximum delay that a slowed-down edit could reach.
    static var counting: WatchSettings {
        var settings = WatchSettings.testing
        settings.quietWindow = .seconds(1)
        settings.maxDelay = .seconds(60)
        return settings
    }
}

/// What the consumer saw: each signal with the scan made right when it arrived.
final class SignalLog: Sendable {
    struct Entry: Sendable {
        var signal: ChangeSignal
        var snapshot: RuleTreeSnapshot
    }

    private let entries = Mutex<[Entry]>([])
    private let ended = Atomic<Bool>(false)

    func append(_ entry: Entry) { entries.withLock { $0.append(entry) } }
    func finish() { ended.store(true, ordering: .releasing) }

    var all: [Entry] { entries.withLock { $0 } }
    var count: Int { entries.withLock { $0.count } }
    var isFinished: Bool { ended.load(ordering: .acquiring) }
}

/// Log messages kept in memory, so tests can check what operators would read.
final class RecordedLogs: Sendable {
    struct Message: Sendable {
        var level: Logger.Level
        var text: String
        var metadata: [String: String]
    }

    private let messages = Mutex<[Message]>([])

    func append(_ message: Message) { messages.withLock { $0.append(message) } }
    var all: [Message] { messages.withLock { $0 } }
}

struct RecordingLogHandler: LogHandler {
    let logs: RecordedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        logs.append(.init(level: event.level, text: "\(event.message)", metadata: merged.mapValues { "\($0)" }))
        // RULESD_WATCHER_TEST_LOG=1 also prints every message with a monotonic timestamp, to follow a failing run.
        if getenv("RULESD_WATCHER_TEST_LOG") != nil {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            print("\(now.tv_sec % 1000).\(now.tv_nsec / 1_000_000) [\(event.level)] \(event.message) \(merged)")
        }
    }
}

/// A temporary directory that holds a rules root (and whatever tests put beside it).
struct TemporaryDirectory: ~Copyable {
    let path: String

    init() {
        var template = Array("/tmp/rulesd-watch-test.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = String(cString: made!)
    }

    func join(_ relative: String) -> String { path + "/" + relative }

    deinit {
        try? FileSystemEdit.removeTree(path)
    }
}

/// A running watcher and its consumer, which rescans the tree on every signal.
final class WatchHarness: Sendable {
    let root: String
    let watcher: RuleDirectoryWatcher
    let log = SignalLog()
    let logs: RecordedLogs
    private let consumer = Mutex<Task<Void, Never>?>(nil)

    /// Starts watching `root` and waits for the first signal, which says the watches are in place.
    convenience init(root: String, settings: WatchSettings = .testing, waitForStart: Bool = true) async throws {
        let logs = RecordedLogs()
        let watcher = RuleDirectoryWatcher(root: root, settings: settings, logger: Self.logger(into: logs))
        try await self.init(root: root, watcher: watcher, logs: logs, waitForStart: waitForStart)
    }

    /// Starts the watcher given (of `root`, logging into `logs`) and waits for its first signal.
    init(root: String, watcher: RuleDirectoryWatcher, logs: RecordedLogs, waitForStart: Bool = true) async throws {
        self.root = root
        self.logs = logs
        self.watcher = watcher
        let stream = watcher.changes()
        let log = self.log
        consumer.withLock {
            $0 = Task.detached {
                for await signal in stream {
                    log.append(.init(signal: signal, snapshot: RuleTreeReader().read(root: root)))
                }
                log.finish()
            }
        }
        if waitForStart {
            try #require(await waitForSignals(1), "the watcher never said it had started")
        }
    }

    deinit {
        watcher.stop()
    }

    static func logger(into logs: RecordedLogs) -> Logger {
        Logger(label: "rules.watcher.test") { _ in RecordingLogHandler(logs: logs) }
    }

    /// Watchers of several roots sharing one inotify instance, each started and waited for.
    static func sharing(roots: [String], settings: WatchSettings = .testing) async throws -> [WatchHarness] {
        let logs = roots.map { _ in RecordedLogs() }
        let watchers = RuleDirectoryWatcher.sharingInotify(
            zip(roots, logs).map { ($0, settings, logger(into: $1)) })
        var harnesses: [WatchHarness] = []
        for (index, watcher) in watchers.enumerated() {
            harnesses.append(try await WatchHarness(root: roots[index], watcher: watcher, logs: logs[index]))
        }
        return harnesses
    }

    /// Waits until at least `count` signals arrived in all (generous: machines are shared and slow).
    func waitForSignals(_ count: Int, timeout: Duration = .seconds(30)) async -> Bool {
        await waitUntil(timeout: timeout) { self.log.count >= count }
    }

    /// Waits long enough for any further signal of the same change to show up: a second signal needs events
    /// after the first one and then a whole quiet window, so twice the window and a margin.
    func settle() async {
        try? await Task.sleep(for: watcher.settings.quietWindow * 2 + .milliseconds(500))
    }

    /// Waits until a signal delivered exactly these files (the consumer's scan made when it arrived): what the
    /// watcher handed over, not what is on disk by the time the test looks.
    func waitForDelivery(of files: [String: String], timeout: Duration = .seconds(30)) async -> Bool {
        await waitUntil(timeout: timeout) { self.log.all.contains { contents($0.snapshot) == files } }
    }

    /// The files the last signal delivered.
    var lastDelivered: [String: String]? { log.all.last.map { contents($0.snapshot) } }

    /// Signals after the first `count`.
    func signals(after count: Int) -> [SignalLog.Entry] { Array(log.all.dropFirst(count)) }

    /// Scans the tree now.
    func scan() -> RuleTreeSnapshot { RuleTreeReader().read(root: root) }

    func stop() async {
        watcher.stop()
        _ = await waitUntil(timeout: .seconds(10)) { !self.watcher.isThreadRunning }
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
func waitUntil(timeout: Duration, _ condition: @Sendable () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// The files of a snapshot as path to text, for readable comparisons.
func contents(_ snapshot: RuleTreeSnapshot) -> [String: String] {
    Dictionary(uniqueKeysWithValues: snapshot.sources.map { ($0.path, String(decoding: $0.content, as: UTF8.self)) })
}

/// The revision a tree with exactly these files has.
func revision(of files: [String: String]) -> RuleRevision {
    RuleRevision(sources: files.map { RuleSource(path: $0.key, content: Array($0.value.utf8)) })
}

func revision(_ snapshot: RuleTreeSnapshot) -> RuleRevision {
    RuleRevision(sources: snapshot.sources)
}

/// A small rule file body whose text identifies its version.
func rule(_ name: String, _ version: Int) -> String {
    "-- \(name) v\(version)\nrule(\"\(name)\", function() return \(version) end)\n"
}
