import Foundation
import RuleModel
import RulesTestSupport
import Testing

@Suite("Rule tests gate reloads of the real daemon")
struct RuleTestGateTests {
    @Test("a reload whose rule test fails is refused at the test's file:line, and the serving rules stay")
    func failingTestRefusesReload() throws {
        let daemon = try DaemonHarness(rules: [
            "r.lua": agreeingRules("a"),
            "r_test.lua": #"test "f0 answers a" { flag = "f0", expect = "a" }"# + "\n",
        ])
        try daemon.start(arguments: ["--watch", "off"])
        let watcher = try daemon.connect()
        #expect(try watcher.request(#"{"op":"watch","id":1}"#)["result"]?["watching"] == true)
        // The edit compiles and validates; only its test stands in the way.
        try daemon.writeRule("r.lua", agreeingRules("b"))
        let failed = try daemon.request(#"{"op":"reload"}"#)
        #expect(failed["error"]?["code"] == "RELOAD_FAILED")
        #expect(failed["error"]?["problems"]?[0]?["file"] == "r_test.lua")
        #expect(failed["error"]?["problems"]?[0]?["line"] == 1)
        #expect(
            failed["error"]?["problems"]?[0]?["message"]
                == #"test 'f0 answers a' failed: expected variant "a", got variant "b", value "b", reason TARGETING_MATCH"#
        )
        let event = try watcher.readJSON()
        #expect(event["event"] == "reload_failed")
        #expect(event["error"]?["problems"]?[0]?["file"] == "r_test.lua")
        let still = try daemon.request(#"{"op":"flag","flag":"f0"}"#)
        #expect(still["result"]?["variant"] == "a")
        #expect(still["generation"] == 1)
        // Tests are not flags: the daemon lists only the rule files' flags.
        let flags = try daemon.request(#"{"op":"flags"}"#)
        #expect(flags["result"]?["flags"]?.objectValue?.keys == (0..<8).map { "f\($0)" })
        // Fixing the test lets the edit through.
        try daemon.writeRule("r_test.lua", #"test "f0 answers b" { flag = "f0", expect = "b" }"# + "\n")
        let reloaded = try daemon.request(#"{"op":"reload"}"#)
        #expect(reloaded["result"]?["outcome"] == "reloaded")
        #expect(try daemon.request(#"{"op":"flag","flag":"f0"}"#)["result"]?["variant"] == "b")
    }
}
