import ArgumentParser
import Foundation

/// Every figure of the performance table in one run: the socket at (8,32), (8,1) and (1,1), the full request,
/// a targeting + split flag and routing in process, resident memory, and 10,000 flags; each beside the ceiling
/// measured in the same run and as a ratio, with the targets the project set itself.
struct MeasuresBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "measures",
        abstract: "Run the engine, socket and scale benchmarks and print the performance table with ratios.")

    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?
    @Option(help: "Directory holding the C ceilings' sources (echo_server.c, lua_ceiling.c, rules.lua).")
    var ceilings = "../shared/perf"
    @Option(help: "Example rules directory for the resident memory figure.")
    var examples = "config/rules.d"
    @Option(help: "Rounds of the in-process cases (medians are reported).")
    var rounds = 15
    @Option(help: "Socket runs (servers and configurations interleaved in each; medians are reported).")
    var socketRuns = 3
    @Option(help: "Measured seconds per socket configuration and server.")
    var socketDuration = 3.0
    @Option(help: "Flags in the large rule set.")
    var flags = 10_000
    @Flag(help: "Tiny sizes and one short round of everything: checks that every row prints, measures nothing.")
    var quick = false

    func run() throws {
        let rulesdArguments = rulesd.map { ["--rulesd", $0] } ?? []
        var engineArguments = ["--ceiling", ceilings + "/lua_ceiling.c", "--ceiling-rules", ceilings + "/rules.lua"]
        var socketArguments = ["--ceilings", ceilings, "--workers", "default,1"] + rulesdArguments
        var scaleArguments = ["--examples", examples, "--workers", "2"] + rulesdArguments
        if quick {
            engineArguments += ["--rounds", "1", "--milliseconds", "5", "--ceiling-seconds", "0.05"]
            socketArguments += ["--duration", "0.1", "--warmup", "0.05", "--runs", "1"]
            scaleArguments += ["--flags", "200", "--files", "4", "--builds", "1"]
        } else {
            engineArguments += ["--rounds", String(rounds)]
            socketArguments += ["--duration", String(socketDuration), "--runs", String(socketRuns)]
            scaleArguments += ["--flags", String(flags)]
        }
        let engine = try EngineBenchmark.parse(engineArguments).measure()
        print("")
        let socket = try SocketBenchmark.parse(socketArguments).measure()
        print("")
        let scale = try ScaleBenchmark.parse(scaleArguments).measure()
        print("")
        let table = Self.table(engine: engine, socket: socket, scale: scale)
        print(
            "measures: rulesd beside ceilings measured in this run. In process: medians of "
                + "\(quick ? 1 : rounds) rounds; socket: medians of \(socket.runs) interleaved runs, ratios the median "
                + "of per-run ratios. ratio = rulesd / ceiling (throughput: higher is better; time and memory: lower "
                + "is better). switches/req: the server's context switches per request, rulesd / ceiling.")
        Self.printTable(table)
    }

    struct Row {
        var measure: String
        var rulesd: String
        var ceiling: String
        var ratio: String
        var gate: String
        var aim: String
        var switches: String = ""
    }

    static let header = Row(
        measure: "measure", rulesd: "rulesd", ceiling: "ceiling (same run)", ratio: "ratio", gate: "gate",
        aim: "aim", switches: "switches/req")

    static func printTable(_ rows: [Row]) {
        let all = [header] + rows
        let widths = [
            all.map(\.measure.count).max()!, all.map(\.rulesd.count).max()!, all.map(\.ceiling.count).max()!,
            all.map(\.ratio.count).max()!, all.map(\.gate.count).max()!, all.map(\.aim.count).max()!,
        ]
        for row in all {
            let cells = [row.measure, row.rulesd, row.ceiling, row.ratio, row.gate, row.aim]
            let text = zip(cells, widths).map { $0.padding($1) }.joined(separator: "  ")
            print("  " + text + "  " + row.switches)
        }
    }

    static func table(engine: EngineBenchmark.Report, socket: SocketBenchmark.Report, scale: ScaleBenchmark.Report)
        -> [Row]
    {
        var rows: [Row] = []
        let missing = "n/a (ceiling not run)"
        func ratio(_ value: Double?) -> String { value.map { Timing.format($0, digits: 2) + "x" } ?? "-" }
        func thousands(_ rps: Double) -> String { Timing.format(rps / 1000, digits: 1) + "k req/s" }
        func switches(_ sample: Sample?) -> String {
            sample?.switchesPerRequest.map { Timing.format($0, digits: 3) } ?? "-"
        }

        // The socket rows: one daemon (the default workers) against one C server at one configuration.
        let daemon = socket.defaultDaemon ?? socket.servers.first ?? "rulesd"
        func socketRow(
            _ title: String, _ c: Int, _ p: Int, against server: String, latency: Bool, gate: String, aim: String,
            ours daemonName: String? = nil
        ) -> Row {
            let name = daemonName ?? daemon
            let ours = socket.samples(name, c, p)
            let theirs = socket.samples(server, c, p)
            let mine = ours.isEmpty ? nil : Sample.median(ours)
            let other = theirs.isEmpty ? nil : Sample.median(theirs)
            let figure: (Sample) -> Double = latency ? { $0.p50 } : { $0.rps }
            let show: (Sample) -> String =
                latency ? { "p50 " + Timing.format($0.p50, digits: 1) + " µs" } : { thousands($0.rps) }
            return Row(
                measure: title, rulesd: mine.map(show) ?? "-",
                ceiling: other.map { "\(server) " + show($0) } ?? missing,
                ratio: ratio(socket.ratio(name, server, c, p, figure)), gate: gate, aim: aim,
                switches: "\(switches(mine)) / \(switches(other))")
        }
        rows.append(
            socketRow(
                "(8 conn, depth 32), default workers", 8, 32, against: "C+Lua native hash", latency: false,
                gate: ">= 0.9x", aim: ">= 1.0x"))
        rows.append(
            socketRow(
                "(8, 1), default workers", 8, 1, against: "C+Lua", latency: false, gate: ">= 1.0x", aim: ">= 1.2x"))
        rows.append(
            socketRow(
                "(8, 1), default workers", 8, 1, against: "C+Lua native hash", latency: false, gate: ">= 0.7x",
                aim: ">= 1.0x"))
        if let single = socket.servers.first(where: { $0.hasPrefix("rulesd") && $0 != daemon }) {
            rows.append(
                socketRow("(8, 1), default workers", 8, 1, against: single, latency: false, gate: "", aim: ">= 1.0x"))
        }
        rows.append(
            socketRow("(1, 1) p50", 1, 1, against: "C echo", latency: true, gate: "<= 1.1x", aim: "<= 1.05x"))

        // In process.
        func nanoseconds(_ value: Double?) -> String { value.map { Timing.format($0) + " ns" } ?? "-" }
        let full = engine.medians[EngineBenchmark.fullRequest]
        let fullCeiling = engine.ceiling?["native", "flag1", "encode"]
        rows.append(
            Row(
                measure: "full request in process (decode, evaluate, encode)", rulesd: nanoseconds(full),
                ceiling: fullCeiling.map { "C native hash, whole request " + nanoseconds($0) } ?? missing,
                ratio: ratio(full.flatMap { ours in fullCeiling.map { ours / $0 } }), gate: "<= 1.5x", aim: "<= 1.0x"))
        let split = engine.medians["targeting+split flag"]
        let splitCeiling = engine.ceiling?["native", "flag1", "call"]
        rows.append(
            Row(
                measure: "targeting + split flag, in process", rulesd: nanoseconds(split),
                ceiling: splitCeiling.map { "C native hash, parse+build+call " + nanoseconds($0) } ?? missing,
                ratio: ratio(split.flatMap { ours in splitCeiling.map { ours / $0 } }), gate: "<= 550 ns",
                aim: "<= 400 ns"))
        let routing = engine.medians["route over 50 routes"]
        let routingCeiling = engine.ceiling?["native", "route", "call"]
        rows.append(
            Row(
                measure: "routing over 50 routes, in process", rulesd: nanoseconds(routing),
                ceiling: routingCeiling.map { "C, 11 table routes " + nanoseconds($0) } ?? missing,
                ratio: ratio(routing.flatMap { ours in routingCeiling.map { ours / $0 } }), gate: "<= 2,500 ns",
                aim: "<= 1,500 ns"))

        // Memory and size.
        func mebibytes(_ kib: Int?) -> String {
            kib.map { Timing.format(Double($0) / 1024, digits: 1) + " MiB" } ?? "-"
        }
        let cServer = socket.residentKiB["C+Lua native hash"]
        rows.append(
            Row(
                measure: "resident memory, example rules (\(scale.examplesWorkers) workers)",
                rulesd: mebibytes(scale.examplesResidentKiB),
                ceiling: cServer.map { "C+Lua server " + mebibytes($0) } ?? missing,
                ratio: ratio(scale.examplesResidentKiB.flatMap { ours in cServer.map { Double(ours) / Double($0) } }),
                gate: "<= 22 MiB", aim: "<= 16 MiB"))
        let count = grouped(scale.flags)
        rows.append(
            Row(
                measure: "\(count) flags: build", rulesd: Timing.format(scale.buildMilliseconds, digits: 1) + " ms",
                ceiling: scale.bare.map { "plain Lua state " + Timing.format($0.milliseconds, digits: 1) + " ms" }
                    ?? missing,
                ratio: ratio(scale.bare.map { scale.buildMilliseconds / $0.milliseconds }), gate: "<= 120 ms",
                aim: "<= 80 ms"))
        // The floor of a process that serves these flags from `workers` Lua states: a C server's own footprint
        // plus that many plain states holding the same files.
        let floor = cServer.flatMap { base in scale.bare.map { base + scale.workers * $0.bytes / 1024 } }
        rows.append(
            Row(
                measure: "\(count) flags: daemon RSS, \(scale.workers) workers",
                rulesd: mebibytes(scale.largeResidentKiB),
                ceiling: floor.map { "C+Lua server + \(scale.workers) plain states " + mebibytes($0) } ?? missing,
                ratio: ratio(floor.map { Double(scale.largeResidentKiB) / Double($0) }), gate: "<= 48 MiB",
                aim: "<= 36 MiB"))
        return rows
    }
}

/// 10000 as "10,000".
func grouped(_ value: Int) -> String {
    let digits = Array(String(value))
    var text = ""
    for (index, digit) in digits.enumerated() {
        if index > 0 && (digits.count - index) % 3 == 0 { text += "," }
        text.append(digit)
    }
    return text
}
