import RuleEngine
import RuleModel
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Shared vocabulary of the engine's tests: compile inline rule files, evaluate flags into plain answers, and check
// that a canary flag living in the same Lua state still answers after something hostile ran there.

/// A compiled rule set and its first evaluator.
struct LoadedRules {
    let ruleSet: RuleSet
    let evaluator: RuleEvaluator
}

/// What a flag evaluation answered, with the variant's value looked up the way answers do.
struct FlagAnswer: Equatable {
    var value: JSONValue
    var variant: String
    var reason: EvaluationReason
    var code: RuleErrorCode?
    var message: String?
}

/// What routing answered when a route matched.
struct RouteAnswer: Equatable {
    var name: String
    var target: String
}

/// A fixed `now()` so that no answer depends on the clock.
let pinnedNow: Double = 1_700_000_000

/// Budgets that end hostile rules quickly by instruction count, with a deadline far enough away that a busy machine
/// does not turn an instruction-budget breach into a deadline breach (both are RESOURCE_LIMIT anyway).
func hostileLimits(
    instructions: Int = 200_000, timeout: Duration = .seconds(5), memory: Int = 16 << 20
) -> RuleEngineLimits {
    var limits = RuleEngineLimits()
    limits.evaluationInstructionLimit = instructions
    limits.evaluationTimeout = timeout
    limits.memoryLimit = memory
    return limits
}

/// Rule files from inline text, keyed by relative path.
func sources(_ files: [String: String]) -> [RuleSource] {
    files.map { RuleSource(path: $0.key, content: Array($0.value.utf8)) }
}

/// Compiles inline rule files; a load failure is thrown with every diagnostic.
func compile(_ files: [String: String], limits: RuleEngineLimits = RuleEngineLimits()) throws -> LoadedRules {
    let (ruleSet, evaluator) = try RuleCompiler.compile(sources(files), limits: limits)
    return LoadedRules(ruleSet: ruleSet, evaluator: evaluator)
}

