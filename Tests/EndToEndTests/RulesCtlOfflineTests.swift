import Foundation
import RuleModel
import RulesTestSupport
import Testing

/// The built `rulesctl` binary, run as a user would run it.
///
/// Shared by the end-to-end tests of the command-line tool (here and in RulesDocTests).
struct RulesctlProcess {
    struct Outcome: Sendable {
        var status: Int32
        var standardOutput: String
        var standardError: String

        /// Standard output parsed as one JSON value.
        func json() throws -> JSONValue {
            try JSONParser().parse(standardOutput.trimmingCharacters(in: .newlines))
        }
    }

    /// The repository checkout: relative paths in commands (config/rules.d) are relative to it.
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `rulesctl` next to the running test executable: SwiftPM puts every product of a build in one directory.
    static let executable: URL? = {
        let running =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        var directory = URL(fileURLWithPath: running).deletingLastPathComponent()
        // On macOS the test executable sits inside a bundle (rulesdPackageTests.xctest/Contents/MacOS).
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent("rulesctl")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory.deleteLastPathComponent()
        }
        return nil
    }()

    /// Source files modified after the binary was linked. `swift test` recompiles the rulesctl module for the test
    /// bundle but does not relink the rulesctl executable, so without `swift build` first these tests would quietly
    /// run an old binary. Only a hint: a file touched without a change is newer too, and then no build relinks.
    static let newerSources: [String] = {
        guard let executable,
            let built = try? executable.resourceValues(forKeys: [.contentModificationDateKey]).contentModificationDate
        else { return [] }
        var newer: [String] = []
        for target in ["rulesctl", "RuleEngine", "RuleModel", "CRuleSandbox"] {
            let directory = repositoryRoot.appendingPathComponent("Sources/\(target)")
            let files = FileManager.default.enumerator(
                at: directory, includingPropertiesForKeys: [.contentModificationDateKey])
            while let file = files?.nextObject() as? URL {
                let modified = try? file.resourceValues(forKeys: [.contentModificationDateKey]).contentModificationDate
                if let modified, modified > built { newer.append("Sources/\(target)/\(file.lastPathComponent)") }
            }
        }
        return newer
    }()

    /// Printed once, before the first run.
    private static let stalenessHint: Void = {
        guard !newerSources.isEmpty else { return }
        let note =
            "note: \(newerSources.joined(separator: ", ")) changed after rulesctl was linked; "
            + "if these tests fail, run swift build first\n"
        FileHandle.standardError.write(Data(note.utf8))
    }()

    /// Runs `rulesctl arguments...` from the repository root without a terminal.
    /// - Parameter mergeOutput: send standard error to the same place as standard output, as a terminal shows
    ///   them (then `standardError` is empty).
    static func run(
        _ arguments: [String], mergeOutput: Bool = false, environment: [String: String] = [:]
    ) throws -> Outcome {
        let executable = try #require(executable, "rulesctl was not found next to the test executable: swift build")
        _ = stalenessHint
        // Files rather than pipes: a child that fills a pipe nobody is reading yet would never finish.
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("rulesctl-run-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let outURL = scratch.appendingPathComponent("stdout")
        let errURL = scratch.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL)
        let err = try FileHandle(forWritingTo: errURL)
        defer {
            try? out.close()
            try? err.close()
        }

        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.currentDirectoryURL = repositoryRoot
        var env = ProcessInfo.processInfo.environment
        env["NO_COLOR"] = "1"
        for (name, value) in environment { env[name] = value }
        process.environment = env
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = mergeOutput ? out : err
        try process.run()
        process.waitUntilExit()
        return Outcome(
            status: process.terminationStatus,
            standardOutput: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
            standardError: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
    }
}

/// A rules directory made for one test and removed afterwards.
struct TemporaryRules {
    let url: URL
    var path: String { url.path }

