import ArgumentParser
import Glibc
import RuleEngine
import RuleModel
import RuleReplay

/// Measures `rulesctl diff --replay`'s work once the two rule sets are loaded: reading a capture file and
/// replaying every request against both, on the example rules against a copy with a wider rollout.
struct ReplayBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Time replaying captured requests against two rule sets (the target: 100,000 in under 2 s).")

    @Option(help: "The rules directory to replay against (the old side; the new side widens a rollout).")
    var rules = "config/rules.d"
    @Option(help: "Captured requests to replay.")
    var requests = 100_000
    @Option(help: "Runs (the median is reported).")
    var runs = 5

    func run() throws {
        let snapshot = RuleTreeReader().read(root: rules)
        guard snapshot.problems.isEmpty else { throw ValidationError("\(rules) does not load: \(snapshot.problems)") }
        let widened = snapshot.sources.map { source in
            let text = String(decoding: source.content, as: UTF8.self)
            let edited = text.replacing(#"{ { "on", 20 }, { "off", 80 } }"#, with: #"{ { "on", 50 }, { "off", 50 } }"#)
            return RuleSource(path: source.path, content: Array(edited.utf8))
        }
        let file = Self.captureFile(requests: requests)
        let sources = snapshot.sources
        let runs = runs
        let figures = DedicatedThread.run(name: "rulesbench-replay", stackBytes: 8 << 20) {
            () -> Result<(parse: [Double], replay: [Double], cpu: [Double], report: ReplayReport), Error> in
            Result {
                let (_, old) = try RuleCompiler.compile(sources, runTests: false)
                let (_, new) = try RuleCompiler.compile(widened, runTests: false)
                var parse: [Double] = []
                var replay: [Double] = []
                var cpu: [Double] = []
                var report = ReplayReport(subjects: [])
                for _ in 0..<runs {
                    let cpuStart = Self.threadCPUNanoseconds()
                    let start = Timing.monotonic()
                    let captured = try CaptureFile.parse(file)
                    let parsed = Timing.monotonic()
                    report = ReplayDiff.replay(captured, old: old, new: new, now: 1_764_000_000)
                    let done = Timing.monotonic()
                    parse.append(Double(parsed - start) / 1e6)
                    replay.append(Double(done - parsed) / 1e6)
                    cpu.append(Double(Self.threadCPUNanoseconds() - cpuStart) / 1e6)
                }
                return (parse, replay, cpu, report)
            }
        }
        let (parse, replay, cpu, report) = try figures.get()
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let total = median(parse) + median(replay)
        print(
            "replay: \(requests) requests (\(file.count / 1024) KiB of JSON Lines), median of \(runs): read "
                + "\(Timing.format(median(parse), digits: 1)) ms, replay against both rule sets "
                + "\(Timing.format(median(replay), digits: 1)) ms, total \(Timing.format(total, digits: 1)) ms "
                + "(\(Timing.format(Double(requests) / total * 1000)) requests/s), CPU "
                + "\(Timing.format(median(cpu), digits: 1)) ms; \(report.changed) changed")
    }

    /// This thread's CPU time: on a shared machine, the figure that says what the work costs.
    static func threadCPUNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Requests shaped like the example rules' traffic: the checkout flags with users and countries, and routes.
    static func captureFile(requests: Int) -> [UInt8] {
        let countries = ["DE", "FR", "US", "BR", "JP", "GB"]
        let flags = ["checkout.new-flow", "checkout.express-pay", "checkout.payment-page"]
        var out: [UInt8] = []
        out.reserveCapacity(requests * 96)
        for n in 0..<requests {
            let line: String
            if n % 10 == 9 {
                line =
                    #"{"route":{"method":"GET","path":"/api/users/\#(n)","headers":{"x-api-version":"2"}},"at":1764000000.5}"#
            } else {
                line =
                    #"{"flag":"\#(flags[n % 3])","context":{"user_id":"user-\#(n)","country":"\#(countries[n % 6])"},"#
                    + #""at":1764000000.5}"#
            }
            out.append(contentsOf: line.utf8)
            out.append(UInt8(ascii: "\n"))
        }
        return out
    }
}
