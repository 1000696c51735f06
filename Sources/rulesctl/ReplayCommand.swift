import ArgumentParser
import Glibc
import RuleEngine
import RuleModel
import RuleReplay
import RulesProtocol

/// `rulesctl diff --replay FILE OLD NEW` and `rulesctl diff --live NEW_DIR`: captured requests replayed against two
/// rule sets, offline, with the engine in this process; the daemon is only asked for its capture and for stored
/// rule sources.
enum ReplayCommand {
    /// One side of the comparison, as given on the command line.
    enum Side: Equatable {
        /// A rules directory on this machine.
        case directory(String)
        /// The daemon's serving rule set (`live`).
        case live
        /// A revision of the daemon's history, or its first hex digits.
        case revision(String)

        init(_ argument: String) {
            if argument == "live" {
                self = .live
            } else if ReplayCommand.isDirectory(argument) {
                self = .directory(argument)
            } else {
                self = .revision(argument)
            }
        }

    }

    /// A side made into a directory: its own, or a temporary one holding stored sources.
    struct Materialized {
        var label: String
        var directory: String
        var temporary: Bool
    }

    static func run(
        requests lines: [UInt8], old: Side, new: Side, socket: String, json: Bool
    ) async throws {
        let requests: [CapturedRequest]
        do {
            requests = try CaptureFile.parse(lines)
        } catch {
            Console.write("rulesctl: the capture file is malformed: \(error)\n", to: .standardError)
            throw ExitCode.failure
        }
        let oldRules = try await materialize(old, socket: socket)
        defer { if oldRules.temporary { removeTree(oldRules.directory) } }
        let newRules = try await materialize(new, socket: socket)
        defer { if newRules.temporary { removeTree(newRules.directory) } }
        let outcome = LargeStack.run { () -> Result<ReplayReport, LoadFailure> in
            let oldLoaded = OfflineRules.load(oldRules.directory, runTests: false)
            guard case .loaded(_, let oldEvaluator) = oldLoaded else {
                return .failure(LoadFailure(side: oldRules.label, outcome: oldLoaded))
            }
            let newLoaded = OfflineRules.load(newRules.directory, runTests: false)
            guard case .loaded(_, let newEvaluator) = newLoaded else {
                return .failure(LoadFailure(side: newRules.label, outcome: newLoaded))
            }
            return .success(ReplayDiff.replay(requests, old: oldEvaluator, new: newEvaluator, now: RuleClock.now()))
        }
        let report: ReplayReport
        switch outcome {
        case .success(let value):
            report = value
        case .failure(let failure):
            Console.write("rulesctl: \(failure.side) does not load:\n", to: .standardError)
            Console.writeLines(failure.problems.map { "  \($0)" }, to: .standardError)
            throw ExitCode.failure
        }
        if json {
            Console.write(JSONWriter.string(report.json) + "\n")
        } else {
            Console.write("replaying \(requests.count) requests: \(oldRules.label) → \(newRules.label)\n")
            Console.write(report.text)
        }
        if report.hasChanges { throw ExitCode.failure }
    }

    struct LoadFailure: Error {
        var side: String
        var problems: [String]

        init(side: String, outcome: OfflineRules.Loaded) {
            self.side = side
            if case .failed(let diagnostics) = outcome {
                problems = diagnostics.map(\.description)
            } else {
                problems = []
            }
        }
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The directory to load for `side`: a directory as it is; `live` and revisions fetched with `show` into a
    /// temporary directory.
    static func materialize(_ side: Side, socket: String) async throws -> Materialized {
        let revision: String
        switch side {
        case .directory(let path):
            return Materialized(label: path, directory: path, temporary: false)
        case .live:
            let answer = try await DaemonClient.request(socket: socket, ["op": "history"])
            guard answer.ok, let result = answer.value["result"] else {
                try Query.emit(answer, json: false)
                throw ExitCode.failure
            }
            let serving = (result["revisions"]?.arrayValue ?? []).first { $0["serving"] == .bool(true) }
            guard let hex = serving?["revision"]?.stringValue else {
                Console.write(
                    "rulesctl: rulesd's history does not hold the serving rule set, so 'live' cannot be fetched\n",
                    to: .standardError)
                throw ExitCode.failure
            }
            revision = hex
        case .revision(let name):
            // A path that is not a directory is a typo, not a revision to ask rulesd about.
            guard !name.contains("/"), name != ".", name != ".." else {
                Console.write("rulesctl: \(name) is not a rules directory\n", to: .standardError)
                throw ExitCode.failure
            }
            revision = name
        }
        let files = try await storedFiles(of: revision, socket: socket)
        var template = Array("/tmp/rulesctl-replay-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            Console.write(
                "rulesctl: cannot create a temporary directory: \(String(cString: strerror(errno)))\n",
                to: .standardError)
            throw ExitCode.failure
        }
        let directory = String(cString: made)
        for (path, content) in files.files {
            let full = directory + "/" + path
            var parent = ""
            for component in path.split(separator: "/").dropLast() {
                parent += "/" + component
                mkdir(directory + parent, 0o700)
            }
            do {
                try ReplayFiles.write(Array(content.utf8), to: full)
            } catch {
                removeTree(directory)
                throw error
            }
        }
        let label = side == .live ? "live (\(files.revision.prefix(16)))" : String(files.revision.prefix(16))
        return Materialized(label: label, directory: directory, temporary: true)
    }

    /// A stored revision's files, through `show`.
    static func storedFiles(of revision: String, socket: String) async throws -> (
        revision: String, files: [String: String]
    ) {
        let answer = try await DaemonClient.request(socket: socket, ["op": "show", "revision": .string(revision)])
        guard answer.ok, let listing = answer.value["result"] else {
            try Query.emit(answer, json: false)
            throw ExitCode.failure
        }
        let full = listing["revision"]?.stringValue ?? revision
        var files: [String: String] = [:]
        for file in listing["files"]?.arrayValue ?? [] {
            guard let path = file["path"]?.stringValue else { continue }
            // Stored paths are relative to the rules directory; anything else is not written anywhere.
            guard !path.hasPrefix("/"), !path.split(separator: "/").contains("..") else { continue }
            let content = try await DaemonClient.request(
                socket: socket, ["op": "show", "revision": .string(full), "path": .string(path)])
            guard content.ok, let result = content.value["result"] else {
                try Query.emit(content, json: false)
                throw ExitCode.failure
            }
            files[path] = result["content"]?.stringValue ?? ""
        }
        return (full, files)
    }

    /// Removes a temporary directory this command made, depth first.
    static func removeTree(_ path: String) {
        guard let directory = opendir(path) else {
            unlink(path)
            return
        }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            if isDirectory(child) { removeTree(child) } else { unlink(child) }
        }
        closedir(directory)
        rmdir(path)
    }
}
