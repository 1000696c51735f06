import Glibc
import RuleEngine
import RuleModel
import RulesTestSupport
import Testing

@testable import RuleWatcher

/// Tests against the real kernel, one watcher at a time: libinotifytools is one instance per process.
@Suite("Watching a rules directory", .serialized)
struct LiveWatcherTests {
    @Test("One edit produces one signal, delivered once the new content is complete")
    func oneEditOneSignal() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "b.lua": rule("b", 1)], in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        try FileSystemEdit.nanoInPlace.save(rule("a", 2), to: "a.lua", in: root)

        #expect(await harness.waitForSignals(2))
        await harness.settle()
        let after = harness.signals(after: 1)
        #expect(after.count == 1)
        #expect(after.first?.signal.cause == .filesChanged)
        #expect(after.first.map { contents($0.snapshot) } == ["a.lua": rule("a", 2), "b.lua": rule("b", 1)])
        await harness.stop()
    }

    @Test("touch and chmod produce signals, but the rescanned revision is unchanged")
    func touchAndChmodKeepTheRevision() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "sub/b.lua": rule("b", 1)], in: root)
        let before = revision(RuleTreeReader().read(root: root))
        let harness = try await WatchHarness(root: root)

        try FileSystemEdit.touch(root + "/a.lua")
        #expect(await harness.waitForSignals(2))
        try FileSystemEdit.chmod(root + "/sub/b.lua", 0o600)
        #expect(await harness.waitForSignals(3))

        for entry in harness.signals(after: 1) {
            #expect(revision(entry.snapshot) == before)
        }
        await harness.stop()
    }

    @Test("A 1,000-file git checkout produces exactly one signal, delivered with the whole checkout")
    func thousandFileCheckoutOneSignal() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        var branchA: [String: String] = [:]
        var branchB: [String: String?] = [:]
        for index in 0..<1000 {
            let path = "team\(index % 10)/rule\(index).lua"
            branchA[path] = rule("r\(index)", 1)
            branchB[path] = rule("r\(index)", 2)
        }
        try FileSystemEdit.writeFiles(branchA, in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        try FileSystemEdit.gitCheckout(branchB, in: root)

        #expect(await harness.waitForSignals(2))
        await harness.settle()
        let after = harness.signals(after: 1)
        #expect(after.count == 1)
        #expect(after.first?.signal.eventCount ?? 0 > 1000)
        #expect(after.first.map { revision($0.snapshot) } == revision(of: branchB.mapValues { $0! }))
        await harness.stop()
    }

    @Test("A new subdirectory with files is signalled, rescanned, and watched from then on")
    func newSubdirectoryIsWatched() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        try FileSystemEdit.writeFiles(["new/deeper/x.lua": rule("x", 1), "new/y.lua": rule("y", 1)], in: root)
        #expect(await harness.waitForSignals(2))
        #expect(contents(harness.log.all[1].snapshot)["new/deeper/x.lua"] == rule("x", 1))
        await harness.settle()
        #expect(harness.log.count == 2)

        try FileSystemEdit.vimRenameOnSave.save(rule("x", 2), to: "new/deeper/x.lua", in: root)
        #expect(await harness.waitForSignals(3))
        #expect(harness.lastDelivered?["new/deeper/x.lua"] == rule("x", 2))
        await harness.stop()
    }

    @Test("A ConfigMap ..data swap produces exactly one signal, delivered with the new content")
    func configMapSwapOneSignal() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("config")
        try FileSystemEdit.makeConfigMapVolume(at: root, files: ["a.lua": rule("a", 1), "b.lua": rule("b", 1)])
        let harness = try await WatchHarness(root: root, settings: .counting)
        #expect(harness.lastDelivered == ["a.lua": rule("a", 1), "b.lua": rule("b", 1)])

        try FileSystemEdit.configMapSwap(volume: root, files: ["a.lua": rule("a", 2), "b.lua": rule("b", 1)])
        #expect(await harness.waitForSignals(2))
        await harness.settle()
        #expect(harness.signals(after: 1).count == 1)
        #expect(harness.lastDelivered == ["a.lua": rule("a", 2), "b.lua": rule("b", 1)])

        // The watches follow the new ..data: a second update is seen as well.
        try FileSystemEdit.configMapSwap(volume: root, files: ["a.lua": rule("a", 3), "c.lua": rule("c", 1)])
        #expect(await harness.waitForSignals(3))
        await harness.settle()
        #expect(harness.signals(after: 1).count == 2)
        #expect(harness.lastDelivered == ["a.lua": rule("a", 3), "c.lua": rule("c", 1)])
        await harness.stop()
    }

    @Test("A directory deleted and recreated is signalled and watched again")
    func directoryDeletedAndRecreated() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "sub/b.lua": rule("b", 1)], in: root)
        let harness = try await WatchHarness(root: root)

        try FileSystemEdit.deleteAndRecreateDirectory(root + "/sub", files: ["b.lua": rule("b", 2)])
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 1), "sub/b.lua": rule("b", 2)]))
        await harness.settle()
        let count = harness.log.count

        try FileSystemEdit.sedInPlace.save(rule("b", 3), to: "sub/b.lua", in: root)
        #expect(await harness.waitForSignals(count + 1))
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 1), "sub/b.lua": rule("b", 3)]))
        await harness.stop()
    }

    @Test("A root renamed away and replaced is signalled and the new root is watched")
    func rootRenamedAwayAndReplaced() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        let harness = try await WatchHarness(root: root)

        try FileSystemEdit.replaceRootByRename(root, files: ["a.lua": rule("a", 2), "b.lua": rule("b", 1)])
        #expect(await harness.waitForSignals(2))
        #expect(harness.log.all.last.map { contents($0.snapshot) } == ["a.lua": rule("a", 2), "b.lua": rule("b", 1)])
        if case .watchesRebuilt = harness.log.all[1].signal.cause {
        } else {
            Issue.record("expected a rebuild, got \(harness.log.all[1].signal.cause)")
        }
        await harness.settle()
        let count = harness.log.count

        try FileSystemEdit.nanoInPlace.save(rule("b", 2), to: "b.lua", in: root)
        #expect(await harness.waitForSignals(count + 1))
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 2), "b.lua": rule("b", 2)]))
        await harness.stop()
    }

    @Test("A symlinked root re-pointed to another release is followed")
    func symlinkedRootRepointed() async throws {
        let dir = TemporaryDirectory()
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: dir.join("releases/v1"))
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 2)], in: dir.join("releases/v2"))
        let link = dir.join("current")
        #expect(symlink("releases/v1", link) == 0)
        let harness = try await WatchHarness(root: link)

        try FileSystemEdit.repointSymlink(link, to: "releases/v2")
        #expect(await harness.waitForSignals(2))
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 2)]))
        await harness.settle()
        let count = harness.log.count

        try FileSystemEdit.emacsLaterSave.save(rule("a", 3), to: "a.lua", in: dir.join("releases/v2"))
        #expect(await harness.waitForSignals(count + 1))
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 3)]))
        await harness.stop()
    }

    @Test("A slow writer is signalled once, after it closes the file")
    func slowWriterSignalledAfterClose() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        // A quiet window far shorter than the pauses between writes: only the file being still open holds the
        // signal back (and no maximum delay cuts the wait short).
        var settings = WatchSettings.testing
        settings.maxDelay = .seconds(60)
        let harness = try await WatchHarness(root: root, settings: settings)

        let chunks = ["-- part one\n", "-- part two\n", "-- part three\n", "-- part four\n"]
        try await FileSystemEdit.slowWrite(root + "/a.lua", chunks: chunks, interval: .milliseconds(700))

        #expect(await harness.waitForSignals(2))
        await harness.settle()
        let after = harness.signals(after: 1)
        #expect(after.count == 1)
        #expect(after.first.map { contents($0.snapshot) } == ["a.lua": chunks.joined()])
        await harness.stop()
    }

    @Test("A write cut short converges to what is on disk")
    func truncatedWriteConverges() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        let harness = try await WatchHarness(root: root)

        let full = rule("a", 2)
        try FileSystemEdit.truncatedWrite(root + "/a.lua", content: full, keepingBytes: full.utf8.count / 2)

        #expect(await harness.waitForSignals(2))
        #expect(contents(harness.log.all[1].snapshot) == ["a.lua": String(full.prefix(full.utf8.count / 2))])
        await harness.stop()
    }

    @Test("tar x over the tree produces one signal, delivered with every member")
    func tarExtractOneSignal() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "lib/b.lua": rule("b", 1)], in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        let archive = ["a.lua": rule("a", 2), "lib/b.lua": rule("b", 2), "lib/c.lua": rule("c", 1)]
        try FileSystemEdit.tarExtract(archive, in: root)

        #expect(await harness.waitForSignals(2))
        await harness.settle()
        #expect(harness.signals(after: 1).count == 1)
        #expect(harness.lastDelivered == archive)
        await harness.stop()
    }

    @Test("The event queue overflowing rebuilds the watches and the rescan is right")
    func queueOverflowRebuilds() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "b.lua": rule("b", 1)], in: root)
        let harness = try await WatchHarness(root: root)
        let queueLimit = Int(WatchRegistry.readSmallFile("/proc/sys/fs/inotify/max_queued_events") ?? "") ?? 16384

        // The thread stops reading; alternating files keep the kernel from merging consecutive events.
        harness.watcher.pauseEventReading(true)
        try #require(await waitUntil(timeout: .seconds(10)) { harness.watcher.isEventReadingPaused })
        for index in 0..<(2 * queueLimit) {
            try FileSystemEdit.touch(root + (index % 2 == 0 ? "/a.lua" : "/b.lua"))
        }
        try FileSystemEdit.nanoInPlace.save(rule("b", 2), to: "b.lua", in: root)
        harness.watcher.pauseEventReading(false)

        #expect(await harness.waitForSignals(2))
        #expect(harness.watcher.statistics.overflows >= 1)
        #expect(harness.log.all[1].signal.cause == .watchesRebuilt("the inotify event queue overflowed"))
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 1), "b.lua": rule("b", 2)]))
        await harness.settle()
        let count = harness.log.count

        // Still watching after the rebuild.
        try FileSystemEdit.nanoInPlace.save(rule("a", 2), to: "a.lua", in: root)
        #expect(await harness.waitForSignals(count + 1))
        await harness.stop()
    }

    @Test("forcePolling detects changes and converges")
    func forcePollingConverges() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        var settings = WatchSettings.testing
        settings.forcePolling = true
        let harness = try await WatchHarness(root: root, settings: settings)
        #expect(harness.watcher.mode == .polling(reason: "forcePolling is set"))

        try FileSystemEdit.sedInPlace.save(rule("a", 2), to: "a.lua", in: root)
        try FileSystemEdit.writeFiles(["sub/b.lua": rule("b", 1)], in: root)

        #expect(await harness.waitForSignals(2))
        #expect(await waitUntil(timeout: .seconds(30)) { contents(harness.log.all.last!.snapshot).count == 2 })
        #expect(harness.log.all.last?.signal.cause == .pollDetectedChange)
        #expect(contents(harness.log.all.last!.snapshot) == ["a.lua": rule("a", 2), "sub/b.lua": rule("b", 1)])
        #expect(harness.watcher.statistics.watchedDirectories == 0)
        await harness.stop()
    }

    @Test("stop() ends the stream, ends the thread and gives libinotifytools back")
    func stopStops() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        let harness = try await WatchHarness(root: root)
        #expect(harness.watcher.mode == .inotify)

        harness.watcher.stop()
        #expect(await waitUntil(timeout: .seconds(10)) { harness.log.isFinished })
        #expect(await waitUntil(timeout: .seconds(10)) { !harness.watcher.isThreadRunning })
        let count = harness.log.count
        try FileSystemEdit.nanoInPlace.save(rule("a", 2), to: "a.lua", in: root)
        try await Task.sleep(for: .milliseconds(500))
        #expect(harness.log.count == count)

        // The library is free again: a new watcher gets inotify, not polling.
        let next = try await WatchHarness(root: root)
        #expect(next.watcher.mode == .inotify)
        await next.stop()
    }

    @Test("A rules directory that does not exist yet is watched for until it appears")
    func missingRootAppears() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("not-yet/rules")
        let harness = try await WatchHarness(root: root)
        #expect(harness.scan().sources.isEmpty)

        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        #expect(await harness.waitForSignals(2))
        #expect(
            await waitUntil(timeout: .seconds(30)) {
                contents(harness.log.all.last!.snapshot) == ["a.lua": rule("a", 1)]
            })
        await harness.settle()
        let count = harness.log.count

        try FileSystemEdit.nanoInPlace.save(rule("a", 2), to: "a.lua", in: root)
        #expect(await harness.waitForSignals(count + 1))
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 2)]))
        await harness.stop()
    }

    @Test("Changes to hidden files alone (swap files, .git) produce no signal")
    func hiddenChurnIsIgnored() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        for round in 0..<20 {
            try FileSystemEdit.writeFiles([".a.lua.swp": "swap \(round)", ".git/index": "index \(round)"], in: root)
        }
        try FileSystemEdit.removeTree(root + "/.a.lua.swp")
        await harness.settle()

        #expect(harness.log.count == 1)
        await harness.stop()
    }

    @Test("A rule file symlinked from outside the tree is watched where it really lives")
    func symlinkedFileOutsideTheTree() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["shared.lua": rule("shared", 1)], in: dir.join("elsewhere"))
        try FileSystemEdit.makeDirectories(root)
        #expect(symlink("../elsewhere/shared.lua", root + "/shared.lua") == 0)
        let harness = try await WatchHarness(root: root)

        try FileSystemEdit.vsCodeInPlace.save(rule("shared", 2), to: "shared.lua", in: dir.join("elsewhere"))

        #expect(await harness.waitForSignals(2))
        #expect(await harness.waitForDelivery(of: ["shared.lua": rule("shared", 2)]))
        await harness.stop()
    }

    @Test(
        "Each editor's or tool's save is signalled once, delivered with the new content",
        arguments: FileSystemEdit.allCases)
    func everySaveStyleConverges(_ edit: FileSystemEdit) async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "lib/b.lua": rule("b", 1)], in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        try edit.save(rule("b", 2), to: "lib/b.lua", in: root)

        #expect(await harness.waitForSignals(2))
        await harness.settle()
        #expect(harness.signals(after: 1).count == 1)
        #expect(harness.lastDelivered == ["a.lua": rule("a", 1), "lib/b.lua": rule("b", 2)])
        await harness.stop()
    }
}

