import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `rulesd` run to completion (`--help`, `--print-settings`, a refused start), its output in files.
private struct RulesdRun {
    var status: Int32
    var signalled: Bool
    var standardOutput: String
    var standardError: String

    init(_ arguments: [String], environment: [String: String] = [:], directory: String? = nil) throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rulesd-run-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let outPath = scratch.appendingPathComponent("out")
        let errPath = scratch.appendingPathComponent("err")
        FileManager.default.createFile(atPath: outPath.path, contents: nil)
        FileManager.default.createFile(atPath: errPath.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: DaemonHarness.binary("rulesd"))
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        // No setting may leak in from the environment the tests run in, nor the machine's default config file.
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("RULESD_") }
        env["RULESD_CONFIG"] = "/dev/null"
        env["COLUMNS"] = "200"
        env.merge(environment) { $1 }
        process.environment = env
        process.standardOutput = try FileHandle(forWritingTo: outPath)
        process.standardError = try FileHandle(forWritingTo: errPath)
        try process.run()
        process.waitUntilExit()
        status = process.terminationStatus
        signalled = process.terminationReason == .uncaughtSignal
        standardOutput = try String(contentsOf: outPath, encoding: .utf8)
        standardError = try String(contentsOf: errPath, encoding: .utf8)
    }

    /// `name = value` lines of `--print-settings` output.
    var settings: [String: String] {
        var result: [String: String] = [:]
        for line in standardOutput.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            result[line[..<equals].trimmingCharacters(in: .whitespaces)] =
                line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
        }
        return result
    }
}

/// A value other than the default for every setting, written as `--print-settings` writes it back.
private let nonDefaultValues: [String: String] = [
    "rules": "/srv/rules", "socket": "/tmp/other.sock", "socket_mode": "0600", "socket_group": "4321",
    "state_dir": "/srv/state", "history_size": "7", "workers": "7", "log_level": "debug", "log_format": "json",
    "max_connections": "99",
    "idle_timeout": "45s", "max_pipelined": "33", "max_request_bytes": "2MiB", "shutdown_timeout": "3s",
    "watch": "poll", "quiet_window": "150ms", "max_delay": "4s", "safety_rescan": "2m", "poll_interval": "900ms",
    "memory_limit": "32MiB", "eval_timeout": "20ms", "eval_instructions": "123456", "load_timeout": "3s",
    "load_instructions": "7654321", "max_file_bytes": "4MiB", "max_data_bytes": "32MiB", "test_budget": "5s",
    "max_files": "500", "max_flags": "600", "max_rules_bytes": "16MiB",
    "metrics_listen": "127.0.0.1:9999", "ofrep_listen": "127.0.0.1:8999",
    "flagd_socket": "/tmp/flagd-other.sock", "flagd_listen": "127.0.0.1:8998",
    "capture": "on", "capture_size": "20", "capture_memory": "2MiB", "capture_redact": "email,ip",
    "capture_redact_mode": "drop", "capture_redact_key": "k3y", "override_max_ttl": "2h",
    "role_query": "group:adm uid:1000", "role_observe": "gid:4", "role_operate": "user:root", "role_admin": "uid:0",
    "audit_max_bytes": "8MiB", "isolation": "process",
]

@Suite("Settings of the real binary")
struct DaemonSettingsEndToEndTests {
    /// The setting names the sample config file shows (held to the descriptor table by a unit test).
    static func sampleSettingNames() throws -> [String] {
        let text = try String(
            contentsOf: RulesctlProcess.repositoryRoot.appendingPathComponent("config/rulesd.conf"), encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("#"), !line.hasPrefix("# "), !line.hasPrefix("##"),
                let equals = line.firstIndex(of: "=")
            else { return nil }
            return line.dropFirst()[..<equals].trimmingCharacters(in: .whitespaces)
        }
    }