    /// Writes `files` (relative path: content) into a new directory.
    init(_ files: [String: String]) throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("rulesctl-rules-\(UUID().uuidString)")
        for (relative, content) in files {
            let file = url.appendingPathComponent(relative)
            try FileManager.default.createDirectory(
                at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(content.utf8).write(to: file)
        }
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func remove() {
        try? FileManager.default.removeItem(at: url)
    }
}

private let example = "config/rules.d"

/// Echoes the request's fields as "name=type:value" pairs, so tests can see how -c typed them.
private let typeProbe = """
    local function describe(v)
        local t = math.type(v) or type(v)
        if t == "table" then
            local parts = {}
            for k, x in pairs(v) do parts[#parts + 1] = tostring(k) .. "=" .. describe(x) end
            table.sort(parts)
            return "{" .. table.concat(parts, ",") .. "}"
        end
        return t .. ":" .. tostring(v)
    end

    route "probe" {
        target = function(req)
            return describe(req.v)
        end,
    }
    """

@Suite("rulesctl offline: check")
struct RulesCtlCheckTests {
    @Test("check passes on the example rule set and lists every file with its counts")
    func checkExample() throws {
        let run = try RulesctlProcess.run(["check", example])
        #expect(run.status == 0)
        #expect(run.standardError == "")
        let lines = run.standardOutput.split(separator: "\n").map(String.init)
        for file in ["flags/checkout.lua", "flags/growth.lua", "flags/mobile.lua", "routes.lua", "settings/http.lua"] {
            #expect(lines.contains { $0.hasPrefix(file + " ") }, "no line for \(file)")
        }
        #expect(lines.contains { $0.hasPrefix("routes.lua") && $0.contains("10 routes") })
    }

    @Test("check prints the full revision and the totals")
    func checkRevisionAndTotals() throws {
        let run = try RulesctlProcess.run(["check", example])
        let lines = run.standardOutput.split(separator: "\n").map(String.init)
        let revision = try #require(lines.first { $0.hasPrefix("revision: ") }).dropFirst("revision: ".count)
        #expect(revision.count == 64)
        #expect(revision.allSatisfy { "0123456789abcdef".contains($0) })
        #expect(lines.last == "total: 7 files, 12 flags, 10 routes, 13 configs")
    }

    @Test("check gives an identical copy of a directory the same revision")
    func checkRevisionIsContentOnly() throws {
        let copy = try TemporaryRules([:])
        defer { copy.remove() }
        try FileManager.default.removeItem(at: copy.url)
        try FileManager.default.copyItem(
            at: RulesctlProcess.repositoryRoot.appendingPathComponent(example), to: copy.url)
        let original = try RulesctlProcess.run(["check", example])
        let copied = try RulesctlProcess.run(["check", copy.path])
        #expect(copied.status == 0)
        #expect(copied.standardOutput == original.standardOutput)
    }

    @Test("check --format json gives the revision, every file's counts and the totals as one object")
    func checkJSON() throws {
        let run = try RulesctlProcess.run(["check", "--format", "json", example])
        #expect(run.status == 0)
        let object = try run.json()
        #expect(object["ok"] == true)
        #expect(object["revision"]?.stringValue?.count == 64)
        #expect(object["totals"]?["routes"] == 10)
        #expect(object["files"]?.arrayValue?.contains { $0["path"] == "routes.lua" && $0["routes"] == 10 } == true)
    }

    @Test("check --format json on a broken directory gives INVALID_RULES with every problem, and exits 1")
    func checkJSONBroken() throws {
        let rules = try TemporaryRules(["a.lua": "config \"a\" (1\n"])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", "--format", "json", rules.path])
        #expect(run.status == 1)
        let object = try run.json()
        #expect(object["ok"] == false)
        #expect(object["error"]?["code"] == "INVALID_RULES")
        #expect(object["error"]?["problems"]?[0]?["file"] == "a.lua")
        #expect(object["error"]?["problems"]?[0]?["line"] == 2)
    }

