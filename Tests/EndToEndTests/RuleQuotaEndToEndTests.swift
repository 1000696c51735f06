import Foundation
import RuleModel
import RulesTestSupport
import Testing

@Suite("Quotas against the real daemon")
struct RuleQuotaEndToEndTests {
    @Test("a reload over max_flags fails naming the quota and the count, and the last good rules keep serving")
    func overFlagQuota() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a", flags: 3)])
        try daemon.start(arguments: ["--watch", "off", "--max-flags", "3"])
        try daemon.writeRule("r.lua", agreeingRules("b", flags: 4))
        let failed = try daemon.request(#"{"op":"reload"}"#)
        #expect(failed["ok"] == false)
        #expect(failed["error"]?["code"] == "RELOAD_FAILED")
        #expect(
            failed["error"]?["problems"]?[0]?["message"]
                == "quota max_flags = 3 exceeded: the rule files declare 4 flags", "\(failed)")
        let still = try daemon.request(#"{"op":"flag","flag":"f0"}"#)
        #expect(still["result"]?["variant"] == "a")
        #expect(still["generation"] == 1)
    }

    @Test("a reload over max_files fails, and one back within it goes live")
    func overFileQuota() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a", flags: 1)])
        try daemon.start(arguments: ["--watch", "off", "--max-files", "2"])
        try daemon.writeRule("s.lua", #"flag "s" {}"#)
        try daemon.writeRule("words.txt", "a\n")
        let failed = try daemon.request(#"{"op":"reload"}"#)
        #expect(
            failed["error"]?["problems"]?[0]?["message"]
                == "quota max_files = 2 exceeded: the rule set has 3 files (rule and data files together)",
            "\(failed)")
        try daemon.removeRule("words.txt")
        let reloaded = try daemon.request(#"{"op":"reload"}"#)
        #expect(reloaded["result"]?["outcome"] == "reloaded", "\(reloaded)")
        #expect(try daemon.request(#"{"op":"flag","flag":"s"}"#)["ok"] == true)
    }
}
