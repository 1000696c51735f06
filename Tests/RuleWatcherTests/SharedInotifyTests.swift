import Glibc
import RuleEngine
import RuleModel
import RulesTestSupport
import Testing

@testable import RuleWatcher

/// Several roots watched through the process's one libinotifytools instance (`RuleDirectoryWatcher.sharingInotify`).
@Suite("Watching several rules directories with one inotify instance", .serialized)
struct SharedInotifyTests {
    /// Stops every watcher of a group, then waits for the shared thread to end (it runs while one is left).
    func stop(_ harnesses: [WatchHarness]) async {
        for harness in harnesses { harness.watcher.stop() }
        for harness in harnesses { await harness.stop() }
    }

    @Test("Two roots watched together both use inotify, and an edit in one signals only that one")
    func editSignalsOnlyItsRoot() async throws {
        let dir = TemporaryDirectory()
        let rootA = dir.join("a")
        let rootB = dir.join("b")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: rootA)
        try FileSystemEdit.writeFiles(["b.lua": rule("b", 1)], in: rootB)
        let harnesses = try await WatchHarness.sharing(roots: [rootA, rootB], settings: .counting)
        let (a, b) = (harnesses[0], harnesses[1])
        #expect(a.watcher.mode == .inotify)
        #expect(b.watcher.mode == .inotify)
        #expect(a.watcher.statistics.watchedDirectories > 0)
        #expect(b.watcher.statistics.watchedDirectories > 0)

        try FileSystemEdit.nanoInPlace.save(rule("a", 2), to: "a.lua", in: rootA)
        #expect(await a.waitForDelivery(of: ["a.lua": rule("a", 2)]))
        await a.settle()
        #expect(a.signals(after: 1).map(\.signal.cause) == [.filesChanged])
        #expect(b.log.count == 1)

        try FileSystemEdit.sedInPlace.save(rule("b", 2), to: "b.lua", in: rootB)
        #expect(await b.waitForDelivery(of: ["b.lua": rule("b", 2)]))
        await b.settle()
        #expect(b.signals(after: 1).map(\.signal.cause) == [.filesChanged])
        #expect(a.log.count == 2)
        await stop(harnesses)
    }

    @Test("A root of a group removed and recreated is watched again, and the other root still signals")
    func rootRemovedAndRecreated() async throws {
        let dir = TemporaryDirectory()
        let rootA = dir.join("a")
        let rootB = dir.join("b")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: rootA)
        try FileSystemEdit.writeFiles(["b.lua": rule("b", 1)], in: rootB)
        let harnesses = try await WatchHarness.sharing(roots: [rootA, rootB])
        let (a, b) = (harnesses[0], harnesses[1])

        try FileSystemEdit.removeTree(rootA)
        #expect(await a.waitForDelivery(of: [:]))
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 2)], in: rootA)
        #expect(await a.waitForDelivery(of: ["a.lua": rule("a", 2)]))
        await a.settle()

        // Both roots are still watched with inotify afterwards.
        try FileSystemEdit.nanoInPlace.save(rule("a", 3), to: "a.lua", in: rootA)
        #expect(await a.waitForDelivery(of: ["a.lua": rule("a", 3)]))
        try FileSystemEdit.nanoInPlace.save(rule("b", 2), to: "b.lua", in: rootB)
        #expect(await b.waitForDelivery(of: ["b.lua": rule("b", 2)]))
        #expect(a.watcher.mode == .inotify)
        #expect(b.watcher.mode == .inotify)
        await stop(harnesses)
    }

    @Test("An overflow while one root churns rebuilds the shared watches without losing the other root's change")
    func overflowKeepsTheOtherRootsSignals() async throws {
        let dir = TemporaryDirectory()
        let rootA = dir.join("a")
        let rootB = dir.join("b")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "c.lua": rule("c", 1)], in: rootA)
        try FileSystemEdit.writeFiles(["b.lua": rule("b", 1)], in: rootB)
        let harnesses = try await WatchHarness.sharing(roots: [rootA, rootB])
        let (a, b) = (harnesses[0], harnesses[1])
        let queueLimit = Int(WatchRegistry.readSmallFile("/proc/sys/fs/inotify/max_queued_events") ?? "") ?? 16384

        // The shared thread stops reading; root a's churn fills the queue, then root b changes.
        a.watcher.pauseEventReading(true)
        try #require(await waitUntil(timeout: .seconds(10)) { a.watcher.isEventReadingPaused })
        for index in 0..<(2 * queueLimit) {
            try FileSystemEdit.touch(rootA + (index % 2 == 0 ? "/a.lua" : "/c.lua"))
        }
        try FileSystemEdit.nanoInPlace.save(rule("b", 2), to: "b.lua", in: rootB)
        a.watcher.pauseEventReading(false)

        #expect(await b.waitForDelivery(of: ["b.lua": rule("b", 2)]))
        // Both roots are rescanned after the rebuild (root a may also signal the events read before the overflow
        // if the loaded machine stalls the thread for longer than the quiet window).
        let overflowed = ChangeSignal.Cause.watchesRebuilt("the inotify event queue overflowed")
        for harness in [a, b] {
            #expect(
                await waitUntil(timeout: .seconds(30)) { harness.log.all.contains { $0.signal.cause == overflowed } })
            #expect(harness.watcher.statistics.overflows >= 1)
        }
        await b.settle()
        let count = b.log.count

        // Still watching after the rebuild.
        try FileSystemEdit.nanoInPlace.save(rule("b", 3), to: "b.lua", in: rootB)
        #expect(await b.waitForSignals(count + 1))
        #expect(await b.waitForDelivery(of: ["b.lua": rule("b", 3)]))
        await stop(harnesses)
    }

    @Test("A root of a group with forcePolling polls on its own; the others keep inotify")
    func forcePollingRootPollsAlone() async throws {
        let dir = TemporaryDirectory()
        let rootA = dir.join("a")
        let rootB = dir.join("b")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: rootA)
        try FileSystemEdit.writeFiles(["b.lua": rule("b", 1)], in: rootB)
        var polling = WatchSettings.testing
        polling.forcePolling = true
        let logsA = RecordedLogs()
        let logsB = RecordedLogs()
        let watchers = RuleDirectoryWatcher.sharingInotify([
            (rootA, .testing, WatchHarness.logger(into: logsA)),
            (rootB, polling, WatchHarness.logger(into: logsB)),
        ])
        let a = try await WatchHarness(root: rootA, watcher: watchers[0], logs: logsA)
        let b = try await WatchHarness(root: rootB, watcher: watchers[1], logs: logsB)
        #expect(a.watcher.mode == .inotify)
        #expect(b.watcher.mode == .polling(reason: "forcePolling is set"))

        try FileSystemEdit.nanoInPlace.save(rule("b", 2), to: "b.lua", in: rootB)
        #expect(await b.waitForDelivery(of: ["b.lua": rule("b", 2)]))
        await stop([a, b])
    }
}
