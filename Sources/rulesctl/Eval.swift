import ArgumentParser
import RuleEngine
import RuleModel
import RulesProtocol

/// `rulesctl eval`: answers questions about a rules directory offline, exactly as rulesd would.
///
/// Each subcommand asks its question through `EvaluationAnswers`, the code the daemon's workers answer with, so the
/// `--json` output is the `result` or `error` member of the daemon's answer line, byte for byte.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a rules directory offline and print what rulesd would answer.",
        discussion: """
            Loads the directory as rulesd does and answers one question with the same engine and the same answer \
            encoder, so the output (and its --json form) is what the daemon would send for that rule set.

            Contexts and requests are JSON objects given with --context / --request, or built field by field with \
            -c key=value (repeatable; -c fields are set into the JSON object when both are given).
            """,
        subcommands: [FlagCommand.self, FlagsCommand.self, RouteCommand.self, ConfigCommand.self]
    )

    // Lets `--rules` stand before the subcommand's name; see RulesOptions.
    @OptionGroup var rules: RulesOptions
}

extension Eval {
    /// `rulesctl eval flag KEY`.
    struct FlagCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "flag",
            abstract: "Evaluate one flag for a context.",
            discussion: """
                Prints the flag's value, variant, evaluation reason (STATIC, TARGETING_MATCH, DEFAULT, DISABLED or \
                ERROR) and the file:line that declares it. When the rule fails, the default variant is served with \
                reason ERROR and the error_code and error_message say why; that is still an answer (exit status 0).
                """
        )

        @OptionGroup var rules: RulesOptions

        @Argument(help: ArgumentHelp("The flag's key, such as checkout.new-flow.", valueName: "key"))
        var key: String

        @OptionGroup var context: ContextOptions
        @OptionGroup var output: OutputOptions

        func validate() throws {
            _ = try rules.directory()
        }

        func run() throws {
            let input = try context.input()
            let key = key
            try printAnswer(rules, output) { evaluator in
                Array(key.utf8).withUnsafeBytes { name in
                    input.json.withUnsafeBytes { ask(.flag(key: name, context: $0), evaluator, now: input.now) }
                }
            }
        }
    }

    /// `rulesctl eval flags`.
    struct FlagsCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "flags",
            abstract: "Evaluate every flag for a context.",
            discussion: "Prints a table of key, variant, reason and value, one row per flag in key order."
        )

        @OptionGroup var rules: RulesOptions
        @OptionGroup var context: ContextOptions
        @OptionGroup var output: OutputOptions

        func validate() throws {
            _ = try rules.directory()
        }

        func run() throws {
            let input = try context.input()
            try printAnswer(rules, output) { evaluator in
                input.json.withUnsafeBytes { ask(.flags(context: $0), evaluator, now: input.now) }
            }
        }
    }

    /// `rulesctl eval route`.
    struct RouteCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "route",
            abstract: "Route a request.",
            discussion: """
                Tries the routes in order (highest priority first; ties by file path, then order in the file) and \
                prints the first one whose match accepts the request, its target and its file:line. No match is the \
                error NO_ROUTE; a failing match or target function is RULE_ERROR.
                """
        )

        @OptionGroup var rules: RulesOptions
        @OptionGroup var request: RequestOptions
        @OptionGroup var output: OutputOptions

        func validate() throws {
            _ = try rules.directory()
        }

        func run() throws {
            let input = try request.input()
            try printAnswer(rules, output) { evaluator in
                input.json.withUnsafeBytes { ask(.route(request: $0), evaluator, now: input.now) }
            }
        }
    }

    /// `rulesctl eval config KEY` and `rulesctl eval config --prefix PREFIX`.
    struct ConfigCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "config",
            abstract: "Look up a config value, or every value under a prefix.",
            discussion: """
                With a key, prints that value; with --prefix, every value whose key starts with the prefix, in key \
                order (an empty prefix lists them all). A key, or a non-empty prefix, that matches nothing is \
                CONFIG_NOT_FOUND.
                """
        )

        @OptionGroup var rules: RulesOptions

        @Argument(help: ArgumentHelp("The config key, such as http.timeout_ms.", valueName: "key"))
        var key: String?

        @Option(
            help: ArgumentHelp(
                "List every value whose key starts with this prefix, such as 'db.'.", valueName: "prefix"))
        var prefix: String?

        @OptionGroup var output: OutputOptions

        func validate() throws {
            _ = try rules.directory()
            switch (key, prefix) {
            case (nil, nil): throw ValidationError("Give a config key, or --prefix <prefix>")
            case (.some, .some): throw ValidationError("Give either a config key or --prefix <prefix>, not both")
            default: break
            }
        }

        func run() throws {
            let key = key
            let prefix = prefix
            try printAnswer(rules, output) { evaluator in
                ask(prefix.map { .configPrefix($0) } ?? .config(key: key ?? ""), evaluator, now: RuleClock.now())
            }
        }
    }
}

/// One question, answered by the same code as the daemon's workers.
func ask(_ question: RuleQuestion, _ evaluator: RuleEvaluator, now: Double) -> Answer {
    var result: [UInt8] = []
    if let error = EvaluationAnswers.answer(
        question, evaluator: evaluator, now: now, observer: NoEvaluationObserver(), into: &result)
    {
        return .error(error)
    }
    return .result(result)
}

/// Loads the rules, answers, prints on standard error what rules logged on the way (rulesd would write those lines
/// to its own log), then prints the answer.
private func printAnswer(
    _ rules: RulesOptions, _ output: OutputOptions, _ question: @escaping (RuleEvaluator) -> Answer
) throws {
    try AnswerPrinter(json: output.json).emit(try answerOffline(rules, question))
}

/// Loads the rules, answers, and prints on standard error what rules logged on the way (rulesd would write those
/// lines to its own log).
func answerOffline(_ rules: RulesOptions, _ question: @escaping (RuleEvaluator) -> Answer) throws -> Answer {
    let (answer, logs) = OfflineRules.answer(try rules.directory()) { _, evaluator in question(evaluator) }
    Console.writeLines(OfflineRules.logLines(logs, style: TextStyle.detect(for: .standardError)), to: .standardError)
    return answer
}