    @Test("check --format github prints one workflow annotation per problem, with file and line, and exits 1")
    func checkGitHub() throws {
        let rules = try TemporaryRules([
            "ok.lua": "config \"a\" (1)\n",
            "flags/x.lua": "flag \"x\" {\n    default = \"off\",\n    defualt = \"on\",\n}\n",
        ])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", "--format", "github", rules.path])
        #expect(run.status == 1)
        let lines = run.standardOutput.split(separator: "\n").map(String.init)
        #expect(!lines.isEmpty)
        #expect(lines.allSatisfy { $0.hasPrefix("::error file=\(rules.path)/flags/x.lua,line=") }, "\(lines)")
        #expect(lines.contains { $0.contains("line=1::") && $0.contains("unknown field 'defualt'") }, "\(lines)")
    }

    @Test("check --format github escapes what workflow commands reserve")
    func checkGitHubEscapes() throws {
        let rules = try TemporaryRules(["a,b.lua": "error(\"100% broken\")\n"])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", "--format", "github", rules.path])
        #expect(run.status == 1)
        #expect(run.standardOutput.contains("a%2Cb.lua,line=1::"), "\(run.standardOutput)")
        #expect(run.standardOutput.contains("100%25 broken"), "\(run.standardOutput)")
    }

    @Test("check reports a broken file as file:line: message on stderr and exits 1")
    func checkBroken() throws {
        let rules = try TemporaryRules([
            "good.lua": "config \"a\" (1)\n",
            "flags/broken.lua": "flag \"x\" {\n    default = \"off\",\n    defualt = \"on\",\n}\n",
        ])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", rules.path])
        #expect(run.status == 1)
        #expect(run.standardOutput == "")
        let lines = run.standardError.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("flags/broken.lua:1: flag 'x': unknown field 'defualt'") == true)
        #expect(lines.last == "rulesctl: INVALID_RULES: the rules in \(rules.path) do not load (1 problem)")
    }

    @Test("check reports every problem in every file, not just the first")
    func checkAllProblems() throws {
        let rules = try TemporaryRules([
            "a.lua": "local n = 0\nflag \"a\" { rule = function(ctx) n = n + 1 end }\n",
            "b.lua": "route \"r\" {\n  priority = 1,\n",
        ])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", rules.path])
        #expect(run.status == 1)
        #expect(run.standardError.contains("a.lua:2: a rule function assigns to the file-level variable 'n'"))
        #expect(run.standardError.contains("b.lua:3: "))
        #expect(run.standardError.contains("(2 problems)"))
    }

    @Test("check reports a rule file the tree reader cannot read")
    func checkUnreadable() throws {
        let rules = try TemporaryRules(["ok.lua": "config \"a\" (1)\n"])
        defer { rules.remove() }
        try FileManager.default.createSymbolicLink(
            atPath: rules.url.appendingPathComponent("loop.lua").path, withDestinationPath: "loop.lua")
        let run = try RulesctlProcess.run(["check", rules.path])
        #expect(run.status == 1)
        #expect(run.standardError.hasPrefix("loop.lua: cannot read: "))
    }

    @Test("check skips dot components and files that are not *.lua")
    func checkSkipsHidden() throws {
        let rules = try TemporaryRules([
            "ok.lua": "config \"a\" (1)\n",
            ".git/hooks.lua": "this is not Lua",
            ".ok.lua.swp": "nor this",
            "notes.md": "nor this",
        ])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", rules.path])
        #expect(run.status == 0)
        #expect(run.standardOutput.hasSuffix("total: 1 file, 0 flags, 0 routes, 1 config\n"))
    }

    @Test("check passes an empty directory but warns that it has no rule files")
    func checkEmpty() throws {
        let rules = try TemporaryRules([:])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["check", rules.path])
        #expect(run.status == 0)
        #expect(run.standardError == "rulesctl: warning: no rule files (*.lua) under \(rules.path)\n")
        #expect(run.standardOutput.hasSuffix("total: 0 files, 0 flags, 0 routes, 0 configs\n"))
    }

    @Test("check on a missing directory says so and exits 1")
    func checkMissing() throws {
        let run = try RulesctlProcess.run(["check", "/nonexistent/rules.d"])
        #expect(run.status == 1)
        #expect(
            run.standardError
                == "rulesctl: INVALID_RULES: cannot open the rules directory /nonexistent/rules.d: "
                + "No such file or directory\n")
    }
}

