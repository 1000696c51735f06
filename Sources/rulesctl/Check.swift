import ArgumentParser
import RuleEngine
import RuleModel

/// `rulesctl check DIR`: validates a rules directory offline.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a rules directory the way rulesd loads it.",
        discussion: """
            Reads every *.lua file under the directory (following symlinks, skipping any path component that \
            starts with a dot), loads them all into one sandboxed Lua state and validates the whole rule set, as \
            rulesd does before it puts a rule set live.

            On success prints one line per file with what it declares, then the revision (the SHA-256 that \
            identifies this exact content) and the totals. On failure prints every problem as file:line: message on \
            standard error and exits with status 1.
            """
    )

    @Argument(help: ArgumentHelp("The rules directory to check.", valueName: "dir"))
    var directory: String

    func run() throws {
        let printer = AnswerPrinter(json: false)
        let outcome = LargeStack.run { [directory] () -> Outcome in
            switch OfflineRules.load(directory) {
            case .failed(let diagnostics):
                return Outcome(failure: OfflineRules.invalidRules(directory, diagnostics))
            case .loaded(let ruleSet, let evaluator):
                return Outcome(
                    lines: Self.summary(ruleSet), logs: evaluator.takeLogs(), isEmpty: ruleSet.files.isEmpty)
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
        var logs: [RuleLogLine] = []
        var isEmpty = false
        var failure: Answer?
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
