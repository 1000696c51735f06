import ArgumentParser
import Foundation
import RuleModel

/// What `isolation = process` costs per request: the same flag over the socket from a rulesd with the rules in its
/// worker threads and from one with them in a rule process, at 1 and 8 connections, in the same run.
struct IsolationBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "isolation",
        abstract: "isolation = thread against isolation = process: answers/s and p50/p99 latency, and their ratios.")

    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?
    @Option(help: "Connections, comma-separated (one request in flight on each).")
    var connections = "1,8"
    @Option(help: "Measured seconds per configuration and mode.")
    var duration = 3.0
    @Option(help: "Warm-up seconds before each measurement.")
    var warmup = 0.5
    @Option(help: "Runs; the modes are interleaved within a run.")
    var runs = 3
    @Option(help: "The flag to ask for.")
    var flag = "new-checkout"
    @Option(help: "Worker threads of both daemons.")
    var workers = 2

    func run() throws {
        let work = NSTemporaryDirectory() + "rulesbench-isolation-\(getpid())"
        try FileManager.default.createDirectory(atPath: work + "/rules", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        for source in BenchmarkRules.sources {
            try Data(source.content).write(to: URL(fileURLWithPath: work + "/rules/" + source.path))
        }
        var daemons: [(mode: String, socket: String, process: Process)] = []
        defer {
            for daemon in daemons where daemon.process.isRunning {
                daemon.process.terminate()
                daemon.process.waitUntilExit()
            }
        }
        for mode in ["thread", "process"] {
            let socket = work + "/\(mode).sock"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: BenchDaemon.binary(rulesd))
            process.arguments = [
                "--rules", work + "/rules", "--socket", socket, "--state-dir", work + "/state-\(mode)", "--watch",
                "off",
                "--log-level", "warning", "--workers", "\(workers)", "--isolation", mode,
            ]
            try process.run()
            daemons.append((mode, socket, process))
            try waitForAnswer(socket)
        }
        let requests = BenchmarkRules.contexts(count: 4096).enumerated().map { index, context in
            Array(#"{"id":\#(index),"op":"flag","flag":"\#(flag)","context":"#.utf8) + context + Array("}\n".utf8)
        }
        let counts = connections.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        var samples: [String: [Sample]] = [:]
        for _ in 1...runs {
            for count in counts {
                for daemon in daemons {
                    let client = LoadClient(socketPath: daemon.socket, connections: count, depth: 1, requests: requests)
                    let result = try client.run(duration: duration, warmup: warmup)
                    guard result.firstReply.contains("\"ok\":true") else {
                        throw BenchError("\(daemon.mode) answered \(result.firstReply)")
                    }
                    samples["\(daemon.mode) c=\(count)", default: []].append(
                        Sample(
                            rps: result.requestsPerSecond, p50: result.percentile(0.5), p99: result.percentile(0.99),
                            p999: result.percentile(0.999), serverMicrosecondsPerRequest: nil,
                            clientMicrosecondsPerRequest: 0, switchesPerRequest: nil))
                }
            }
        }
        print(
            "isolation: medians of \(runs) runs of \(duration) s, flag \(flag), \(workers) workers, 1 request in flight per connection"
        )
        for count in counts {
            print("c=\(count)")
            for daemon in daemons {
                let median = Sample.median(samples["\(daemon.mode) c=\(count)"] ?? [])
                print(
                    "  \(daemon.mode.padding(8)) \(Timing.format(median.rps).padding(8)) answers/s"
                        + "  p50 \(Timing.format(median.p50, digits: 1)) us  p99 \(Timing.format(median.p99, digits: 1)) us"
                )
            }
            let thread = samples["thread c=\(count)"] ?? []
            let process = samples["process c=\(count)"] ?? []
            func ratio(_ value: (Sample) -> Double) -> String {
                let ratios = zip(process, thread).map { value($0) / value($1) }.sorted()
                return Timing.format(ratios[ratios.count / 2], digits: 2) + "x"
            }
            print(
                "  process / thread: answers/s \(ratio(\.rps)), p50 \(ratio(\.p50)), p99 \(ratio(\.p99)) "
                    + "(per-run ratios, median); p50 overhead "
                    + "\(Timing.format(Sample.median(process).p50 - Sample.median(thread).p50, digits: 1)) us per request"
            )
        }
    }

    private func waitForAnswer(_ path: String) throws {
        for _ in 0..<3000 {
            if let fd = try? LoadClient.connect(path) {
                close(fd)
                return
            }
            usleep(10_000)
        }
        throw BenchError("nothing answers on \(path)")
    }
}
