import ArgumentParser
import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol
import SystemClock

#if canImport(Glibc)
    import Glibc
#endif

/// Times the engine in process: ns per evaluation, context conversion included.
struct EngineBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Time evaluations in process (context conversion included) and compare with the C ceiling.")

    @Option(help: "Rounds per case (cases run interleaved; medians are reported).")
    var rounds = 15
    @Option(help: "Milliseconds per round and case.")
    var milliseconds = 100
    @Option(help: "C ceiling program source to build and run beside (skipped when missing).")
    var ceiling = "../shared/perf/lua_ceiling.c"
    @Option(help: "Rule file for the C ceiling.")
    var ceilingRules = "../shared/perf/rules.lua"
    @Option(help: "Seconds per phase of the C ceiling (at least 0.05).")
    var ceilingSeconds = 0.5
    @Option(help: "Run only the cases whose name contains this text (for profiling).")
    var only: String?

    /// Medians by case name, and the C ceiling's figures from the same run.
    struct Report {
        var medians: [String: Double]
        var ceiling: CeilingRunner.LuaCeiling?
    }

    func run() throws { _ = try measure() }

    func measure() throws -> Report {
        let (ruleSet, evaluator) = try RuleCompiler.compile(BenchmarkRules.sources)
        let contexts = BenchmarkRules.contexts(count: 4096)
        let requests = BenchmarkRules.routeRequests(count: 4096)
        let lines = contexts.map {
            Array(
                (#"{"id":1,"op":"flag","flag":"new-checkout","context":"# + String(decoding: $0, as: UTF8.self) + "}")
                    .utf8)
        }
        let staticIndex = ruleSet.flagIndex(forKey: "dark-mode")!
        let targetingIndex = ruleSet.flagIndex(forKey: "team-sharing")!
        let splitIndex = ruleSet.flagIndex(forKey: "new-checkout")!
        let now = RuleClock.now()
        var sink = 0
        // As a connection decodes: the context is validated once, by the sandbox evaluating it.
        var decoder = RequestDecoder(skimmingContexts: true)
        var output = ByteBufferAllocator().buffer(capacity: 4096)
        var result: [UInt8] = []
        let header = ResponseWriter.successHeader(revision: ruleSet.revision.short, generation: 1)
        let cases: [(String, (Int) -> Void)] = [
            (
                "static flag",
                { i in
                    contexts[i & 4095].withUnsafeBytes {
                        sink &+= evaluator.evaluateFlag(at: staticIndex, context: $0, now: now).variantIndex
                    }
                }
            ),
            (
                "targeting flag",
                { i in
                    contexts[i & 4095].withUnsafeBytes {
                        sink &+= evaluator.evaluateFlag(at: targetingIndex, context: $0, now: now).variantIndex
                    }
                }
            ),
            (
                "targeting+split flag",
                { i in
                    contexts[i & 4095].withUnsafeBytes {
                        sink &+= evaluator.evaluateFlag(at: splitIndex, context: $0, now: now).variantIndex
                    }
                }
            ),
            (
                "route over 50 routes",
                { i in
                    requests[i & 4095].withUnsafeBytes {
                        if case .matched(let index, _) = evaluator.route(request: $0, now: now) { sink &+= index }
                    }
                }
            ),
            (
                "config lookup",
                { i in
                    sink &+= ruleSet.config(key: i & 1 == 0 ? "http.timeout_ms" : "db.pool")?.json.count ?? 0
                }
            ),
            (
                Self.fullRequest,
                { i in
                    lines[i & 4095].withUnsafeBytes { bytes in
                        guard case .success(let request) = decoder.decode(bytes), let range = request.context,
                            let index = request.withFlagBytes(in: bytes, { ruleSet.flagIndex(forUTF8: $0) })
                        else { return }
                        let decision = evaluator.evaluateFlag(
                            at: index, context: UnsafeRawBufferPointer(rebasing: bytes[range]), now: now)
                        result.removeAll(keepingCapacity: true)
                        RuleAnswers.appendFlag(ruleSet, flag: index, decision, to: &result)
                        output.clear()
                        ResponseWriter.writeSuccess(
                            id: UnsafeRawBufferPointer(rebasing: bytes[request.id!]), header: header, result: result,
                            into: &output)
                        sink &+= output.readableBytes
                    }
                }
            ),
        ]
        let selected = cases.filter { only == nil || $0.0.contains(only!) }
        var samples = [[Double]](repeating: [], count: cases.count)
        for _ in 0..<rounds {
            for (index, (name, body)) in cases.enumerated() where selected.contains(where: { $0.0 == name }) {
                samples[index].append(Timing.nanosecondsPerCall(budgetMilliseconds: milliseconds, body))
            }
        }
        print(
            "engine: ns of CPU per evaluation, median of \(rounds) rounds (min-max), context conversion included")
        var medians: [String: Double] = [:]
        for (index, (name, _)) in cases.enumerated() where !samples[index].isEmpty {
            let sorted = samples[index].sorted()
            medians[name] = sorted[sorted.count / 2]
            print(
                "  \(name.padding(40)) \(Timing.format(sorted[sorted.count / 2])) ns  (\(Timing.format(sorted.first!))-\(Timing.format(sorted.last!)))"
            )
        }
        print(
            "  Lua state: \(evaluator.memoryInUse / 1024) KiB; \(ruleSet.flags.count) flags, \(ruleSet.routes.count) routes"
        )
        var ceilingResults: CeilingRunner.LuaCeiling?
        if only == nil {
            ceilingResults = CeilingRunner.runLuaCeiling(source: ceiling, rules: ceilingRules, seconds: ceilingSeconds)
        }
        if let ceilingResults {
            print("C ceiling (\(ceiling)), same run: ns per request, median of its 10 ms slices")
            let rows: [(String, String, String, String, String?)] = [
                ("parse+build+call, new-checkout, native hash", "native", "flag1", "call", "targeting+split flag"),
                ("whole request, new-checkout, native hash", "native", "flag1", "encode", Self.fullRequest),
                ("whole request, new-checkout, hash in Lua", "lua", "flag1", "encode", Self.fullRequest),
                ("parse+build+call, 11 table routes", "native", "route", "call", "route over 50 routes"),
            ]
            for (label, hash, test, phase, ours) in rows {
                guard let theirs = ceilingResults[hash, test, phase] else { continue }
                var line = "  \(label.padding(48)) \(Timing.format(theirs).padding(6)) ns"
                if let ours, let mine = medians[ours] {
                    line += "  rulesd's \(ours) / this: \(Timing.format(mine / theirs, digits: 2))x"
                }
                print(line)
            }
        } else if only == nil {
            print("C ceiling: \(ceiling) not found; skipped")
        }
        if sink == 42 { print("") }
        return Report(medians: medians, ceiling: ceilingResults)
    }

    static let fullRequest = "full request: decode+split flag+encode"
}

