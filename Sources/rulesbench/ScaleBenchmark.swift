import ArgumentParser
import Foundation
import RuleEngine
import RuleModel

/// How the engine and the daemon scale with the size of a rule set: state build time and memory for many
/// flags, and the daemon's resident memory on the example rules and on the large set.
struct ScaleBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale", abstract: "Build time and memory for a large rule set (10,000 flags by default).")

    @Option(help: "Flags in the large rule set.")
    var flags = 10_000
    @Option(help: "Files they are spread over.")
    var files = 20
    @Option(help: "Builds of the large set (the median is reported).")
    var builds = 3
    @Option(help: "Worker threads of the rulesd started on the large set.")
    var workers = 2
    @Option(help: "Example rules directory to measure the daemon's memory on (default workers).")
    var examples = "config/rules.d"
    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?

    /// What one run measured.
    struct Report {
        var flags: Int
        var buildMilliseconds: Double
        var stateBytes: Int
        /// The same files in a plain Lua state (``BareLua``), when they load there.
        var bare: (milliseconds: Double, bytes: Int)?
        var examplesResidentKiB: Int?
        var examplesWorkers: Int
        var largeResidentKiB: Int
        var workers: Int
    }

    /// `flags` targeting + rollout flags spread over `files` files, as a team-per-file repository has them.
    static func flagSources(flags: Int, files: Int) -> [RuleSource] {
        var sources: [RuleSource] = []
        let perFile = (flags + files - 1) / files
        for file in 0..<files {
            var text = "local PLANS = { pro = true, enterprise = true }\n"
            for index in (file * perFile)..<min(flags, (file + 1) * perFile) {
                text += """
                    flag "team\(file).feature-\(index)" {
                      description = "feature \(index)",
                      rule = function(ctx)
                        if PLANS[ctx.plan] then return rollout(ctx.user, \(index % 100)) and "on" or "off" end
                      end,
                    }

                    """
            }
            sources.append(RuleSource(path: "team\(file).lua", content: Array(text.utf8)))
        }
        return sources
    }

    func run() throws { _ = try measure() }

    func measure() throws -> Report {
        let sources = Self.flagSources(flags: flags, files: files)
        let bytes = sources.reduce(0) { $0 + $1.content.count }
        var times: [Double] = []
        var memory = 0
        for _ in 0..<max(1, builds) {
            let start = LoadClient.now()
            let (_, evaluator) = try RuleCompiler.compile(sources)
            times.append(Double(LoadClient.now() - start) / 1e6)
            memory = evaluator.memoryInUse
        }
        times.sort()
        let build = times[times.count / 2]
        let bare = BareLua.load(sources)
        print("scale: \(flags) flags in \(files) files (\(bytes / 1024) KiB of Lua)")
        print(
            "  one Lua state built and validated in \(Timing.format(build, digits: 1)) ms (median of \(times.count)); "
                + "it holds \(Timing.format(Double(memory) / 1048576, digits: 1)) MiB")
        if let bare {
            print(
                "  a plain Lua state loading the same files: \(Timing.format(bare.milliseconds, digits: 1)) ms, "
                    + "\(Timing.format(Double(bare.bytes) / 1048576, digits: 1)) MiB")
        }
        let binary = BenchDaemon.binary(rulesd)
        var examplesResident: Int?
        let examplesDaemon = try BenchDaemon(binary: binary, quietWindow: 300)
        if FileManager.default.fileExists(atPath: examples) {
            try FileManager.default.removeItem(atPath: examplesDaemon.rules)
            try FileManager.default.copyItem(atPath: examples, toPath: examplesDaemon.rules)
            try examplesDaemon.start()
            _ = try BlockingClient(path: examplesDaemon.socket).request(#"{"op":"flags"}"#)
            examplesResident = residentKiB(examplesDaemon.pid)
            print(
                "  rulesd on \(examples): \(Timing.format(Double(examplesResident!) / 1024, digits: 1)) MiB resident "
                    + "(VmRSS, \(examplesDaemon.workers) workers)")
            examplesDaemon.stop()
        }
        let daemon = try BenchDaemon(binary: binary, quietWindow: 300, workers: workers)
        for source in sources { try daemon.write(source.path, String(decoding: source.content, as: UTF8.self)) }
        let start = LoadClient.now()
        try daemon.start()
        let ready = Double(LoadClient.now() - start) / 1e6
        _ = try BlockingClient(path: daemon.socket).request(
            #"{"op":"flag","flag":"team0.feature-1","context":{"plan":"pro","user":"u-1"}}"#)
        let resident = residentKiB(daemon.pid)
        print(
            "  rulesd on the \(flags) flags: serving \(Timing.format(ready, digits: 0)) ms after exec, "
                + "\(Timing.format(Double(resident) / 1024, digits: 1)) MiB resident (VmRSS, \(daemon.workers) workers)"
        )
        daemon.stop()
        return Report(
            flags: flags, buildMilliseconds: build, stateBytes: memory, bare: bare,
            examplesResidentKiB: examplesResident, examplesWorkers: examplesDaemon.workers,
            largeResidentKiB: resident, workers: daemon.workers)
    }
}
