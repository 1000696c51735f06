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
    @Option(help: "Example rules directory to measure the daemon's memory on.")
    var examples = "config/rules.d"
    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?

    func run() throws {
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
        let bytes = sources.reduce(0) { $0 + $1.content.count }
        var builds: [Double] = []
        var memory = 0
        for _ in 0..<3 {
            let start = LoadClient.now()
            let (_, evaluator) = try RuleCompiler.compile(sources)
            builds.append(Double(LoadClient.now() - start) / 1e6)
            memory = evaluator.memoryInUse
        }
        builds.sort()
        print("scale: \(flags) flags in \(files) files (\(bytes / 1024) KiB of Lua)")
        print(
            "  one Lua state built and validated in \(Timing.format(builds[1], digits: 1)) ms (median of 3); it holds \(memory / 1024 / 1024) MiB"
        )
        let binary = BenchDaemon.binary(rulesd)
        if FileManager.default.fileExists(atPath: examples) {
            let daemon = try BenchDaemon(binary: binary, quietWindow: 300)
            try FileManager.default.removeItem(atPath: daemon.rules)
            try FileManager.default.copyItem(atPath: examples, toPath: daemon.rules)
            try daemon.start()
            _ = try BlockingClient(path: daemon.socket).request(#"{"op":"flags"}"#)
            print("  rulesd on \(examples): \(residentKiB(daemon.pid) / 1024) MiB resident (VmRSS)")
            daemon.stop()
        }
        let daemon = try BenchDaemon(binary: binary, quietWindow: 300)
        for source in sources { try daemon.write(source.path, String(decoding: source.content, as: UTF8.self)) }
        let start = LoadClient.now()
        try daemon.start()
        let ready = Double(LoadClient.now() - start) / 1e6
        _ = try BlockingClient(path: daemon.socket).request(
            #"{"op":"flag","flag":"team0.feature-1","context":{"plan":"pro","user":"u-1"}}"#)
        print(
            "  rulesd on the \(flags) flags: serving \(Timing.format(ready, digits: 0)) ms after exec, \(residentKiB(daemon.pid) / 1024) MiB resident (VmRSS, \(daemon.workers) workers)"
        )
        daemon.stop()
    }
}
