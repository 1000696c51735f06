import ArgumentParser
import RuleModel
import RulesProtocol

/// The commands of the rule history: list it, show a stored revision, compare two, roll back and resume.
enum History {
    /// Sends `request`, prints errors like every online command, and hands back the parsed result.
    static func result(_ request: JSONValue, socket: String, json: Bool) async throws -> JSONValue? {
        let answer = try await DaemonClient.request(socket: socket, request)
        if json || !answer.ok {
            try Query.emit(answer, json: json)
            return nil
        }
        return answer.resultJSON.flatMap { try? JSONParser().parse($0) } ?? .null
    }

    static func short(_ value: JSONValue?) -> String { String((value?.stringValue ?? "?").prefix(16)) }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "history",
            abstract: "List the rule sets that went live, newest first, as rulesd keeps them for rollback.",
            discussion: "Exit status: 0 listed, 1 answered an error, 3 unreachable.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            guard let result = try await History.result(["op": "history"], socket: socket.path, json: output.json)
            else { return }
            let style = TextStyle.detect(for: .standardOutput)
            if let pinned = result["pinned"]?["message"]?.stringValue { Console.write(style.yellow(pinned) + "\n") }
            var rows: [[String]] = [
                ["GEN", "REVISION", "WHEN", "TRIGGER", "CHANGES", "FILES", "FLAGS", "ROUTES", "CONFIGS"]
            ]
            for entry in result["revisions"]?.arrayValue ?? [] {
                func count(_ key: String) -> Int { entry[key]?.arrayValue?.count ?? 0 }
                let counts = entry["counts"]
                var revision = History.short(entry["revision"])
                if entry["serving"] == .bool(true) { revision += " *" }
                rows.append([
                    String(entry["generation"]?.int64Value ?? 0), revision, entry["at"]?.stringValue ?? "?",
                    entry["trigger"]?.stringValue ?? "?",
                    "+\(count("added")) ~\(count("changed")) -\(count("removed"))",
                    String(counts?["files"]?.int64Value ?? 0), String(counts?["flags"]?.int64Value ?? 0),
                    String(counts?["routes"]?.int64Value ?? 0), String(counts?["configs"]?.int64Value ?? 0),
                ])
            }
            let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                let line = zip(row, widths).map { $0 + String(repeating: " ", count: $1 - $0.count) }
                Console.write(line.joined(separator: "  ").trimmingTrailingSpaces() + "\n")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a stored revision's files, or one file's content.",
            discussion: "Exit status: 0 shown, 1 unknown revision or file, 3 unreachable.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The revision, or at least 4 of its first hex digits (see 'rulesctl history').")
        var revision: String
        @Argument(help: "One file of the revision, relative to the rules directory.") var path: String?

        func run() async throws {
            var request: [(String, JSONValue)] = [("op", "show"), ("revision", .string(revision))]
            if let path { request.append(("path", .string(path))) }
            guard
                let result = try await History.result(
                    .object(JSONObject(request)), socket: socket.path, json: output.json)
            else { return }
            if path != nil {
                Console.write(result["content"]?.stringValue ?? "")
                return
            }
            Console.write(
                "revision \(result["revision"]?.stringValue ?? "?") (generation \(result["generation"]?.int64Value ?? 0), "
                    + "\(result["at"]?.stringValue ?? "?"), \(result["trigger"]?.stringValue ?? "?"))\n")
            for file in result["files"]?.arrayValue ?? [] {
                Console.write(
                    "  \(file["path"]?.stringValue ?? "?")  \(file["bytes"]?.int64Value ?? 0) bytes  "
                        + History.short(file["sha256"]) + "\n")
            }
        }
    }

    struct Rollback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Serve a stored revision now, and pin rulesd to it until the rules directory changes or 'resume'.",
            discussion: """
                The revision is built from its stored files like any reload. While pinned, rulesd keeps watching; \
                a change of the rules directory to a new revision that loads leaves the pin. A pinned rulesd \
                restarts pinned. Exit status: 0 rolled back, 1 refused or failed (what served keeps serving), \
                3 unreachable.
                """)
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The revision, or at least 4 of its first hex digits (see 'rulesctl history').")
        var revision: String

        func run() async throws {
            guard
                let result = try await History.result(
                    ["op": "rollback", "revision": .string(revision)], socket: socket.path, json: output.json)
            else { return }
            let duration = result["duration_ms"]?.doubleValue.map { " in \(Int($0.rounded())) ms" } ?? ""
            Console.write(
                "rolled back: now serving \(History.short(result["revision"])) "
                    + "(generation \(result["generation"]?.int64Value ?? 0))\(duration)\n")
            if let pinned = result["pinned"]?["message"]?.stringValue { Console.write(pinned + "\n") }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Leave a rollback's pin and serve the rules directory again.",
            discussion:
                "Exit status: 0 serving the rules directory, 1 it does not load (what served keeps serving), 3 unreachable."
        )
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            guard let result = try await History.result(["op": "resume"], socket: socket.path, json: output.json)
            else { return }
            Console.write(
                "resumed: serving the rules directory, \(History.short(result["revision"])) "
                    + "(generation \(result["generation"]?.int64Value ?? 0))\n")
        }
    }

    struct Diff: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Show the textual difference between two stored revisions, or what a change does to captured requests.",
            discussion: """
                'diff REV1 REV2' prints the stored files' differences. 'diff --replay FILE OLD NEW' replays the \
                requests of a capture file (see 'rulesctl capture') against OLD and NEW, each a rules directory, \
                'live' (rulesd's serving rules) or a stored revision, and reports per flag and for the routes the \
                requests replayed, the answers changed as a from → to table with up to three example contexts, \
                and the errors introduced. 'diff --live NEW_DIR' does the same with rulesd's own capture, from its \
                serving rules to NEW_DIR. Exit status: 0 no difference, 1 different (or an error), 3 unreachable.
                """)
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions
        @Option(help: ArgumentHelp("Replay the requests of this capture file (JSON Lines).", valueName: "file"))
        var replay: String?
        @Option(
            help: ArgumentHelp(
                "Replay rulesd's capture against its serving rules and this rules directory.", valueName: "dir"))
        var live: String?
        @Argument(help: "The older revision (or its first hex digits); with --replay also a directory or 'live'.")
        var from: String?
        @Argument(help: "The newer revision (or its first hex digits); with --replay also a directory or 'live'.")
        var to: String?

        func validate() throws {
            if live != nil {
                guard replay == nil, from == nil, to == nil else {
                    throw ValidationError("--live takes the new rules directory only: rulesctl diff --live DIR")
                }
            } else if from == nil || to == nil {
                throw ValidationError("Give two revisions (or, with --replay, two rule sets) to compare")
            }
        }

        func run() async throws {
            if let live {
                let lines = try await CaptureCommand.fetch(socket: socket.path, flag: nil, routes: false)
                try await ReplayCommand.run(
                    requests: Array(lines.joined(separator: [UInt8(ascii: "\n")])), old: .live, new: .directory(live),
                    socket: socket.path, json: output.json)
                return
            }
            guard let from, let to else { return }
            if let replay {
                try await ReplayCommand.run(
                    requests: try ReplayFiles.read(replay), old: ReplayCommand.Side(from),
                    new: ReplayCommand.Side(to), socket: socket.path, json: output.json)
                return
            }
            let old = try await files(of: from)
            let new = try await files(of: to)
            var changes: [JSONValue] = []
            var text = ""
            for path in Set(old.files.keys).union(new.files.keys).sorted() {
                let before = old.files[path]
                let after = new.files[path]
                if before == after { continue }
                let status = before == nil ? "added" : after == nil ? "removed" : "changed"
                let hunks = TextDiff.unified(
                    before.map(TextDiff.lines) ?? [], after.map(TextDiff.lines) ?? [],
                    fromName: before == nil ? "/dev/null" : "a/" + path,
                    toName: after == nil ? "/dev/null" : "b/" + path)
                changes.append(["path": .string(path), "status": .string(status), "diff": .string(hunks)])
                text += hunks
            }
            if output.json {
                let result: JSONValue = [
                    "from": .string(old.revision), "to": .string(new.revision), "files": .array(changes),
                ]
                Console.write(JSONWriter.string(result) + "\n")
            } else {
                Console.write(text)
            }
            if !changes.isEmpty { throw ExitCode.failure }
        }

        private func files(of revision: String) async throws -> (revision: String, files: [String: String]) {
            let answer = try await DaemonClient.request(
                socket: socket.path, ["op": "show", "revision": .string(revision)])
            guard answer.ok, let listing = answer.resultJSON.flatMap({ try? JSONParser().parse($0) }) else {
                try Query.emit(answer, json: output.json)
                throw ExitCode.failure
            }
            let full = listing["revision"]?.stringValue ?? revision
            var files: [String: String] = [:]
            for file in listing["files"]?.arrayValue ?? [] {
                guard let path = file["path"]?.stringValue else { continue }
                let content = try await DaemonClient.request(
                    socket: socket.path, ["op": "show", "revision": .string(full), "path": .string(path)])
                guard content.ok, let result = content.resultJSON.flatMap({ try? JSONParser().parse($0) }) else {
                    try Query.emit(content, json: output.json)
                    throw ExitCode.failure
                }
                files[path] = result["content"]?.stringValue ?? ""
            }
            return (full, files)
        }
    }
}