    @Test("--help lists an option for every setting of the sample config file, and no other setting")
    func helpListsEverySetting() throws {
        let run = try RulesdRun(["--help"])
        #expect(run.status == 0)
        let options = Set(
            run.standardOutput.split(separator: "\n").compactMap { line -> String? in
                var trimmed = line.drop { $0 == " " }
                if trimmed.hasPrefix("-h, ") { trimmed = trimmed.dropFirst(4) }
                guard line.first == " ", trimmed.hasPrefix("--") else { return nil }
                return String(trimmed.prefix { $0 != " " && $0 != "," })
            })
        let settings = try Self.sampleSettingNames().map { "--" + $0.replacingOccurrences(of: "_", with: "-") }
        #expect(options == Set(settings + ["--config", "--print-settings", "--check-config", "--help", "--version"]))
        // An option's help follows its name, on the same line or, after a long value name, on the next.
        let lines = run.standardOutput.split(separator: "\n").map(String.init)
        for option in settings {
            let index = try #require(lines.firstIndex { $0.drop { $0 == " " }.hasPrefix(option + " ") }, "\(option)")
            let help = lines[index] + (index + 1 < lines.count ? lines[index + 1] : "")
            #expect(help.contains("(default: "), "\(option)")
        }
    }

    @Test("every setting reaches the daemon alike from the command line, the environment and the file")
    func everySettingFromEverySource() throws {
        #expect(Set(nonDefaultValues.keys) == Set(try Self.sampleSettingNames()))
        let options = nonDefaultValues.sorted { $0.key < $1.key }.flatMap { name, value in
            ["--" + name.replacingOccurrences(of: "_", with: "-"), value]
        }
        let fromOptions = try RulesdRun(["--print-settings"] + options)
        #expect(fromOptions.status == 0, "\(fromOptions.standardError)")
        #expect(fromOptions.settings == nonDefaultValues)

        let variables = Dictionary(
            uniqueKeysWithValues: nonDefaultValues.map { ("RULESD_" + $0.key.uppercased(), $0.value) })
        let fromEnvironment = try RulesdRun(["--print-settings"], environment: variables)
        #expect(fromEnvironment.settings == nonDefaultValues)

        let harness = try DaemonHarness()
        let file = harness.directory + "/all.conf"
        try Data(nonDefaultValues.map { "\($0.key) = \($0.value)\n" }.joined().utf8).write(
            to: URL(fileURLWithPath: file))
        let fromFile = try RulesdRun(["--print-settings", "--config", file])
        #expect(fromFile.settings == nonDefaultValues)
    }

    @Test("the command line wins over the environment, which wins over the file named by RULESD_CONFIG")
    func precedence() throws {
        let harness = try DaemonHarness()
        let file = harness.directory + "/rulesd.conf"
        try Data("idle_timeout = 1s\nlog_level = debug\nworkers = 3\n".utf8).write(to: URL(fileURLWithPath: file))
        let run = try RulesdRun(
            ["--print-settings", "--idle-timeout", "3s"],
            environment: ["RULESD_CONFIG": file, "RULESD_IDLE_TIMEOUT": "2s", "RULESD_LOG_LEVEL": "error"])
        #expect(run.settings["idle_timeout"] == "3s")
        #expect(run.settings["log_level"] == "error")
        #expect(run.settings["workers"] == "3")

        let other = harness.directory + "/other.conf"
        try Data("workers = 5\n".utf8).write(to: URL(fileURLWithPath: other))
        let explicit = try RulesdRun(["--print-settings", "--config", other], environment: ["RULESD_CONFIG": file])
        #expect(explicit.settings["workers"] == "5")
    }