extension LiveWatcherTests {
    @Test("A watcher started while more than 1,024 descriptors are open still gets inotify, and rebuilds")
    func manyOpenDescriptors() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "sub/b.lua": rule("b", 1)], in: root)
        // An earlier watcher, as in a daemon that watched before its sockets filled the descriptor table.
        let earlier = try await WatchHarness(root: root)
        await earlier.stop()

        // Take every free descriptor number below 1,024 and beyond: select() aborts for one at or above 1,024.
        var opened: [Int32] = []
        defer {
            for fd in opened { close(fd) }
        }
        while opened.count < 1_200 {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { break }
            opened.append(fd)
        }
        try #require((opened.max() ?? 0) >= 1_024)

        let harness = try await WatchHarness(root: root)
        #expect(harness.watcher.mode == .inotify)
        try FileSystemEdit.deleteAndRecreateDirectory(root + "/sub", files: ["b.lua": rule("b", 2)])
        #expect(await harness.waitForSignals(2))
        await harness.settle()
        let count = harness.log.count

        try FileSystemEdit.nanoInPlace.save(rule("b", 3), to: "sub/b.lua", in: root)
        #expect(await harness.waitForSignals(count + 1))
        #expect(harness.watcher.mode == .inotify)
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 1), "sub/b.lua": rule("b", 3)]))
        await harness.stop()
    }
}

