import Foundation

/// Builds and runs the C ceiling programs when their sources are available (they live outside this
/// repository), so that our figures can be quoted as ratios measured in the same run.
enum CeilingRunner {
    /// Runs the in-process C ceiling for the targeting+rollout flag, with the hash in Lua and native.
    /// - Returns: ns per request by label, or nil when the source or a compiler is missing.
    static func runLuaCeiling(source: String, rules: String) -> [String: Double]? {
        guard FileManager.default.fileExists(atPath: source), FileManager.default.fileExists(atPath: rules) else {
            return nil
        }
        guard let binary = build(source, name: "lua_ceiling", extra: ["-llua5.4", "-lm"]) else { return nil }
        var results: [String: Double] = [:]
        for (label, flags) in [("C, hash in Lua", ["-q"]), ("C, native hash", ["-q", "-H"])] {
            guard let output = run(binary, [rules, "-s", "0.5"] + flags) else { continue }
            for line in output.split(separator: "\n") where line.contains("test=flag1") && line.contains("phase=encode")
            {
                if let value = field(line, "ns") { results[label] = value }
            }
        }
        return results.isEmpty ? nil : results
    }

    /// Compiles a C file with `gcc -O2` into a temporary directory.
    static func build(_ source: String, name: String, extra: [String]) -> String? {
        let output = NSTemporaryDirectory() + "rulesbench-\(name)-\(getpid())"
        let cflags = (run("/usr/bin/pkg-config", ["--cflags", "lua5.4"]) ?? "").split(separator: " ").map(String.init)
        let arguments =
            ["-O2", "-o", output, source]
            + cflags.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            .filter { !$0.isEmpty } + extra
        guard run("/usr/bin/gcc", arguments) != nil else { return nil }
        return output
    }

    /// Runs a program and returns its standard output, or nil when it fails.
    static func run(_ path: String, _ arguments: [String]) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    static func field(_ line: Substring, _ name: String) -> Double? {
        for part in line.split(separator: " ") where part.hasPrefix(name + "=") {
            return Double(part.dropFirst(name.count + 1))
        }
        return nil
    }
}
