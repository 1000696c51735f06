import Foundation
import RuleModel
import RulesTestSupport
import Testing

@Suite("Data files in a live daemon")
struct DataFileReloadTests {
    private let rule = """
        local beta = data "beta-users"
        flag "beta" { rule = function(ctx) return beta:has(ctx.user_id) and "on" or "off" end }
        """

    private func variant(_ daemon: DaemonHarness, user: String) -> String? {
        let line = #"{"op":"flag","flag":"beta","context":{"user_id":"\#(user)"}}"#
        return (try? daemon.request(line))?["result"]?["variant"]?.stringValue
    }

    @Test("editing a data file in place reloads the rules, and status reports the data set")
    func editInPlaceReloads() throws {
        let daemon = try DaemonHarness(rules: ["beta.lua": rule, "beta-users.txt": "# testers\nalice\n"])
        try daemon.start()
        #expect(variant(daemon, user: "bob") == "off")
        try FileSystemEdit.save(.nanoInPlace)("# testers\nalice\nbob\n", "beta-users.txt", daemon.rulesDirectory)
        #expect(eventually { variant(daemon, user: "bob") == "on" })
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        let set = status?["data"]?["beta-users"]
        #expect(set?["entries"] == 2)
        #expect(set?["file"] == "beta-users.txt")
        #expect((set?["bytes"]?.int64Value ?? 0) > 0)
        #expect(
            status?["files"]?.arrayValue?.compactMap { $0["path"]?.stringValue } == ["beta-users.txt", "beta.lua"])
    }

    @Test("a malformed data file fails the reload at its file:line and the serving answers stay")
    func malformedDataFileFailsTheReload() throws {
        let daemon = try DaemonHarness(rules: ["beta.lua": rule, "beta-users.txt": "alice\n"])
        try daemon.start()
        let events = try EventLog(daemon)
        try daemon.writeRule("beta-users.txt", "alice\nbob\ncarol\u{0}\n")
        #expect(events.waitFor("reload_failed"))
        let problems = events.named("reload_failed").first?["error"]?["problems"]?.arrayValue ?? []
        #expect(
            problems.contains { $0["file"] == "beta-users.txt" && $0["line"] == 3 },
            "\(events.named("reload_failed"))")
        #expect(variant(daemon, user: "alice") == "on")
        #expect(variant(daemon, user: "bob") == "off")
    }
}