@Suite("rulesctl offline: eval flag and flags")
struct RulesCtlEvalFlagTests {
    @Test("eval flag prints aligned name: value lines")
    func flagHuman() throws {
        let run = try RulesctlProcess.run([
            "eval", "--rules", example, "flag", "search.semantic", "-c", "user.plan=pro",
        ])
        #expect(run.status == 0)
        #expect(
            run.standardOutput == """
                key:     search.semantic
                value:   true
                variant: on
                reason:  TARGETING_MATCH
                source:  flags/growth.lua:15

                """)
    }

    @Test("eval flag --json prints the result object on one line, members in the daemon's order")
    func flagJSON() throws {
        let run = try RulesctlProcess.run([
            "eval", "--rules", example, "flag", "pricing.display", "-c", "country=FR", "--json",
        ])
        #expect(run.status == 0)
        #expect(
            run.standardOutput
                == #"{"key":"pricing.display","value":"incl. VAT","variant":"gross","reason":"TARGETING_MATCH","#
                + #""source":"flags/growth.lua:37"}"# + "\n")
    }

    @Test("eval flag of a flag without a rule answers its default with reason STATIC")
    func flagStatic() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "flag", "checkout.kill-switch", "--json"])
        let object = try run.json()
        #expect(object["reason"] == "STATIC")
        #expect(object["value"] == false)
    }

    @Test("eval flag of a disabled flag answers its default with reason DISABLED")
    func flagDisabled() throws {
        let run = try RulesctlProcess.run([
            "eval", "-r", example, "flag", "support.live-chat", "-c", "user.plan=enterprise", "--json",
        ])
        let object = try run.json()
        #expect(object["reason"] == "DISABLED")
        #expect(object["variant"] == "off")
    }

    @Test("eval flag of a rule that returns nil answers the default with reason DEFAULT")
    func flagDefault() throws {
        let run = try RulesctlProcess.run([
            "eval", "-r", example, "flag", "pricing.display", "-c", "country=US", "--json",
        ])
        let object = try run.json()
        #expect(object["reason"] == "DEFAULT")
        #expect(object["variant"] == "net")
    }

    @Test("eval flag of a failing rule serves the default with ERROR and the error, and exits 0")
    func flagRuleError() throws {
        let rules = try TemporaryRules([
            "f.lua": "flag \"boom\" {\n    default = \"off\",\n    rule = function(ctx) return ctx.user.plan end,\n}\n"
        ])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["eval", "-r", rules.path, "flag", "boom", "--json"])
        #expect(run.status == 0)
        let object = try run.json()
        #expect(object["reason"] == "ERROR")
        #expect(object["variant"] == "off")
        #expect(object["error_code"] == "GENERAL")
        #expect(object["error_message"] == "f.lua:3: attempt to index a nil value (field 'user')")
    }

    @Test("eval flag of an unknown key prints rulesctl: FLAG_NOT_FOUND on stderr and exits 1")
    func flagNotFound() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "flag", "no.such-flag"])
        #expect(run.status == 1)
        #expect(run.standardOutput == "")
        #expect(run.standardError == "rulesctl: FLAG_NOT_FOUND: no flag named 'no.such-flag'\n")
    }

    @Test("eval flag --json of an unknown key prints the error object on stdout and exits 1")
    func flagNotFoundJSON() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "flag", "no.such-flag", "--json"])
        #expect(run.status == 1)
        #expect(run.standardOutput == #"{"code":"FLAG_NOT_FOUND","message":"no flag named 'no.such-flag'"}"# + "\n")
        #expect(run.standardError == "")
    }

    @Test("eval flags --json answers every flag with value, variant and reason")
    func flagsJSON() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "flags", "-c", "user_id=u-42", "--json"])
        #expect(run.status == 0)
        let object = try run.json()
        #expect(object.objectValue?.keys == ["flags"])
        let flags = try #require(object["flags"]?.objectValue)
        #expect(flags.count == 12)
        #expect(flags.keys == flags.keys.sorted())
        for (key, answer) in flags {
            #expect(answer.objectValue?.keys == ["value", "variant", "reason"], "\(key)")
        }
    }

    @Test("eval flags prints a table with one row per flag")
    func flagsTable() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "flags", "-c", "user_id=u-42", "--at", "0"])
        let lines = run.standardOutput.split(separator: "\n").map(String.init)
        #expect(lines.count == 13)
        #expect(lines.first?.split(separator: " ") == ["KEY", "VARIANT", "REASON", "VALUE"])
        #expect(lines.contains { $0.split(separator: " ") == ["support.live-chat", "off", "DISABLED", "false"] })
    }

    @Test("eval flags shows the error of each failing rule in an ERROR column")
    func flagsErrorColumn() throws {
        let rules = try TemporaryRules(["f.lua": "flag \"bad\" { rule = function(ctx) return \"maybe\" end }\n"])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["eval", "-r", rules.path, "flags"])
        #expect(run.status == 0)
        #expect(
            run.standardOutput == """
                KEY  VARIANT  REASON  VALUE  ERROR
                bad  off      ERROR   false  TYPE_MISMATCH: rule returned 'maybe', which is not a variant of flag 'bad'

                """)
    }

    @Test("--at pins what now() returns")
    func atPinsNow() throws {
        let during = try RulesctlProcess.run([
            "eval", "-r", example, "flag", "promo.spring-sale", "--at", "2026-04-01T09:00:00Z", "--json",
        ])
        let after = try RulesctlProcess.run([
            "eval", "-r", example, "flag", "promo.spring-sale", "--at", "2026-04-07T00:00:00Z", "--json",
        ])
        #expect(try during.json()["variant"] == "on")
        #expect(try after.json()["variant"] == "off")
    }

    @Test("--at takes seconds since the epoch and RFC 3339 times with offsets alike")
    func atFormats() throws {
        let rules = try TemporaryRules([
            "t.lua": "route \"now\" { target = function(req) return tostring(now()) end }\n"
        ])
        defer { rules.remove() }
        let times = [
            "1775034000", "1775034000.0", "2026-04-01T09:00:00Z", "2026-04-01T11:00:00+02:00",
            "2026-04-01T04:00:00-05:00",
        ]
        for at in times {
            let run = try RulesctlProcess.run(["eval", "-r", rules.path, "route", "--at", at, "--json"])
            #expect(try run.json()["target"] == "1775034000", "\(at)")
        }
    }

    @Test("rule logs go to stderr and leave stdout to the answer")
    func logsOnStderr() throws {
        let run = try RulesctlProcess.run([
            "eval", "-r", example, "flag", "mobile.debug-logging", "-c", "client_ip=10.20.1.2", "--json",
        ])
        #expect(run.status == 0)
        #expect(try run.json()["variant"] == "verbose")
        #expect(run.standardError == "[info] mobile.debug-logging: debug logging for 10.20.1.2\n")
    }
}

