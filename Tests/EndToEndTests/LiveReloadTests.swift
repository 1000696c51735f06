import Foundation
import RuleModel
import RulesTestSupport
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

    func count(_ name: String) -> Int { all.filter { $0["event"]?.stringValue == name }.count }

    /// Waits until an event named `name` has arrived: the generation goes live a moment before its event is sent.
    func waitFor(_ name: String, timeout: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if count(name) > 0 { return true }
            usleep(10_000)
        }
        return false
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

    @Test("a 1,000-file git checkout produces exactly one reload")
    func gitCheckout() throws {
        var files: [String: String] = [:]
        for index in 0..<1000 { files["d\(index % 10)/f\(index).lua"] = "flag \"f\(index)\" { default = \"off\" }\n" }
        files["marker.lua"] = "config \"marker\" (\"a\")\n"
        let daemon = try DaemonHarness(rules: files)
        try daemon.start(arguments: ["--quiet-window", "300ms"])
        let events = try EventLog(daemon)
        var changes: [String: String?] = [:]
        for index in 0..<1000 { changes["d\(index % 10)/f\(index).lua"] = "flag \"f\(index)\" { default = \"on\" }\n" }
        changes["marker.lua"] = "config \"marker\" (\"b\")\n"
        try FileSystemEdit.gitCheckout(changes, in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("b"))
        usleep(1_500_000)
        #expect(events.count("reloaded") == 1, "\(events.all)")
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
        try daemon.start(arguments: ["--quiet-window", "300ms"])
        #expect(daemon.servedMarker() == "v1")
        let events = try EventLog(daemon)
        try FileSystemEdit.configMapSwap(volume: daemon.rulesDirectory, files: ["rules.lua": markedRules("v2")])
        #expect(daemon.waitForMarker("v2"))
        usleep(1_000_000)
        #expect(events.count("reloaded") == 1, "\(events.all)")
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
        try daemon.start()
        let events = try EventLog(daemon)
        let content = markedRules("v2", flags: 3)
        let third = content.count / 3
        let chunks = [
            String(content.prefix(third)), String(content.dropFirst(third).prefix(third)),
            String(content.dropFirst(2 * third)),
        ]
        try await FileSystemEdit.slowWrite(
            daemon.rulesDirectory + "/a.lua", chunks: chunks, interval: .milliseconds(1500))
        #expect(daemon.waitForMarker("v2"))
        // Whatever was seen meanwhile, no answer ever came from a half-written file.
        #expect(events.waitFor("reloaded"))
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
        try daemon.start()
        let events = try EventLog(daemon)
        try FileSystemEdit.nanoInPlace.save(
            "config \"marker\" (\"v2\")\nflag \"x\" {\n  rule = function(ctx)\n", to: "a.lua", in: daemon.rulesDirectory
        )
        usleep(1_500_000)
        #expect(daemon.servedMarker() == "v1")
        #expect(events.count("reload_failed") == 1)
        let failure = events.all.first { $0["event"] == "reload_failed" }
        #expect(failure?["error"]?["problems"]?[0]?["file"] == "a.lua")
        // The same bad content again: no second report.
        try FileSystemEdit.touch(daemon.rulesDirectory + "/a.lua")
        usleep(800_000)
        #expect(events.count("reload_failed") == 1)
        try FileSystemEdit.truncatedWrite(
            daemon.rulesDirectory + "/a.lua", content: markedRules("v3"), keepingBytes: 20)
        usleep(800_000)
        #expect(daemon.servedMarker() == "v1")
        try FileSystemEdit.vimRenameOnSave.save(markedRules("v4"), to: "a.lua", in: daemon.rulesDirectory)
        #expect(daemon.waitForMarker("v4"))
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["last_reload"]?["ok"] == true)
    }

    @Test("touch and chmod change nothing that is served: no reload")
    func noOpChanges() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start()
        let events = try EventLog(daemon)
        try FileSystemEdit.touch(daemon.rulesDirectory + "/a.lua")
        try FileSystemEdit.chmod(daemon.rulesDirectory + "/a.lua", 0o600)
        usleep(1_000_000)
        #expect(events.count("reloaded") == 0)
        #expect(try daemon.request(#"{"op":"ping"}"#)["generation"] == 1)
    }

    @Test("killed while the rules are broken, rulesd restarts on the last known good rules and says so")
    func lastKnownGood() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start()
        try FileSystemEdit.nanoInPlace.save("config \"marker\" (", to: "a.lua", in: daemon.rulesDirectory)
        usleep(800_000)
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

    @Test("with the inotify watch limit exhausted, rulesd polls, says so in status, and still converges")
    func watchLimit() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1"), "b/c/d.lua": "flag \"d\" {}\n"])
        // A user namespace with a watch limit of 1: the watcher cannot watch the tree.
        let script = "echo 1 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\""
        try daemon.start(
            arguments: ["--poll-interval", "200ms"],
            launcher: ["/usr/bin/unshare", "--user", "--map-root-user", "/bin/sh", "-c", script])
        // The watcher starts right after the socket: give it a moment to find out.
        var mode: JSONValue?
        for _ in 0..<200 {
            mode = try daemon.request(#"{"op":"status"}"#)["result"]?["watcher"]?["mode"]
            if mode == "polling" { break }
            usleep(20_000)
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
