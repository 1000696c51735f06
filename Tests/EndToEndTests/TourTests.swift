import Foundation
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// One command of README.md's tour, with what the README says it shows.
struct TourStep: Sendable, CustomTestStringConvertible {
    enum Kind: Sendable, Equatable {
        /// `rulesctl ...`: the arguments after `rulesctl`.
        case rulesctl([String])
        /// `echo 'LINE' | socat - UNIX-CONNECT:$RULESD_SOCKET`: the request line sent.
        case socat(String)
        /// `vim PATH`: an edit the text describes.
        case edit(String)
    }

    /// 1-based line in README.md.
    var line: Int
    /// The command as written.
    var command: String
    var kind: Kind
    /// The comment after `#` on the command's line, in `sh` blocks.
    var comment: String
    /// The output shown under the command, in `console` blocks; nil in `sh` blocks.
    var expectedOutput: String?

    var testDescription: String { "README.md:\(line): \(command)" }
}

/// Reads the tour out of README.md: the section `## A five-minute tour` up to the next `## ` heading.
///
/// In its `sh` blocks, a line is a command (`rulesctl ...` or `vim ...`, with an optional `# comment`), the
/// setup (`export RULESD_SOCKET=...`, `alias rulesctl=...`), or blank. In its `console` blocks, a line starting
/// with `$ ` is a command and the lines up to the next command or the end of the block are its exact output.
/// Anything else is a problem, so that the tour cannot grow a command the tests do not run.
enum Tour {
    static let relativePath = "README.md"
    static let heading = "## A five-minute tour"
    static let socatSuffix = " | socat - UNIX-CONNECT:$RULESD_SOCKET"

    static func read() throws -> String {
        try String(contentsOf: RulesctlProcess.repositoryRoot.appendingPathComponent(relativePath), encoding: .utf8)
    }

    /// The steps, or none when README.md cannot be read (the tests below then fail and say why).
    static func steps() -> [TourStep] {
        (try? parse(read()).steps) ?? []
    }

    static func parse(_ text: String) throws -> (steps: [TourStep], problems: [String]) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let start = lines.firstIndex(of: heading) else { return ([], ["no section '\(heading)'"]) }
        let end = lines[(start + 1)...].firstIndex { $0.hasPrefix("## ") } ?? lines.count
        var steps: [TourStep] = []
        var problems: [String] = []
        var fence: String?
        for index in (start + 1)..<end {
            let line = lines[index]
            if line.hasPrefix("```") {
                fence = fence == nil ? String(line.dropFirst(3)) : nil
                continue
            }
            switch fence {
            case "sh":
                let (command, comment) = splitComment(line)
                if command.isEmpty || command.hasPrefix("export RULESD_SOCKET=") || command.hasPrefix("alias rulesctl=")
                {
                    continue
                }
                do {
                    steps.append(
                        TourStep(
                            line: index + 1, command: command, kind: try kind(of: command), comment: comment,
                            expectedOutput: nil))
                } catch {
                    problems.append("line \(index + 1): \(error)")
                }
            case "console":
                if line.hasPrefix("$ ") {
                    let command = String(line.dropFirst(2))
                    do {
                        steps.append(
                            TourStep(
                                line: index + 1, command: command, kind: try kind(of: command), comment: "",
                                expectedOutput: ""))
                    } catch {
                        problems.append("line \(index + 1): \(error)")
                    }
                } else if let last = steps.indices.last, steps[last].expectedOutput != nil,
                    steps[last].line > start
                {
                    steps[last].expectedOutput! += line + "\n"
                } else {
                    problems.append("line \(index + 1): output before any command in a console block")
                }
            case nil:
                continue
            case let other?:
                problems.append("line \(index + 1): a '\(other)' block in the tour; the tests read sh and console")
            }
        }
        return (steps, problems)
    }

    /// A command and its comment: `rulesctl status   # what is served` gives `rulesctl status` and
    /// `what is served`.
    private static func splitComment(_ line: String) -> (String, String) {
        guard let hash = line.range(of: " #") else { return (line.trimmingCharacters(in: .whitespaces), "") }
        return (
            String(line[..<hash.lowerBound]).trimmingCharacters(in: .whitespaces),
            String(line[hash.upperBound...]).trimmingCharacters(in: .whitespaces)
        )
    }

    private static func kind(of command: String) throws -> TourStep.Kind {
        if command.hasPrefix("echo '"), command.hasSuffix("'" + socatSuffix) {
            return .socat(String(command.dropFirst(6).dropLast(socatSuffix.count + 1)))
        }
        let words = try RulesDoc.shellWords(command)
        switch words.first {
        case "rulesctl": return .rulesctl(Array(words.dropFirst()))
        case "vim" where words.count == 2: return .edit(words[1])
        default: throw RulesDoc.ShellSyntaxError(description: "the tests cannot run '\(command)'")
        }
    }

    /// The example rules the tour serves, as relative path => content.
    static func exampleRules() throws -> [String: String] {
        let root = RulesctlProcess.repositoryRoot.appendingPathComponent("config/rules.d")
        var rules: [String: String] = [:]
        let files = try #require(FileManager.default.enumerator(atPath: root.path))
        for case let path as String in files where path.hasSuffix(".lua") {
            rules[path] = try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
        }
        return rules
    }
}