@Suite("rulesctl offline: eval route and config")
struct RulesCtlEvalRouteConfigTests {
    @Test("eval route prints the matching route, its target and its source")
    func routeHuman() throws {
        let run = try RulesctlProcess.run([
            "eval", "-r", example, "route", "-c", "method=POST", "-c", "path=/api/orders",
        ])
        #expect(run.status == 0)
        #expect(
            run.standardOutput == """
                route:  orders-write
                target: orders-primary
                source: routes.lua:66

                """)
    }

    @Test("eval route --json prints {route, target, source}")
    func routeJSON() throws {
        let run = try RulesctlProcess.run([
            "eval", "-r", example, "route", "--request", #"{"path":"/","headers":{"x-region":"ap"}}"#, "--json",
        ])
        #expect(run.standardOutput == #"{"route":"web","target":"web-ap","source":"routes.lua:93"}"# + "\n")
    }

    @Test("eval route with no matching route is NO_ROUTE, exit 1")
    func routeNoRoute() throws {
        let rules = try TemporaryRules([
            "r.lua": "route \"only\" { match = function(req) return req.path == \"/x\" end, target = \"x\" }\n"
        ])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["eval", "-r", rules.path, "route", "-c", "path=/y"])
        #expect(run.status == 1)
        #expect(run.standardError == "rulesctl: NO_ROUTE: no route matches the request\n")
    }

    @Test("eval route --json of a failing match function is RULE_ERROR with the route and its source")
    func routeRuleError() throws {
        let rules = try TemporaryRules([
            "r.lua": """
            route "fails" {
              match = function(req) return req.path:sub(1, 1) == "/" end,
              target = "x",
            }

            """
        ])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["eval", "-r", rules.path, "route", "--json"])
        #expect(run.status == 1)
        let object = try run.json()
        #expect(object["code"] == "RULE_ERROR")
        #expect(object["rule_error_code"] == "GENERAL")
        #expect(object["route"] == "fails")
        #expect(object["source"] == "r.lua:1")
    }

    @Test("eval config KEY prints the key and its value as JSON")
    func configKey() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "config", "db.pool"])
        #expect(run.status == 0)
        #expect(run.standardOutput == "key:   db.pool\nvalue: {\"idle_s\":30,\"size\":10}\n")
    }

    @Test("eval config KEY --json prints {key, value}")
    func configKeyJSON() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "config", "http.user_agent", "--json"])
        #expect(
            run.standardOutput
                == #"{"key":"http.user_agent","value":"shop-backend/4.2 (+https://example.com/bot)"}"# + "\n")
    }

    @Test("eval config --prefix --json prints every value under the prefix")
    func configPrefix() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "config", "--prefix", "cache.", "--json"])
        #expect(
            run.standardOutput
                == #"{"values":{"cache.enabled":true,"cache.key_prefix":"shop:v4:","cache.ttl_s":300}}"# + "\n")
    }

    @Test("eval config of an unknown key is CONFIG_NOT_FOUND, exit 1")
    func configNotFound() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "config", "http.nope"])
        #expect(run.status == 1)
        #expect(run.standardError == "rulesctl: CONFIG_NOT_FOUND: no config value named 'http.nope'\n")
    }

    @Test("eval on a directory that does not load is INVALID_RULES with every diagnostic")
    func evalInvalidRules() throws {
        let rules = try TemporaryRules(["a.lua": "flag \"a\" { default = 3 }\n"])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["eval", "-r", rules.path, "flags"])
        #expect(run.status == 1)
        #expect(
            run.standardError == """
                a.lua:1: flag 'a': 'default' must be a string, not a number
                rulesctl: INVALID_RULES: the rules in \(rules.path) do not load (1 problem)

                """)
    }

    @Test("eval --json on a directory that does not load prints the error object with its diagnostics")
    func evalInvalidRulesJSON() throws {
        let rules = try TemporaryRules(["a.lua": "flag \"a\" { default = 3 }\n"])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["eval", "-r", rules.path, "config", "x", "--json"])
        #expect(run.status == 1)
        let object = try run.json()
        #expect(object["code"] == "INVALID_RULES")
        #expect(
            object["problems"] == [
                ["file": "a.lua", "line": 1, "message": "flag 'a': 'default' must be a string, not a number"]
            ])
    }

    @Test("eval config --prefix that matches nothing is CONFIG_NOT_FOUND, exit 1")
    func configPrefixNotFound() throws {
        let run = try RulesctlProcess.run(["eval", "-r", example, "config", "--prefix", "smtp."])
        #expect(run.status == 1)
        #expect(run.standardError == "rulesctl: CONFIG_NOT_FOUND: no config values under the prefix 'smtp.'\n")
    }
}