enum Timing {
    /// Calls `body` repeatedly for about `budgetMilliseconds` and returns the mean ns of this thread's CPU time
    /// per call: on a shared machine the time the work took, not the time others held the core (the C ceiling
    /// reports its thread's CPU time too).
    static func nanosecondsPerCall(budgetMilliseconds: Int, _ body: (Int) -> Void) -> Double {
        var iterations = 0
        let start = monotonic()
        let cpuStart = ReplayBenchmark.threadCPUNanoseconds()
        let deadline = start + UInt64(budgetMilliseconds) * 1_000_000
        var now = start
        while now < deadline {
            for _ in 0..<256 {
                body(iterations)
                iterations += 1
            }
            now = monotonic()
        }
        return Double(ReplayBenchmark.threadCPUNanoseconds() - cpuStart) / Double(iterations)
    }

    static func monotonic() -> UInt64 { SystemClock.monotonicNanoseconds() }

    static func format(_ value: Double, digits: Int = 0) -> String {
        guard value.isFinite else { return "-" }
        // A difference of two noisy medians can be negative.
        if value < 0 && (value * pow(10.0, Double(digits))).rounded() != 0 {
            return "-" + format(-value, digits: digits)
        }
        if digits == 0 { return String(Int(value.rounded())) }
        let scale = pow(10.0, Double(digits))
        let scaled = Int((value * scale).rounded())
        let fraction = String(scaled % Int(scale))
        return "\(scaled / Int(scale)).\(String(repeating: "0", count: digits - fraction.count))\(fraction)"
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
