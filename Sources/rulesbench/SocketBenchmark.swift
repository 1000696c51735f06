import ArgumentParser
import Foundation
import RuleModel

/// Drives a real rulesd over its socket and prints throughput, latency and the daemon's CPU per request;
/// with the C ceilings' sources at hand, runs them with the same client in the same run for ratios.
struct SocketBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket",
        abstract: "Load a rulesd over its socket: requests/s, p50/p99/p999 latency, daemon CPU per request.")

    @Option(help: "Socket of a running rulesd; by default the benchmark starts its own on the benchmark rules.")
    var socket: String?
    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?
    @Option(
        help: """
            Worker threads of the started rulesd, comma-separated to start one rulesd per count, all measured in \
            the same run; "default" is the daemon's own default (the number of cores).
            """)
    var workers = "default"
    @Option(help: "Configurations as CONNECTIONSxDEPTH, comma-separated.")
    var configs = "1x1,8x1,8x32"
    @Option(help: "Measured seconds per configuration and server.")
    var duration = 3.0
    @Option(help: "Warm-up seconds before each measurement.")
    var warmup = 0.5
    @Option(help: "Runs; servers and configurations are interleaved within a run.")
    var runs = 3
    @Option(help: "The flag to ask for.")
    var flag = "new-checkout"
    @Option(help: "Directory holding the C ceilings' sources (echo_server.c, lua_ceiling.c, rules.lua).")
    var ceilings = "../shared/perf"

    /// What one run measured: samples per server and configuration, and each server's memory at the end.
    struct Report {
        /// The servers in the order they were measured; `rulesd` ones first.
        var servers: [String]
        /// The rulesd started with the daemon's default workers, when one was.
        var defaultDaemon: String?
        var samples: [String: [Sample]]
        var residentKiB: [String: Int]
        var runs: Int

        func samples(_ server: String, _ connections: Int, _ depth: Int) -> [Sample] {
            samples["\(server) c=\(connections),P=\(depth)"] ?? []
        }

        /// The median over runs of ours / theirs, each run's pair measured back to back.
        func ratio(
            _ ours: String, _ theirs: String, _ connections: Int, _ depth: Int, _ figure: (Sample) -> Double
        ) -> Double? {
            let pairs = zip(samples(ours, connections, depth), samples(theirs, connections, depth))
            let ratios = pairs.map { figure($0) / figure($1) }.sorted()
            return ratios.isEmpty ? nil : ratios[ratios.count / 2]
        }
    }

    func run() throws { _ = try measure() }

    func measure() throws -> Report {
        let work = NSTemporaryDirectory() + "rulesbench-\(getpid())"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        var servers: [(name: String, socket: String, pid: Int32?, requests: [[UInt8]])] = []
        var defaultDaemon: String?
        var children: [Process] = []
        defer {
            for child in children where child.isRunning {
                child.terminate()
                // A server that does not stop on SIGTERM within 5 s is killed.
                for _ in 0..<500 where child.isRunning { usleep(10_000) }
                if child.isRunning { kill(child.processIdentifier, SIGKILL) }
                child.waitUntilExit()
            }
        }

        let contexts = BenchmarkRules.contexts(count: 4096)
        let ours = contexts.enumerated().map { index, context in
            Array((#"{"id":\#(100000 + index),"op":"flag","flag":"\#(flag)","context":"#).utf8) + context
                + Array("}\n".utf8)
        }
        if let socket {
            servers.append(("rulesd", socket, nil, ours))
        } else {
            let rules = work + "/rules"
            try FileManager.default.createDirectory(atPath: rules, withIntermediateDirectories: true)
            for source in BenchmarkRules.sources {
                try Data(source.content).write(to: URL(fileURLWithPath: rules + "/" + source.path))
            }
            let binary = BenchDaemon.binary(rulesd)
            let counts = workers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            for count in counts {
                let cores = sysconf(Int32(_SC_NPROCESSORS_ONLN))
                let name =
                    count == "default"
                    ? "rulesd (\(cores) workers)" : "rulesd (\(count) worker\(count == "1" ? "" : "s"))"
                let socket = work + "/rulesd-\(count).sock"
                let process = Process()
                process.executableURL = URL(fileURLWithPath: binary)
                process.arguments =
                    [
                        "--rules", rules, "--socket", socket, "--state-dir", work + "/state-\(count)", "--watch", "off",
                        "--log-level", "warning",
                    ] + (count == "default" ? [] : ["--workers", count])
                try process.run()
                children.append(process)
                try waitForSocket(socket)
                servers.append((name, socket, process.processIdentifier, ours))
                if count == "default" { defaultDaemon = name }
            }
        }
        if let echo = CeilingRunner.build(ceilings + "/echo_server.c", name: "echo_server", extra: []),
            let lua = CeilingRunner.build(ceilings + "/lua_ceiling.c", name: "lua_ceiling", extra: ["-llua5.4", "-lm"])
        {
            let cLines = ours.map { line in
                Array(
                    String(decoding: line, as: UTF8.self).replacingOccurrences(of: "\"context\":", with: "\"ctx\":")
                        .utf8)
            }
            // "C+Lua" is the C server as shipped, its rules.lua computing the rollout hash in Lua; with "native
            // hash" that hash is C code, as rulesd's split() is: the stricter reference of the two.
            for (name, path, arguments) in [
                ("C echo", echo, [work + "/echo.sock"]),
                ("C+Lua", lua, [ceilings + "/rules.lua", "-S", work + "/lua.sock"]),
                ("C+Lua native hash", lua, [ceilings + "/rules.lua", "-H", "-S", work + "/lua-native.sock"]),
            ] {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: path)
                process.arguments = arguments
                process.standardError = FileHandle.nullDevice
                try process.run()
                children.append(process)
                let socket = arguments.last!
                try waitForSocket(socket)
                servers.append((name, socket, process.processIdentifier, cLines))
            }
        } else {
            print("C ceilings: not found under \(ceilings); measuring rulesd alone")
        }
        let parsed = configs.split(separator: ",").compactMap { item -> (Int, Int)? in
            let parts = item.split(separator: "x")
            guard parts.count == 2, let c = Int(parts[0]), let p = Int(parts[1]) else { return nil }
            return (c, p)
        }
        var results: [String: [Sample]] = [:]
        for run in 1...runs {
            for (connections, depth) in parsed {
                for server in servers {
                    var cpuBefore = 0.0
                    var switchesBefore = 0
                    let client = LoadClient(
                        socketPath: server.socket, connections: connections, depth: depth, requests: server.requests)
                    let result = try client.run(duration: duration, warmup: warmup) {
                        cpuBefore = server.pid.map(processCPUSeconds) ?? 0
                        switchesBefore = server.pid.map(contextSwitches) ?? 0
                    }
                    let cpuAfter = server.pid.map(processCPUSeconds) ?? 0
                    let switchesAfter = server.pid.map(contextSwitches) ?? 0
                    let sample = Sample(
                        rps: result.requestsPerSecond, p50: result.percentile(0.5), p99: result.percentile(0.99),
                        p999: result.percentile(0.999),
                        serverMicrosecondsPerRequest: server.pid == nil
                            ? nil : (cpuAfter - cpuBefore) * 1e6 / Double(max(1, result.requests)),
                        clientMicrosecondsPerRequest: result.clientCPUSeconds * 1e6 / Double(max(1, result.requests)),
                        switchesPerRequest: server.pid == nil
                            ? nil : Double(switchesAfter - switchesBefore) / Double(max(1, result.requests)))
                    results["\(server.name) c=\(connections),P=\(depth)", default: []].append(sample)
                    if run == 1 && connections == parsed[0].0 && depth == parsed[0].1 {
                        print("  first answer from \(server.name): \(result.firstReply)")
                    }
                }
            }
        }
        print(
            "socket: medians of \(runs) runs of \(duration) s (server CPU and context switches over the measured "
                + "window only; switches: the server's voluntary + involuntary, all its threads, per request)")
        for (connections, depth) in parsed {
            print("c=\(connections),P=\(depth)")
            let key = { (name: String) in "\(name) c=\(connections),P=\(depth)" }
            for server in servers {
                let samples = results[key(server.name)] ?? []
                let median = Sample.median(samples)
                var line = "  \(server.name.padding(20)) \(Timing.format(median.rps).padding(8)) req/s"
                line +=
                    "  p50 \(Timing.format(median.p50, digits: 1)) us  p99 \(Timing.format(median.p99, digits: 1)) us"
                line += "  p999 \(Timing.format(median.p999, digits: 1)) us"
                if let cpu = median.serverMicrosecondsPerRequest {
                    line += "  server CPU \(Timing.format(cpu, digits: 2)) us/req"
                }
                if let switches = median.switchesPerRequest {
                    line += "  switches \(Timing.format(switches, digits: 3))/req"
                }
                line += "  client CPU \(Timing.format(median.clientMicrosecondsPerRequest, digits: 2)) us/req"
                print(line)
            }
            for daemon in servers where daemon.name.hasPrefix("rulesd") {
                guard let ours = results[key(daemon.name)] else { continue }
                for name in ["C+Lua", "C+Lua native hash", "C echo"] {
                    guard let theirs = results[key(name)] else { continue }
                    let throughput = zip(ours, theirs).map { $0.rps / $1.rps }.sorted()
                    let p50 = zip(ours, theirs).map { $0.p50 / $1.p50 }.sorted()
                    let p99 = zip(ours, theirs).map { $0.p99 / $1.p99 }.sorted()
                    print(
                        "  \(daemon.name) / \(name): throughput \(Timing.format(throughput[throughput.count / 2], digits: 2))x, "
                            + "p50 \(Timing.format(p50[p50.count / 2], digits: 2))x, p99 \(Timing.format(p99[p99.count / 2], digits: 2))x (per-run ratios, median)"
                    )
                }
            }
        }
        var resident: [String: Int] = [:]
        for server in servers {
            guard let pid = server.pid else { continue }
            resident[server.name] = residentKiB(pid)
            print(
                "\(server.name) resident memory: \(Timing.format(Double(residentKiB(pid)) / 1024, digits: 1)) MiB "
                    + "(VmRSS), peak \(Timing.format(Double(peakKiB(pid)) / 1024, digits: 1)) MiB (VmHWM)")
        }
        return Report(
            servers: servers.map(\.name), defaultDaemon: defaultDaemon, samples: results, residentKiB: resident,
            runs: runs)
    }

    private func waitForSocket(_ path: String) throws {
        for _ in 0..<1000 {
            if let fd = try? LoadClient.connect(path) {
                close(fd)
                return
            }
            usleep(10_000)
        }
        throw BenchError("nothing answers on \(path)")
    }
}

