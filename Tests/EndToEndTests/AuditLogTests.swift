import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The audit log of the real daemon, as `rulesctl audit` reads it (docs/OPERATIONS.md, "Audit log").
@Suite("Audit log of the daemon")
struct AuditLogEndToEndTests {
    func events(_ daemon: DaemonHarness) -> [JSONValue] {
        guard let text = try? String(contentsOfFile: daemon.stateDirectory + "/audit/audit.jsonl", encoding: .utf8)
        else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONParser().parse(Array($0.utf8)) }
    }

    @Test("a failed reload is recorded with its problems, a rollback with its revisions; an unchanged one is not")
    func reloadsAreRecorded() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let first = try #require(try daemon.servedRevision())
        #expect(try runRulesctl(["--socket", daemon.socketPath, "reload"]).status == 0)  // unchanged
        try daemon.writeRule("a.lua", "flag \"x\" {\n")
        #expect(try runRulesctl(["--socket", daemon.socketPath, "reload"]).status == 1)
        #expect(
            eventually {
                events(daemon).contains { $0["event"] == "reload" && $0["outcome"] == "failed" }
                    && events(daemon).count { $0["event"] == "operation" } == 2
            })
        let failed = try #require(events(daemon).first { $0["event"] == "reload" })
        #expect(failed["trigger"] == "reload")
        #expect(failed["old_revision"]?.stringValue == first)
        #expect(failed["generation"] == .null)
        #expect(failed["changes"]?[0]?["path"] == "a.lua")
        #expect(failed["changes"]?[0]?["change"] == "changed")
        #expect(failed["problems"]?[0]?.stringValue?.hasPrefix("a.lua:") == true, "\(failed)")
        let operations = events(daemon).filter { $0["event"] == "operation" }
        #expect(operations.map { $0["outcome"] } == ["ok", "RELOAD_FAILED"])
        #expect(operations.first?["detail"]?.stringValue?.hasPrefix("unchanged at ") == true)

        try daemon.writeRule("a.lua", "flag \"x\" {}\nflag \"y\" {}\n")
        #expect(try runRulesctl(["--socket", daemon.socketPath, "reload"]).status == 0)
        #expect(try runRulesctl(["--socket", daemon.socketPath, "rollback", String(first.prefix(12))]).status == 0)
        #expect(eventually { events(daemon).contains { $0["outcome"] == "rolled_back" } })
        let rollback = try #require(events(daemon).first { $0["outcome"] == "rolled_back" })
        #expect(rollback["trigger"] == "rollback")
        #expect(rollback["new_revision"]?.stringValue == first)
        #expect(rollback["changes"]?[0]?["uid"] == .null)  // from the history, not the rules directory
    }

    @Test("rulesctl audit prints one line per event, filters by kind and time, and --json prints them as stored")
    func rulesctlAudit() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        try daemon.writeRule("b.lua", "flag \"y\" {}\n")
        #expect(try runRulesctl(["--socket", daemon.socketPath, "reload"]).status == 0)
        #expect(eventually { events(daemon).count == 2 })
        let state = ["--state-dir", daemon.stateDirectory]

        let text = try runRulesctl(["audit"] + state)
        #expect(text.status == 0, "\(text)")
        let lines = text.stdout.split(separator: "\n")
        #expect(lines.count == 2, "\(text)")
        #expect(lines.first?.contains("  reload  reloaded  -  reload: ") == true, "\(text)")
        #expect(lines.last?.contains("  operation  ok  uid=0(root) pid=") == true, "\(text)")
        let json = try runRulesctl(["audit", "--json", "--event", "operation"] + state)
        #expect(
            json.stdout.split(separator: "\n").map(String.init) == [
                try #require(
                    String(contentsOfFile: daemon.stateDirectory + "/audit/audit.jsonl", encoding: .utf8)
                        .split(separator: "\n").last.map(String.init))
            ])
        let later = try runRulesctl(["audit", "--since", "2999-01-01T00:00:00Z"] + state)
        #expect(later.status == 0 && later.stdout.isEmpty, "\(later)")
        #expect(try runRulesctl(["audit", "--since", "1h"] + state).stdout.split(separator: "\n").count == 2)
        // RULESD_STATE_DIR names the state directory too.
        let fromEnvironment = try runRulesctl(["audit"], environment: ["RULESD_STATE_DIR": daemon.stateDirectory])
        #expect(fromEnvironment.stdout == text.stdout)
        #expect(try runRulesctl(["audit", "--since", "yesterday"] + state).status == 2)
    }

    @Test("an unknown user or group in a role setting stops the start, naming it")
    func unknownPrincipalStopsTheStart() throws {
        let daemon = try DaemonHarness(rules: [:])
        try daemon.start(arguments: ["--role-operate", "user:no-such-user-here"], waitForSocket: false)
        #expect(try daemon.waitForExit() == 1)
        #expect(daemon.logs.contains("role_operate: no user named 'no-such-user-here'"), "\(daemon.logs)")
    }
}
