import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Daemon logs")
struct DaemonLogTests {
    @Test("text a rule logs is escaped and length-limited: it cannot start a line or forge a field")
    func ruleTextCannotForgeLines() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": """
            flag "chatty" {
              rule = function(ctx)
                log("warn", "evil\\n2026-01-01T00:00:00.000Z error forged rules.revision=0000 " .. string.rep("x", 5000))
                return "on"
              end,
            }
            """
        ])
        try daemon.start()
        #expect(try daemon.request(#"{"op":"flag","flag":"chatty"}"#)["result"]?["variant"] == "on")
        usleep(200_000)
        let lines = daemon.logs.split(separator: "\n")
        let ruleLines = lines.filter { $0.contains("evil") }
        #expect(ruleLines.count == 1)
        #expect(ruleLines.first?.contains("evil\\n2026") == true)
        #expect(!lines.contains { $0.hasPrefix("2026-01-01T00:00:00.000Z") })
        #expect((ruleLines.first?.count ?? 0) < 1500)
    }

    @Test("JSON log lines are one JSON object each")
    func jsonFormat() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--log-format", "json"])
        try daemon.stop()
        let lines = daemon.logs.split(separator: "\n")
        #expect(!lines.isEmpty)
        for line in lines {
            let value = try JSONParser().parse(String(line))
            #expect(value["level"]?.stringValue != nil)
            #expect(value["msg"]?.stringValue != nil)
        }
        #expect(lines.contains { $0.contains(#""msg":"rules loaded""#) })
    }

    @Test("under journald each line starts with its syslog priority and no timestamp")
    func journalPriorities() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        // JOURNAL_STREAM names the device and inode of stderr when it is connected to the journal; pointing
        // it at the harness's log file makes rulesd believe exactly that.
        var st = stat()
        stat(daemon.directory + "/rulesd.log", &st)
        try daemon.start(environment: ["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino)"])
        try daemon.stop()
        let lines = daemon.logs.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("<6>info rules loaded") })
        #expect(lines.allSatisfy { $0.hasPrefix("<") })
    }
}
