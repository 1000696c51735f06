import ArgumentParser
import Glibc
import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol

/// The two streams rulesctl writes to.
enum OutputStream: Sendable {
    case standardOutput
    case standardError

    var descriptor: Int32 { self == .standardOutput ? 1 : 2 }
}

/// Unbuffered writes to standard output and standard error.
///
/// Every write is one `write(2)` of a whole block of lines, so when both streams go to the same pipe (a test
/// capturing them together, `2>&1 | less`) the lines keep the order in which the tool produced them; stdio's
/// buffering would move all of stdout after stderr.
enum Console {
    /// Writes `text` as it is.
    static func write(_ text: String, to stream: OutputStream = .standardOutput) {
        Array(text.utf8).withUnsafeBytes { writeAll(stream.descriptor, $0) }
    }

    /// Writes each line followed by a newline, in one write.
    static func writeLines(_ lines: [String], to stream: OutputStream = .standardOutput) {
        guard !lines.isEmpty else { return }
        write(lines.joined(separator: "\n") + "\n", to: stream)
    }
}

private func writeAll(_ descriptor: Int32, _ buffer: UnsafeRawBufferPointer) {
    var offset = 0
    while offset < buffer.count {
        let n = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
        if n < 0 {
            if errno == EINTR { continue }
            return  // a closed pipe or a full disk: nothing useful is left to do with the output
        }
        offset += n
    }
}

/// ANSI styling for one stream: on only when that stream is a terminal, `NO_COLOR` is not set to a non-empty value
/// (see no-color.org) and `TERM` is not `dumb`.
struct TextStyle: Sendable {
    /// Whether escape sequences are added at all.
    var isEnabled: Bool

    init(isEnabled: Bool) {
        self.isEnabled = isEnabled
    }

    /// The style for `stream` in the current environment.
    static func detect(for stream: OutputStream) -> TextStyle {
        if let noColor = getenv("NO_COLOR"), noColor.pointee != 0 { return TextStyle(isEnabled: false) }
        if let term = getenv("TERM"), String(cString: term) == "dumb" { return TextStyle(isEnabled: false) }
        return TextStyle(isEnabled: isatty(stream.descriptor) == 1)
    }

    func bold(_ text: String) -> String { apply("1", text) }
    func dim(_ text: String) -> String { apply("2", text) }
    func red(_ text: String) -> String { apply("31", text) }
    func green(_ text: String) -> String { apply("32", text) }
    func yellow(_ text: String) -> String { apply("33", text) }
    func cyan(_ text: String) -> String { apply("36", text) }

    /// The colour that tells a flag's evaluation reason at a glance: green when a rule decided, yellow when the
    /// flag is switched off, red on errors.
    func reason(_ reason: String) -> String {
        switch reason {
        case EvaluationReason.targetingMatch.rawValue: return green(reason)
        case EvaluationReason.disabled.rawValue, "OVERRIDE": return yellow(reason)
        case EvaluationReason.error.rawValue: return red(reason)
        default: return reason
        }
    }

    private func apply(_ code: String, _ text: String) -> String {
        isEnabled && !text.isEmpty ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }
}

/// How answers are shown: for people, or as the JSON the daemon sends.
enum AnswerFormat: Sendable {
    /// Aligned `name: value` lines, tables for flag lists, colour on terminals.
    case human
    /// The result (or error) object exactly as encoded by `RuleAnswers`, on one line.
    case json
}