@Suite("README.md's tour, against the example rules")
struct TourTests {
    @Test("the tour parses, and has the commands its text walks through")
    func tourParses() throws {
        let (steps, problems) = try Tour.parse(Tour.read())
        #expect(problems == [])
        let commands = steps.map(\.kind)
        #expect(commands.contains(.rulesctl(["status"])))
        #expect(commands.contains(.rulesctl(["watch"])))
        #expect(commands.contains { if case .socat = $0 { true } else { false } })
        #expect(commands.contains { if case .edit = $0 { true } else { false } })
        #expect(steps.filter { $0.expectedOutput != nil }.count >= 8)
    }

    @Test("the rules excerpt at the top of README.md is taken from the example rules")
    func excerptMatchesExamples() throws {
        let readme = try Tour.read()
        let opening = try #require(readme.range(of: "```lua\n"), "README.md shows no rules")
        let closing = try #require(readme[opening.upperBound...].range(of: "```"))
        let lines = readme[opening.upperBound..<closing.lowerBound].split(separator: "\n").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        let examples = Set(
            try Tour.exampleRules().values.flatMap { $0.split(separator: "\n") }.map {
                $0.trimmingCharacters(in: .whitespaces)
            })
        #expect(lines.count >= 5)
        for line in lines where !line.hasPrefix("--") {
            #expect(examples.contains(line), "README.md's excerpt line '\(line)' is in no example rule file")
        }
    }

