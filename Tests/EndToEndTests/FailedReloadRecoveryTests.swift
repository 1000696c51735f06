import Foundation
import RuleModel
import RulesTestSupport
import Testing

/// A bad edit undone by hand brings the rules directory back to the revision that serves: nothing needs
/// rebuilding, but watchers, `status` and the next identical bad edit must all learn that the failure is over.
@Suite("undoing a bad edit")
struct FailedReloadRecoveryTests {
    @Test("undoing a bad edit sends one reloaded event marked recovered; the same bad edit again is reported again")
    func undoThenRepeat() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start()
        let events = try EventLog(daemon)
        let serving = try #require(try daemon.servedRevision())
        let generation = try daemon.request(#"{"op":"status"}"#)["result"]?["generation"]?.int64Value
        let broken = "config \"marker\" (\"v2\")\nflag \"x\" {\n"

        try FileSystemEdit.vimRenameOnSave.save(broken, to: "a.lua", in: daemon.rulesDirectory)
        #expect(events.waitFor("reload_failed"))
        try FileSystemEdit.vimRenameOnSave.save(markedRules("v1"), to: "a.lua", in: daemon.rulesDirectory)
        #expect(events.waitFor("reloaded"))
        let recovered = try #require(events.named("reloaded").first)
        #expect(recovered["recovered"] == .bool(true), "\(recovered)")
        #expect(recovered["revision"]?.stringValue == serving)
        #expect(recovered["previous_revision"]?.stringValue == serving)
        #expect(recovered["generation"]?.int64Value == generation, "nothing was rebuilt")
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["last_reload"]?["ok"] == .bool(true), "\(String(describing: status))")
        #expect((status?["last_reload"]?["error"] ?? .null) == .null, "\(String(describing: status))")

        // The same bad content once more: a new failure, reported again rather than taken for the old one.
        try FileSystemEdit.vimRenameOnSave.save(broken, to: "a.lua", in: daemon.rulesDirectory)
        #expect(events.waitFor("reload_failed", count: 2), "\(events.all)")
        #expect(daemon.servedMarker() == "v1")
        #expect(events.count("reloaded") == 1, "\(events.all)")
    }
}
