import Foundation
import Testing

/// One `$ rulesctl ...` command from a `console` block of docs/RULES.md, with the output the doc shows for it.
struct DocExample: Sendable, CustomTestStringConvertible {
    /// 1-based line of the `$` in the document.
    var line: Int
    /// The command as written, continuation lines joined.
    var command: String
    /// The arguments after `rulesctl`.
    var arguments: [String]
    /// What the doc shows: standard output and standard error together, as a terminal shows them.
    var expectedOutput: String

    /// The exit status the shown output implies: 2 for a usage error (ArgumentParser's `Error: ...`), 1 for an
    /// error answer (`rulesctl: CODE: ...`, or with --json an error object `{"code":...}`), 0 otherwise. The doc
    /// need not spell out `echo $?` for each example.
    var expectedStatus: Int32 {
        let lines = expectedOutput.split(separator: "\n")
        if lines.contains(where: { $0.hasPrefix("Error: ") }) { return 2 }
        if lines.contains(where: { $0.hasPrefix("rulesctl: ") || $0.hasPrefix(#"{"code":""#) }) { return 1 }
        return 0
    }

    var testDescription: String { "RULES.md:\(line): \(command)" }
}

/// Reads the console examples out of docs/RULES.md.
///
/// A console block is a fence opened with ```` ```console ````. In it, a line starting with `$ ` is a command (a
/// line ending in ` \` continues on the next one), and the lines up to the next command or the end of the block
/// are its exact output. Commands are split into words the way a POSIX shell would for simple cases (quotes and
/// backslashes) and run without a shell, so anything a shell would interpret beyond that is refused.
enum RulesDoc {
    static let relativePath = "docs/RULES.md"

    /// The examples, or none when the document cannot be read or parsed (the tests below then fail and say why).
    static func examples() -> [DocExample] {
        (try? parse(read()).examples) ?? []
    }

    static func read() throws -> String {
        try String(contentsOf: RulesctlProcess.repositoryRoot.appendingPathComponent(relativePath), encoding: .utf8)
    }

    /// The examples and the problems that kept other lines of console blocks from being examples.
    static func parse(_ text: String) throws -> (examples: [DocExample], problems: [String]) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var examples: [DocExample] = []
        var problems: [String] = []
        var index = 0
        while index < lines.count {
            guard lines[index].trimmingCharacters(in: .whitespaces) == "```console" else {
                index += 1
                continue
            }
            index += 1
            var current: DocExample?
            var output: [String] = []
            func finish() {
                guard var example = current else { return }
                example.expectedOutput = output.isEmpty ? "" : output.joined(separator: "\n") + "\n"
                examples.append(example)
                current = nil
                output = []
            }
            while index < lines.count, !lines[index].hasPrefix("```") {
                let line = lines[index]
                if line.hasPrefix("$ ") {
                    finish()
                    let start = index
                    var command = String(line.dropFirst(2))
                    while command.hasSuffix("\\"), index + 1 < lines.count {
                        index += 1
                        command = String(command.dropLast()) + " " + lines[index].trimmingCharacters(in: .whitespaces)
                    }
                    do {
                        let words = try shellWords(command)
                        if words.first == "rulesctl" {
                            current = DocExample(
                                line: start + 1, command: command, arguments: Array(words.dropFirst()),
                                expectedOutput: "")
                        } else {
                            problems.append("line \(start + 1): only rulesctl commands can be checked: \(command)")
                        }
                    } catch {
                        problems.append("line \(start + 1): \(error)")
                    }
                } else if current != nil {
                    output.append(line)
                } else {
                    problems.append("line \(index + 1): output before any command in a console block")
                }
                index += 1
            }
            finish()
            index += 1
        }
        return (examples, problems)
    }

    struct ShellSyntaxError: Error, CustomStringConvertible {
        var description: String
    }

    /// Splits a command line into words: white space separates words, '...' is literal, "..." is literal except
    /// for \" \\ \$ and \`, and a backslash outside quotes escapes the next character.
    static func shellWords(_ command: String) throws -> [String] {
        var words: [String] = []
        var word = ""
        var inWord = false
        var characters = command.makeIterator()
        while let c = characters.next() {
            switch c {
            case " ", "\t":
                if inWord { words.append(word) }
                word = ""
                inWord = false
            case "'":
                inWord = true
                while true {
                    guard let q = characters.next() else {
                        throw ShellSyntaxError(description: "unclosed ' in \(command)")
                    }
                    if q == "'" { break }
                    word.append(q)
                }
            case "\"":
                inWord = true
                while true {
                    guard let q = characters.next() else {
                        throw ShellSyntaxError(description: "unclosed \" in \(command)")
                    }
                    if q == "\"" { break }
                    if q == "\\" {
                        guard let next = characters.next() else { continue }
                        if !"\"\\$`".contains(next) { word.append("\\") }
                        word.append(next)
                    } else if q == "$" || q == "`" {
                        throw ShellSyntaxError(description: "shell expansion in \(command)")
                    } else {
                        word.append(q)
                    }
                }
            case "\\":
                inWord = true
                if let next = characters.next() { word.append(next) }
            default:
                // Characters a shell would act on (pipes, redirections, expansions, globs, comments) must be
                // quoted in the doc, both for readers who paste the command and because nothing here acts on them.
                if "|&;<>$`()*?[!".contains(c) || (!inWord && "#~".contains(c)) {
                    throw ShellSyntaxError(description: "'\(c)' means something to a shell; quote it in \(command)")
                }
                inWord = true
                word.append(c)
            }
        }
        if inWord { words.append(word) }
        return words
    }
}

@Suite("docs/RULES.md console examples")
struct RulesDocTests {
    @Test("docs/RULES.md has rulesctl console examples, and every console block parses")
    func documentParses() throws {
        let (examples, problems) = try RulesDoc.parse(RulesDoc.read())
        #expect(problems == [])
        #expect(examples.count >= 10)
    }

    @Test("the word splitter reads quotes the way a shell does")
    func shellWords() throws {
        #expect(
            try RulesDoc.shellWords(#"rulesctl eval -c 'a=b c' -c "x=\"1\"" -c y=\"2\" --json"#)
                == ["rulesctl", "eval", "-c", "a=b c", "-c", #"x="1""#, "-c", #"y="2""#, "--json"])
        #expect(throws: RulesDoc.ShellSyntaxError.self) { try RulesDoc.shellWords("rulesctl check | head") }
    }

    @Test("each console example prints exactly what docs/RULES.md shows", arguments: RulesDoc.examples())
    func example(_ example: DocExample) throws {
        let run = try RulesctlProcess.run(example.arguments, mergeOutput: true)
        #expect(
            run.standardOutput == example.expectedOutput,
            """
            \(RulesDoc.relativePath):\(example.line): the output of '\(example.command)' differs from the doc \
            (after editing config/rules.d, update the examples, including the revision that 'rulesctl check' shows)
            """)
        #expect(run.status == example.expectedStatus)
    }
}
