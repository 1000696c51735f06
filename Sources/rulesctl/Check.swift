import ArgumentParser
import RuleEngine
import RuleModel

/// `rulesctl check DIR`: validates a rules directory offline.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a rules directory the way rulesd loads it.",
        discussion: """
            Reads every *.lua file (and flagd flag file, *.flagd.json) under the directory (following symlinks, \
            skipping any path component that starts with a dot), loads them all into one sandboxed Lua state and validates the whole rule set, as \
            rulesd does before it puts a rule set live, then runs the rule tests the files declare (test "name" \
            { ... } and test "name" (function() ... end)) in it: a failing test fails the check like a syntax \
            error, at the test's file:line (a function test's: the failing assertion's). --no-tests skips them.

            On success prints one line per file with what it declares, then the revision (the SHA-256 that \
            identifies this exact content) and the totals. On failure prints every problem as file:line: message on \
            standard error and exits with status 1.

            --format json prints one JSON object instead: {"ok":true,"revision",...,"files":[...],"totals":{...}} \
            or {"ok":false,"error":{"code":"INVALID_RULES","message",...,"problems":[...]}}. --format github \
            prints each problem as a GitHub Actions workflow command (::error file=PATH,line=N::MESSAGE), so the \
            problems show on the changed lines of a pull request.
            """
    )

    /// How `check` reports.
    enum Format: String, ExpressibleByArgument, CaseIterable {
        case text, json, github
    }

    @Argument(help: ArgumentHelp("The rules directory to check.", valueName: "dir"))
    var directory: String

    @Option(help: "Output format: text (for people), json (for tools) or github (workflow annotations).")
    var format: Format = .text

    @Flag(name: .customLong("no-tests"), help: "Skip the rule tests (test \"name\" { ... } and function tests).")
    var noTests = false

    func run() throws {
        let printer = AnswerPrinter(json: format == .json)
        let outcome = LargeStack.run { [directory, noTests] () -> Outcome in
            switch OfflineRules.load(directory, runTests: !noTests) {
            case .failed(let diagnostics):
                return Outcome(
                    failure: OfflineRules.invalidRules(directory, diagnostics), diagnostics: diagnostics)
            case .loaded(let ruleSet, let evaluator):
                return Outcome(
                    lines: Self.summary(ruleSet), json: Self.jsonSummary(ruleSet), logs: evaluator.takeLogs(),
                    isEmpty: ruleSet.files.isEmpty)
            }
        }
        switch format {
        case .text: break
        case .json:
            if let failure = outcome.failure, case .error(let bytes) = failure {
                Console.write(#"{"ok":false,"error":"# + String(decoding: bytes, as: UTF8.self) + "}\n")
                throw ExitCode.failure
            }
            Console.write(outcome.json + "\n")
            return
        case .github:
            if outcome.failure != nil {
                let lines = outcome.diagnostics.map { Self.githubAnnotation($0, directory: directory) }
                Console.writeLines(lines)
                throw ExitCode.failure
            }
        }
        Console.writeLines(OfflineRules.logLines(outcome.logs, style: printer.errorStyle), to: .standardError)
        if let failure = outcome.failure { try printer.emit(failure) }
        if outcome.isEmpty {
            // Valid, but an empty rule set is more often a wrong path than an intent.
            Console.write("rulesctl: warning: no rule files (*.lua) under \(directory)\n", to: .standardError)
        }
        Console.writeLines(outcome.lines)
    }

    /// What loading found, carried back from the loading thread.
    private struct Outcome {
        var lines: [String] = []
        var json = ""
        var logs: [RuleLogLine] = []
        var isEmpty = false
        var failure: Answer?
        var diagnostics: [RuleDiagnostic] = []
    }

    /// `{"ok":true,"revision":…,"files":[{"path","flags","routes","configs"}],"totals":{…}}`.
    static func jsonSummary(_ ruleSet: RuleSet) -> String {
        var counts: [String: [Int]] = [:]
        for flag in ruleSet.flags { counts[flag.location.file, default: [0, 0, 0]][0] += 1 }
        for route in ruleSet.routes { counts[route.location.file, default: [0, 0, 0]][1] += 1 }
        for entry in ruleSet.configs { counts[entry.location.file, default: [0, 0, 0]][2] += 1 }
        let files: [JSONValue] = ruleSet.files.map { file in
            let c = counts[file.path] ?? [0, 0, 0]
            return [
                "path": .string(file.path), "flags": .integer(Int64(c[0])), "routes": .integer(Int64(c[1])),
                "configs": .integer(Int64(c[2])),
            ]
        }
        let object: JSONValue = .object(
            JSONObject([
                ("ok", .bool(true)), ("revision", .string(ruleSet.revision.hex)), ("files", .array(files)),
                ("data", ruleSet.dataSummary),
                (
                    "totals",
                    [
                        "files": .integer(Int64(ruleSet.files.count)), "flags": .integer(Int64(ruleSet.flags.count)),
                        "routes": .integer(Int64(ruleSet.routes.count)),
                        "configs": .integer(Int64(ruleSet.configs.count)),
                    ]
                ),
            ]))
        return JSONWriter.string(object)
    }

    /// `::error file=DIR/PATH,line=N::MESSAGE`, escaped as GitHub's workflow commands require (`%`, CR and LF
    /// everywhere; `:` and `,` in properties too). A problem of no particular file names the directory.
    static func githubAnnotation(_ diagnostic: RuleDiagnostic, directory: String) -> String {
        func escapeData(_ text: String) -> String {
            text.replacing("%", with: "%25").replacing("\r", with: "%0D").replacing("\n", with: "%0A")
        }
        func escapeProperty(_ text: String) -> String {
            escapeData(text).replacing(":", with: "%3A").replacing(",", with: "%2C")
        }
        let file = diagnostic.location.file
        guard !file.isEmpty else { return "::error::\(escapeData(diagnostic.message))" }
        let base = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        let path = base == "." ? file : base + "/" + file
        var properties = "file=\(escapeProperty(path))"
        if diagnostic.location.line > 0 { properties += ",line=\(diagnostic.location.line)" }
        return "::error \(properties)::\(escapeData(diagnostic.message))"
    }

    /// One line per file (`path  N flags  N routes  N configs`), then `revision: HEX` and `total: ...`.
    static func summary(_ ruleSet: RuleSet) -> [String] {
        var counts: [String: [Int]] = [:]
        for flag in ruleSet.flags { counts[flag.location.file, default: [0, 0, 0]][0] += 1 }
        for route in ruleSet.routes { counts[route.location.file, default: [0, 0, 0]][1] += 1 }
        for entry in ruleSet.configs { counts[entry.location.file, default: [0, 0, 0]][2] += 1 }
        let nouns = ["flag", "route", "config"]
        let files = ruleSet.files.map {
            (path: AnswerPrinter.printable($0.path), counts: counts[$0.path] ?? [0, 0, 0])
        }
        // Numbers right-aligned within their column, so the table reads down the columns.
        let digits = (0..<3).map { column in files.map { String($0.counts[column]).count }.max() ?? 1 }
        let rows = files.map { file -> [String] in
            [file.path]
                + (0..<3).map { column in
                    let number = String(file.counts[column])
                    return String(repeating: " ", count: digits[column] - number.count)
                        + count(file.counts[column], nouns[column])
                }
        }
        var lines = AnswerPrinter.columns(rows)
        lines += ruleSet.dataSummaryLines
        lines.append("revision: \(ruleSet.revision.hex)")
        lines.append(
            "total: "
                + [
                    count(ruleSet.files.count, "file"), count(ruleSet.flags.count, "flag"),
                    count(ruleSet.routes.count, "route"), count(ruleSet.configs.count, "config"),
                ].joined(separator: ", "))
        return lines
    }

    private static func count(_ n: Int, _ noun: String) -> String {
        "\(n) \(noun)\(n == 1 ? "" : "s")"
    }
}
