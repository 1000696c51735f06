import Foundation
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Runs rulesctl and returns its exit status and output.
func runRulesctl(_ arguments: [String], environment: [String: String] = [:]) throws -> (
    status: Int32, stdout: String, stderr: String
) {
    try runCommand([DaemonHarness.binary("rulesctl")] + arguments, environment: environment)
}

/// Runs `command` (an executable's path, then its arguments) without colour and without a socket from the
/// environment, and returns its exit status and output.
func runCommand(_ command: [String], environment: [String: String] = [:]) throws -> (
    status: Int32, stdout: String, stderr: String
) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: command[0])
    process.arguments = Array(command.dropFirst())
    var env = ProcessInfo.processInfo.environment
    env["RULESD_SOCKET"] = nil
    env["NO_COLOR"] = "1"
    for (key, value) in environment { env[key] = value }
    process.environment = env
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
}

@Suite("rulesctl against the real daemon")
struct RulesCtlOnlineTests {
    let daemon: DaemonHarness
    let examples: String

    init() throws {
        daemon = try DaemonHarness()
        examples =
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("config/rules.d").path
        try daemon.start(arguments: ["--rules", examples, "--watch", "off"])
    }

    /// A question, the exit status it must end with, and a line of its plain output that shows the context was
    /// used (the keys are the ones the example rules read: user_id, user.plan, country, path, headers).
    struct Question: Sendable, CustomTestStringConvertible {
        var arguments: [String]
        var status: Int32
        var shows: String?
        var testDescription: String { arguments.joined(separator: " ") }
    }

    @Test(
        "online and offline answers print identically, in both output forms",
        arguments: [
            Question(
                arguments: ["flag", "checkout.new-flow", "-c", "user_id=u-42", "-c", "user.plan=pro"], status: 0,
                shows: "variant: on"),
            Question(
                arguments: [
                    "flag", "checkout.new-flow", "-c", "user_id=u-7", "-c", "user.plan=enterprise", "-c", "country=DE",
                ],
                status: 0, shows: "variant: off"),
            Question(arguments: ["flag", "search.semantic", "-c", "user.plan=pro"], status: 0, shows: "variant: on"),
            Question(
                arguments: ["flags", "-c", "user_id=u-1", "-c", "user.plan=pro", "--at", "2026-05-01T00:00:00Z"],
                status: 0, shows: "search.semantic        on"),
            Question(
                arguments: ["route", "-c", "path=/api/users/42", "-c", "headers.x-api-version=2"], status: 0,
                shows: "route:  users-v2-explicit"),
            Question(arguments: ["route", "-c", "path=/nowhere"], status: 0, shows: "route:  web"),
            Question(arguments: ["config", "http.timeout_ms"], status: 0, shows: "value: 1500"),
            Question(arguments: ["config", "--prefix", "http."], status: 0, shows: "http.retries:         3"),
            Question(arguments: ["flag", "no-such-flag"], status: 1, shows: nil),
        ])
    func onlineEqualsOffline(_ question: Question) throws {
        for json in [false, true] {
            let extra = json ? ["--json"] : []
            let online = try runRulesctl(
                question.arguments + extra, environment: ["RULESD_SOCKET": daemon.socketPath])
            let offline = try runRulesctl(["eval", "--rules", examples] + question.arguments + extra)
            #expect(online.status == question.status, "\(online.stderr)")
            #expect(offline.status == question.status, "\(offline.stderr)")
            #expect(online.stdout == offline.stdout)
            #expect(online.stderr == offline.stderr)
            if !json, let shows = question.shows {
                #expect(online.stdout.split(separator: "\n").contains { $0.hasPrefix(shows) }, "\(online.stdout)")
            }
        }
    }

    @Test("the socket comes from --socket (before or after the command), then RULESD_SOCKET")
    func socketSources() throws {
        #expect(try runRulesctl(["--socket", daemon.socketPath, "ping"]).status == 0)
        #expect(try runRulesctl(["ping", "--socket", daemon.socketPath]).status == 0)
        #expect(try runRulesctl(["ping"], environment: ["RULESD_SOCKET": daemon.socketPath]).status == 0)
    }

    @Test("an unreachable daemon exits 3 with a message naming the socket and what to check")
    func unreachable() throws {
        let result = try runRulesctl(["--socket", daemon.directory + "/missing.sock", "status"])
        #expect(result.status == 3)
        #expect(result.stderr.contains(daemon.directory + "/missing.sock"))
        #expect(result.stderr.contains("is rulesd running?"))
    }

    @Test("status prints the revision, and --json the raw result")
    func status() throws {
        let human = try runRulesctl(["--socket", daemon.socketPath, "status"])
        #expect(human.status == 0)
        #expect(human.stdout.contains("serving"))
        #expect(human.stdout.contains("12 flags"))
        let json = try runRulesctl(["--socket", daemon.socketPath, "status", "--json"])
        #expect(json.stdout.hasPrefix("{\"revision\":"))
    }

    @Test("metrics prints Prometheus text")
    func metrics() throws {
        _ = try runRulesctl(["--socket", daemon.socketPath, "flag", "checkout.new-flow"])
        let result = try runRulesctl(["--socket", daemon.socketPath, "metrics"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("rulesd_requests_total{op=\"flag\",outcome=\"ok\"}"))
        #expect(result.stdout.contains("rulesd_rules_info{revision="))
    }
}

@Suite("rulesctl reload and watch")
struct RulesCtlReloadTests {
    @Test("reload exits 0 when reloaded or unchanged and 1 with file:line problems when the rules do not load")
    func reloadExitStatus() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let socket = ["--socket", daemon.socketPath]
        let unchanged = try runRulesctl(socket + ["reload"])
        #expect(unchanged.status == 0)
        #expect(unchanged.stdout.hasPrefix("unchanged"))
        try daemon.writeRule("a.lua", "flag \"x\" {}\nflag \"y\" {}\n")
        let reloaded = try runRulesctl(socket + ["reload"])
        #expect(reloaded.status == 0)
        #expect(reloaded.stdout.hasPrefix("reloaded"))
        try daemon.writeRule("a.lua", "flag \"x\" {}\nflag \"y\" { colour = 1 }\n")
        let failed = try runRulesctl(socket + ["reload"])
        #expect(failed.status == 1)
        #expect(failed.stderr.contains("a.lua:2: flag 'y': unknown field 'colour'"))
    }

    @Test("watch prints each reload as it happens")
    func watch() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: DaemonHarness.binary("rulesctl"))
        process.arguments = ["--socket", daemon.socketPath, "watch", "--json"]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        defer { process.terminate() }
        let reader = out.fileHandleForReading
        var text = ""
        func readLine() -> String {
            while !text.contains("\n") {
                let data = reader.availableData
                if data.isEmpty { break }
                text += String(decoding: data, as: UTF8.self)
            }
            let line = String(text.prefix { $0 != "\n" })
            text = String(text.dropFirst(line.count + 1))
            return line
        }
        #expect(readLine().contains("\"watching\":true"))
        try daemon.writeRule("a.lua", "flag \"x\" {}\nflag \"z\" {}\n")
        _ = try daemon.request(#"{"op":"reload"}"#)
        #expect(readLine().contains("\"event\":\"reloaded\""))
    }
}