@Suite("rulesctl offline: contexts, requests and usage")
struct RulesCtlInputTests {
    @Test(
        "-c types values as JSON when they parse as JSON, otherwise as strings",
        arguments: [
            ("v=42", "integer:42"),
            ("v=-7", "integer:-7"),
            ("v=2.5", "float:2.5"),
            ("v=1e3", "float:1000.0"),
            ("v=true", "boolean:true"),
            ("v=false", "boolean:false"),
            ("v=null", "nil:nil"),
            ("v=pro", "string:pro"),
            ("v=\"42\"", "string:42"),
            ("v=007", "string:007"),
            ("v= 42", "string: 42"),
            ("v=", "string:"),
            ("v=a=b", "string:a=b"),
            ("v=[1,\"x\"]", "{1=integer:1,2=string:x}"),
            ("v={\"k\":1}", "{k=integer:1}"),
        ])
    func fieldTyping(argument: String, expected: String) throws {
        let rules = try TemporaryRules(["probe.lua": typeProbe])
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["eval", "-r", rules.path, "route", "-c", argument, "--json"])
        #expect(run.status == 0)
        #expect(try run.json()["target"] == .string(expected))
    }

    @Test("-c with dotted keys builds nested objects")
    func dottedKeys() throws {
        let rules = try TemporaryRules(["probe.lua": typeProbe])
        defer { rules.remove() }
        let run = try RulesctlProcess.run([
            "eval", "-r", rules.path, "route", "-c", "v.user.plan=pro", "-c", "v.user.seats=5", "-c", "v.beta=true",
            "--json",
        ])
        #expect(try run.json()["target"] == "{beta=boolean:true,user={plan=string:pro,seats=integer:5}}")
    }

    @Test("-c fields are set into the --request object, replacing what it had")
    func fieldsMergeIntoObject() throws {
        let rules = try TemporaryRules(["probe.lua": typeProbe])
        defer { rules.remove() }
        let run = try RulesctlProcess.run([
            "eval", "-r", rules.path, "route", "--request", #"{"v":{"a":1,"b":2}}"#, "-c", "v.b=3", "--json",
        ])
        #expect(try run.json()["target"] == "{a=integer:1,b=integer:3}")
    }

    @Test("--rules may stand before or after the subcommand's name")
    func rulesPosition() throws {
        let before = try RulesctlProcess.run(["eval", "--rules", example, "config", "http.retries", "--json"])
        let after = try RulesctlProcess.run(["eval", "config", "http.retries", "--rules", example, "--json"])
        #expect(before.status == 0)
        #expect(before.standardOutput == after.standardOutput)
    }

    @Test(
        "usage errors exit 2",
        arguments: [
            ["eval", "flag", "x"],
            ["eval", "-r", example, "flag"],
            ["eval", "-r", example, "flag", "x", "-c", "novalue"],
            ["eval", "-r", example, "flag", "x", "-c", ".a=1"],
            ["eval", "-r", example, "flag", "x", "-c", "a=1", "-c", "a.b=2"],
            ["eval", "-r", example, "flags", "--context", "[1]"],
            ["eval", "-r", example, "route", "--request", "{"],
            ["eval", "-r", example, "route", "--at", "tomorrow"],
            ["eval", "-r", example, "config"],
            ["eval", "-r", example, "config", "a", "--prefix", "b"],
            ["check"],
            ["frobnicate"],
        ])
    func usageErrors(arguments: [String]) throws {
        let run = try RulesctlProcess.run(arguments)
        #expect(run.status == 2)
        #expect(run.standardOutput == "")
        #expect(run.standardError.hasPrefix("Error: "))
    }

    @Test("output carries no colour codes when stdout is not a terminal")
    func noColourInPipes() throws {
        let run = try RulesctlProcess.run(
            ["eval", "-r", example, "flags", "-c", "user_id=u-1"], environment: ["NO_COLOR": ""])
        #expect(run.status == 0)
        #expect(!run.standardOutput.contains("\u{1B}["))
    }
}

