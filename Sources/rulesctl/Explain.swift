import ArgumentParser
import RuleEngine
import RuleModel
import RulesProtocol

/// `rulesctl explain flag|route`: an answer and the trace of how the rules reached it.
///
/// Online by default (the daemon's `explain` operation, so the serving generation answers); with `--rules DIR`
/// the same question is answered offline, by the same engine and encoder, as `rulesctl eval` does.
struct Explain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show an answer and how the rules reached it: lines run, helper calls, fields read.",
        discussion: """
            Asks rulesd (or, with --rules DIR, a rules directory offline) the same question as 'rulesctl flag' or \
            'rulesctl route', and prints the answer followed by a trace: the rule lines that ran, in order (loops \
            folded, with counts), every helper call with its arguments and result (split and rollout with their \
            bucket), each prerequisite's own trace, every route tried up to the winner, and the context fields \
            the rules read, marking those that were absent. The trace keeps at most 1,000 entries and says when \
            it was cut. --json prints the answer's result object, trace included.

            Exit status: as 'rulesctl flag' / 'rulesctl route', except that a request no route matches is still \
            explained (exit 1 after the trace).
            """,
        subcommands: [FlagCommand.self, RouteCommand.self]
    )

    @OptionGroup var socket: SocketOptions
    @OptionGroup var rules: RulesOptions
}

extension Explain {
    struct FlagCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "flag", abstract: "Explain one flag's answer for a context.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var rules: RulesOptions
        @Argument(help: ArgumentHelp("The flag's key, such as checkout.new-flow.", valueName: "key"))
        var key: String
        @OptionGroup var context: ContextOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let input = try context.input()
            if rules.rules != nil {
                let key = key
                return try explainOffline(rules, output) { evaluator in
                    Array(key.utf8).withUnsafeBytes { name in
                        input.json.withUnsafeBytes {
                            ask(.explainFlag(key: name, context: $0), evaluator, now: input.now)
                        }
                    }
                }
            }
            let request = try Query.request(
                "explain", extra: [("flag", .string(key))], object: ("context", input.json), at: context.at)
            try emitExplained(try await DaemonClient.request(socket: socket.path, request), json: output.json)
        }
    }

    struct RouteCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "route", abstract: "Explain which route a request gets, route by route.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var rules: RulesOptions
        @OptionGroup var request: RequestOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let input = try request.input()
            if rules.rules != nil {
                return try explainOffline(rules, output) { evaluator in
                    input.json.withUnsafeBytes { ask(.explainRoute(request: $0), evaluator, now: input.now) }
                }
            }
            let body = try Query.request("explain", extra: [], object: ("request", input.json), at: request.at)
            try emitExplained(try await DaemonClient.request(socket: socket.path, body), json: output.json)
        }
    }
}

private func explainOffline(
    _ rules: RulesOptions, _ output: OutputOptions, _ question: @escaping (RuleEvaluator) -> Answer
) throws {
    let answer = try answerOffline(rules, question)
    switch answer {
    case .result(let bytes): try printExplained(bytes, json: output.json)
    case .error: try AnswerPrinter(json: output.json).emit(answer)
    }
}

private func emitExplained(_ answer: ProtocolAnswer, json: Bool) throws {
    guard answer.ok, let result = answer.resultJSON else { return try Query.emit(answer, json: json) }
    try printExplained(result, json: json)
}

/// Prints an explained answer: the answer as `rulesctl flag` / `route` print it, then the trace. A route
/// explanation that ended without a route prints its error and exits 1, like `rulesctl route`.
private func printExplained(_ result: [UInt8], json: Bool) throws {
    let printer = AnswerPrinter(json: json)
    guard !json, let object = AnswerPrinter.parseObject(result) else {
        printer.printResult(result)
        if AnswerPrinter.parseObject(result)?["error"] != nil { throw ExitCode.failure }
        return
    }
    var answer = object
    let trace = answer.removeValue(forKey: "trace") ?? .null
    let error = answer["error"]
    if error != nil {
        _ = answer.removeValue(forKey: "route")
        _ = answer.removeValue(forKey: "error")
    } else {
        printer.printResult(Array(JSONWriter.string(.object(answer)).utf8))
    }
    var tracePrinter = TracePrinter(style: printer.style)
    Console.write(tracePrinter.render(trace))
    if let error {
        printer.printError(Array(JSONWriter.string(error).utf8))
        throw ExitCode.failure
    }
}