    @Test(
        "each command of the tour shows what README.md says",
        arguments: Tour.steps().filter { $0.expectedOutput != nil || $0.kind == .rulesctl(["status"]) })
    func step(_ step: TourStep) throws {
        // A fresh daemon on the example rules, as `make run` starts it (generation 1).
        let daemon = try DaemonHarness(rules: try Tour.exampleRules())
        try daemon.start(arguments: ["--watch", "off"])
        let context = "README.md:\(step.line): '\(step.command)'"
        switch step.kind {
        case .rulesctl(let arguments):
            let run = try RulesctlProcess.run(
                arguments, mergeOutput: true, environment: ["RULESD_SOCKET": daemon.socketPath])
            #expect(run.status == 0, "\(context) failed:\n\(run.standardOutput)")
            if let expected = step.expectedOutput {
                #expect(
                    run.standardOutput == expected,
                    """
                    \(context) prints something else than the README shows (after editing config/rules.d, update \
                    the tour, including the revision that 'rulesctl check' and the socat answer show)
                    """)
            } else {
                // `rulesctl status`: what the comment promises is in the answer.
                let counts = try #require(
                    step.comment.firstMatch(of: /\d+ files, \d+ flags, \d+ routes, \d+ configs/),
                    "\(context): the comment names no counts")
                #expect(run.standardOutput.contains(counts.output), "\(context):\n\(run.standardOutput)")
                for word in ["revision", "last reload"] {
                    #expect(step.comment.contains(word) && run.standardOutput.contains(word), "\(context)")
                }
            }
        case .socat(let request):
            let client = try daemon.connect()
            try client.send(request + "\n")
            let answer = try client.readLine()
            #expect(answer.map { $0 + "\n" } == step.expectedOutput, "\(context)")
        case .edit:
            Issue.record("\(context): edits are checked by editAndWatch")
        }
    }

    @Test("the tour's edit: watch shows the reload, a broken save a failure with file:line; the fix is unchanged")
    func editAndWatch() throws {
        let steps = Tour.steps()
        let edit = try #require(
            steps.first { if case .edit = $0.kind { true } else { false } }, "the tour edits no rule")
        guard case .edit(let path) = edit.kind else { return }
        let prefix = "config/rules.d/"
        #expect(path.hasPrefix(prefix), "the tour edits \(path), outside the example rules")
        let file = String(path.dropFirst(prefix.count))
        #expect(edit.comment.contains("change 20 to 50 in checkout.new-flow's split"))
        #expect(steps.contains { $0.kind == .rulesctl(["watch"]) })

        let rules = try Tour.exampleRules()
        let original = try #require(rules[file], "README.md edits \(path), which is no example rule file")
        let split = #"return split(ctx.user_id, { { "on", 20 }, { "off", 80 } })"#
        #expect(original.components(separatedBy: split).count == 2, "the split the tour changes is not in \(path)")
        let daemon = try DaemonHarness(rules: rules)
        try daemon.start()

        let watch = Process()
        watch.executableURL = URL(fileURLWithPath: DaemonHarness.binary("rulesctl"))
        watch.arguments = ["--socket", daemon.socketPath, "watch"]
        watch.environment = ["NO_COLOR": "1"]
        let out = Pipe()
        watch.standardOutput = out
        try watch.run()
        defer { watch.terminate() }
        let reader = out.fileHandleForReading
        var buffered = ""
        func nextLine() -> String? {
            while !buffered.contains("\n") {
                let data = reader.availableData
                if data.isEmpty { return nil }
                buffered += String(decoding: data, as: UTF8.self)
            }
            let line = String(buffered.prefix { $0 != "\n" })
            buffered = String(buffered.dropFirst(line.count + 1))
            return line
        }
        #expect(nextLine()?.hasPrefix("watching rulesd at ") == true)

        // Saved by rename, as most editors do: one change, so one reload.
        let fifty = original.replacingOccurrences(of: split, with: split.replacingOccurrences(of: "20", with: "50"))
        try daemon.writeRule(file, fifty)
        let reloaded = nextLine()
        #expect(reloaded?.contains(" reloaded ") == true, "\(reloaded ?? "end of output")")

        // "delete an `end`": the first line that is only `end`.
        var lines = fifty.split(separator: "\n", omittingEmptySubsequences: false)
        let endLine = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "end" })
        lines.remove(at: endLine)
        try daemon.writeRule(file, lines.joined(separator: "\n"))
        let failed = nextLine()
        #expect(failed?.contains(" reload failed ") == true, "\(failed ?? "end of output")")
        // The problems follow, one indented `file:line: message` each.
        let problem = failed?.contains(" reload failed ") == true ? nextLine() : nil
        #expect(problem?.hasPrefix("  \(file):") == true, "\(problem ?? "no problem line")")
        let answer = try daemon.request(#"{"op":"flag","flag":"checkout.new-flow","context":{"user_id":"u-42"}}"#)
        #expect(answer["ok"] == true)
        #expect(answer["generation"] == 2)

        // Fixed: the content is the served revision again, so nothing reloads and status says so.
        try daemon.writeRule(file, fifty)
        var lastReload: String?
        for _ in 0..<3000 where lastReload != "unchanged" {
            lastReload = try daemon.request(#"{"op":"status"}"#)["result"]?["last_reload"]?["outcome"]?.stringValue
            if lastReload != "unchanged" { usleep(10_000) }
        }
        #expect(lastReload == "unchanged")
        let status = try RulesctlProcess.run(["status"], environment: ["RULESD_SOCKET": daemon.socketPath])
        #expect(status.standardOutput.contains("last reload  unchanged"), "\(status.standardOutput)")
    }
}