extension LiveWatcherTests {
    @Test("With nothing happening, a safety rescan is signalled every safetyRescanInterval")
    func safetyRescans() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1)], in: root)
        var settings = WatchSettings.testing
        settings.safetyRescanInterval = .seconds(1)
        let harness = try await WatchHarness(root: root, settings: settings)

        #expect(await harness.waitForSignals(3))
        let causes = harness.signals(after: 1).prefix(2).map(\.signal.cause)
        #expect(causes == [.safetyRescan, .safetyRescan])
        await harness.stop()
    }
}

extension LiveWatcherTests {
    @Test("An rsync of several files produces one signal, delivered with all of them")
    func rsyncOfSeveralFilesOneSignal() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(
            ["a.lua": rule("a", 1), "b.lua": rule("b", 1), "lib/c.lua": rule("c", 1)], in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        let update = ["a.lua": rule("a", 2), "b.lua": rule("b", 2), "lib/c.lua": rule("c", 2)]
        try FileSystemEdit.rsync(update, in: root)

        #expect(await harness.waitForSignals(2))
        await harness.settle()
        #expect(harness.signals(after: 1).count == 1)
        #expect(harness.lastDelivered == update)
        await harness.stop()
    }

    @Test("A checkout that removes and adds directories produces one signal, and the new directories are watched")
    func checkoutWithDirectoriesOneSignal() async throws {
        let dir = TemporaryDirectory()
        let root = dir.join("rules")
        try FileSystemEdit.writeFiles(["a.lua": rule("a", 1), "old/b.lua": rule("b", 1)], in: root)
        let harness = try await WatchHarness(root: root, settings: .counting)

        try FileSystemEdit.gitCheckout(
            ["a.lua": rule("a", 2), "old/b.lua": nil, "new/deep/c.lua": rule("c", 1)], in: root)

        #expect(await harness.waitForSignals(2))
        await harness.settle()
        #expect(harness.signals(after: 1).count == 1)
        #expect(harness.lastDelivered == ["a.lua": rule("a", 2), "new/deep/c.lua": rule("c", 1)])
        let count = harness.log.count

        try FileSystemEdit.vimRenameOnSave.save(rule("c", 2), to: "new/deep/c.lua", in: root)
        #expect(await harness.waitForSignals(count + 1))
        #expect(await harness.waitForDelivery(of: ["a.lua": rule("a", 2), "new/deep/c.lua": rule("c", 2)]))
        await harness.stop()
    }
}