/// Prints answers and errors the way every rulesctl command shows them, offline or online.
///
/// It works on the JSON bytes of an answer's `result` object (as `RuleAnswers` encodes it, and as the daemon sends
/// it), so a command that asks the daemon and a command that evaluates offline print the same thing for the same
/// answer. The shape of the result decides the layout:
/// - `{"flags":{KEY:{"value","variant","reason",...},...}}`: a table of key, variant, reason and value;
/// - `{"values":{KEY:VALUE,...}}`: one aligned `key: value` line per entry;
/// - any other object: aligned `name: value` lines, one per member.
///
/// In `name: value` lines, members called `value` and every value that is not a string are compact JSON, so that a
/// string variant `"true"` and the boolean `true` stay distinguishable; other strings are shown bare.
struct AnswerPrinter: Sendable {
    var format: AnswerFormat
    /// Styling of standard output.
    var style: TextStyle
    /// Styling of standard error.
    var errorStyle: TextStyle

    init(format: AnswerFormat, style: TextStyle, errorStyle: TextStyle) {
        self.format = format
        self.style = style
        self.errorStyle = errorStyle
    }

    /// A printer for the current process: colour decided per stream from the environment.
    init(json: Bool) {
        self.init(
            format: json ? .json : .human, style: TextStyle.detect(for: .standardOutput),
            errorStyle: TextStyle.detect(for: .standardError))
    }

    // MARK: Printing

    /// Prints a successful answer's `result` object on standard output.
    func printResult(_ result: [UInt8]) {
        Console.write(renderResult(result))
    }

    /// Prints a failed answer's `error` object: as JSON on standard output with `--json`, otherwise as
    /// `rulesctl: CODE: message` on standard error. The caller then exits with status 1.
    func printError(_ error: [UInt8]) {
        switch format {
        case .json: Console.write(String(decoding: error, as: UTF8.self) + "\n")
        case .human: Console.write(renderError(error), to: .standardError)
        }
    }

    /// Prints an error as the daemon encodes it (for instance `ProtocolAnswer.error` of a daemon's answer).
    func printError(_ error: ProtocolError) {
        guard case .error(let bytes) = Answer.error(error) else { return }
        printError(bytes)
    }

    /// Prints what an answer carries: returns normally for a result; for an error, prints it and throws exit
    /// status 1.
    func emit(_ answer: Answer) throws(ExitCode) {
        switch answer {
        case .result(let bytes): printResult(bytes)
        case .error(let bytes):
            printError(bytes)
            throw ExitCode.failure
        }
    }

    // MARK: Rendering

    /// The text `printResult` writes, newline-terminated.
    func renderResult(_ result: [UInt8]) -> String {
        if format == .json { return String(decoding: result, as: UTF8.self) + "\n" }
        guard let object = Self.parseObject(result) else { return String(decoding: result, as: UTF8.self) + "\n" }
        let lines: [String]
        if object.count == 1, let flags = object["flags"]?.objectValue {
            lines = flagTable(flags)
        } else if object.count == 1, let values = object["values"]?.objectValue {
            lines = fieldLines(values, style: style, allJSON: true)
        } else {
            lines = fieldLines(object, style: style, allJSON: false)
        }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }

    /// The text `printError` writes to standard error in human format: the rule problems an error carries
    /// (`problems`, shown as `file:line: message`, the form editors link to), then `rulesctl: CODE: message`, then
    /// any other members of the error object as indented `name: value` lines.
    func renderError(_ error: [UInt8]) -> String {
        guard let object = Self.parseObject(error), let code = object["code"]?.stringValue else {
            return "rulesctl: " + String(decoding: error, as: UTF8.self) + "\n"
        }
        var lines: [String] = []
        var extra = JSONObject()
        for (name, value) in object where name != "code" && name != "message" {
            if name == "problems", let problems = value.arrayValue {
                lines += problems.map { problem in
                    let diagnostic = RuleDiagnostic(
                        location: SourceLocation(
                            file: problem["file"]?.stringValue ?? "", line: problem["line"]?.intValue ?? 0),
                        message: problem["message"]?.stringValue ?? problem.description)
                    return Self.printable(diagnostic.description)
                }
            } else {
                extra[name] = value
            }
        }
        let message = object["message"]?.stringValue.map(Self.printable) ?? ""
        lines.append("rulesctl: " + errorStyle.red(code) + ": " + message)
        lines += fieldLines(extra, style: errorStyle, allJSON: false).map { "  " + $0 }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Aligned `name: value` lines for the members of `object`.
    func fieldLines(_ object: JSONObject, style: TextStyle, allJSON: Bool) -> [String] {
        let width = object.keys.map { Self.printable($0).count }.max() ?? 0
        return object.map { name, value in
            let label = Self.printable(name)
            let padding = String(repeating: " ", count: width - label.count + 1)
            var text = allJSON || name == "value" ? value.description : Self.bare(value)
            if !allJSON {
                switch name {
                case "reason": text = style.reason(text)
                case "override": text = OverrideCommand.summary(value)
                case "error_code", "error_message", "rule_error_code": text = style.red(text)
                default: break
                }
            }
            return label + ":" + padding + text
        }
    }

    /// The rows of a `flags` answer: key, variant, reason and value, plus the error of flags whose rule failed.
    func flagTable(_ flags: JSONObject) -> [String] {
        var rows: [[String]] = []
        var hasErrors = false
        for (key, answer) in flags {
            var row = [
                Self.printable(key),
                answer["variant"].map(Self.bare) ?? "",
                answer["reason"].map(Self.bare) ?? "",
                answer["value"]?.description ?? "",
            ]
            if let code = answer["error_code"] {
                hasErrors = true
                row.append(Self.bare(code) + ": " + (answer["error_message"].map(Self.bare) ?? ""))
            }
            rows.append(row)
        }
        var header = ["KEY", "VARIANT", "REASON", "VALUE"]
        if hasErrors { header.append("ERROR") }
        return Self.columns([header] + rows) { row, column, cell in
            if row == 0 { return style.bold(cell) }
            switch column {
            case 2: return style.reason(cell)
            case 4: return style.red(cell)
            default: return cell
            }
        }
    }

    /// Rows of cells as left-aligned columns separated by two spaces; the last cell of a row is not padded.
    /// `decorate(row, column, text)` styles a cell after its width has been measured, so escape sequences never
    /// upset the alignment.
    static func columns(
        _ rows: [[String]], decorate: (Int, Int, String) -> String = { $2 }
    ) -> [String] {
        var widths: [Int] = []
        for row in rows {
            for (column, cell) in row.enumerated() {
                if column == widths.count { widths.append(0) }
                widths[column] = max(widths[column], cell.count)
            }
        }
        return rows.enumerated().map { index, cells in
            var text = ""
            for (column, cell) in cells.enumerated() {
                text += decorate(index, column, cell)
                if column < cells.count - 1 {
                    text += String(repeating: " ", count: widths[column] - cell.count + 2)
                }
            }
            return text
        }
    }

    // MARK: Values

    /// A string shown bare, unless it holds control characters: those are shown as a JSON string so that a rule
    /// or a request cannot move the cursor or recolour the terminal.
    static func printable(_ text: String) -> String {
        text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F || (0x80...0x9F).contains($0.value) }
            ? JSONValue.string(text).description : text
    }

    /// Strings bare (see ``printable(_:)``), anything else as compact JSON.
    static func bare(_ value: JSONValue) -> String {
        if case .string(let text) = value { return printable(text) }
        return value.description
    }

    static func parseObject(_ bytes: [UInt8]) -> JSONObject? {
        guard let value = try? JSONParser().parse(bytes) else { return nil }
        return value.objectValue
    }
}

/// An answer as the daemon would send it: the JSON bytes of its `result` object, or of its `error` object.
enum Answer: Sendable, Equatable {
    case result([UInt8])
    case error([UInt8])

    /// The `error` object exactly as the daemon writes it: the protocol's own error encoder.
    static func error(_ error: ProtocolError) -> Answer {
        var bytes: [UInt8] = []
        ResponseWriter.appendError(error, to: &bytes)
        return .error(bytes)
    }
}
