import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `isolation = process` per namespace, against the real daemon (docs/OPERATIONS.md, "Isolation"): a config file
/// declares `[namespace hostile]` with a rule process of its own beside the thread-isolated default namespace.
/// Whatever happens to the hostile namespace's rule process, the default namespace keeps answering.
@Suite("Process isolation per namespace, against the real daemon", .serialized)
struct NamespaceIsolationTests {
    /// A daemon serving `canary` in the default namespace and `calm` in the process-isolated `hostile` one.
    func startDaemon(hostileSettings: String = "") throws -> DaemonHarness {
        let daemon = try DaemonHarness(rules: [
            "canary.lua": #"flag "canary" { variants = { yes = true, no = false }, default = "yes" }"#
        ])
        let hostile = daemon.directory + "/hostile"
        try FileSystemEdit.writeFiles(["a.lua": ProcessIsolationTests.hog], in: hostile)
        let file = daemon.directory + "/rulesd.conf"
        let config = "[namespace hostile]\nrules = \(hostile)\nisolation = process\n\(hostileSettings)"
        try Data(config.utf8).write(to: URL(fileURLWithPath: file))
        try daemon.start(arguments: ["--config", file, "--watch", "off"])
        return daemon
    }

    /// The `isolation` member of `status` for `namespace`.
    static func isolation(_ daemon: DaemonHarness, _ namespace: String) throws -> JSONValue? {
        try daemon.request(#"{"op":"status","namespace":"\#(namespace)"}"#)["result"]?["isolation"]
    }

    static func rulePID(_ daemon: DaemonHarness) throws -> Int32? {
        try isolation(daemon, "hostile")?["pid"]?.intValue.map { Int32($0) }
    }

    /// The default namespace's canary answers correctly (asked on a connection of its own, so that it never
    /// waits behind a hostile request).
    static func canaryAnswers(_ canary: LineClient) throws -> Bool {
        let answer = try canary.request(#"{"op":"flag","flag":"canary"}"#)
        return answer["ok"]?.boolValue == true && answer["result"]?["variant"]?.stringValue == "yes"
    }

    static let calm = #"{"op":"flag","flag":"calm","namespace":"hostile"}"#

    @Test("each namespace answers from its own rules; only the hostile one has a rule process")
    func namespacesAnswerWithTheirOwnIsolation() throws {
        let daemon = try startDaemon()
        defer { _ = try? daemon.stop() }
        #expect(try daemon.request(#"{"op":"flag","flag":"canary"}"#)["result"]?["variant"]?.stringValue == "yes")
        #expect(try daemon.request(Self.calm)["result"]?["variant"]?.stringValue == "on")
        // Neither namespace reaches the other's flags.
        #expect(
            try daemon.request(#"{"op":"flag","flag":"calm"}"#)["error"]?["code"]?.stringValue == "FLAG_NOT_FOUND")
        #expect(try Self.isolation(daemon, "default")?["mode"]?.stringValue == "thread")
        let hostile = try #require(try Self.isolation(daemon, "hostile"))
        #expect(hostile["mode"]?.stringValue == "process")
        #expect(hostile["restarts"]?.intValue == 0)
        let pid = try #require(try Self.rulePID(daemon))
        #expect(pid != daemon.process?.processIdentifier)
        let metrics = try daemon.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue ?? ""
        #expect(metrics.contains("rulesd_rule_process_pid{namespace=\"hostile\"} \(pid)"))
        #expect(!metrics.contains("rulesd_rule_process_pid{namespace=\"default\"}"))
    }

    @Test("a killed rule process: its namespace answers RULE_ERROR until restarted, the default one throughout")
    func killedRuleProcessLeavesTheDefaultNamespaceServing() throws {
        let daemon = try startDaemon()
        defer { _ = try? daemon.stop() }
        #expect(try daemon.request(Self.calm)["ok"]?.boolValue == true)
        let first = try #require(try Self.rulePID(daemon))
        let hostile = try daemon.connect()
        let canary = try daemon.connect()
        kill(first, SIGKILL)
        var codes: Set<String> = []
        var canaryFailures = 0
        let recovered = try eventually {
            if try !Self.canaryAnswers(canary) { canaryFailures += 1 }
            let answer = try hostile.request(Self.calm)
            if answer["ok"]?.boolValue == true, try Self.rulePID(daemon) != first { return true }
            if answer["ok"]?.boolValue == false { codes.insert(answer["error"]?["code"]?.stringValue ?? "?") }
            return false
        }
        #expect(recovered)
        #expect(canaryFailures == 0)
        #expect(codes.isSubset(of: ["RULE_ERROR"]))
        #expect(try Self.canaryAnswers(canary))
        let isolation = try Self.isolation(daemon, "hostile")
        #expect(isolation?["restarts"]?.intValue == 1)
        #expect(isolation?["last_exit"]?["reason"]?.stringValue == "killed by SIGKILL")
    }

    @Test("a stopped rule process: its namespace answers RESOURCE_LIMIT, it is replaced, the default one serves")
    func stoppedRuleProcessLeavesTheDefaultNamespaceServing() throws {
        let daemon = try startDaemon(hostileSettings: "eval_timeout = 50ms\n")
        defer { _ = try? daemon.stop() }
        #expect(try daemon.request(Self.calm)["ok"]?.boolValue == true)
        let first = try #require(try Self.rulePID(daemon))
        let canary = try daemon.connect()
        kill(first, SIGSTOP)
        #expect(try Self.canaryAnswers(canary))
        let answer = try daemon.request(#"{"id":1,"op":"flag","flag":"calm","namespace":"hostile"}"#)
        #expect(answer["id"]?.intValue == 1)
        #expect(answer["error"]?["code"]?.stringValue == "RESOURCE_LIMIT", "\(answer)\n\(daemon.logs)")
        var canaryFailures = 0
        let recovered = try eventually {
            if try !Self.canaryAnswers(canary) { canaryFailures += 1 }
            return try daemon.request(Self.calm)["ok"]?.boolValue == true
        }
        #expect(recovered)
        #expect(canaryFailures == 0)
        #expect(try Self.rulePID(daemon) != first)
        #expect(kill(first, 0) != 0)
        #expect(try Self.isolation(daemon, "hostile")?["last_exit"]?["reason"]?.stringValue?.hasPrefix("hung") == true)
    }
}
