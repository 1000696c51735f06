import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("History and rollback against the real daemon")
struct HistoryRollbackTests {
    /// Starts a daemon on rules "a", reloads to "b" and waits until the history lists both.
    private func twoRevisions() throws -> (DaemonHarness, first: String, second: String) {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off"])
        try daemon.writeRule("r.lua", agreeingRules("b"))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        var revisions: [JSONValue] = []
        #expect(
            try eventually {
                revisions = try daemon.request(#"{"op":"history"}"#)["result"]?["revisions"]?.arrayValue ?? []
                return revisions.count == 2
            })
        let second = try #require(revisions.first?["revision"]?.stringValue)
        let first = try #require(revisions.last?["revision"]?.stringValue)
        return (daemon, first, second)
    }

    private func variant(_ daemon: DaemonHarness) throws -> String? {
        try daemon.request(#"{"op":"flag","flag":"f0"}"#)["result"]?["variant"]?.stringValue
    }

    @Test("history lists every rule set that went live, newest first, with what changed")
    func historyLists() throws {
        let (daemon, _, _) = try twoRevisions()
        let history = try daemon.request(#"{"op":"history"}"#)["result"]
        #expect(history?["revisions"]?[0]?["generation"] == 2)
        #expect(history?["revisions"]?[0]?["trigger"] == "reload")
        #expect(history?["revisions"]?[0]?["changed"]?[0] == "r.lua")
        #expect(history?["revisions"]?[0]?["serving"] == true)
        #expect(history?["revisions"]?[1]?["trigger"] == "startup")
        #expect(history?["revisions"]?[1]?["counts"]?["flags"] == 8)
    }

    @Test("show returns a stored revision's files, and one file's content")
    func show() throws {
        let (daemon, first, _) = try twoRevisions()
        let listing = try daemon.request(#"{"op":"show","revision":"\#(first.prefix(12))"}"#)["result"]
        #expect(listing?["files"]?[0]?["path"] == "r.lua")
        let file = try daemon.request(#"{"op":"show","revision":"\#(first)","path":"r.lua"}"#)["result"]
        #expect(file?["content"]?.stringValue == agreeingRules("a"))
        let missing = try daemon.request(#"{"op":"show","revision":"0000000000"}"#)
        #expect(missing["error"]?["code"] == "REVISION_NOT_FOUND")
    }

    @Test("rollback serves the stored revision at once and pins; a reload of the same directory keeps the pin")
    func rollbackPins() throws {
        let (daemon, first, second) = try twoRevisions()
        let answer = try daemon.request(#"{"op":"rollback","revision":"\#(first)"}"#)
        #expect(answer["result"]?["outcome"] == "rolled_back")
        #expect(answer["result"]?["revision"]?.stringValue == first)
        #expect(try variant(daemon) == "a")
        let message = "pinned to \(first.prefix(16)) by rollback; the rules directory holds \(second.prefix(16))"
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["pinned"]?["message"]?.stringValue == message)
        #expect(status?["origin"] == "history")
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "unchanged")
        #expect(try variant(daemon) == "a")
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["pinned"]?["message"]?.stringValue == message)
    }

    @Test("watch reports a rollback with its pin")
    func watchSeesPin() throws {
        let (daemon, first, _) = try twoRevisions()
        let watcher = try daemon.connect()
        _ = try watcher.request(#"{"op":"watch"}"#)
        _ = try daemon.request(#"{"op":"rollback","revision":"\#(first)"}"#)
        let event = try watcher.readJSON()
        #expect(event["event"] == "reloaded")
        #expect(event["trigger"] == "rollback")
        #expect(event["pinned"]?["message"]?.stringValue?.hasPrefix("pinned to \(first.prefix(16))") == true)
    }

    @Test("a change of the rules directory to a new revision leaves the pin and serves it")
    func newRevisionUnpins() throws {
        let (daemon, first, _) = try twoRevisions()
        _ = try daemon.request(#"{"op":"rollback","revision":"\#(first)"}"#)
        try daemon.writeRule("r.lua", agreeingRules("b", flags: 9))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        #expect(try variant(daemon) == "b")
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["pinned"] == .null)
    }

    @Test("with the watcher on, a save of the same content keeps the pin and an edit to a new revision leaves it")
    func watcherAndPin() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start()
        try daemon.writeRule("r.lua", agreeingRules("b"))
        #expect(try eventually { try variant(daemon) == "b" })
        var revisions: [JSONValue] = []
        #expect(
            try eventually {
                revisions = try daemon.request(#"{"op":"history"}"#)["result"]?["revisions"]?.arrayValue ?? []
                return revisions.count == 2
            })
        let first = try #require(revisions.last?["revision"]?.stringValue)
        _ = try daemon.request(#"{"op":"rollback","revision":"\#(first)"}"#)
        try daemon.writeRule("r.lua", agreeingRules("b"))
        #expect(
            try eventually {
                try daemon.request(#"{"op":"status"}"#)["result"]?["last_reload"]?["trigger"] == "watcher"
            })
        #expect(try variant(daemon) == "a")
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["pinned"]?["revision"]?.stringValue == first)
        try daemon.writeRule("r.lua", agreeingRules("b", flags: 9))
        #expect(try eventually { try variant(daemon) == "b" })
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["pinned"] == .null)
    }

    @Test("resume leaves the pin and serves the rules directory again")
    func resume() throws {
        let (daemon, first, second) = try twoRevisions()
        _ = try daemon.request(#"{"op":"rollback","revision":"\#(first)"}"#)
        let answer = try daemon.request(#"{"op":"resume"}"#)
        #expect(answer["result"]?["outcome"] == "reloaded")
        #expect(answer["result"]?["revision"]?.stringValue == second)
        #expect(answer["result"]?["pinned"] == .null)
        #expect(try variant(daemon) == "b")
    }

    @Test("a pinned daemon restarts pinned, and leaves the pin if the directory changed while it was down")
    func restartPinned() throws {
        let (daemon, first, _) = try twoRevisions()
        _ = try daemon.request(#"{"op":"rollback","revision":"\#(first)"}"#)
        #expect(eventually { FileManager.default.fileExists(atPath: daemon.stateDirectory + "/history/pin") })
        #expect(try daemon.stop() == 0)
        try daemon.start(arguments: ["--watch", "off"])
        #expect(try variant(daemon) == "a")
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["pinned"]?["revision"]?.stringValue == first)
        #expect(try daemon.stop() == 0)
        try daemon.writeRule("r.lua", agreeingRules("b", flags: 9))
        try daemon.start(arguments: ["--watch", "off"])
        #expect(try variant(daemon) == "b")
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["pinned"] == .null)
    }

    @Test("rollback and show refuse unknown revisions without changing what serves")
    func unknownRevision() throws {
        let (daemon, _, _) = try twoRevisions()
        let answer = try daemon.request(#"{"op":"rollback","revision":"ffffffffff"}"#)
        #expect(answer["error"]?["code"] == "REVISION_NOT_FOUND")
        #expect(try variant(daemon) == "b")
        let bad = try daemon.request(#"{"op":"rollback"}"#)
        #expect(bad["error"]?["code"] == "INVALID_REQUEST")
    }
}

@Suite("rulesctl history, show, diff, rollback and resume")
struct RulesCtlHistoryTests {
    @Test("the history commands print for people, --json for tools, and exit like diff")
    func commands() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a", flags: 2)])
        try daemon.start(arguments: ["--watch", "off"])
        try daemon.writeRule("r.lua", agreeingRules("b", flags: 2))
        _ = try daemon.request(#"{"op":"reload"}"#)
        let socket = ["--socket", daemon.socketPath]
        var listing = try runRulesctl(socket + ["history"])
        #expect(
            eventually {
                listing = (try? runRulesctl(socket + ["history"])) ?? listing
                return listing.stdout.split(separator: "\n").count == 3
            })
        #expect(listing.status == 0)
        #expect(listing.stdout.hasPrefix("GEN"))
        let json = try JSONParser().parse(Array(try runRulesctl(socket + ["history", "--json"]).stdout.utf8))
        let second = try #require(json["revisions"]?[0]?["revision"]?.stringValue)
        let first = try #require(json["revisions"]?[1]?["revision"]?.stringValue)

        let shown = try runRulesctl(socket + ["show", String(first.prefix(8)), "r.lua"])
        #expect(shown.stdout == agreeingRules("a", flags: 2))
        let diff = try runRulesctl(socket + ["diff", first, second])
        #expect(diff.status == 1)
        #expect(diff.stdout.contains("--- a/r.lua\n+++ b/r.lua\n@@ -1,"))
        #expect(diff.stdout.contains("\n-flag \"f0\""))
        #expect(diff.stdout.contains("\n+flag \"f0\""))
        #expect(try runRulesctl(socket + ["diff", first, first]).status == 0)

        let rollback = try runRulesctl(socket + ["rollback", String(first.prefix(8))])
        #expect(rollback.status == 0)
        #expect(rollback.stdout.contains("pinned to \(first.prefix(16)) by rollback"))
        #expect(try runRulesctl(socket + ["status"]).stdout.contains("pinned to \(first.prefix(16))"))
        let resume = try runRulesctl(socket + ["resume"])
        #expect(resume.status == 0)
        #expect(resume.stdout.contains(String(second.prefix(16))))
        #expect(try runRulesctl(socket + ["rollback", "0000000000"]).status == 1)
    }
}

@Suite("Line diffs of stored revisions")
struct TextDiffFormatTests {
    @Test("a one-line change gives one hunk with its context")
    func oneHunk() throws {
        let before = (1...10).map { "line \($0)" }
        var after = before
        after[4] = "changed"
        let result = try runRulesctlDiffLike(before, after)
        #expect(
            result.contains(
                "@@ -2,7 +2,7 @@\n -- line 2\n -- line 3\n -- line 4\n--- line 5\n+-- changed\n -- line 6\n"))
    }

    private func runRulesctlDiffLike(_ before: [String], _ after: [String]) throws -> String {
        // The diff is rulesctl's; it is reached through a daemon holding both revisions.
        let daemon = try DaemonHarness(rules: ["r.lua": before.map { "-- \($0)" }.joined(separator: "\n") + "\n"])
        try daemon.start(arguments: ["--watch", "off"])
        try daemon.writeRule("r.lua", after.map { "-- \($0)" }.joined(separator: "\n") + "\n")
        _ = try daemon.request(#"{"op":"reload"}"#)
        var revisions: [JSONValue] = []
        _ = try eventually {
            revisions = try daemon.request(#"{"op":"history"}"#)["result"]?["revisions"]?.arrayValue ?? []
            return revisions.count == 2
        }
        let new = try #require(revisions.first?["revision"]?.stringValue)
        let old = try #require(revisions.last?["revision"]?.stringValue)
        return try runRulesctl(["--socket", daemon.socketPath, "diff", old, new]).stdout
    }
}