    @Test("the documented limits are the defaults: 1 MiB requests, 1,024 connections and pipelined, 300 s idle")
    func documentedDefaults() throws {
        let run = try RulesdRun(["--print-settings"])
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.settings["max_request_bytes"] == "1MiB", "\(run.standardOutput)")
        #expect(run.settings["max_connections"] == "1024", "\(run.standardOutput)")
        #expect(run.settings["max_pipelined"] == "1024", "\(run.standardOutput)")
        #expect(run.settings["idle_timeout"] == "5m", "\(run.standardOutput)")
    }

    @Test("an unknown setting in the file stops the start with a log line naming the file and line")
    func unknownSettingInFile() throws {
        let harness = try DaemonHarness()
        let file = harness.directory + "/rulesd.conf"
        try Data("workers = 2\ncolour = blue\n".utf8).write(to: URL(fileURLWithPath: file))
        let run = try RulesdRun(["--config", file])
        #expect(run.status == 64)
        let line = run.standardError.split(separator: "\n").first { $0.contains("critical invalid settings") }
        #expect(line?.contains("\(file):2: unknown setting 'colour'") == true)
    }

    @Test("a huge size or duration is refused with a message naming the option, not a crash")
    func hugeValues() throws {
        for (option, value) in [
            ("--max-request-bytes", "99999999999GiB"), ("--idle-timeout", "1e300"),
            ("--shutdown-timeout", "9999999999999999999999h"),
        ] {
            let run = try RulesdRun([option, value, "--print-settings"])
            #expect(!run.signalled)
            #expect(run.status == 64)
            #expect(run.standardError.contains("option \(option): expected a"), "\(run.standardError)")
        }
    }

    @Test("socket_mode sets the mode of a socket rulesd binds itself")
    func socketMode() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--socket-mode", "0600"])
        var st = stat()
        #expect(stat(daemon.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
    }

    @Test(
        "socket_group gives the socket to a group given by number or by name",
        .enabled(if: geteuid() == 0, "only root may give a file to a group it is not in"),
        arguments: ["4321", "daemon"])
    func socketGroup(_ group: String) throws {
        let expected = try #require(group.first!.isNumber ? gid_t(group) : getgrnam(group)?.pointee.gr_gid)
        #expect(expected != getegid())
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(environment: ["RULESD_SOCKET_GROUP": group])
        var st = stat()
        #expect(stat(daemon.socketPath, &st) == 0)
        #expect(st.st_gid == expected)
    }

    @Test("log_level leaves out the lines below it")
    func logLevel() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": #"flag "noisy" { rule = function(ctx) log("warn", "rule says hello") return "on" end }"#
        ])
        try daemon.start(arguments: ["--log-level", "warning"])
        #expect(try daemon.request(#"{"op":"flag","flag":"noisy"}"#)["result"]?["variant"] == "on")
        #expect(try daemon.stop() == 0)
        let lines = daemon.logs.split(separator: "\n")
        #expect(lines.contains { $0.contains("rule says hello") })
        #expect(!lines.contains { $0.contains(" info ") || $0.contains(" notice ") }, "\(daemon.logs)")
    }

    @Test("watch = poll follows the rules directory by polling")
    func watchPoll() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--watch", "poll", "--poll-interval", "100ms"])
        // The watcher starts right after the socket: wait for it to report its mode.
        var mode: JSONValue?
        _ = try eventually {
            mode = try daemon.request(#"{"op":"status"}"#)["result"]?["watcher"]?["mode"]
            return mode == "polling"
        }
        #expect(mode == "polling", "\(daemon.logs)")
        try daemon.writeRule("a.lua", markedRules("v2"))
        #expect(daemon.waitForMarker("v2"))
    }

    @Test("max_delay bounds how long a reload waits for the tree to be quiet")
    func maxDelay() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        // With a quiet window longer than the wait below, only max_delay can bring the reload in time.
        try daemon.start(arguments: ["--quiet-window", "60s", "--max-delay", "300ms"])
        try daemon.writeRule("a.lua", markedRules("v2"))
        #expect(daemon.waitForMarker("v2", timeout: 30))
    }
}