/// The diagnostics that refuse `files`, or nil (with a recorded issue) when they load.
func loadFailure(
    _ files: [String: String], limits: RuleEngineLimits = RuleEngineLimits(),
    sourceLocation: Testing.SourceLocation = #_sourceLocation
) -> RuleLoadFailure? {
    do {
        _ = try RuleCompiler.compile(sources(files), limits: limits)
        Issue.record("the rule set loaded, but it should have been refused", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

/// Whether `failure` has a diagnostic at `file:line` whose message contains `text`.
func hasDiagnostic(_ failure: RuleLoadFailure?, file: String, line: Int, containing text: String) -> Bool {
    failure?.diagnostics.contains {
        $0.location.file == file && $0.location.line == line && $0.message.contains(text)
    } ?? false
}

extension LoadedRules {
    /// Evaluates the flag named `key`; a missing flag is a test failure.
    func flag(
        _ key: String, _ context: JSONValue = [:], now: Double = pinnedNow,
        sourceLocation: Testing.SourceLocation = #_sourceLocation
    ) throws -> FlagAnswer {
        let decision = try #require(
            evaluator.evaluateFlag(key: key, context: context, now: now), "no flag \(key)",
            sourceLocation: sourceLocation)
        return answer(key, decision)
    }

    /// Evaluates the flag named `key` for a context given as raw bytes (which need not be valid JSON or UTF-8).
    func flag(
        _ key: String, rawContext: [UInt8], sourceLocation: Testing.SourceLocation = #_sourceLocation
    ) throws -> FlagAnswer {
        let index = try #require(ruleSet.flagIndex(forKey: key), "no flag \(key)", sourceLocation: sourceLocation)
        let decision = rawContext.withUnsafeBytes { evaluator.evaluateFlag(at: index, context: $0, now: pinnedNow) }
        return answer(key, decision)
    }

    func answer(_ key: String, _ decision: FlagDecision) -> FlagAnswer {
        let definition = ruleSet.flags[ruleSet.flagIndex(forKey: key)!]
        let variant = definition.variants[decision.variantIndex]
        return FlagAnswer(
            value: variant.value, variant: variant.name, reason: decision.reason, code: decision.failure?.code,
            message: decision.failure?.message)
    }

    /// Routes a request: the matching route and its target, or nil when no route matches; a failure is thrown.
    func route(_ request: JSONValue, now: Double = pinnedNow) throws(RuleFailure) -> RouteAnswer? {
        switch evaluator.route(request: request, now: now) {
        case .matched(let index, let target): return RouteAnswer(name: ruleSet.routes[index].name, target: target)
        case .noRoute: return nil
        case .failed(_, let failure): throw failure
        }
    }

    /// The log lines of the last evaluations, as text.
    func logs() -> [String] { evaluator.takeLogs().map(\.text) }
}

// MARK: - The canary

/// A benign flag that shares the Lua state with hostile rules: it must keep answering after each of them.
let canaryFile = """
    flag "canary" {
      variants = { yes = "yes", no = "no" },
      default = "no",
      rule = function(ctx)
        if ctx.user == "canary" then return "yes" end
      end,
    }
    """

/// Compiles `hostile` (as hostile.lua) next to the canary.
func compileWithCanary(_ hostile: String, limits: RuleEngineLimits = hostileLimits()) throws -> LoadedRules {
    try compile(["canary.lua": canaryFile, "hostile.lua": hostile], limits: limits)
}

/// Checks that the canary still answers correctly: its targeting match, and its default.
func expectCanaryAnswers(_ rules: LoadedRules, sourceLocation: Testing.SourceLocation = #_sourceLocation) throws {
    let hit = try rules.flag("canary", ["user": "canary"], sourceLocation: sourceLocation)
    #expect(
        hit == FlagAnswer(value: "yes", variant: "yes", reason: .targetingMatch), sourceLocation: sourceLocation)
    let miss = try rules.flag("canary", ["user": "someone else"], sourceLocation: sourceLocation)
    #expect(miss == FlagAnswer(value: "no", variant: "no", reason: .defaultValue), sourceLocation: sourceLocation)
}

/// Loads `hostile` next to the canary, evaluates its flag `key` (which must fail with `code`), then checks that the
/// canary still answers. Returns the failure's message.
@discardableResult
func expectHostileFlagFails(
    _ hostile: String, key: String = "hostile", code: RuleErrorCode, context: JSONValue = ["user": "mallory"],
    limits: RuleEngineLimits = hostileLimits(), sourceLocation: Testing.SourceLocation = #_sourceLocation
) throws -> String {
    let rules = try compileWithCanary(hostile, limits: limits)
    let answer = try rules.flag(key, context, sourceLocation: sourceLocation)
    #expect(answer.reason == .error, sourceLocation: sourceLocation)
    #expect(answer.code == code, "\(answer.message ?? "")", sourceLocation: sourceLocation)
    try expectCanaryAnswers(rules, sourceLocation: sourceLocation)
    // The failure is not sticky beyond its own evaluation: a second try fails the same way, no worse.
    let again = try rules.flag(key, context, sourceLocation: sourceLocation)
    #expect(again.code == code, sourceLocation: sourceLocation)
    try expectCanaryAnswers(rules, sourceLocation: sourceLocation)
    return answer.message ?? ""
}

// MARK: - Files on disk

/// The folder holding this file's fixtures (no bundle resources: the path comes from the source file).
let fixturesDirectory: String = {
    let path = #filePath
    let folder = path[..<path.lastIndex(of: "/")!]
    return folder + "/Fixtures"
}()

/// Reads a file's bytes, or nil.
func readBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return bytes
}

/// A temporary directory for one test, removed with everything in it when the test ends.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/rulesd-engine-tests.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = try #require(made.map { String(cString: $0) })
    }

    deinit {
        DirectoryEntries.removeTree(path)
    }

    /// Writes `content` at `relative`, creating the directories on the way.
    func writeFile(_ relative: String, _ content: String) throws {
        try writeFile(relative, bytes: Array(content.utf8))
    }

    func writeFile(_ relative: String, bytes: [UInt8]) throws {
        let full = path + "/" + relative
        try makeParents(of: full)
        let fd = open(full, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        try #require(fd >= 0, "cannot create \(full)")
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        try #require(written == bytes.count)
    }

    func makeDirectory(_ relative: String) throws {
        try makeParents(of: path + "/" + relative + "/x")
    }

    /// Creates a symbolic link at `relative` pointing to `target` (taken as is).
    func makeSymlink(_ relative: String, to target: String) throws {
        let full = path + "/" + relative
        try makeParents(of: full)
        try #require(symlink(target, full) == 0, "cannot link \(full)")
    }

    private func makeParents(of full: String) throws {
        var prefix = ""
        let parts = full.split(separator: "/", omittingEmptySubsequences: true).dropLast()
        for part in parts {
            prefix += "/" + part
            let made = mkdir(prefix, 0o755) == 0 || errno == EEXIST
            try #require(made, "cannot create \(prefix)")
        }
    }
}
