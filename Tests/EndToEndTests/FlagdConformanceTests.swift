import Foundation
import RuleModel
import RulesTestSupport
import Testing

/// flagd's 40 conformance cases, asked as a user would: through `rulesctl eval` and through the daemon's socket,
/// each resolved the way an OpenFeature provider resolves the answer.
@Suite("flagd flag files end to end")
struct FlagdConformanceTests {
    @Test("every flagd conformance case answers as flagd does through rulesctl eval")
    func throughRulesctl() throws {
        let cases = try FlagdConformance.cases()
        #expect(cases.count == 40)
        for group in FlagdConformance.groups(cases) {
            let rules = try TemporaryRules(["flags.flagd.json": FlagdConformance.flagFile(group)])
            defer { rules.remove() }
            for item in group {
                let outcome = try RulesctlProcess.run([
                    "eval", "--rules", rules.path, "flag", item.flag, "--context", JSONWriter.string(item.context),
                    "--json",
                ])
                let json = try outcome.json()
                let got =
                    outcome.status == 0
                    ? FlagdConformance.resolve(item, answer: json, errorCode: nil)
                    : FlagdConformance.resolve(item, answer: nil, errorCode: json["code"]?.stringValue)
                let problem = FlagdConformance.mismatch(item, got, metadata: json["metadata"])
                #expect(problem == nil, "\(problem ?? "") \(outcome.standardOutput)\(outcome.standardError)")
            }
        }
    }

    @Test("every flagd conformance case answers as flagd does through the daemon")
    func throughDaemon() throws {
        let cases = try FlagdConformance.cases()
        for group in FlagdConformance.groups(cases) {
            let daemon = try DaemonHarness(rules: ["flags.flagd.json": FlagdConformance.flagFile(group)])
            try daemon.start()
            for item in group {
                let request: JSONValue = ["op": "flag", "flag": .string(item.flag), "context": item.context]
                let reply = try daemon.request(JSONWriter.string(request))
                let got = FlagdConformance.resolve(
                    item, answer: reply["result"], errorCode: reply["error"]?["code"]?.stringValue)
                let problem = FlagdConformance.mismatch(item, got, metadata: reply["result"]?["metadata"])
                #expect(problem == nil, "\(problem ?? "") \(JSONWriter.string(reply))")
            }
            #expect(try daemon.stop() == 0)
        }
    }

    @Test("a flag file dropped into the rules directory is served after the reload, and an edit changes it")
    func droppedFileIsServed() throws {
        let daemon = try DaemonHarness(rules: ["base.lua": #"flag "base" { default = "off" }"#])
        try daemon.start()
        func file(_ variant: String) -> String {
            """
            {
              "flags": {
                "new-banner": {
                  "state": "ENABLED",
                  "variants": { "blue": "#00f", "red": "#f00" },
                  "defaultVariant": "\(variant)"
                }
              }
            }
            """
        }
        func banner() throws -> JSONValue {
            try daemon.request(#"{"op":"flag","flag":"new-banner"}"#)
        }
        #expect(try banner()["error"]?["code"] == "FLAG_NOT_FOUND")
        try daemon.writeRule("banners/ui.flagd.json", file("blue"))
        #expect(try eventually { try banner()["result"]?["value"] == "#00f" })
        #expect(try banner()["result"]?["source"] == "banners/ui.flagd.json:3")
        try daemon.writeRule("banners/ui.flagd.json", file("red"))
        #expect(try eventually { try banner()["result"]?["value"] == "#f00" })
        try daemon.removeRule("banners/ui.flagd.json")
        #expect(try eventually { try banner()["error"]?["code"] == "FLAG_NOT_FOUND" })
        #expect(try daemon.stop() == 0)
    }

    @Test("rulesctl import flagd prints Lua that loads, and names the line of a broken file")
    func importCommand() throws {
        let file = FlagdConformance.fixtures + "/testbed-flags/flags/custom-ops.json"
        let imported = try RulesctlProcess.run(["import", "flagd", file])
        #expect(imported.status == 0, "\(imported.standardError)")
        let rules = try TemporaryRules(["custom-ops.lua": imported.standardOutput])
        defer { rules.remove() }
        let check = try RulesctlProcess.run(["check", rules.path])
        #expect(check.status == 0, "\(check.standardError)")
        #expect(check.standardOutput.contains("custom-ops.lua  19 flags"))

        let broken = try TemporaryRules(["bad.json": "{\n  \"flags\": {\n    \"x\": 1\n  }\n}\n"])
        defer { broken.remove() }
        let refused = try RulesctlProcess.run(["import", "flagd", broken.path + "/bad.json"])
        #expect(refused.status == 1)
        #expect(refused.standardError == broken.path + "/bad.json:3: flag 'x': a flag is a JSON object\n")
    }
}
