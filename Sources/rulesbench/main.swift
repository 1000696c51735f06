import ArgumentParser
import Glibc

/// Benchmarks that print figures; run by `make bench`. Nothing here asserts a speed: machines are shared
/// and noisy, so figures are medians, and comparisons are ratios measured in the same run.
struct RulesBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rulesbench",
        abstract: "Benchmarks of rulesd: the engine in process, the socket under load, reloads, growth curves.",
        subcommands: [
            MeasuresBenchmark.self, GrowthBenchmark.self, EngineBenchmark.self, SocketBenchmark.self,
            ReloadBenchmark.self, ScaleBenchmark.self, DataBenchmark.self, ReplayBenchmark.self,
            OpenFeatureBenchmark.self, IsolationBenchmark.self, NeighbourBenchmark.self,
        ])
}

// A parent may start this program with signals blocked (a test runner's thread does); the servers started here
// would inherit that mask, and a C ceiling server that stops on SIGTERM would then never stop.
var unblocked = sigset_t()
sigemptyset(&unblocked)
pthread_sigmask(SIG_SETMASK, &unblocked, nil)

RulesBench.main()
