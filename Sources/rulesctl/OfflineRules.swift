import Glibc
import RuleEngine
import RuleModel
import RulesProtocol

/// A rules directory loaded in this process, the way rulesd loads it: read with ``RuleTreeReader`` and compiled
/// all-or-nothing with ``RuleCompiler``.
enum OfflineRules {
    /// The outcome of loading a directory.
    enum Loaded {
        case loaded(RuleSet, RuleEvaluator)
        /// Every problem found: unreadable files first, then the compiler's diagnostics.
        case failed([RuleDiagnostic])
    }

    /// Reads and compiles `directory`. A directory with unreadable files fails even when the rest compiles, as it
    /// does in rulesd, which never puts a partial snapshot live. Call it on a ``LargeStack`` thread.
    /// - Parameter runTests: whether the rule tests gate the load, as they do in rulesd.
    static func load(_ directory: String, runTests: Bool = true) -> Loaded {
        let snapshot = RuleTreeReader().read(root: directory)
        do {
            let (ruleSet, evaluator) = try RuleCompiler.compile(snapshot.sources, runTests: runTests)
            return snapshot.problems.isEmpty ? .loaded(ruleSet, evaluator) : .failed(snapshot.problems)
        } catch {
            return .failed(snapshot.problems + error.diagnostics)
        }
    }

    /// Loads `directory` and answers one question about it.
    /// - Parameter question: runs with the loaded rule set; it returns the answer rulesd would send.
    /// - Returns: the answer (an INVALID_RULES error when the directory does not load) and the lines rules logged,
    ///   while loading and while answering.
    static func answer(
        _ directory: String, _ question: @escaping (RuleSet, RuleEvaluator) -> Answer
    ) -> (answer: Answer, logs: [RuleLogLine]) {
        LargeStack.run {
            switch load(directory) {
            case .failed(let diagnostics):
                return (invalidRules(directory, diagnostics), [])
            case .loaded(let ruleSet, let evaluator):
                let answer = question(ruleSet, evaluator)
                return (answer, evaluator.takeLogs())
            }
        }
    }

    /// The error answered for a directory that does not load: `{"code":"INVALID_RULES","message",
    /// "problems":[{"file","line","message"},...]}`, the shape of the daemon's `RELOAD_FAILED` under a code of its
    /// own, since nothing is being reloaded. A single problem that belongs to no file (a missing directory) is the
    /// message itself.
    static func invalidRules(_ directory: String, _ diagnostics: [RuleDiagnostic]) -> Answer {
        var bytes = Array(#"{"code":"INVALID_RULES","message":"#.utf8)
        if diagnostics.count == 1, diagnostics[0].location.file.isEmpty {
            JSONWriter.appendEscapedString(diagnostics[0].message, to: &bytes)
        } else {
            let count = diagnostics.count == 1 ? "1 problem" : "\(diagnostics.count) problems"
            JSONWriter.appendEscapedString("the rules in \(directory) do not load (\(count))", to: &bytes)
            bytes.append(contentsOf: #","problems":"#.utf8)
            ResponseWriter.appendProblems(diagnostics, to: &bytes)
        }
        bytes.append(UInt8(ascii: "}"))
        return .error(bytes)
    }

    /// `[level] origin: text` lines for what rules logged; the sandbox has already escaped and shortened the text.
    static func logLines(_ logs: [RuleLogLine], style: TextStyle) -> [String] {
        logs.map { line in
            let level: String
            switch line.level {
            case .debug: level = "debug"
            case .info: level = "info"
            case .warning: level = "warn"
            case .error: level = "error"
            }
            return style.dim("[\(level)] \(line.origin):") + " " + line.text
        }
    }
}

/// Runs work on a thread of its own with a large stack.
///
/// Lua runs rule code on the C stack of the calling thread, and the engine asks for at least
/// `ThreadStack.minimumBytes`. Command bodies run wherever Swift concurrency puts them (a cooperative pool thread
/// under an async root command), whose stack size is not ours to choose, so loading and evaluation get a thread
/// whose stack is known.
enum LargeStack {
    /// The stack given to the thread: the size of a main thread's stack on Linux, and never below the engine's need.
    static let stackBytes = max(8 << 20, ThreadStack.minimumBytes)

    /// Runs `body` on the new thread and waits for it.
    static func run<T>(_ body: @escaping () -> T) -> T {
        DedicatedThread.run(name: "rulesctl-rules", stackBytes: stackBytes, body)
    }
}
