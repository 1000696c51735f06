import Foundation
import RuleModel
import RulesTestSupport
import Testing

@Suite("explain against the real daemon")
struct ExplainEndToEndTests {
    let daemon: DaemonHarness
    let examples: String

    init() throws {
        daemon = try DaemonHarness()
        examples =
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("config/rules.d").path
        try daemon.start(arguments: ["--rules", examples, "--watch", "off"])
    }

    @Test("the explain operation answers like flag, plus a trace with the split's bucket and the deciding line")
    func protocolAnswer() throws {
        let context = #"{"user_id":"u-42"}"#
        let plain = try daemon.request(#"{"op":"flag","flag":"checkout.new-flow","context":\#(context)}"#)
        let explained = try daemon.request(#"{"op":"explain","flag":"checkout.new-flow","context":\#(context)}"#)
        #expect(explained["ok"] == true)
        #expect(explained["generation"] == plain["generation"])
        let result = try #require(explained["result"]?.objectValue)
        for key in ["key", "value", "variant", "reason", "source"] {
            #expect(result[key] == plain["result"]?[key], "\(key)")
        }
        let steps = try #require(result["trace"]?["steps"]?.arrayValue)
        let prerequisite = try #require(steps.first { $0["flag"] != nil })
        #expect(prerequisite["flag"] == "checkout.kill-switch")
        #expect(prerequisite["reason"] == "STATIC")
        let split = try #require(steps.first { $0["call"] == "split" })
        #expect(split["at"] == "flags/checkout.lua:20")
        #expect(split["args"]?[0] == "u-42")
        #expect(split["result"] == result["variant"])
        #expect(split["total"] == 100)
        #expect(steps.last { $0["line"] != nil }?["line"] == "flags/checkout.lua:20")
        let fields = try #require(result["trace"]?["fields"]?.arrayValue)
        #expect(fields.contains { $0["path"] == "user_id" && $0["present"] == true })
    }

    @Test("rulesctl explain flag prints the answer, then the trace with the bucket and the deciding line")
    func rulesctlFlag() throws {
        let arguments = ["explain", "flag", "checkout.new-flow", "-c", "user_id=u-42"]
        let online = try runRulesctl(arguments, environment: ["RULESD_SOCKET": daemon.socketPath])
        #expect(online.status == 0, "\(online.stderr)")
        let lines = online.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "key:     checkout.new-flow")
        #expect(lines.contains("trace:"))
        let split = try #require(lines.first { $0.contains("split(") })
        #expect(split.hasPrefix("  flags/checkout.lua:20  split(user_id=\"u-42\", "))
        #expect(split.contains(" bucket "))
        #expect(lines.contains { $0.hasPrefix("  user_id") && $0.contains("\"u-42\"") })

        let offline = try runRulesctl(["explain", "--rules", examples] + arguments.dropFirst())
        #expect(offline.stdout == online.stdout)
        let json = try runRulesctl(arguments + ["--json"], environment: ["RULESD_SOCKET": daemon.socketPath])
        let offlineJSON = try runRulesctl(["explain", "--rules", examples] + arguments.dropFirst() + ["--json"])
        #expect(json.stdout == offlineJSON.stdout)
        let value = try JSONParser().parse(json.stdout.trimmingCharacters(in: .newlines))
        #expect(value["trace"]?["truncated"] == false)
    }

    @Test("rulesctl explain route lists the routes tried up to the winner, and an absent field says ABSENT")
    func rulesctlRoute() throws {
        let result = try runRulesctl(
            ["explain", "route", "-c", "method=GET", "-c", "path=/admin/users"],
            environment: ["RULESD_SOCKET": daemon.socketPath])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "route:  admin-denied")
        let tried = lines.filter { $0.contains(" route \"") }
        #expect(tried.count == 3)
        #expect(tried[0].hasSuffix(#"route "health": no match"#))
        #expect(tried[1].hasSuffix(#"route "admin": no match"#))
        #expect(tried[2].hasSuffix(#"route "admin-denied": matched"#))
        #expect(lines.contains { $0.hasPrefix("  client_ip") && $0.contains("ABSENT") })
    }

    @Test("explain refuses what flag refuses: an unknown flag is FLAG_NOT_FOUND")
    func unknownFlag() throws {
        let answer = try daemon.request(#"{"op":"explain","flag":"no-such-flag"}"#)
        #expect(answer["ok"] == false)
        #expect(answer["error"]?["code"] == "FLAG_NOT_FOUND")
    }

    @Test("a request no route matches is still explained: the routes tried, then NO_ROUTE and exit status 1")
    func noRoute() throws {
        let other = try DaemonHarness(rules: [
            "routes.lua": """
            route "api" {
                match = function(req) return req.path == "/api" end,
                target = "api",
            }
            """
        ])
        try other.start(arguments: ["--watch", "off"])
        let answer = try other.request(#"{"op":"explain","request":{"path":"/x"}}"#)
        #expect(answer["ok"] == true)
        #expect(answer["result"]?["route"] == .null)
        #expect(answer["result"]?["error"]?["code"] == "NO_ROUTE")
        #expect(answer["result"]?["trace"]?["steps"]?[0]?["route"] == "api")
        #expect(answer["result"]?["trace"]?["steps"]?[0]?["matched"] == false)
        let result = try runRulesctl(
            ["explain", "route", "-c", "path=/x"], environment: ["RULESD_SOCKET": other.socketPath])
        #expect(result.status == 1)
        #expect(result.stdout.contains(#"routes.lua:1  route "api": no match"#))
        #expect(result.stderr.contains("rulesctl: NO_ROUTE: no route matches the request"))
    }
}
