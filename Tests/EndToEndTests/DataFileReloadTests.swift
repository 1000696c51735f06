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

    @Test("rulesctl check lists each data set with its entries, in text and in JSON")
    func checkReportsDataSets() throws {
        let rules = try TemporaryRules(["beta.lua": rule, "beta-users.txt": "alice\nbob\n# not me\n"])
        defer { rules.remove() }
        let text = try RulesctlProcess.run(["check", rules.path])
        #expect(text.status == 0)
        #expect(text.standardOutput.contains(#"data "beta-users" (beta-users.txt): set of 2 entries, "#))
        let json = try RulesctlProcess.run(["check", "--format", "json", rules.path]).json()
        #expect(json["data"]?["beta-users"]?["entries"] == 2)
        #expect(json["data"]?["beta-users"]?["kind"] == "set")
    }

    @Test("rulesctl check names a malformed data file's file:line and exits 1")
    func checkNamesMalformedDataFile() throws {
        let rules = try TemporaryRules(["beta.lua": rule, "beta-users.json": "[\n\"alice\",\nfalse\n]"])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", rules.path])
        #expect(run.status == 1)
        #expect(run.standardError.contains("beta-users.json:3: a list entry is not a string"), "\(run.standardError)")
    }
}
