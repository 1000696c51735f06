import ArgumentParser
import Foundation
import RuleModel

/// Measures live reloads: the time from the last write to the new revision answering on the socket, the
/// daemon's CPU per reload, its peak memory during a swap, and whether any answer fails or mixes two rule
/// sets while a client hammers the socket through many reloads.
struct ReloadBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract:
            "Time live reloads for 1 to 10,000 rule files, with the growth curve; count bad answers under reloads.")

    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?
    @Option(help: "Rule-file counts to measure, comma-separated.")
    var files = "1,100,1000,10000"
    @Option(help: "Edits per file count (medians are reported); at most 3 from 10,000 files on.")
    var edits = 7
    @Option(help: "The daemon's quiet window, in milliseconds.")
    var quietWindow = 300
    @Option(help: "Reloads while a client hammers the socket.")
    var hammerReloads = 100

    func run() throws {
        let binary = BenchDaemon.binary(rulesd)
        print("reload: quiet window \(quietWindow) ms; medians of \(edits) edits (min-max)")
        let counts = files.split(separator: ",").compactMap { Int($0) }
        var reloads: [Double] = []
        var answering: [Double] = []
        var cpu: [String] = []
        for count in counts {
            let figures = try measure(binary: binary, files: count)
            reloads.append(figures.reload)
            answering.append(figures.answering)
            cpu.append(Timing.format(figures.cpu, digits: 0))
        }
        print(
            "growth: reload by files (the reload's own duration: scan, compile every worker's state, swap; "
                + "the CPU includes saving the copy)")
        GrowthBenchmark.printCurve(
            unit: "files", sizes: counts, values: reloads.map { $0 * 1000 }, valueLabel: "reload ms",
            perUnitLabel: "µs", scale: 1000,
            extra: ("daemon CPU ms", cpu))
        print(
            "  last write -> answering, quiet window excluded, ms: "
                + zip(counts, answering).map { "\(grouped($0)) files \(Timing.format($1, digits: 1))" }
                .joined(separator: ", "))
        try hammer(binary: binary)
    }

    private func ruleFile(_ index: Int, marker: String) -> String {
        var text = "flag \"flag-\(index)\" { rule = function(ctx) if ctx.plan == \"pro\" then return \"on\" end end }\n"
        if index == 0 { text += "config \"marker\" (\"\(marker)\")\n" }
        return text
    }

    /// - Returns: the medians of the reload's own duration, of the time from the last write to the new
    ///   revision answering (the quiet window excluded), and of the daemon's CPU per edit, in ms.
    private func measure(binary: String, files count: Int) throws -> (reload: Double, answering: Double, cpu: Double) {
        let daemon = try BenchDaemon(binary: binary, quietWindow: quietWindow)
        defer { daemon.stop() }
        for index in 0..<count {
            try daemon.write("d\(index % 10)/f\(index).lua", ruleFile(index, marker: "0"))
        }
        try daemon.start()
        let client = try BlockingClient(path: daemon.socket)
        var included: [Double] = []
        var cpu: [Double] = []
        var peaks: [Int] = []
        var durations: [Double] = []
        var saved: [Double] = []
        // Each edit of 10,000 files costs seconds: fewer edits keep `make bench` within its time.
        for edit in 1...(count >= 10_000 ? min(edits, 3) : edits) {
            daemon.resetPeakMemory()
            let cpuBefore = processCPUSeconds(daemon.pid)
            let before = try client.request(#"{"op":"ping"}"#)["revision"]?.stringValue
            try daemon.write("d0/f0.lua", ruleFile(0, marker: String(edit)))
            let written = LoadClient.now()
            var revision = before
            while revision == before {
                guard LoadClient.now() - written < 120_000_000_000 else {
                    throw BenchError("no reload within 2 minutes of an edit (\(count) files)")
                }
                revision = try client.request(#"{"op":"ping"}"#)["revision"]?.stringValue
                if revision == before { usleep(500) }
            }
            let answeringAt = LoadClient.now()
            included.append(Double(answeringAt - written) / 1e6)
            // The copy in the state directory is written after the new rules answer: wait for it, so that its
            // cost counts in this edit's CPU and does not delay the next edit's reload.
            while try client.request(#"{"op":"status"}"#)["result"]?["saved_copy"]?["current"] != true {
                guard LoadClient.now() - answeringAt < 120_000_000_000 else {
                    throw BenchError("the saved copy was not written within 2 minutes of a reload (\(count) files)")
                }
                usleep(500)
            }
            saved.append(Double(LoadClient.now() - answeringAt) / 1e6)
            cpu.append((processCPUSeconds(daemon.pid) - cpuBefore) * 1000)
            peaks.append(peakKiB(daemon.pid))
            let status = try client.request(#"{"op":"status"}"#)
            durations.append(status["result"]?["last_reload"]?["duration_ms"]?.doubleValue ?? 0)
            usleep(200_000)
        }
        func summary(_ values: [Double], digits: Int = 1) -> String {
            let sorted = values.sorted()
            return
                "\(Timing.format(sorted[sorted.count / 2], digits: digits)) (\(Timing.format(sorted.first!, digits: digits))-\(Timing.format(sorted.last!, digits: digits)))"
        }
        let excluded = included.map { $0 - Double(quietWindow) }
        print("\(count) files:")
        print(
            "  last write -> new revision answering: \(summary(included)) ms with the quiet window, \(summary(excluded)) ms without"
        )
        print(
            "  reload itself (scan, compile \(daemon.workers) states, swap): \(summary(durations)) ms; daemon CPU per edit \(summary(cpu)) ms"
        )
        print("  new revision answering -> its copy saved in the state directory: \(summary(saved)) ms")
        print(
            "  peak resident memory during the swaps: \(peaks.max()! / 1024) MiB (resident now \(residentKiB(daemon.pid) / 1024) MiB)"
        )
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        return (median(durations), median(excluded), median(cpu))
    }

    /// Swaps between two rule sets whose flags all agree, while clients check every answer.
    private func hammer(binary: String) throws {
        let daemon = try BenchDaemon(binary: binary, quietWindow: quietWindow)
        defer { daemon.stop() }
        func rules(_ set: String) -> String {
            (0..<20).map {
                "flag \"f\($0)\" { variants = { a = 1, b = 2 }, default = \"a\", rule = function(ctx) return \"\(set)\" end }\n"
            }
            .joined()
        }
        try daemon.write("r.lua", rules("a"))
        try daemon.start()
        let stop = ManagedFlag()
        let tally = Tally()
        var threads: [Thread] = []
        for _ in 0..<3 {
            let thread = Thread { [socket = daemon.socket] in
                guard let client = try? BlockingClient(path: socket) else {
                    tally.add(failed: 1)
                    return
                }
                var seen: [Int64: String] = [:]
                while !stop.isSet {
                    guard let answer = try? client.request(#"{"op":"flags"}"#), answer["ok"] == true,
                        let generation = answer["generation"]?.int64Value,
                        let flags = answer["result"]?["flags"]?.objectValue
                    else {
                        tally.add(failed: 1)
                        continue
                    }
                    let variants = Set(flags.map { $0.value["variant"]?.stringValue ?? "?" })
                    let variant = variants.first ?? "?"
                    if variants.count != 1 || (seen[generation] != nil && seen[generation] != variant) {
                        tally.add(inconsistent: 1)
                    }
                    seen[generation] = variant
                    tally.add(answers: 1)
                }
            }
            thread.start()
            threads.append(thread)
        }
        let client = try BlockingClient(path: daemon.socket)
        var reloads = 0
        for round in 0..<hammerReloads {
            try daemon.write("r.lua", rules(round % 2 == 0 ? "b" : "a"))
            let answer = try client.request(#"{"op":"reload"}"#)
            if answer["result"]?["outcome"] == "reloaded" { reloads += 1 }
        }
        stop.set()
        while threads.contains(where: \.isExecuting) { usleep(10_000) }
        print(
            "under load: \(reloads) reloads while 3 clients asked `flags` \(tally.answers) times: "
                + "\(tally.failed) failed answers, \(tally.inconsistent) inconsistent answers")
    }
}

/// A rulesd on a temporary rules directory, for the reload benchmark.
final class BenchDaemon {
    let directory: String
    let rules: String
    let socket: String
    let binary: String
    let quietWindow: Int
    /// Worker threads: the daemon's default (the number of cores) unless one was asked for.
    let workers: Int
    private let workersArgument: [String]
    private var process: Process?

    init(binary: String, quietWindow: Int, workers: Int? = nil) throws {
        self.binary = binary
        self.quietWindow = quietWindow
        self.workers = workers ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        self.workersArgument = workers.map { ["--workers", String($0)] } ?? []
        directory = NSTemporaryDirectory() + "rulesbench-reload-\(getpid())-\(UUID().uuidString.prefix(8))"
        rules = directory + "/rules"
        socket = directory + "/s.sock"
        try FileManager.default.createDirectory(atPath: rules, withIntermediateDirectories: true)
    }

    var pid: Int32 { process?.processIdentifier ?? 0 }

    /// The rulesd binary to start: the one given, else the one built next to this program.
    static func binary(_ given: String?) -> String {
        given
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("rulesd").path
    }

    /// Writes a file the way an editor's rename-on-save does (temporary, then rename).
    func write(_ path: String, _ content: String) throws {
        let full = rules + "/" + path
        try FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let temporary = (full as NSString).deletingLastPathComponent + "/.tmp-\(UUID().uuidString)"
        try Data(content.utf8).write(to: URL(fileURLWithPath: temporary))
        rename(temporary, full)
    }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments =
            [
                "--rules", rules, "--socket", socket, "--state-dir", directory + "/state", "--log-level", "warning",
                "--quiet-window", "\(quietWindow)ms",
            ] + workersArgument
        try process.run()
        self.process = process
        for _ in 0..<3000 {
            if let client = try? BlockingClient(path: socket), (try? client.request(#"{"op":"ping"}"#)) != nil {
                return
            }
            usleep(10_000)
        }
        throw BenchError("rulesd did not start")
    }

    /// Resets the kernel's peak-RSS counter (VmHWM) so the next reading covers only what follows.
    func resetPeakMemory() {
        try? "5".write(toFile: "/proc/\(pid)/clear_refs", atomically: false, encoding: .utf8)
    }

    func stop() {
        if let process, process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A blocking one-request-at-a-time client.
final class BlockingClient {
    private let fd: Int32
    private var buffer: [UInt8] = []

    init(path: String) throws {
        fd = try LoadClient.connect(path)
    }

    deinit { close(fd) }

    func request(_ line: String) throws -> JSONValue {
        let bytes = Array((line + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n <= 0 { throw BenchError("send failed") }
            offset += n
        }
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let answer = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return try JSONParser().parse(answer)
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { throw BenchError("connection closed") }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}

final class ManagedFlag: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

final class Tally: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private(set) var answers = 0
    private(set) var failed = 0
    private(set) var inconsistent = 0

    func add(answers a: Int = 0, failed f: Int = 0, inconsistent i: Int = 0) {
        lock.withLock {
            answers += a
            failed += f
            inconsistent += i
        }
    }
}
