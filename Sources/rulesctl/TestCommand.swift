import ArgumentParser
import Glibc
import RuleEngine
import RuleModel

/// `rulesctl test DIR`: runs a rules directory's rule tests offline.
struct TestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Run the rule tests of a rules directory.",
        discussion: """
            Loads the directory the way rulesd does (without letting the tests gate the load), then runs every \
            rule test its files declare (test "name" { ... } and test "name" (function() ... end)) with the same \
            engine rulesd uses. Prints every failing test as file:line: test 'name' failed: expected ..., got \
            ..., then a last line 'N passed, N failed'. Exit status 0 when every test passes, 1 otherwise (also \
            when the directory does not load).

            --live asks the serving rulesd (--socket) instead: the tests of DIR (by default the daemon's own \
            rules directory) run against the daemon's answers, with the same output and exit status (3 when \
            the daemon cannot be reached). Function tests run in DIR's rule files, but their flag(), route() \
            and config() questions go to the daemon.

            --json prints one JSON object instead: {"passed":N,"failed":N,"results":[{"name","file","line",\
            "passed","message"},...]}. --junit FILE also writes a JUnit XML report (one testcase per test, \
            a failure element for each failing one) for CI systems that show test results.
            """
    )

    @Argument(
        help: ArgumentHelp(
            "The rules directory whose tests run (with --live: by default the daemon's own).", valueName: "dir"))
    var directory: String?

    @Flag(help: "Ask the serving rulesd (--socket) for the answers instead of loading the directory's rules.")
    var live = false

    @OptionGroup var socket: SocketOptions

    @Option(help: ArgumentHelp("Run only the tests whose name or file contains this text.", valueName: "text"))
    var filter: String?

    @Flag(help: "Print one JSON object for tools.")
    var json = false

    @Option(help: ArgumentHelp("Also write a JUnit XML report to this file.", valueName: "file"))
    var junit: String?

    func validate() throws {
        if directory == nil, !live { throw ValidationError("Missing expected argument '<dir>'") }
    }

    func run() throws {
        let printer = AnswerPrinter(json: json)
        let liveAnswers = live ? try LiveTestAnswers(socket: socket.path) : nil
        guard let directory = directory ?? liveAnswers?.rulesDirectory() else {
            Console.write(
                "rulesctl: rulesd did not say which rules directory it serves; give one\n", to: .standardError)
            throw ExitCode.failure
        }
        let outcome = LargeStack.run { [filter] () -> (RuleTestReport?, [RuleDiagnostic]) in
            switch OfflineRules.load(directory, runTests: false) {
            case .failed(let diagnostics): return (nil, diagnostics)
            case .loaded(let ruleSet, let evaluator):
                if let liveAnswers {
                    return (
                        RuleTestRunner.run(
                            in: evaluator, remote: liveAnswers, filter: filter, budget: ruleSet.limits.testBudget), []
                    )
                }
                return (RuleTestRunner.run(in: evaluator, filter: filter, budget: ruleSet.limits.testBudget), [])
            }
        }
        guard let report = outcome.0 else {
            try printer.emit(OfflineRules.invalidRules(directory, outcome.1))
            throw ExitCode.failure
        }
        if let junit {
            let xml = Self.junitReport(report, directory: directory)
            guard let file = fopen(junit, "w") else {
                Console.write(
                    "rulesctl: cannot write \(junit): \(String(cString: strerror(errno)))\n", to: .standardError)
                throw ExitCode.failure
            }
            let written = Array(xml.utf8).withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
            if fclose(file) != 0 || written != xml.utf8.count {
                Console.write("rulesctl: cannot write \(junit)\n", to: .standardError)
                throw ExitCode.failure
            }
        }
        if json {
            Console.write(JSONWriter.string(Self.jsonReport(report)) + "\n")
        } else {
            Console.writeLines(report.diagnostics.map(\.description))
            var last = "\(report.passedCount) passed, \(report.failedCount) failed"
            if report.notRun > 0 { last += ", \(report.notRun) not run (over budget)" }
            Console.writeLines([last])
        }
        if !report.allPassed { throw ExitCode.failure }
    }

    /// One `testsuite` named after the directory, one `testcase` per test (classname: its file), a `failure` per
    /// failing test, and the tests an exhausted budget left out as `skipped`.
    static func junitReport(_ report: RuleTestReport, directory: String) -> String {
        func escape(_ text: String) -> String {
            var out = ""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&quot;"
                case "\n", "\t": out.unicodeScalars.append(scalar)
                // XML 1.0 has no way to write other control characters.
                case _ where scalar.value < 0x20: out += "?"
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out
        }
        let total = report.results.count + report.notRun
        var xml = #"<?xml version="1.0" encoding="UTF-8"?>"# + "\n"
        xml +=
            #"<testsuite name="\#(escape(directory))" tests="\#(total)" failures="\#(report.failedCount)" "#
            + #"skipped="\#(report.notRun)">"# + "\n"
        for result in report.results {
            let test = result.test
            xml +=
                #"  <testcase classname="\#(escape(test.location.file))" name="\#(escape(test.name))" "#
                + #"file="\#(escape(test.location.file))" line="\#(test.location.line)""#
            if let failure = result.failure {
                let location = result.failureLocation ?? test.location
                xml += ">\n"
                xml +=
                    #"    <failure message="\#(escape(failure))">\#(escape(location.description + ": " + failure))"#
                xml += "</failure>\n  </testcase>\n"
            } else {
                xml += "/>\n"
            }
        }
        if report.notRun > 0 {
            xml +=
                #"  <testcase classname="rule tests" name="\#(report.notRun) tests over budget">"#
                + #"<skipped message="the rule tests' budget ran out"/></testcase>"# + "\n"
        }
        xml += "</testsuite>\n"
        return xml
    }

    /// `{"passed":N,"failed":N,"not_run":N,"results":[{"name","file","line","passed","message"?,"failure_file"?,
    /// "failure_line"?}]}`; a function test's failure gives the assertion's file:line.
    static func jsonReport(_ report: RuleTestReport) -> JSONValue {
        let results: [JSONValue] = report.results.map { result in
            var members: [(String, JSONValue)] = [
                ("name", .string(result.test.name)), ("file", .string(result.test.location.file)),
                ("line", .integer(Int64(result.test.location.line))), ("passed", .bool(result.passed)),
            ]
            if let failure = result.failure { members.append(("message", .string(failure))) }
            if let location = result.failureLocation {
                members.append(("failure_file", .string(location.file)))
                members.append(("failure_line", .integer(Int64(location.line))))
            }
            return .object(JSONObject(members))
        }
        return .object(
            JSONObject([
                ("passed", .integer(Int64(report.passedCount))), ("failed", .integer(Int64(report.failedCount))),
                ("not_run", .integer(Int64(report.notRun))), ("results", .array(results)),
            ]))
    }
}
