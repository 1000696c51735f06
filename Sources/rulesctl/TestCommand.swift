import ArgumentParser
import RuleEngine
import RuleModel

/// `rulesctl test DIR`: runs a rules directory's rule tests offline.
struct TestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Run the rule tests of a rules directory.",
        discussion: """
            Loads the directory the way rulesd does (without letting the tests gate the load), then runs every \
            rule test its files declare (test "name" { ... }) with the same engine rulesd uses. Prints every \
            failing test as file:line: test 'name' failed: expected ..., got ..., then a last line \
            'N passed, N failed'. Exit status 0 when every test passes, 1 otherwise (also when the directory \
            does not load).

            --json prints one JSON object instead: {"passed":N,"failed":N,"results":[{"name","file","line",\
            "passed","message"},...]}.
            """
    )

    @Argument(help: ArgumentHelp("The rules directory whose tests run.", valueName: "dir"))
    var directory: String

    @Option(help: ArgumentHelp("Run only the tests whose name or file contains this text.", valueName: "text"))
    var filter: String?

    @Flag(help: "Print one JSON object for tools.")
    var json = false

    func run() throws {
        let printer = AnswerPrinter(json: json)
        let outcome = LargeStack.run { [directory, filter] () -> (RuleTestReport?, [RuleDiagnostic]) in
            switch OfflineRules.load(directory, runTests: false) {
            case .failed(let diagnostics): return (nil, diagnostics)
            case .loaded(let ruleSet, let evaluator):
                return (RuleTestRunner.run(in: evaluator, filter: filter, budget: ruleSet.limits.testBudget), [])
            }
        }
        guard let report = outcome.0 else {
            try printer.emit(OfflineRules.invalidRules(directory, outcome.1))
            throw ExitCode.failure
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

    /// `{"passed":N,"failed":N,"not_run":N,"results":[{"name","file","line","passed","message"?}]}`.
    static func jsonReport(_ report: RuleTestReport) -> JSONValue {
        let results: [JSONValue] = report.results.map { result in
            var members: [(String, JSONValue)] = [
                ("name", .string(result.test.name)), ("file", .string(result.test.location.file)),
                ("line", .integer(Int64(result.test.location.line))), ("passed", .bool(result.passed)),
            ]
            if let failure = result.failure { members.append(("message", .string(failure))) }
            return .object(JSONObject(members))
        }
        return .object(
            JSONObject([
                ("passed", .integer(Int64(report.passedCount))), ("failed", .integer(Int64(report.failedCount))),
                ("not_run", .integer(Int64(report.notRun))), ("results", .array(results)),
            ]))
    }
}
