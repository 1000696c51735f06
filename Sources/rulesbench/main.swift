import ArgumentParser

/// Benchmarks that print figures; run by `make bench`. Nothing here asserts a speed: machines are shared
/// and noisy, so figures are medians, and comparisons are ratios measured in the same run.
struct RulesBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rulesbench",
        abstract: "Benchmarks of rulesd: the engine in process, the socket under load, reloads.",
        subcommands: [
            EngineBenchmark.self, SocketBenchmark.self, ReloadBenchmark.self, ScaleBenchmark.self, DataBenchmark.self,
            ReplayBenchmark.self, OpenFeatureBenchmark.self,
        ])
}

RulesBench.main()