/// The trace of an explained answer as indented lines for people, e.g.
/// `flags/checkout.lua:21  split("u-42", …) bucket 37/100 -> "on" (0..20)`.
struct TracePrinter {
    var style: TextStyle

    /// Names for helper arguments: a first argument equal to a field's value is shown as `field="value"`.
    private var fieldNames: [JSONValue: String] = [:]

    init(style: TextStyle) { self.style = style }

    mutating func render(_ trace: JSONValue) -> String {
        var lines = [style.bold("trace:")]
        let steps = trace["steps"]?.arrayValue ?? []
        let fields = trace["fields"]?.arrayValue ?? []
        for field in fields {
            guard let value = field["value"], value.stringValue != nil, let path = field["path"]?.stringValue,
                fieldNames[value] == nil
            else { continue }
            fieldNames[value] = AnswerPrinter.printable(path)
        }
        if steps.isEmpty { lines.append("  (no rule ran)") }
        render(steps, indent: "  ", into: &lines)
        if !fields.isEmpty {
            lines.append(style.bold("fields read:"))
            let rows = fields.map { field in
                [
                    AnswerPrinter.printable(field["path"]?.stringValue ?? ""),
                    field["present"]?.boolValue == true ? (field["value"]?.description ?? "") : "ABSENT",
                    field["at"]?.stringValue.map(AnswerPrinter.printable) ?? "",
                ]
            }
            lines += AnswerPrinter.columns(rows) { _, column, cell in
                switch column {
                case 1 where cell == "ABSENT": return style.red(cell)
                case 2: return style.dim(cell)
                default: return cell
                }
            }.map { "  " + $0 }
        }
        if trace["truncated"]?.boolValue == true {
            lines.append(style.red("trace cut at \(trace["limit"]?.intValue ?? RuleTrace.defaultLimit) entries"))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func render(_ steps: [JSONValue], indent: String, into lines: inout [String]) {
        for step in steps {
            let count = step["count"]?.intValue ?? 1
            let times = count > 1 ? style.dim("  (x\(count))") : ""
            if let line = step["line"]?.stringValue {
                lines.append(indent + AnswerPrinter.printable(line) + times)
            } else if let call = step["call"]?.stringValue {
                let at = step["at"]?.stringValue.map { AnswerPrinter.printable($0) + "  " } ?? ""
                lines.append(indent + at + describe(call, step) + times)
            } else if let flag = step["flag"]?.stringValue {
                let at = step["at"]?.stringValue.map { AnswerPrinter.printable($0) + "  " } ?? ""
                let variant = step["variant"]?.description ?? "?"
                let reason = step["reason"]?.stringValue ?? ""
                lines.append(
                    indent + at + "flag_value(\(JSONValue.string(flag).description)) -> \(variant) "
                        + style.reason("(\(reason))"))
                render(step["steps"]?.arrayValue ?? [], indent: indent + "  ", into: &lines)
            } else if let route = step["route"]?.stringValue {
                let source = step["source"]?.stringValue.map { AnswerPrinter.printable($0) + "  " } ?? ""
                let matched = step["matched"]?.boolValue == true
                let how = step["always"]?.boolValue == true ? "matches every request" : matched ? "matched" : "no match"
                lines.append(
                    indent + source + "route \(JSONValue.string(route).description): "
                        + (matched ? style.reason(how) : style.dim(how)))
                render(step["steps"]?.arrayValue ?? [], indent: indent + "  ", into: &lines)
            }
        }
    }

    /// `name(arg, …) -> result`, with the bucket of split and rollout.
    func describe(_ name: String, _ step: JSONValue) -> String {
        var arguments = (step["args"]?.arrayValue ?? []).map(\.description)
        if let first = step["args"]?[0], let field = fieldNames[first] { arguments[0] = field + "=" + arguments[0] }
        let args = arguments.joined(separator: ", ")
        let result = step["result"]?.description ?? "null"
        var text = "\(AnswerPrinter.printable(name))(\(args))"
        if let bucket = step["bucket"], let total = step["total"] {
            text += " bucket \(bucket)/\(total)"
            if let threshold = step["threshold"] {
                text += " -> \(result) (true below \(threshold))"
            } else if let range = step["range"]?.arrayValue, range.count == 2 {
                text += " -> \(result) (\(range[0])..\(range[1]))"
            } else {
                text += " -> \(result)"
            }
        } else {
            text += " -> \(result)"
        }
        if let why = step["why"]?.stringValue { text += " (\(AnswerPrinter.printable(why)))" }
        return text
    }
}
