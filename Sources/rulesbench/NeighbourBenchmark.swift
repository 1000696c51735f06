import ArgumentParser
import Foundation
import RuleModel
import Synchronization
import SystemClock

#if canImport(Glibc)
    import Glibc
#endif

/// A canary namespace's latency with and without a hostile neighbour in the same daemon.
///
/// The daemon serves the benchmark rules in the default namespace (the canary) and a namespace `hostile` whose
/// flags loop without end and allocate without end (each stopped by the sandbox's budgets, at the most cost one
/// evaluation may have). Canary clients ask one at a time; meanwhile hostile clients ask the hostile flags as
/// fast as they are answered. Each isolation mode of the hostile namespace gets its own daemon, and each row is
/// compared with the same daemon's canary alone. Then the memory one namespace adds: the daemon's resident size
/// with extra copies of the benchmark rules as namespaces of their own.
struct NeighbourBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "neighbour",
        abstract: "A canary namespace's p50/p99 beside a hostile namespace, per isolation mode; memory per namespace.")

    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?
    @Option(help: "Questions per canary client and measurement.")
    var requests = 4000
    @Option(help: "Canary clients asking at once.")
    var canaries = 2
    @Option(help: "Hostile clients asking at once.")
    var hostiles = 2
    @Option(help: "Namespaces added to measure the memory one costs.")
    var extraNamespaces = 4

    static let hostileRules = """
        flag "spin" {
          description = "never returns: stopped by the instruction budget or the deadline",
          rule = function(ctx) local n = 0 while true do n = n + 1 end end,
        }
        flag "hog" {
          description = "allocates until the memory limit stops it",
          rule = function(ctx)
            local t = {}
            for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end
          end,
        }
        """

    func run() throws {
        let work = NSTemporaryDirectory() + "rulesbench-nb-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: work) }
        try write(BenchmarkRules.sources, to: work + "/canary")
        try write([RuleSource(path: "hostile.lua", content: Array(Self.hostileRules.utf8))], to: work + "/hostile")
        let binary =
            rulesd
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
                "rulesd"
            ).path
        let contexts = BenchmarkRules.contexts(count: 1024)
        let canaryRequests = contexts.map {
            Array(#"{"op":"flag","flag":"new-checkout","context":"#.utf8) + $0 + Array("}\n".utf8)
        }
        let hostileRequests = ["spin", "hog"].map {
            Array(#"{"op":"flag","namespace":"hostile","flag":"\#($0)","context":{"user":"u-1"}}"#.utf8) + [10]
        }

        print("rulesd neighbour: \(canaries) canary clients (one question at a time), \(hostiles) hostile clients")
        print(
            "hostile isolation   neighbour   canary p50 µs   p99 µs   answers/s   p50 ratio   p99 ratio   hostile answers"
        )
        for isolation in ["thread", "process"] {
            let config =
                "[namespace hostile]\nrules = \(work)/hostile\nisolation = \(isolation)\n"
            let daemon = try Daemon(
                binary: binary, work: work + "/" + isolation, rules: work + "/canary", config: config)
            defer { daemon.stop() }
            let socket = daemon.socket
            // The rule process starts after the daemon listens: measuring the canary alone while it starts up
            // would charge its start to the canary.
            try OpenFeatureBenchmark.waitFor { (try? Self.hostileServes(socket)) == true }
            _ = try OpenFeatureBenchmark.threads(canaries) {
                try OpenFeatureBenchmark.lineClient(socket, canaryRequests, 500)
            }
            let alone = try OpenFeatureBenchmark.threads(canaries) {
                try OpenFeatureBenchmark.lineClient(socket, canaryRequests, requests)
            }
            let stop = StopFlag()
            let hostileAnswers = Atomic<Int>(0)
            let hostileThreads = DispatchGroup()
            for _ in 0..<hostiles {
                hostileThreads.enter()
                Thread {
                    let answered = (try? Self.hammer(socket, hostileRequests, stop)) ?? 0
                    hostileAnswers.add(answered, ordering: .relaxed)
                    hostileThreads.leave()
                }.start()
            }
            let beside = try OpenFeatureBenchmark.threads(canaries) {
                try OpenFeatureBenchmark.lineClient(socket, canaryRequests, requests)
            }
            stop.set()
            hostileThreads.wait()
            let quiet = Summary(alone)
            let noisy = Summary(beside)
            print(quiet.row(isolation, "none", base: quiet, hostile: "-"))
            print(noisy.row(isolation, "hostile", base: quiet, hostile: "\(hostileAnswers.load(ordering: .relaxed))"))
        }
        try memoryPerNamespace(binary: binary, work: work)
    }

    /// Resident memory with only the default namespace, then with `extraNamespaces` more copies of the same rules.
    private func memoryPerNamespace(binary: String, work: String) throws {
        var sections = ""
        for index in 0..<extraNamespaces {
            try write(BenchmarkRules.sources, to: work + "/copy\(index)")
            sections += "[namespace copy\(index)]\nrules = \(work)/copy\(index)\n"
        }
        func resident(_ config: String, _ name: String) throws -> Int {
            let daemon = try Daemon(binary: binary, work: work + "/" + name, rules: work + "/canary", config: config)
            defer { daemon.stop() }
            let socket = daemon.socket
            // Every worker builds its Lua states on its first question of each namespace: ask each of them enough
            // times that every worker has answered.
            let namespaces = [nil] + (0..<extraNamespaces).map { "copy\($0)" }
            for namespace in namespaces where config.isEmpty == false || namespace == nil {
                let member = namespace.map { #""namespace":"\#($0)","# } ?? ""
                let question = Array(#"{"op":"flag",\#(member)"flag":"dark-mode"}"#.utf8) + [10]
                _ = try OpenFeatureBenchmark.threads(8) {
                    try OpenFeatureBenchmark.lineClient(socket, [question], 200)
                }
            }
            return residentKiB(daemon.pid)
        }
        let base = try resident("", "mem-base")
        let more = try resident(sections, "mem-more")
        print("")
        print("resident memory     namespaces   RSS MiB   per extra namespace MiB")
        print(String(format: "default only        %10d %9.1f", 1, Double(base) / 1024))
        print(
            String(
                format: "default + copies    %10d %9.1f %25.2f", extraNamespaces + 1, Double(more) / 1024,
                Double(more - base) / 1024 / Double(max(extraNamespaces, 1))))
    }

    private func write(_ sources: [RuleSource], to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for source in sources {
            try Data(source.content).write(to: URL(fileURLWithPath: directory + "/" + source.path))
        }
    }

    /// Whether the hostile namespace serves: in threads, or with its rule process running.
    static func hostileServes(_ path: String) throws -> Bool {
        let fd = try OpenFeatureBenchmark.connectUnix(path)
        defer { close(fd) }
        try OpenFeatureBenchmark.send(fd, Array(#"{"op":"status","namespace":"hostile"}"#.utf8) + [10])
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while answer.last != UInt8(ascii: "\n") {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw BenchError("status: connection closed") }
            answer += buffer[0..<n]
        }
        let text = String(decoding: answer, as: UTF8.self)
        return text.contains(#""isolation":{"mode":"thread"}"#) || text.contains(#""state":"running""#)
    }

    /// Asks the hostile questions one at a time until `stop`; returns how many were answered.
    static func hammer(_ path: String, _ requests: [[UInt8]], _ stop: StopFlag) throws -> Int {
        let fd = try OpenFeatureBenchmark.connectUnix(path)
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var answered = 0
        while !stop.isSet {
            try OpenFeatureBenchmark.send(fd, requests[answered % requests.count])
            var received = 0
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + received, $0.count - received, 0) }
                guard n > 0 else { throw BenchError("hostile client: connection closed") }
                received += n
                if buffer[received - 1] == UInt8(ascii: "\n") { break }
                if received == buffer.count { received = 0 }
            }
            answered += 1
        }
        return answered
    }

    final class StopFlag: Sendable {
        private let flag = Atomic<Bool>(false)
        func set() { flag.store(true, ordering: .releasing) }
        var isSet: Bool { flag.load(ordering: .acquiring) }
    }

    /// Percentiles of one measurement.
    struct Summary {
        var p50: Double
        var p99: Double
        var rate: Double

        init(_ measurement: OpenFeatureBenchmark.Measurement) {
            let sorted = measurement.latencies.sorted()
            func percentile(_ p: Double) -> Double {
                Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
            }
            p50 = percentile(0.5)
            p99 = percentile(0.99)
            rate = Double(sorted.count) / measurement.seconds
        }

        func row(_ isolation: String, _ neighbour: String, base: Summary, hostile: String) -> String {
            isolation.padding(toLength: 20, withPad: " ", startingAt: 0)
                + neighbour.padding(toLength: 10, withPad: " ", startingAt: 0)
                + String(
                    format: "%14.1f %8.1f %11.0f %10.2fx %10.2fx   ", p50, p99, rate, p50 / base.p50, p99 / base.p99)
                + hostile
        }
    }

    /// One rulesd started for a measurement, with a config file of namespace sections.
    final class Daemon {
        let process = Process()
        let socket: String
        var pid: Int32 { process.processIdentifier }

        init(binary: String, work: String, rules: String, config: String) throws {
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
            socket = work + "/q.sock"
            let configPath = work + "/rulesd.conf"
            try Data(config.utf8).write(to: URL(fileURLWithPath: configPath))
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = [
                "--config", configPath, "--rules", rules, "--socket", socket, "--state-dir", work + "/state",
                "--watch", "off", "--log-level", "error",
            ]
            try process.run()
            let socket = socket
            try OpenFeatureBenchmark.waitFor { access(socket, F_OK) == 0 }
        }

        func stop() {
            process.terminate()
            process.waitUntilExit()
        }
    }
}