/// Extra rules for the comparison with the daemon: a route that fails, so RULE_ERROR is compared too.
private let failingRoute = """
    route "broken" {
        priority = 1000,
        match = function(req) return req.path == "/broken" and req.x.y end,
        target = "x",
    }
    """

@Suite("rulesctl eval answers exactly as the daemon does")
struct RulesCtlMatchesDaemonTests {
    let daemon: DaemonHarness

    init() throws {
        var rules: [String: String] = ["zz/broken.lua": failingRoute]
        let root = RulesctlProcess.repositoryRoot.appendingPathComponent(example)
        let files = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)
        while let file = files?.nextObject() as? URL {
            guard file.pathExtension == "lua" else { continue }
            let relative = String(file.standardizedFileURL.path.dropFirst(root.standardizedFileURL.path.count + 1))
            rules[relative] = try String(contentsOf: file, encoding: .utf8)
        }
        daemon = try DaemonHarness(rules: rules)
        try daemon.start()
    }

    /// The `result` or `error` member of the daemon's answer to `request`, as the bytes it sent.
    private func daemonAnswer(_ request: String) throws -> String {
        let client = try daemon.connect()
        try client.send(request + "\n")
        let line = try #require(try client.readLine())
        let bytes = Array(line.utf8)
        var members: [JSONMember] = []
        try bytes.withUnsafeBytes { try JSONObjectScanner().scan($0, into: &members) }
        let member = try #require(
            bytes.withUnsafeBytes { raw in
                members.first { $0.keyEquals("result", in: raw) || $0.keyEquals("error", in: raw) }
            })
        return String(decoding: bytes[member.valueRange], as: UTF8.self)
    }

    @Test(
        "the --json output is the result or error member of the daemon's answer, byte for byte",
        arguments: [
            (
                #"{"op":"flag","flag":"checkout.new-flow","context":{"user_id":"u-42"}}"#,
                ["flag", "checkout.new-flow", "-c", "user_id=u-42"]
            ),
            (
                #"{"op":"flag","flag":"promo.spring-sale","at":1775034000}"#,
                ["flag", "promo.spring-sale", "--at", "2026-04-01T09:00:00Z"]
            ),
            (
                #"{"op":"flag","flag":"checkout.payment-page","context":{"user_id":"u-7","email":"x@example.com"}}"#,
                ["flag", "checkout.payment-page", "--context", #"{"user_id":"u-7","email":"x@example.com"}"#]
            ),
            (#"{"op":"flag","flag":"no.such-flag"}"#, ["flag", "no.such-flag"]),
            (
                #"{"op":"flags","context":{"user_id":"u-42","country":"DE","user":{"plan":"pro"}},"at":1775034000}"#,
                ["flags", "-c", "user_id=u-42", "-c", "country=DE", "-c", "user.plan=pro", "--at", "1775034000"]
            ),
            (
                #"{"op":"route","request":{"method":"DELETE","path":"/api/orders/19"}}"#,
                ["route", "-c", "method=DELETE", "-c", "path=/api/orders/19"]
            ),
            (#"{"op":"route","request":{"path":"/broken"}}"#, ["route", "-c", "path=/broken"]),
            (#"{"op":"config","key":"db.pool"}"#, ["config", "db.pool"]),
            (#"{"op":"config","key":"db.nope"}"#, ["config", "db.nope"]),
            (#"{"op":"config","prefix":"http."}"#, ["config", "--prefix", "http."]),
            (#"{"op":"config","prefix":"smtp."}"#, ["config", "--prefix", "smtp."]),
        ])
    func sameAnswer(request: String, arguments: [String]) throws {
        let expected = try daemonAnswer(request)
        let run = try RulesctlProcess.run(["eval", "--rules", daemon.rulesDirectory] + arguments + ["--json"])
        #expect(run.standardOutput == expected + "\n")
    }

    @Test("a context too deep to use is the same INVALID_REQUEST offline as from the daemon")
    func sameInvalidContext() throws {
        // 33 levels: past the engine's 32 for contexts, within what the daemon's request parser reads at all.
        let deep = String(repeating: #"{"a":"#, count: 33) + "1" + String(repeating: "}", count: 33)
        let expected = try daemonAnswer(#"{"op":"flags","context":"# + deep + "}")
        let run = try RulesctlProcess.run([
            "eval", "--rules", daemon.rulesDirectory, "flags", "--context", deep, "--json",
        ])
        #expect(run.status == 1)
        #expect(run.standardOutput == expected + "\n")
    }
}
