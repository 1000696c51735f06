import Foundation

/// Builds and runs the C ceiling programs when their sources are available (they live outside this
/// repository), so that our figures can be quoted as ratios measured in the same run.
enum CeilingRunner {
    /// What the in-process C ceiling measured: ns per request by hash, test and cumulative phase.
    struct LuaCeiling {
        /// Keyed "HASH TEST PHASE": HASH is `lua` (the hash in Lua, as shipped) or `native` (the hash in C),
        /// TEST is `flag1` (new-checkout: targeting + rollout), `flagmix` or `route` (11 table-driven routes),
        /// PHASE is `parse`, `build`, `call` (parse + context table + rule call) or `encode` (the whole request).
        var nanoseconds: [String: Double]

        subscript(hash: String, test: String, phase: String) -> Double? { nanoseconds["\(hash) \(test) \(phase)"] }
    }

    /// Runs the in-process C ceiling: every phase with the native hash, and the whole request with the hash
    /// in Lua.
    /// - Parameter seconds: seconds per phase (the program's `-s`; it measures at least five 10 ms slices).
    /// - Returns: the figures, or nil when the source or a compiler is missing.
    static func runLuaCeiling(source: String, rules: String, seconds: Double = 0.5) -> LuaCeiling? {
        guard FileManager.default.fileExists(atPath: source), FileManager.default.fileExists(atPath: rules) else {
            return nil
        }
        guard let binary = build(source, name: "lua_ceiling", extra: ["-llua5.4", "-lm"]) else { return nil }
        var results: [String: Double] = [:]
        for (hash, flags) in [("lua", ["-q"]), ("native", ["-H"])] {
            guard let output = run(binary, [rules, "-s", String(seconds)] + flags) else { continue }
            for line in output.split(separator: "\n") {
                guard let test = text(line, "test"), let phase = text(line, "phase"), let value = field(line, "ns")
                else { continue }
                results["\(hash) \(test) \(phase)"] = value
            }
        }
        return results.isEmpty ? nil : LuaCeiling(nanoseconds: results)
    }

    /// Compiles a C file with `gcc -O2` into a temporary directory.
    static func build(_ source: String, name: String, extra: [String]) -> String? {
        guard FileManager.default.fileExists(atPath: source) else { return nil }
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
        text(line, name).flatMap { Double($0) }
    }

    static func text(_ line: Substring, _ name: String) -> String? {
        for part in line.split(separator: " ") where part.hasPrefix(name + "=") {
            return String(part.dropFirst(name.count + 1))
        }
        return nil
    }
}