@Suite("rulesd --check-config and namespaces in the real binary")
struct CheckConfigEndToEndTests {
    @Test("a good file prints 'PATH: ok' and one line per namespace, and exits 0 without starting")
    func good() throws {
        let harness = try DaemonHarness()
        let payments = harness.directory + "/payments"
        try FileManager.default.createDirectory(atPath: payments, withIntermediateDirectories: true)
        let file = harness.directory + "/rulesd.conf"
        try Data(
            """
            rules = \(harness.rulesDirectory)
            socket = \(harness.socketPath)

            [namespace payments]
            rules = \(payments)
            isolation = process
            max_flags = 100

            """.utf8
        ).write(to: URL(fileURLWithPath: file))
        let run = try RulesdRun(["--check-config", "--config", file])
        #expect(run.status == 0, "\(run.standardError)")
        #expect(
            run.standardOutput == """
                \(file): ok
                namespace default: rules \(harness.rulesDirectory), isolation thread
                namespace payments: rules \(payments), isolation process

                """)
        #expect(run.standardError == "")
        #expect(access(harness.socketPath, F_OK) != 0, "--check-config bound the socket")
    }

    @Test("every problem is printed with its file:line, then a count; exit 2")
    func problems() throws {
        let harness = try DaemonHarness()
        let file = harness.directory + "/rulesd.conf"
        try Data(
            """
            rules = \(harness.rulesDirectory)
            [namespace payments]
            rules = \(harness.directory)/no-such-dir
            role_operate = user:no-such-user-rdc

            """.utf8
        ).write(to: URL(fileURLWithPath: file))
        let run = try RulesdRun(["--check-config", "--config", file])
        #expect(run.status == 2)
        #expect(run.standardOutput == "")
        #expect(
            run.standardError == """
                \(file):3: rules: the rules directory \(harness.directory)/no-such-dir of namespace 'payments' does not exist
                \(file):4: role_operate: no user named 'no-such-user-rdc'
                \(file): 2 problems

                """)
    }

    @Test("a mistake in a section stops --check-config, and a start, naming the file and line")
    func sectionMistake() throws {
        let harness = try DaemonHarness()
        let file = harness.directory + "/rulesd.conf"
        try Data("workers = 2\n[namespace payments]\nrules = /srv/p\nsocket = /tmp/x.sock\n".utf8).write(
            to: URL(fileURLWithPath: file))
        let check = try RulesdRun(["--check-config", "--config", file])
        #expect(check.status == 2)
        #expect(check.standardError.hasPrefix("\(file):4: 'socket' is a daemon-wide setting"), "\(check.standardError)")
        let start = try RulesdRun(["--config", file])
        #expect(start.status == 64)
        #expect(start.standardError.contains("\(file):4: 'socket' is a daemon-wide setting"))
    }

    @Test("the environment and the options are checked as a start would read them")
    func environmentAndOptions() throws {
        let run = try RulesdRun(
            ["--check-config", "--rules", "/nonexistent/rules.d"],
            environment: ["RULESD_ROLE_ADMIN": "group:no-such-group-rdc"])
        #expect(run.status == 2)
        #expect(
            run.standardError == """
                option --rules: the rules directory /nonexistent/rules.d of namespace 'default' does not exist
                environment variable RULESD_ROLE_ADMIN: no group named 'no-such-group-rdc'
                /dev/null: 2 problems

                """)
    }

    @Test("the example configuration of `make run` checks ok from the repository root")
    func runConfiguration() throws {
        let root = RulesctlProcess.repositoryRoot.path
        let run = try RulesdRun(["--check-config", "--config", "config/rulesd-run.conf"], directory: root)
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.standardOutput.contains("namespace payments: rules config/namespaces/payments, isolation thread"))
    }

    @Test("the payments example's rule tests pass")
    func paymentsExample() throws {
        let run = try RulesctlProcess.run(["test", "config/namespaces/payments"])
        #expect(run.status == 0, "\(run.standardOutput)\(run.standardError)")
        #expect(run.standardOutput.hasSuffix("10 passed, 0 failed\n"), "\(run.standardOutput)")
    }

    @Test("--print-settings prints the sections after the top level, and its output reads back the same")
    func printSettingsRoundTrip() throws {
        let harness = try DaemonHarness()
        let file = harness.directory + "/rulesd.conf"
        try Data(
            """
            [namespace payments]
            rules = /srv/rules/payments
            max_files = 40
            role_query = group:payments
            [namespace search]
            rules = /srv/rules/search

            """.utf8
        ).write(to: URL(fileURLWithPath: file))
        let first = try RulesdRun(["--print-settings", "--config", file, "--eval-timeout", "25ms"])
        #expect(first.status == 0, "\(first.standardError)")
        let sections = first.standardOutput.components(separatedBy: "\n\n")
        #expect(sections.count == 3)
        #expect(sections.dropFirst().first?.hasPrefix("[namespace payments]\nrules = /srv/rules/payments\n") == true)
        // The section inherited the option's budget, and says so explicitly.
        #expect(sections.dropFirst().first?.contains("\neval_timeout = 25ms\n") == true)
        #expect(sections.dropFirst().first?.hasSuffix("\nrole_query = group:payments") == true)
        let printed = harness.directory + "/printed.conf"
        try Data(first.standardOutput.utf8).write(to: URL(fileURLWithPath: printed))
        let second = try RulesdRun(["--print-settings", "--config", printed])
        #expect(second.standardOutput == first.standardOutput)
    }
}
