import ArgumentParser
import Foundation
import RuleEngine
import RuleModel
import SystemClock

/// How costs grow with the work, in process: evaluation time by context fields, routing time by routes, build
/// time and memory by flags. Each curve prints the per-unit cost and the marginal cost of each step, so that
/// growth worse than linear shows as a marginal cost that rises with the size.
struct GrowthBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "growth",
        abstract: "Growth curves: evaluation by context fields, routing by routes, build and memory by flags.")

    @Option(help: "Context field counts, comma-separated.")
    var fields = "1,10,100,1000"
    @Option(help: "Route counts, comma-separated.")
    var routes = "10,100,1000,10000"
    @Option(help: "Flag counts, comma-separated.")
    var flags = "1000,10000,100000"
    @Option(help: "Files the flags are spread over.")
    var files = 20
    @Option(help: "Rounds of the timed curves (sizes interleaved in each; medians are reported).")
    var rounds = 7
    @Option(help: "Milliseconds per round and size.")
    var milliseconds = 100
    @Option(help: "Builds per flag count (the median is reported).")
    var builds = 3

    func run() throws {
        try fieldCurve(sizes: Self.sizes(fields))
        try routeCurve(sizes: Self.sizes(routes))
        try flagCurve(sizes: Self.sizes(flags))
    }

    static func sizes(_ text: String) -> [Int] { text.split(separator: ",").compactMap { Int($0) } }

    /// Limits wide enough for the largest sizes: the point is the curve, not the default budgets.
    static var wideLimits: RuleEngineLimits {
        var limits = RuleEngineLimits()
        limits.memoryLimit = 4 << 30
        limits.loadInstructionLimit = 1 << 40
        limits.loadTimeout = .seconds(600)
        limits.maxContextValues = 1 << 20
        return limits
    }

    /// A flag that reads one field, asked with contexts of 1 to N fields: the cost of the fields it never reads.
    private func fieldCurve(sizes: [Int]) throws {
        let source = RuleSource(
            path: "f.lua",
            content: Array(
                #"flag "f" { rule = function(ctx) if ctx.plan == "pro" then return "on" end return "off" end }"#.utf8))
        let (ruleSet, evaluator) = try RuleCompiler.compile([source], limits: Self.wideLimits)
        let index = ruleSet.flagIndex(forKey: "f")!
        let contexts = sizes.map { count -> [[UInt8]] in
            (0..<64).map { variant in
                var text = #"{"plan":"\#(variant % 2 == 0 ? "pro" : "free")""#
                for field in 1..<max(1, count) { text += #","field\#(field)":"value-\#(variant)-\#(field)""# }
                return Array((text + "}").utf8)
            }
        }
        let now = RuleClock.now()
        var sink = 0
        let medians = Self.interleaved(sizes.count, rounds: rounds, milliseconds: milliseconds) { size, i in
            contexts[size][i & 63].withUnsafeBytes {
                sink &+= evaluator.evaluateFlag(at: index, context: $0, now: now).variantIndex
            }
        }
        print("growth: evaluation by context fields (one flag reading one field; medians of \(rounds) rounds)")
        Self.printCurve(unit: "fields", sizes: sizes, values: medians, valueLabel: "ns/eval", perUnitLabel: "ns")
        if sink == 42 { print("") }
    }

    /// Routing where every route but the last (a catch-all) is tried and fails: the cost per route tried.
    private func routeCurve(sizes: [Int]) throws {
        var evaluators: [RuleEvaluator] = []
        var buildTimes: [Double] = []
        for count in sizes {
            var text = ""
            for index in 0..<(count - 1) {
                text += """
                    route "r\(index)" {
                      match = function(req) return req.method == "GET" and starts_with(req.path, "/svc\(index)/") end,
                      target = "backend-\(index)",
                    }

                    """
            }
            text += #"route "default" { match = function(req) return true end, target = "web" }"#
            let start = LoadClient.now()
            let (_, evaluator) = try RuleCompiler.compile(
                [RuleSource(path: "routes.lua", content: Array(text.utf8))], limits: Self.wideLimits)
            buildTimes.append(Double(LoadClient.now() - start) / 1e6)
            evaluators.append(evaluator)
        }
        let requests = (0..<64).map {
            Array(#"{"method":"GET","path":"/other/items/\#($0)","user":"u-\#($0)"}"#.utf8)
        }
        let now = RuleClock.now()
        var sink = 0
        let medians = Self.interleaved(sizes.count, rounds: rounds, milliseconds: milliseconds) { size, i in
            requests[i & 63].withUnsafeBytes {
                if case .matched(let index, _) = evaluators[size].route(request: $0, now: now) { sink &+= index }
            }
        }
        print("growth: routing by routes (all but the last tried and failing; medians of \(rounds) rounds)")
        Self.printCurve(
            unit: "routes", sizes: sizes, values: medians, valueLabel: "ns/route call", perUnitLabel: "ns",
            extra: ("build ms", buildTimes.map { Timing.format($0, digits: 1) }))
        if sink == 42 { print("") }
    }

    /// Build time and memory of one state, and of a plain Lua state loading the same files, by flags.
    private func flagCurve(sizes: [Int]) throws {
        var times: [Double] = []
        var workerTimes: [Double] = []
        var memory: [Double] = []
        var bare: [String] = []
        for count in sizes {
            let sources = ScaleBenchmark.flagSources(flags: count, files: files)
            var builds: [Double] = []
            var seconds: [Double] = []
            var bytes = 0
            for _ in 0..<max(1, self.builds) {
                let start = LoadClient.now()
                let (ruleSet, evaluator) = try RuleCompiler.compile(sources, limits: Self.wideLimits)
                let built = LoadClient.now()
                _ = try RuleCompiler.makeEvaluator(for: ruleSet)
                builds.append(Double(built - start) / 1e6)
                seconds.append(Double(LoadClient.now() - built) / 1e6)
                bytes = evaluator.memoryInUse
            }
            times.append(builds.sorted()[builds.count / 2])
            workerTimes.append(seconds.sorted()[seconds.count / 2])
            memory.append(Double(bytes))
            bare.append(
                BareLua.load(sources).map {
                    "\(Timing.format($0.milliseconds, digits: 1)) ms, \(Timing.format(Double($0.bytes) / 1048576, digits: 1)) MiB"
                } ?? "-")
        }
        print(
            "growth: build by flags (\(files) files; a state built and validated, then a second worker's state; "
                + "medians of \(builds))")
        Self.printCurve(
            unit: "flags", sizes: sizes, values: times.map { $0 * 1e6 }, valueLabel: "build ms", perUnitLabel: "ns",
            scale: 1e6, extra: ("2nd state ms", workerTimes.map { Timing.format($0, digits: 1) }))
        print("growth: memory of one state by flags")
        Self.printCurve(
            unit: "flags", sizes: sizes, values: memory, valueLabel: "KiB", perUnitLabel: "bytes", scale: 1024,
            extra: ("plain Lua state (time, memory)", bare))
    }

    /// Times `body(size, iteration)` for every size, the sizes interleaved within each round.
    /// - Returns: the median ns per call of each size.
    static func interleaved(_ count: Int, rounds: Int, milliseconds: Int, _ body: (Int, Int) -> Void) -> [Double] {
        var samples = [[Double]](repeating: [], count: count)
        for _ in 0..<max(1, rounds) {
            for size in 0..<count {
                samples[size].append(Timing.nanosecondsPerCall(budgetMilliseconds: milliseconds) { body(size, $0) })
            }
        }
        return samples.map { $0.sorted()[$0.count / 2] }
    }

    /// One growth table: size, the measured value, the value per unit and the marginal cost per unit of each
    /// step (the difference from the previous size over the units added).
    /// - Parameters:
    ///   - values: in the per-unit column's unit; `scale` divides them for the value column.
    ///   - extra: one more column, already formatted.
    static func printCurve(
        unit: String, sizes: [Int], values: [Double], valueLabel: String, perUnitLabel: String, scale: Double = 1,
        extra: (String, [String])? = nil
    ) {
        var rows = [
            [unit, valueLabel, "\(perUnitLabel)/\(unit.dropLast())", "marginal \(perUnitLabel)/\(unit.dropLast())"]
        ]
        if let extra { rows[0].append(extra.0) }
        for (index, size) in sizes.enumerated() {
            let value = values[index]
            var marginal = "-"
            if index > 0, size > sizes[index - 1] {
                marginal = Timing.format((value - values[index - 1]) / Double(size - sizes[index - 1]), digits: 1)
            }
            var row = [
                grouped(size), Timing.format(value / scale, digits: scale == 1 ? 0 : 1),
                Timing.format(value / Double(size), digits: 1), marginal,
            ]
            if let extra { row.append(index < extra.1.count ? extra.1[index] : "-") }
            rows.append(row)
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max()! }
        for row in rows {
            print("  " + zip(row, widths).map { $0.padding($1) }.joined(separator: "  "))
        }
        if sizes.count >= 3 {
            let first = (values[1] - values[0]) / Double(max(1, sizes[1] - sizes[0]))
            let last =
                (values[values.count - 1] - values[values.count - 2])
                / Double(max(1, sizes[sizes.count - 1] - sizes[sizes.count - 2]))
            // A first step lost in the noise gives no meaningful ratio.
            let ratio = first > 0 ? Timing.format(last / first, digits: 2) + "x" : "-"
            print(
                "  marginal cost, last step / first step: \(ratio) "
                    + "(about 1x: linear; well above: worse than linear)")
        }
    }
}
