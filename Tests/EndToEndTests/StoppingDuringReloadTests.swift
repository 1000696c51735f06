import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Waits until the daemon's output contains `text`; false when it exits first or `timeout` passes.
func waitForLog(_ daemon: DaemonHarness, _ text: String, timeout: Double = 60) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if daemon.logs.contains(text) { return true }
        if let process = daemon.process, !process.isRunning { return daemon.logs.contains(text) }
        usleep(20_000)
    }
    return false
}

@Suite("Stopping while a reload runs")
struct StoppingDuringReloadTests {
    @Test("SIGTERM during a long reload abandons it: rulesd exits within its shutdown timeout, nothing goes live")
    func sigtermAbandonsReload() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(
            arguments: [
                "--watch", "off", "--shutdown-timeout", "2s", "--load-timeout", "600s",
                "--load-instructions", "100000000000",
            ],
            workers: 1)
        // A slow but legal rule set: each file counts for a long while before declaring its flag; loading all of
        // them takes minutes, far beyond the shutdown timeout.
        for index in 0..<40 {
            try daemon.writeRule(
                "slow\(index).lua",
                "local n = 0\nfor i = 1, 400000000 do n = n + 1 end\nflag \"slow\(index)\" {}\n")
        }
        let asker = try daemon.connect()
        try asker.send(#"{"op":"reload","id":"r"}"# + "\n")
        #expect(waitForLog(daemon, "loading rules"), "the reload did not start:\n\(daemon.logs)")
        daemon.signal(SIGTERM)
        // Far less than the reload would take, far more than the shutdown timeout.
        let status = try daemon.waitForExit(timeout: 60)
        #expect(status == 0)
        let logs = daemon.logs
        // Abandoning the load is the first step of stopping, so its line may come before or after the server's
        // `stopping:` line; what matters is that the load started, was abandoned, and nothing went live.
        let loading = try #require(logs.range(of: "loading rules"), "\(logs)")
        let after = logs[loading.upperBound...]
        #expect(after.contains("stopping: finishing in-flight requests"), "\(logs)")
        #expect(!after.contains("rules loaded"), "\(logs)")
        #expect(after.contains("reload abandoned"), "\(logs)")
        // Whoever asked hears that the reload was abandoned (or sees the connection close), never "reloaded".
        if let answer = try? asker.readJSON() {
            #expect(answer["ok"] == false)
            #expect(answer["error"]?["message"]?.stringValue?.contains("stopping") == true, "\(answer)")
        }
    }
}

@Suite("Stopping during the first load")
struct StoppingDuringFirstLoadTests {
    @Test("SIGTERM while the first rules load abandons them: rulesd exits 0 at once and never serves")
    func sigtermDuringFirstLoad() throws {
        var rules: [String: String] = [:]
        for index in 0..<40 {
            rules["slow\(index).lua"] = "local n = 0\nfor i = 1, 400000000 do n = n + 1 end\nflag \"slow\(index)\" {}\n"
        }
        let daemon = try DaemonHarness(rules: rules)
        try daemon.start(
            arguments: ["--watch", "off", "--load-timeout", "600s", "--load-instructions", "100000000000"],
            waitForSocket: false, workers: 1)
        #expect(waitForLog(daemon, "starting"), "rulesd did not start:\n\(daemon.logs)")
        daemon.signal(SIGTERM)
        // Far less than the load would take (minutes).
        let status = try daemon.waitForExit(timeout: 60)
        #expect(status == 0, "\(daemon.logs)")
        #expect(!daemon.logs.contains("rules loaded"), "\(daemon.logs)")
        #expect(daemon.logs.contains("stopped while loading the first rules"), "\(daemon.logs)")
        #expect(access(daemon.socketPath, F_OK) != 0, "the socket was created")
    }
}

@Suite("Honest reload failures")
struct HonestReloadFailureTests {
    @Test("a load that ran out of budget is tried again on the next request, not answered from memory")
    func resourceFailuresAreRetried() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off", "--load-instructions", "100000"])
        let watcher = try daemon.connect()
        #expect(try watcher.request(#"{"op":"watch"}"#)["result"]?["watching"] == true)
        try daemon.writeRule("loop.lua", "while true do end\n")
        for _ in 0..<2 {
            let answer = try daemon.request(#"{"op":"reload"}"#)
            #expect(answer["error"]?["message"]?.stringValue?.contains("instruction budget") == true, "\(answer)")
            // Each attempt really loads, so each one is announced.
            let event = try watcher.readJSON()
            #expect(event["event"] == "reload_failed")
        }
    }

