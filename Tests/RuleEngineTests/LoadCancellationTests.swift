import CRuleSandbox
import RuleModel
import Testing

@testable import RuleEngine

@Suite("Abandoning a load, and what kind of failure a load is")
struct LoadCancellationTests {
    /// Budgets under which an endless chunk runs for a long time before a budget stops it.
    var patientLimits: RuleEngineLimits {
        var limits = RuleEngineLimits()
        limits.loadInstructionLimit = 4_000_000_000
        limits.loadTimeout = .seconds(600)
        return limits
    }

    @Test("a chunk that never ends stops between Lua steps once its load is cancelled")
    func chunkStopsOnCancellation() throws {
        var limits = patientLimits.sandboxLimits
        var error = [CChar](repeating: 0, count: 256)
        let state = try #require(rs_state_new(&limits, &error, error.count))
        defer { rs_state_free(state) }
        let cancellation = RuleLoadCancellation()
        cancellation.cancel()
        rs_state_set_cancel(state, cancellation.token)
        let source = Array("while true do end".utf8CString)
        let result = source.withUnsafeBufferPointer { rs_load_file(state, "loop.lua", $0.baseAddress, $0.count - 1) }
        #expect(result == 2)
        let message = String(cString: rs_diagnostic_at(state, 0).message)
        #expect(message.contains("loading cancelled"), "\(message)")
    }

    @Test("a cancelled compile throws the cancelled failure and loads no further file")
    func compileCancelled() {
        let cancellation = RuleLoadCancellation()
        cancellation.cancel()
        #expect(throws: RuleLoadFailure.cancelled) {
            _ = try RuleCompiler.compile(
                sources(["a.lua": "while true do end", "b.lua": "while true do end"]), limits: patientLimits,
                cancellation: cancellation)
        }
        #expect(!RuleLoadFailure.cancelled.isDeterministic)
    }

    @Test("a cancellation that is never requested changes nothing")
    func unrequestedCancellation() throws {
        let cancellation = RuleLoadCancellation()
        let (ruleSet, _) = try RuleCompiler.compile(
            sources(["a.lua": #"config "k" (1)"#]), cancellation: cancellation)
        #expect(ruleSet.configs.count == 1)
        #expect(!cancellation.isCancelled)
    }

    @Test("a budget that runs out is a resource failure, which a retry may pass")
    func budgetIsNotDeterministic() {
        var limits = RuleEngineLimits()
        limits.loadInstructionLimit = 10_000
        let failure = loadFailure(["loop.lua": "while true do end"], limits: limits)
        #expect(failure?.cause == .resourceLimit)
        #expect(failure?.isDeterministic == false)
    }

    @Test("a syntax or validation error is a content failure, certain to repeat")
    func contentIsDeterministic() {
        #expect(loadFailure(["bad.lua": "flag ("])?.cause == .content)
        #expect(loadFailure(["bad.lua": #"flag "x" { unknown = 1 }"#])?.isDeterministic == true)
    }
}

@Suite("Rule sets of many files")
struct ManyFilesTests {
    @Test("100,000 one-line config files load within the default memory limit")
    func hundredThousandConfigFiles() throws {
        let files = (0..<100_000).map { index in
            RuleSource(path: "d\(index % 100)/f\(index).lua", content: Array("config \"k.\(index)\" (\(index))\n".utf8))
        }
        let (ruleSet, evaluator) = try RuleCompiler.compile(files)
        #expect(ruleSet.configs.count == 100_000)
        #expect(evaluator.memoryInUse < RuleEngineLimits().memoryLimit)
    }

    @Test("a rule set that outgrows the memory limit while loading stops with one message naming the limit")
    func oneMessageAtTheMemoryLimit() {
        var limits = RuleEngineLimits()
        limits.memoryLimit = 2 << 20
        var files: [String: String] = [:]
        for index in 0..<100 { files["f\(index).lua"] = #"config "c.\#(index)" ({ string.rep("x", 100000) })"# }
        let failure = loadFailure(files, limits: limits)
        #expect(failure?.diagnostics.count == 1)
        #expect(
            failure?.diagnostics.first?.message.contains("memory limit of 2 MiB") == true,
            "\(String(describing: failure))")
        #expect(failure?.cause == .resourceLimit)
    }

    @Test("a table in a file's globals that a rule writes to is read-only after loading")
    func globalsStillFrozen() throws {
        let rules = try compile([
            "a.lua": """
            counter = { n = 0 }
            flag "bump" { variants = { on = true, off = false }, default = "off",
              rule = function(ctx) counter.n = counter.n + 1; return "on" end }
            """
        ])
        let decision = rules.evaluator.evaluateFlag(key: "bump", context: [:], now: pinnedNow)
        #expect(decision?.reason == .error)
    }
}
