import ArgumentParser
import Foundation
import RuleEngine
import RuleModel

/// A large data file: how long a rule set that loads it takes to build (scan included), what the data set costs
/// in memory, what a second worker's state costs when it shares the data set, and what a lookup costs.
struct DataBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data", abstract: "Load time, memory and lookups of a large data file (1,000,000 lines).")

    @Option(help: "Lines in the data file.")
    var lines = 1_000_000
    @Option(help: "Evaluations for the lookup figure.")
    var lookups = 200_000

    func run() throws {
        let directory = NSTemporaryDirectory() + "rulesbench-data-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var list = "# generated users\n"
        list.reserveCapacity(lines * 14)
        for index in 0..<lines { list += "user-\(index)\n" }
        try Data(list.utf8).write(to: URL(fileURLWithPath: directory + "/beta-users.txt"))
        let rule = """
            local beta = data "beta-users"
            flag "beta" { rule = function(ctx) return beta:has(ctx.user_id) and "on" or "off" end }
            """
        try Data(rule.utf8).write(to: URL(fileURLWithPath: directory + "/beta.lua"))

        var scans: [Double] = []
        var builds: [Double] = []
        var workers: [Double] = []
        var loaded: (RuleSet, RuleEvaluator)?
        for _ in 0..<3 {
            loaded = nil
            let start = LoadClient.now()
            let snapshot = RuleTreeReader().read(root: directory)
            let scanned = LoadClient.now()
            loaded = try RuleCompiler.compile(snapshot.sources)
            let built = LoadClient.now()
            _ = try RuleCompiler.makeEvaluator(for: loaded!.0)
            workers.append(Double(LoadClient.now() - built) / 1e6)
            scans.append(Double(scanned - start) / 1e6)
            builds.append(Double(built - scanned) / 1e6)
        }
        guard let (ruleSet, evaluator) = loaded, let set = ruleSet.dataSets.first else { return }
        scans.sort()
        builds.sort()
        workers.sort()
        print("data: \(lines) lines, \(list.utf8.count / 1024) KiB (beta-users.txt)")
        print(
            "  scan (read) \(Timing.format(scans[1], digits: 1)) ms, "
                + "compile (revision hash, parse, index, load, validate) \(Timing.format(builds[1], digits: 1)) ms (medians of 3)"
        )
        print(
            "  data set: \(set.entries) entries, \(set.bytes / 1024) KiB, once per rule set; "
                + "Lua state \(evaluator.memoryInUse / 1024) KiB")
        print("  another worker's state sharing it: \(Timing.format(workers[1], digits: 2)) ms")
        let index = ruleSet.flagIndex(forKey: "beta")!
        let contexts = (0..<64).map { Array(#"{"user_id":"user-\#($0 * 15_551)"}"#.utf8) }
        var hits = 0
        let start = LoadClient.now()
        for round in 0..<lookups {
            let decision = contexts[round & 63].withUnsafeBytes {
                evaluator.evaluateFlag(at: index, context: $0, now: 0)
            }
            if decision.variantIndex == 1 { hits += 1 }
        }
        let perLookup = Double(LoadClient.now() - start) / Double(lookups)
        print("  flag evaluation with one lookup: \(Timing.format(perLookup / 1000, digits: 2)) µs (\(hits) hits)")
    }
}
