import Foundation
import RuleModel
import RulesTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A rule file whose `marker` config value says which version of it is being served.
func markedRules(_ marker: String, flags: Int = 2) -> String {
    var text = "config \"marker\" (\"\(marker)\")\n"
    for index in 0..<flags { text += "flag \"f\(index)\" { default = \"on\" }\n" }
    return text
}

extension DaemonHarness {
    /// The `marker` config value the daemon serves now.
    func servedMarker() -> String? {
        (try? request(#"{"op":"config","key":"marker"}"#))?["result"]?["value"]?.stringValue
    }

    /// Waits until the watcher is armed: its first signal, sent once the watches are in place, has been turned
    /// into a rescan (`status` then shows a last reload triggered by the watcher). Before that, a file being
    /// written cannot be known to be open: the watches were not there when it was opened.
    func waitUntilWatching(timeout: Double = 20) -> Bool {
        eventually(timeout: timeout) {
            (try? self.request(#"{"op":"status"}"#))?["result"]?["last_reload"]?["trigger"] == .string("watcher")
        }
    }

    /// Waits until the daemon serves `marker`; returns whether it did within `timeout` seconds.
    func waitForMarker(_ marker: String, timeout: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if servedMarker() == marker { return true }
            usleep(20_000)
        }
        return false
    }
}

/// Collects `watch` events in the background.
final class EventLog: @unchecked Sendable {
    // @unchecked: `events` is only touched under `lock`.
    private let lock = NSLock()
    private var events: [JSONValue] = []
    private let client: LineClient

    init(_ daemon: DaemonHarness) throws {
        client = try daemon.connect()
        _ = try client.request(#"{"op":"watch"}"#)
        let thread = Thread { [self] in
            while let event = try? client.readJSON() {
                lock.lock()
                events.append(event)
                lock.unlock()
            }
        }
        thread.start()
    }

    var all: [JSONValue] {
        lock.lock()
        defer { lock.unlock() }
        return events
    }

    func count(_ name: String) -> Int { named(name).count }

    /// The events called `name`, in the order they came.
    func named(_ name: String) -> [JSONValue] { all.filter { $0["event"]?.stringValue == name } }

    /// Waits until at least `count` events called `name` came.
    func waitFor(_ name: String, count: Int = 1, timeout: Double = 30) -> Bool {
        eventually(timeout: timeout) { self.count(name) >= count }
    }

    /// The revisions of the `reloaded` events, in order: each one is a distinct rule set that went live (a
    /// `recovered` event, sent when an undone bad edit leaves the serving rules as they were, is not one).
    var reloadedRevisions: [String] {
        named("reloaded").filter { $0["recovered"] != .bool(true) }.compactMap { $0["revision"]?.stringValue }
    }
}

extension DaemonHarness {
    /// Makes one more change (the `marker` config becomes `marker`) and waits until its `reloaded` event came;
    /// returns the revision it served.
    ///
    /// Reloads run one after another and a watcher batch still open merges into the next one, so once the
    /// sentinel's event is in, every reload an earlier edit caused has been reported before it: counting the
    /// events before the sentinel's needs no fixed sleep.
    func sentinelReload(_ marker: String, events: EventLog, path: String = "zz-sentinel.lua") throws -> String? {
        try writeRule(path, "config \"sentinel\" (\"\(marker)\")\n")
        guard
            eventually(
                timeout: 30,
                {
                    (try? request(#"{"op":"config","key":"sentinel"}"#))?["result"]?["value"]?.stringValue == marker
                })
        else { return nil }
        let revision = try servedRevision()
        guard eventually(timeout: 30, { events.reloadedRevisions.contains { $0 == revision } }) else { return nil }
        return revision
    }
}

/// Asks for the served marker over and over on a thread of its own, until stopped.
final class MarkerSampler: Sendable {
    private let answers = Mutex<[String]>([])
    private let running = Atomic<Bool>(true)
    private let finished = Atomic<Bool>(false)

    init(_ daemon: DaemonHarness) {
        let thread = Thread { [self] in
            while running.load(ordering: .acquiring) {
                let answer = daemon.servedMarker() ?? "no answer"
                answers.withLock { $0.append(answer) }
                usleep(50_000)
            }
            finished.store(true, ordering: .releasing)
        }
        thread.start()
    }

    /// Stops asking and returns every answer, in order.
    func stop() -> [String] {
        running.store(false, ordering: .releasing)
        _ = eventually { self.finished.load(ordering: .acquiring) }
        return answers.withLock { $0 }
    }
}

@Suite("Live reload: every way a rule file changes ends with the daemon serving what is on disk")
struct LiveReloadTests {
    @Test("each editor's way of saving a file is picked up", arguments: FileSystemEdit.allCases)
    func editorSave(_ edit: FileSystemEdit) throws {
        let daemon = try DaemonHarness(rules: ["team/a.lua": markedRules("v1")])
        try daemon.start()
        try edit.save(markedRules("v2"), to: "team/a.lua", in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v2"), "\(edit): still serving \(daemon.servedMarker() ?? "nothing")")
    }

    @Test("a 1,000-file git checkout produces exactly one reload, of the whole checkout")
    func gitCheckout() throws {
        var files: [String: String] = [:]
        for index in 0..<1000 { files["d\(index % 10)/f\(index).lua"] = "flag \"f\(index)\" { default = \"off\" }\n" }
        files["marker.lua"] = "config \"marker\" (\"a\")\n"
        let daemon = try DaemonHarness(rules: files)
        // No maximum delay a slowed-down checkout could reach: it would split the checkout by design.
        try daemon.start(arguments: ["--max-delay", "60s"])
        #expect(daemon.waitUntilWatching())
        let events = try EventLog(daemon)
        var changes: [String: String?] = [:]
        for index in 0..<1000 { changes["d\(index % 10)/f\(index).lua"] = "flag \"f\(index)\" { default = \"on\" }\n" }
        changes["marker.lua"] = "config \"marker\" (\"b\")\n"
        try FileSystemEdit.gitCheckout(changes, in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("b"))
        let checkout = try daemon.servedRevision()
        let sentinel = try daemon.sentinelReload("after-checkout", events: events)
        #expect(sentinel != nil)
        #expect(events.reloadedRevisions == [checkout, sentinel].compactMap { $0 }, "\(events.all)")
        #expect(events.count("reload_failed") == 0)
        #expect(try daemon.request(#"{"op":"flag","flag":"f999"}"#)["result"]?["variant"] == "on")
    }

    @Test("tar x over the tree, and rsync of several files, are picked up")
    func treeCopies() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1"), "b.lua": "flag \"b\" {}\n"])
        try daemon.start()
        try FileSystemEdit.tarExtract(
            ["a.lua": markedRules("v2"), "b.lua": "flag \"b\" { enabled = false }\n"], in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v2"))
        try FileSystemEdit.rsync(["a.lua": markedRules("v3"), "c/d.lua": "flag \"d\" {}\n"], in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v3"))
        #expect(try daemon.request(#"{"op":"flag","flag":"d"}"#)["ok"] == true)
    }

    @Test("a Kubernetes ConfigMap ..data swap produces exactly one reload")
    func configMapSwap() throws {
        let daemon = try DaemonHarness()
        try FileSystemEdit.removeTree(daemon.rulesDirectory)
        _ = try FileSystemEdit.makeConfigMapVolume(at: daemon.rulesDirectory, files: ["rules.lua": markedRules("v1")])
        try daemon.start(arguments: ["--max-delay", "60s"])
        #expect(daemon.waitUntilWatching())
        #expect(daemon.servedMarker() == "v1")
        let events = try EventLog(daemon)
        try FileSystemEdit.configMapSwap(volume: daemon.rulesDirectory, files: ["rules.lua": markedRules("v2")])
        #expect(daemon.waitForMarker("v2"))
        let swapped = try daemon.servedRevision()
        let sentinel = try daemon.sentinelReload("after-swap", events: events)
        #expect(sentinel != nil)
        #expect(events.reloadedRevisions == [swapped, sentinel].compactMap { $0 }, "\(events.all)")
        #expect(events.count("reload_failed") == 0)
    }

    @Test("a directory deleted and recreated, and the root replaced by rename, are picked up")
    func directoriesReplaced() throws {
        let daemon = try DaemonHarness(rules: ["team/a.lua": markedRules("v1")])
        try daemon.start()
        try FileSystemEdit.deleteAndRecreateDirectory(
            daemon.rulesDirectory + "/team", files: ["a.lua": markedRules("v2")])
        #expect(daemon.waitForMarker("v2"))
        try FileSystemEdit.replaceRootByRename(daemon.rulesDirectory, files: ["team/a.lua": markedRules("v3")])
        #expect(daemon.waitForMarker("v3"))
        try FileSystemEdit.save(.nanoInPlace)(markedRules("v4"), "team/a.lua", daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v4"), "edits after the root was replaced are still seen")
    }

    @Test("a symlinked root re-pointed to another directory is picked up")
    func symlinkedRoot() throws {
        let daemon = try DaemonHarness()
        let first = daemon.directory + "/rules.v1"
        let second = daemon.directory + "/rules.v2"
        try FileSystemEdit.writeFiles(["a.lua": markedRules("v1")], in: first)
        try FileSystemEdit.writeFiles(["a.lua": markedRules("v2")], in: second)
        let link = daemon.directory + "/current"
        symlink(first, link)
        try daemon.start(arguments: ["--rules", link])
        #expect(daemon.servedMarker() == "v1")
        try FileSystemEdit.repointSymlink(link, to: second)
        #expect(daemon.waitForMarker("v2"))
    }

    @Test("a slow writer's file goes live only once complete; partial states never replace good rules")
    func slowWriter() async throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        // The writer keeps the file open longer than the quiet window; only the maximum delay (out of reach
        // here) would load it before it is closed.
        try daemon.start(arguments: ["--max-delay", "60s"])
        #expect(daemon.waitUntilWatching())
        let events = try EventLog(daemon)
        let content = markedRules("v2", flags: 3)
        let third = content.count / 3
        let chunks = [
            String(content.prefix(third)), String(content.dropFirst(third).prefix(third)),
            String(content.dropFirst(2 * third)),
        ]
        // A client keeps asking while the file is written: every answer comes from the old rules or the
        // complete new ones, never from a missing marker or a failed request.
        let asker = MarkerSampler(daemon)
        try await FileSystemEdit.slowWrite(
            daemon.rulesDirectory + "/a.lua", chunks: chunks, interval: .milliseconds(1500))
        #expect(daemon.waitForMarker("v2"))
        let seen = asker.stop()
        #expect(seen.contains("v1"), "the client never asked while the file was being written")
        #expect(seen.allSatisfy { $0 == "v1" || $0 == "v2" }, "\(seen)")
        #expect(seen.drop { $0 == "v1" }.allSatisfy { $0 == "v2" }, "\(seen)")
        // Exactly one reload, of the complete file, and no half-written state was even tried.
        #expect(eventually { events.count("reloaded") >= 1 })
        #expect(events.count("reload_failed") == 0, "\(events.all)")
        #expect(events.reloadedRevisions == [try daemon.servedRevision()].compactMap { $0 }, "\(events.all)")
        #expect(try daemon.request(#"{"op":"flag","flag":"f2"}"#)["ok"] == true)
    }

    @Test("an event flood that overflows the inotify queue still converges")
    func eventFlood() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start()
        let queue =
            Int(
                (try? String(contentsOfFile: "/proc/sys/fs/inotify/max_queued_events", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "16384") ?? 16384
        let junk = daemon.rulesDirectory + "/flood.lua"
        for index in 0..<(queue + 1000) {
            try FileSystemEdit.nanoInPlace.save("-- \(index)\n", to: "flood.lua", in: daemon.rulesDirectory)
        }
        unlink(junk)
        try FileSystemEdit.nanoInPlace.save(markedRules("v2"), to: "a.lua", in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v2", timeout: 60))
    }

    @Test("broken and truncated saves keep the old rules serving, report file:line once, and a fix goes live")
    func brokenThenFixed() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--log-level", "debug"])
        let events = try EventLog(daemon)
        try FileSystemEdit.nanoInPlace.save(
            "config \"marker\" (\"v2\")\nflag \"x\" {\n  rule = function(ctx)\n", to: "a.lua", in: daemon.rulesDirectory
        )
        #expect(events.waitFor("reload_failed"))
        #expect(daemon.servedMarker() == "v1")
        let failure = events.all.first { $0["event"] == "reload_failed" }
        #expect(failure?["error"]?["problems"]?[0]?["file"] == "a.lua")
        // The same bad content again: no second report. The debug line says the watcher signalled; the
        // `reload` answered after it was processed in turn (reloads run one at a time).
        let signals = daemon.logLines(containing: "rules directory may have changed")
        try FileSystemEdit.touch(daemon.rulesDirectory + "/a.lua")
        #expect(daemon.waitForLog("rules directory may have changed", count: signals + 1))
        #expect(try daemon.request(#"{"op":"reload"}"#)["error"]?["code"] == "RELOAD_FAILED")
        #expect(events.count("reload_failed") == 1, "\(events.all)")
        // Cut short: different bad content, reported, and the old rules still serve.
        try FileSystemEdit.truncatedWrite(
            daemon.rulesDirectory + "/a.lua", content: markedRules("v3"), keepingBytes: 20)
        #expect(events.waitFor("reload_failed", count: 2))
        #expect(daemon.servedMarker() == "v1")
        try FileSystemEdit.vimRenameOnSave.save(markedRules("v4"), to: "a.lua", in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v4"))
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["last_reload"]?["ok"] == true)
        #expect(events.count("reload_failed") == 2, "\(events.all)")
    }

    @Test("touch and chmod change nothing that is served: no reload")
    func noOpChanges() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--log-level", "debug"])
        let events = try EventLog(daemon)
        let signals = daemon.logLines(containing: "rules directory may have changed")
        try FileSystemEdit.touch(daemon.rulesDirectory + "/a.lua")
        try FileSystemEdit.chmod(daemon.rulesDirectory + "/a.lua", 0o600)
        #expect(daemon.waitForLog("rules directory may have changed", count: signals + 1))
        // The next real change is the first reload: generation 2, and no event came before its own.
        let sentinel = try daemon.sentinelReload("after-touch", events: events)
        #expect(events.reloadedRevisions == [sentinel].compactMap { $0 }, "\(events.all)")
        #expect(events.named("reloaded").first?["generation"] == 2)
    }

    @Test("killed while the rules are broken, rulesd restarts on the last known good rules and says so")
    func lastKnownGood() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start()
        let events = try EventLog(daemon)
        try FileSystemEdit.nanoInPlace.save("config \"marker\" (", to: "a.lua", in: daemon.rulesDirectory)
        #expect(events.waitFor("reload_failed"))
        daemon.signal(SIGKILL)
        _ = try? daemon.waitForExit()
        try daemon.start()
        #expect(daemon.servedMarker() == "v1")
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["origin"] == "last_known_good")
        #expect(status?["last_reload"]?["ok"] == false)
        #expect(daemon.logs.contains("serving the last known good rules"))
        try FileSystemEdit.sedInPlace.save(markedRules("v2"), to: "a.lua", in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v2"))
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["origin"] == "rules_directory")
    }

    @Test(
        "with the inotify watch limit exhausted, rulesd polls, says so in status, and still converges",
        .enabled(if: UserNamespace.isUsable, Comment(rawValue: UserNamespace.skipReason ?? "")))
    func watchLimit() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1"), "b/c/d.lua": "flag \"d\" {}\n"])
        // A user namespace with a watch limit of 1: the watcher cannot watch the tree.
        let script = "echo 1 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\""
        try daemon.start(
            arguments: ["--poll-interval", "200ms"],
            launcher: [UserNamespace.unshare, "--user", "--map-root-user", "/bin/sh", "-c", script])
        // The watcher starts right after the socket: give it a moment to find out.
        var mode: JSONValue?
        _ = try eventually {
            mode = try daemon.request(#"{"op":"status"}"#)["result"]?["watcher"]?["mode"]
            return mode == "polling"
        }
        #expect(mode == "polling", "\(daemon.logs)")
        try FileSystemEdit.nanoInPlace.save(markedRules("v2"), to: "a.lua", in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v2"))
    }
}

extension FileSystemEdit {
    /// `save` as a function value, for tests that pick the style at run time.
    static func save(_ edit: FileSystemEdit) -> (String, String, String) throws -> Void {
        { content, path, root in try edit.save(content, to: path, in: root) }
    }
}