struct Sample {
    var rps: Double
    var p50: Double
    var p99: Double
    var p999: Double
    var serverMicrosecondsPerRequest: Double?
    var clientMicrosecondsPerRequest: Double
    var switchesPerRequest: Double? = nil

    static func median(_ samples: [Sample]) -> Sample {
        func mid(_ values: [Double]) -> Double {
            let sorted = values.sorted()
            return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
        }
        let server = samples.compactMap(\.serverMicrosecondsPerRequest)
        let switches = samples.compactMap(\.switchesPerRequest)
        return Sample(
            rps: mid(samples.map(\.rps)), p50: mid(samples.map(\.p50)), p99: mid(samples.map(\.p99)),
            p999: mid(samples.map(\.p999)), serverMicrosecondsPerRequest: server.isEmpty ? nil : mid(server),
            clientMicrosecondsPerRequest: mid(samples.map(\.clientMicrosecondsPerRequest)),
            switchesPerRequest: switches.isEmpty ? nil : mid(switches))
    }
}

/// utime + stime of a process, from /proc.
func processCPUSeconds(_ pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Voluntary and involuntary context switches of all of a process's threads, from /proc (each thread's
/// status counts its own; the process's status only the main thread's).
func contextSwitches(_ pid: Int32) -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    var total = 0
    for task in tasks {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8) else {
            continue
        }
        for line in text.split(separator: "\n")
        where line.hasPrefix("voluntary_ctxt_switches:") || line.hasPrefix("nonvoluntary_ctxt_switches:") {
            total += Int(line.split(separator: "\t").last?.trimmingCharacters(in: .whitespaces) ?? "") ?? 0
        }
    }
    return total
}

func residentKiB(_ pid: Int32) -> Int { statusField(pid, "VmRSS:") }
func peakKiB(_ pid: Int32) -> Int { statusField(pid, "VmHWM:") }

private func statusField(_ pid: Int32, _ name: String) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(name) {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
    return 0
}