/// A line diff in the unified format, by longest common subsequence (rule files are small).
enum TextDiff {
    static func lines(_ text: String) -> [String] {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        return lines
    }

    /// `--- from`, `+++ to`, then hunks with three lines of context.
    static func unified(_ old: [String], _ new: [String], fromName: String, toName: String, context: Int = 3)
        -> String
    {
        // Edit script: (kind, old index, new index), kind ' ' kept, '-' removed, '+' added.
        var script: [(Character, Int, Int)] = []
        let n = old.count
        let m = new.count
        var table = [Int](repeating: 0, count: (n + 1) * (m + 1))
        for i in stride(from: n - 1, through: 0, by: -1) {
            for j in stride(from: m - 1, through: 0, by: -1) {
                table[i * (m + 1) + j] =
                    old[i] == new[j]
                    ? table[(i + 1) * (m + 1) + j + 1] + 1
                    : max(table[(i + 1) * (m + 1) + j], table[i * (m + 1) + j + 1])
            }
        }
        var i = 0
        var j = 0
        while i < n || j < m {
            if i < n, j < m, old[i] == new[j] {
                script.append((" ", i, j))
                i += 1
                j += 1
            } else if i < n, j == m || table[(i + 1) * (m + 1) + j] >= table[i * (m + 1) + j + 1] {
                // Removals before additions, as diff(1) prints them.
                script.append(("-", i, j))
                i += 1
            } else {
                script.append(("+", i, j))
                j += 1
            }
        }
        var out = "--- \(fromName)\n+++ \(toName)\n"
        var index = 0
        while index < script.count {
            guard let firstChange = script[index...].firstIndex(where: { $0.0 != " " }) else { break }
            let start = max(firstChange - context, index)
            var end = firstChange
            var lastChange = firstChange
            while end < script.count {
                if script[end].0 != " " { lastChange = end }
                if end - lastChange > 2 * context { break }
                end += 1
            }
            end = min(lastChange + context + 1, script.count)
            let hunk = script[start..<end]
            let oldCount = hunk.filter { $0.0 != "+" }.count
            let newCount = hunk.filter { $0.0 != "-" }.count
            let oldStart = hunk.first.map { $0.1 + (oldCount > 0 ? 1 : 0) } ?? 0
            let newStart = hunk.first.map { $0.2 + (newCount > 0 ? 1 : 0) } ?? 0
            out += "@@ -\(oldStart),\(oldCount) +\(newStart),\(newCount) @@\n"
            for (kind, oldIndex, newIndex) in hunk {
                out += String(kind) + (kind == "+" ? new[newIndex] : old[oldIndex]) + "\n"
            }
            index = end
        }
        return out
    }
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var text = self
        while text.last == " " { text.removeLast() }
        return text
    }
}
