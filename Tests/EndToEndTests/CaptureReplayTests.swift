import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Capture and replay diff against the real daemon")
struct CaptureReplayTests {
    static let examples =
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("config/rules.d").path

    /// Sends `lines` on one connection in batches, reading every answer.
    private func send(_ lines: [String], to daemon: DaemonHarness) throws {
        let client = try daemon.connect()
        for start in stride(from: 0, to: lines.count, by: 100) {
            let batch = lines[start..<min(start + 100, lines.count)]
            try client.send(batch.joined(separator: "\n") + "\n")
            for _ in batch {
                let answer = try client.readJSON()
                #expect(answer["ok"] == true)
            }
        }
    }

    /// A copy of the example rules with checkout.new-flow's rollout at `percent`.
    private func exampleCopy(rollout percent: Int, in directory: String) throws -> String {
        let copy = directory + "/edited"
        try FileManager.default.copyItem(atPath: Self.examples, toPath: copy)
        let path = copy + "/flags/checkout.lua"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let edited = text.replacingOccurrences(
            of: #"{ { "on", 20 }, { "off", 80 } }"#, with: #"{ { "on", \#(percent) }, { "off", \#(100 - percent) } }"#)
        try #require(edited != text)
        try edited.write(toFile: path, atomically: true, encoding: .utf8)
        return copy
    }

    @Test("with capture on, diff --live on a copy whose rollout goes from 20% to 50% reports about 30% changed")
    func liveDiffReportsRolloutShare() throws {
        let daemon = try DaemonHarness()
        try daemon.start(arguments: ["--rules", Self.examples, "--watch", "off", "--capture", "on"])
        let users = 1000
        try send(
            (0..<users).map { #"{"op":"flag","flag":"checkout.new-flow","context":{"user_id":"user-\#($0)"}}"# }
                + (0..<20).map {
                    #"{"op":"route","request":{"method":"GET","path":"/healthz","client_ip":"10.0.0.\#($0)"}}"#
                },
            to: daemon)

        let status = try daemon.request(#"{"op":"status"}"#)["result"]?["capture"]
        #expect(status?["enabled"] == true)
        #expect((status?["entries"]?.intValue ?? 0) >= users + 2)
        #expect((status?["bytes"]?.intValue ?? 0) > 0)
        let metrics = try daemon.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue ?? ""
        #expect(metrics.contains("rulesd_capture_entries"))
        #expect(metrics.contains("rulesd_capture_bytes"))

        let copy = try exampleCopy(rollout: 50, in: daemon.directory)
        let diff = try runRulesctl(["--socket", daemon.socketPath, "diff", "--live", copy, "--json"])
        #expect(diff.status == 1, "\(diff.stderr)")
        let report = try JSONParser().parse(diff.stdout)
        let subjects = report["subjects"]?.arrayValue ?? []
        let newFlow = try #require(subjects.first { $0["flag"] == "checkout.new-flow" })
        #expect(newFlow["replayed"] == .integer(Int64(users)))
        let changed = Double(newFlow["changed"]?.intValue ?? 0) / Double(users)
        #expect(changed > 0.24 && changed < 0.36, "changed share \(changed)")
        #expect(newFlow["transitions"]?[0]?["from"] == "off")
        #expect(newFlow["transitions"]?[0]?["to"] == "on")
        #expect(newFlow["transitions"]?[0]?["examples"]?.arrayValue?.count == 3)
        #expect(newFlow["errors_introduced"] == 0)
        let routes = try #require(subjects.first { $0["routes"] == true })
        #expect(routes["changed"] == 0)

        // The same rules on both sides: nothing changes, exit 0.
        let same = try runRulesctl(["--socket", daemon.socketPath, "diff", "--live", Self.examples])
        #expect(same.status == 0, "\(same.stdout)\(same.stderr)")
        #expect(same.stdout.contains("0 changed"))
    }

    @Test("capture --out writes JSON Lines that diff --replay reads, against live, a directory or a revision")
    func exportAndReplay() throws {
        let daemon = try DaemonHarness()
        try daemon.start(arguments: [
            "--rules", Self.examples, "--watch", "off", "--capture", "on", "--capture-redact", "email",
            "--capture-redact-mode", "drop",
        ])
        try send(
            (0..<50).map {
                #"{"op":"flag","flag":"checkout.payment-page","context":{"user_id":"u\#($0)","email":"u\#($0)@shop.test"}}"#
            }, to: daemon)
        let file = daemon.directory + "/capture.jsonl"
        let export = try runRulesctl(["--socket", daemon.socketPath, "capture", "--out", file])
        #expect(export.status == 0, "\(export.stderr)")
        let lines = try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 50)
        #expect(!lines.joined().contains("shop.test"))
        let first = try JSONParser().parse(String(lines[0]))
        #expect(first["flag"] == "checkout.payment-page")
        #expect(first["context"]?["user_id"]?.stringValue?.hasPrefix("u") == true)
        #expect(first["at"]?.doubleValue != nil)

        let revision = try #require(
            daemon.request(#"{"op":"status"}"#)["result"]?["revision"]?.stringValue)
        for (old, new) in [("live", Self.examples), (String(revision.prefix(12)), "live")] {
            let replay = try runRulesctl(["--socket", daemon.socketPath, "diff", "--replay", file, old, new])
            #expect(replay.status == 0, "\(old) → \(new): \(replay.stdout)\(replay.stderr)")
            #expect(replay.stdout.contains("flag checkout.payment-page: 50 replayed, 0 changed"))
        }
        var filtered = try runRulesctl(["--socket", daemon.socketPath, "capture", "--flag", "checkout.new-flow"])
        #expect(filtered.status == 0)
        #expect(filtered.stdout.isEmpty)
        // A flags request is captured for every flag it answered.
        try send([#"{"op":"flags","context":{"user_id":"bulk"}}"#], to: daemon)
        filtered = try runRulesctl(["--socket", daemon.socketPath, "capture", "--flag", "checkout.new-flow"])
        #expect(filtered.stdout.split(separator: "\n").count == 1)
        #expect(filtered.stdout.contains(#""context":{"user_id":"bulk"}"#))
    }

    @Test("diff --replay between two directories works offline: exit 1 with a report when answers change, 0 when not")
    func offlineReplay() throws {
        let scratch = try DaemonHarness()
        let file = scratch.directory + "/capture.jsonl"
        let lines = (0..<400).map { #"{"flag":"checkout.new-flow","context":{"user_id":"u\#($0)"},"at":1764000000}"# }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: file))
        let copy = try exampleCopy(rollout: 100, in: scratch.directory)
        let changed = try runRulesctl(["diff", "--replay", file, Self.examples, copy])
        #expect(changed.status == 1, "\(changed.stderr)")
        #expect(changed.stdout.contains("flag checkout.new-flow: 400 replayed"))
        #expect(changed.stdout.contains("off → on"))
        let same = try runRulesctl(["diff", "--replay", file, Self.examples, Self.examples, "--json"])
        #expect(same.status == 0, "\(same.stderr)")
        #expect(try JSONParser().parse(same.stdout)["changed"] == 0)
        let typo = try runRulesctl(["diff", "--replay", file, Self.examples, scratch.directory + "/nowhere"])
        #expect(typo.status == 1)
        #expect(typo.stderr.contains("is not a rules directory"))
    }

    @Test("capture is refused while capture is off")
    func offByDefault() throws {
        let daemon = try DaemonHarness()
        try daemon.start(arguments: ["--rules", Self.examples, "--watch", "off"])
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["capture"]?["enabled"] == false)
        let answer = try daemon.request(#"{"op":"capture"}"#)
        #expect(answer["ok"] == false)
        let export = try runRulesctl(["--socket", daemon.socketPath, "capture"])
        #expect(export.status == 1)
        #expect(export.stderr.contains("capture is off"))
    }
}
