import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `isolation = process` (docs/OPERATIONS.md, "Isolation"), against the real daemon: the rules run in a rule
/// process of their own, confined by the kernel, answered byte for byte as in-process, and replaced when it dies,
/// hangs or is killed.
@Suite("Process isolation, against the real daemon", .serialized)
struct ProcessIsolationTests {
    static let hog = """
        flag "hog" {
            default = "off",
            rule = function(ctx)
                local kept = {}
                while true do kept[#kept + 1] = string.rep("x", 4096) .. #kept end
            end,
        }
        flag "calm" { default = "on" }
        """

    /// The rule process's id, from `status`.
    static func rulePID(_ daemon: DaemonHarness) throws -> Int32? {
        let status = try daemon.request(#"{"op":"status"}"#)
        guard let pid = status["result"]?["isolation"]?["pid"]?.intValue else { return nil }
        return Int32(pid)
    }

    /// A `/proc/PID/status` field.
    static func procStatus(_ pid: Int32, _ field: String) throws -> String? {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    /// The requests compared across isolation modes: every flag (plain, with contexts, explained), routes that
    /// match and fail to, config values, and requests that fail.
    static func comparedRequests(flagKeys: [String]) -> [String] {
        let at = #""at":1767225600"#
        let contexts = [
            "{}", #"{"user_id":"u-1","country":"DE","plan":"pro","app_version":"5.2.0","platform":"ios"}"#,
            #"{"user_id":"u-77","country":"BR","email":"x@example.com","beta":true}"#,
        ]
        var requests: [String] = []
        for (index, key) in flagKeys.enumerated() {
            for context in contexts {
                requests.append(#"{"id":\#(index),"op":"flag","flag":"\#(key)","context":\#(context),\#(at)}"#)
            }
            requests.append(#"{"op":"explain","flag":"\#(key)","context":\#(contexts[1]),\#(at)}"#)
        }
        for context in contexts { requests.append(#"{"op":"flags","context":\#(context),\#(at)}"#) }
        let routed = [
            #"{"method":"GET","path":"/healthz"}"#,
            #"{"method":"GET","path":"/admin/x","client_ip":"10.20.1.2"}"#,
            #"{"method":"POST","path":"/api/users/42","headers":{"x-api-version":"2","x-region":"eu"}}"#,
            #"{"method":"GET","path":"/nothing/here"}"#,
        ]
        for request in routed {
            requests.append(#"{"op":"route","request":\#(request),\#(at)}"#)
            requests.append(#"{"op":"explain","request":\#(request),\#(at)}"#)
        }
        requests += [
            #"{"op":"config","prefix":""}"#, #"{"op":"flag","flag":"no.such.flag"}"#,
            #"{"op":"flag","flag":"\#(flagKeys[0])","context":[1]}"#, #"{"id":"p","op":"ping"}"#,
        ]
        return requests
    }

    static func rawAnswers(_ daemon: DaemonHarness, _ requests: [String]) throws -> [String] {
        let client = try daemon.connect()
        var answers: [String] = []
        for request in requests {
            try client.send(request + "\n")
            answers.append(try #require(try client.readLine()))
        }
        return answers
    }

    @Test("answers are byte for byte those of isolation = thread, across the example rules")
    func answersMatchThreadMode() throws {
        let rules = try Tour.exampleRules()
        let thread = try DaemonHarness(rules: rules)
        try thread.start(arguments: ["--isolation", "thread"])
        defer { _ = try? thread.stop() }
        let process = try DaemonHarness(rules: rules)
        try process.start(arguments: ["--isolation", "process"])
        defer { _ = try? process.stop() }

        let flags = try thread.request(#"{"op":"flags"}"#)
        let keys = try #require(flags["result"]?["flags"]?.objectValue?.keys).map { $0 }.sorted()
        #expect(keys.count >= 5)
        let requests = Self.comparedRequests(flagKeys: keys)
        let expected = try Self.rawAnswers(thread, requests)
        let answered = try Self.rawAnswers(process, requests)
        for (index, request) in requests.enumerated() where answered[index] != expected[index] {
            // The one difference allowed: `explain` shows the Lua tables a rule read in Lua's iteration order,
            // which follows each Lua state's hash seed (two workers' states differ alike); as JSON they are equal.
            #expect(request.contains(#""op":"explain""#), "\(request)")
            #expect(try JSONParser().parse(answered[index]) == JSONParser().parse(expected[index]), "\(request)")
        }
        #expect(try Self.rulePID(process) != nil)
        #expect(try Self.rulePID(thread) == nil)
    }

    @Test("the rule process is another process, with no_new_privs and a seccomp filter")
    func ruleProcessIsConfined() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": Self.hog])
        try daemon.start(arguments: ["--isolation", "process"])
        defer { _ = try? daemon.stop() }
        let calm = try daemon.request(#"{"op":"flag","flag":"calm"}"#)
        #expect(calm["ok"]?.boolValue == true, "\(calm)\n\(daemon.logs)")
        let pid = try #require(try Self.rulePID(daemon))
        #expect(pid != daemon.process?.processIdentifier)
        #expect(try Self.procStatus(pid, "NoNewPrivs") == "1")
        #expect(try Self.procStatus(pid, "Seccomp") == "2")
        #expect(try Self.procStatus(pid, "PPid") == "\(daemon.process!.processIdentifier)")
        let status = try daemon.request(#"{"op":"status"}"#)["result"]?["isolation"]
        #expect(status?["mode"]?.stringValue == "process")
        #expect(status?["restarts"]?.intValue == 0)
        let metrics = try daemon.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue ?? ""
        #expect(metrics.contains("rulesd_rule_process_pid{namespace=\"default\"} \(pid)"))
    }

    @Test("a killed rule process is started again, and answers come back")
    func killedProcessRestarts() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": Self.hog])
        try daemon.start(arguments: ["--isolation", "process"])
        defer { _ = try? daemon.stop() }
        #expect(try daemon.request(#"{"op":"flag","flag":"calm"}"#)["ok"]?.boolValue == true)
        let first = try #require(try Self.rulePID(daemon))
        kill(first, SIGKILL)
        let client = try daemon.connect()
        // Until the new process serves, each answer is RULE_ERROR (never a hang); then the flag answers again.
        var codes: Set<String> = []
        let recovered = try eventually {
            let answer = try client.request(#"{"op":"flag","flag":"calm"}"#)
            if answer["ok"]?.boolValue == true { return true }
            codes.insert(answer["error"]?["code"]?.stringValue ?? "?")
            return false
        }
        #expect(recovered)
        #expect(codes.isSubset(of: ["RULE_ERROR"]))
        let second = try #require(try Self.rulePID(daemon))
        #expect(second != first)
        let isolation = try daemon.request(#"{"op":"status"}"#)["result"]?["isolation"]
        #expect(isolation?["restarts"]?.intValue == 1)
        #expect(isolation?["last_exit"]?["reason"]?.stringValue == "killed by SIGKILL")
        #expect(daemon.waitForLog("rule process ended; restarting"))
    }

    @Test("a stopped (hung) rule process is answered RESOURCE_LIMIT within the deadline, then replaced")
    func hungProcessIsReplaced() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": Self.hog])
        try daemon.start(arguments: ["--isolation", "process", "--eval-timeout", "50ms"])
        defer { _ = try? daemon.stop() }
        #expect(try daemon.request(#"{"op":"flag","flag":"calm"}"#)["ok"]?.boolValue == true)
        let first = try #require(try Self.rulePID(daemon))
        kill(first, SIGSTOP)
        // A stop signal takes effect when the process is next scheduled: ask only once it has.
        #expect(try eventually(timeout: 5) { try Self.procStatus(first, "State")?.hasPrefix("T") == true })
        let answer = try daemon.request(#"{"id":1,"op":"flag","flag":"calm"}"#)
        #expect(answer["ok"]?.boolValue == false, "\(answer)\n\(daemon.logs)")
        #expect(answer["id"]?.intValue == 1)
        #expect(answer["error"]?["code"]?.stringValue == "RESOURCE_LIMIT")
        #expect(try eventually { try daemon.request(#"{"op":"flag","flag":"calm"}"#)["ok"]?.boolValue == true })
        let second = try #require(try Self.rulePID(daemon))
        #expect(second != first)
        // The stopped process was killed and collected, not left behind.
        #expect(kill(first, 0) != 0)
        let isolation = try daemon.request(#"{"op":"status"}"#)["result"]?["isolation"]
        #expect(isolation?["last_exit"]?["reason"]?.stringValue?.hasPrefix("hung") == true)
        #expect(daemon.waitForLog("did not answer in time; killing it"))
    }

    @Test("a reload reaches the rule process")
    func reloadReachesRuleProcess() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": #"flag "f" { default = "off" }"#])
        try daemon.start(arguments: ["--isolation", "process", "--watch", "off"])
        defer { _ = try? daemon.stop() }
        let before = try daemon.request(#"{"op":"flag","flag":"f"}"#)
        #expect(before["result"]?["variant"]?.stringValue == "off")
        let pid = try Self.rulePID(daemon)
        try daemon.writeRule("a.lua", #"flag "f" { default = "on" }"#)
        #expect(try daemon.request(#"{"op":"reload"}"#)["ok"]?.boolValue == true)
        let after = try daemon.request(#"{"op":"flag","flag":"f"}"#)
        #expect(after["result"]?["variant"]?.stringValue == "on")
        #expect(after["generation"]?.intValue == before["generation"]!.intValue! + 1)
        #expect(try Self.rulePID(daemon) == pid)
    }

    @Test("a rule that allocates without end is stopped and reported; the process goes on serving")
    func allocatingRuleIsStopped() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": Self.hog])
        try daemon.start(arguments: [
            "--isolation", "process", "--memory-limit", "16MiB", "--eval-instructions", "2000000000",
            "--eval-timeout", "10s",
        ])
        defer { _ = try? daemon.stop() }
        let pid = try Self.rulePID(daemon)
        let answer = try daemon.request(#"{"op":"flag","flag":"hog"}"#)
        #expect(answer["result"]?["reason"]?.stringValue == "ERROR")
        #expect(answer["result"]?["error_code"]?.stringValue == "RESOURCE_LIMIT")
        #expect(answer["result"]?["error_message"]?.stringValue?.contains("memory") == true)
        #expect(try daemon.request(#"{"op":"flag","flag":"calm"}"#)["result"]?["variant"]?.stringValue == "on")
        #expect(try Self.rulePID(daemon) == pid)
    }
}