    @Test("content failures are remembered by revision and answered without loading again")
    func contentFailuresAreRemembered() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off"])
        try daemon.writeRule("bad.lua", "flag (\n")
        _ = try daemon.request(#"{"op":"reload"}"#)
        let first = try daemon.request(#"{"op":"status"}"#)["result"]?["last_reload"]?["at"]
        let again = try daemon.request(#"{"op":"reload"}"#)
        #expect(again["error"]?["code"] == "RELOAD_FAILED")
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["last_reload"]?["at"] == first)
    }

    @Test("a state directory that cannot be written is reported until a save succeeds")
    func unwritableStateDirectory() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        // A regular file where the state directory should be: nothing can be saved below it, even as root.
        #expect(FileManager.default.createFile(atPath: daemon.stateDirectory, contents: Data()))
        try daemon.start(arguments: ["--watch", "off"])
        let failing = try waitForStatus(daemon) { $0?["saved_copy"]?["error"]?.stringValue != nil }
        #expect(failing?["saved_copy"]?["revision"] == .null, "no copy exists yet, and status says so")
        #expect(failing?["saved_copy"]?["current"] == false)

        let watcher = try daemon.connect()
        #expect(try watcher.request(#"{"op":"watch"}"#)["result"]?["watching"] == true)
        try daemon.writeRule("r.lua", agreeingRules("b"))
        let reloaded = try daemon.request(#"{"op":"reload"}"#)
        #expect(reloaded["result"]?["outcome"] == "reloaded")
        #expect(reloaded["result"]?["state_dir_error"]?.stringValue?.contains("cannot create") == true, "\(reloaded)")
        #expect(try watcher.readJSON()["state_dir_error"]?.stringValue != nil)
        let metrics = try daemon.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue ?? ""
        #expect(metrics.contains("rulesd_state_dir_save_failing 1"), "\(metrics)")

        // Once the directory can be written, the next save succeeds and the report ends.
        try FileManager.default.removeItem(atPath: daemon.stateDirectory)
        try daemon.writeRule("r.lua", agreeingRules("a"))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        let saved = try waitForStatus(daemon) { $0?["saved_copy"]?["current"] == true }
        #expect(saved?["saved_copy"]?["error"] == .null)
        let after = try daemon.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue ?? ""
        #expect(after.contains("rulesd_state_dir_save_failing 0"), "\(after)")
    }

    @Test("a saved copy that was tampered with is refused with a message that says it is corrupt and why")
    func corruptSavedCopy() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off"])
        let status = try waitForStatus(daemon) { $0?["saved_copy"]?["current"] == true }
        let revision = try #require(status?["saved_copy"]?["revision"]?.stringValue)
        try daemon.stop()
        let manifest = try #require(
            FileManager.default.contents(atPath: daemon.stateDirectory + "/last-good/\(revision).json"))
        let digest = try #require(try JSONParser().parse(Array(manifest))["files"]?[0]?["sha256"]?.stringValue)
        let savedFile = daemon.stateDirectory + "/history/objects/" + digest
        try Data(agreeingRules("b").utf8).write(to: URL(fileURLWithPath: savedFile))
        try daemon.writeRule("r.lua", "flag (\n")
        try daemon.start(arguments: ["--watch", "off"], waitForSocket: false)
        #expect(try daemon.waitForExit() == 1)
        #expect(daemon.logs.contains("the last known good copy is corrupt"), "\(daemon.logs)")
        #expect(daemon.logs.contains("do not match the revision they were saved under"), "\(daemon.logs)")
    }
}

/// Asks for `status` until `condition` holds for its result; the last result otherwise (a failed expectation).
func waitForStatus(
    _ daemon: DaemonHarness, timeout: Double = 30, _ condition: (JSONValue?) -> Bool
) throws -> JSONValue? {
    let deadline = Date().addingTimeInterval(timeout)
    var result: JSONValue?
    while Date() < deadline {
        result = try daemon.request(#"{"op":"status"}"#)["result"]
        if condition(result) { return result }
        usleep(20_000)
    }
    Issue.record("status never met the condition: \(String(describing: result))")
    return result
}
