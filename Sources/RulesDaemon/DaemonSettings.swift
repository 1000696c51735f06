import RuleEngine
import RuleWatcher

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Everything that configures a running rulesd.
///
/// Settings come from, in increasing precedence: built-in defaults, the config file, `RULESD_*` environment
/// variables, and the command line. Unknown settings are errors everywhere: a misspelt setting silently
/// ignored is a production incident waiting for its moment.
public struct DaemonSettings: Sendable {
    public var rulesDirectory = "/etc/rulesd/rules.d"
    public var socketPath = "/run/rulesd/rulesd.sock"
    public var socketMode: mode_t = 0o660
    public var socketGroup: String?
    public var stateDirectory = "/var/lib/rulesd"
    public var workers = DaemonSettings.defaultWorkers
    public var logLevel = "info"
    public var logFormat = "text"
    public var maxConnections = 1024
    public var idleTimeout: Duration = .seconds(300)
    public var maxPipelinedRequests = 1024
    public var maxRequestBytes = 1 << 20
    public var shutdownTimeout: Duration = .seconds(10)
    public var watchMode = "inotify"
    public var watch = WatchSettings()
    public var limits = RuleEngineLimits()
    public var metricsListen: String?

    public init() {}

    public static var defaultWorkers: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// The names of all settings, as used in the config file (`name = value`); the command line spells them
    /// `--name-with-dashes` and the environment `RULESD_NAME`.
    public static var settingNames: [String] { schema.map(\.name) }

    /// Applies one setting given as text.
    /// - Throws: ``SettingsError`` naming the setting and what is wrong with the value.
    public mutating func apply(name: String, value: String, origin: String) throws(SettingsError) {
        guard let spec = Self.schema.first(where: { $0.name == name }) else {
            throw SettingsError(
                "\(origin): unknown setting '\(name)' (known: \(Self.settingNames.joined(separator: ", ")))")
        }
        do {
            try spec.apply(&self, value)
        } catch let error {
            throw SettingsError("\(origin): \(name): \(error.message)")
        }
    }

    /// Applies a config file: `name = value` lines, `#` comments, values optionally in double quotes.
    public mutating func apply(configFile path: String) throws(SettingsError) {
        guard let text = Self.readFile(path) else {
            throw SettingsError("cannot read config file \(path): \(String(cString: strerror(errno)))")
        }
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Substring(rawLine)
            if let hash = Self.commentStart(line) { line = line[..<hash] }
            let trimmed = line.trimmingCharacters(in: " \t\r")
            if trimmed.isEmpty { continue }
            guard let equals = trimmed.firstIndex(of: "=") else {
                throw SettingsError("\(path):\(lineNumber): expected 'name = value'")
            }
            let name = trimmed[..<equals].trimmingCharacters(in: " \t")
            var value = trimmed[trimmed.index(after: equals)...].trimmingCharacters(in: " \t")
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
                value = String(value.dropFirst().dropLast())
            }
            try apply(
                name: name.replacingOccurrences(of: "-", with: "_"), value: value, origin: "\(path):\(lineNumber)")
        }
    }

    /// Applies every `RULESD_*` variable except `RULESD_CONFIG` (the config file's path, read first).
    public mutating func apply(environment: [String: String]) throws(SettingsError) {
        for (key, value) in environment.sorted(by: { $0.key < $1.key }) where key.hasPrefix("RULESD_") {
            if key == "RULESD_CONFIG" { continue }
            let name = String(key.dropFirst("RULESD_".count)).lowercased()
            try apply(name: name, value: value, origin: "environment variable \(key)")
        }
    }

    private static func commentStart(_ line: Substring) -> Substring.Index? {
        var inQuotes = false
        for index in line.indices {
            if line[index] == "\"" { inQuotes.toggle() }
            if line[index] == "#" && !inQuotes { return index }
        }
        return nil
    }

    static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A setting that could not be applied; the message names the origin (file:line, variable, option).
public struct SettingsError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

struct SettingSpec: Sendable {
    var name: String
    var help: String
    var apply: @Sendable (inout DaemonSettings, String) throws(SettingsError) -> Void
}

extension DaemonSettings {
    static let schema: [SettingSpec] = [
        SettingSpec(name: "rules", help: "rules directory") { s, v throws(SettingsError) in
            s.rulesDirectory = try nonEmpty(v)
        },
        SettingSpec(name: "socket", help: "Unix socket path") { s, v throws(SettingsError) in
            let path = try nonEmpty(v)
            guard path.utf8.count < 104 else { throw SettingsError("socket path longer than 103 bytes") }
            s.socketPath = path
        },
        SettingSpec(name: "socket_mode", help: "socket file mode, octal") { s, v throws(SettingsError) in
            guard let mode = mode_t(v.hasPrefix("0o") ? String(v.dropFirst(2)) : v, radix: 8), mode <= 0o777 else {
                throw SettingsError("expected an octal mode like 0660, got '\(v)'")
            }
            s.socketMode = mode
        },
        SettingSpec(name: "socket_group", help: "group owning the socket") { s, v throws(SettingsError) in
            s.socketGroup = v.isEmpty ? nil : v
        },
        SettingSpec(name: "state_dir", help: "state directory (last known good rules)") { s, v throws(SettingsError) in
            s.stateDirectory = try nonEmpty(v)
        },
        SettingSpec(name: "workers", help: "worker threads") { s, v throws(SettingsError) in
            s.workers = try integer(v, 1...256)
        },
        SettingSpec(name: "log_level", help: "trace, debug, info, notice, warning, error, critical") {
            s, v throws(SettingsError) in
            let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            guard levels.contains(v) else { throw SettingsError("expected one of \(levels.joined(separator: ", "))") }
            s.logLevel = v
        },
        SettingSpec(name: "log_format", help: "text or json") { s, v throws(SettingsError) in
            guard v == "text" || v == "json" else { throw SettingsError("expected text or json") }
            s.logFormat = v
        },
        SettingSpec(name: "max_connections", help: "open connections at most") { s, v throws(SettingsError) in
            s.maxConnections = try integer(v, 1...1_000_000)
        },
        SettingSpec(name: "idle_timeout", help: "close connections idle this long") { s, v throws(SettingsError) in
            s.idleTimeout = try duration(v)
        },
        SettingSpec(name: "max_pipelined", help: "requests read ahead per connection") { s, v throws(SettingsError) in
            s.maxPipelinedRequests = try integer(v, 1...1_000_000)
        },
        SettingSpec(name: "max_request_bytes", help: "longest request line") { s, v throws(SettingsError) in
            s.maxRequestBytes = try size(v, 64...(256 << 20))
        },
        SettingSpec(name: "shutdown_timeout", help: "wait for in-flight requests at shutdown") {
            s, v throws(SettingsError) in
            s.shutdownTimeout = try duration(v)
        },
        SettingSpec(name: "watch", help: "inotify, poll or off") { s, v throws(SettingsError) in
            guard ["inotify", "poll", "off"].contains(v) else { throw SettingsError("expected inotify, poll or off") }
            s.watchMode = v
            s.watch.forcePolling = v == "poll"
        },
        SettingSpec(name: "quiet_window", help: "wait for the tree to be quiet this long") {
            s, v throws(SettingsError) in
            s.watch.quietWindow = try duration(v)
        },
        SettingSpec(name: "max_delay", help: "reload at most this long after the first change") {
            s, v throws(SettingsError) in
            s.watch.maxDelay = try duration(v)
        },
        SettingSpec(name: "safety_rescan", help: "rescan this often regardless of events") {
            s, v throws(SettingsError) in
            s.watch.safetyRescanInterval = try duration(v)
        },
        SettingSpec(name: "poll_interval", help: "polling period when inotify is unavailable") {
            s, v throws(SettingsError) in
            s.watch.pollInterval = try duration(v)
        },
        SettingSpec(name: "memory_limit", help: "Lua memory per rule set and worker") { s, v throws(SettingsError) in
            s.limits.memoryLimit = try size(v, (1 << 20)...(64 << 30))
        },
        SettingSpec(name: "eval_timeout", help: "wall-clock budget of one evaluation") { s, v throws(SettingsError) in
            s.limits.evaluationTimeout = try duration(v)
        },
        SettingSpec(name: "eval_instructions", help: "instruction budget of one evaluation") {
            s, v throws(SettingsError) in
            s.limits.evaluationInstructionLimit = try integer(v, 1000...Int(Int32.max))
        },
        SettingSpec(name: "load_timeout", help: "wall-clock budget of loading one file") {
            s, v throws(SettingsError) in
            s.limits.loadTimeout = try duration(v)
        },
        SettingSpec(name: "load_instructions", help: "instruction budget of loading one file") {
            s, v throws(SettingsError) in
            s.limits.loadInstructionLimit = try integer(v, 1000...Int.max)
        },
        SettingSpec(name: "max_file_bytes", help: "largest rule file") { s, v throws(SettingsError) in
            s.limits.maxFileBytes = try size(v, 1024...(256 << 20))
        },
        SettingSpec(name: "metrics_listen", help: "HOST:PORT for the /metrics HTTP listener") {
            s, v throws(SettingsError) in
            if v.isEmpty || v == "off" {
                s.metricsListen = nil
                return
            }
            guard let colon = v.lastIndex(of: ":"), Int(v[v.index(after: colon)...]) != nil else {
                throw SettingsError("expected HOST:PORT, e.g. 127.0.0.1:9464")
            }
            s.metricsListen = v
        },
    ]
}

private func nonEmpty(_ value: String) throws(SettingsError) -> String {
    guard !value.isEmpty else { throw SettingsError("must not be empty") }
    return value
}

private func integer(_ value: String, _ range: ClosedRange<Int>) throws(SettingsError) -> Int {
    guard let n = Int(value.replacingOccurrences(of: "_", with: "")), range.contains(n) else {
        throw SettingsError("expected an integer in \(range.lowerBound)...\(range.upperBound), got '\(value)'")
    }
    return n
}

/// `300ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
func duration(_ value: String) throws(SettingsError) -> Duration {
    let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("s", 1), ("m", 60), ("h", 3600)]
    for (suffix, scale) in units where value.hasSuffix(suffix) {
        if let n = Double(value.dropLast(suffix.count)), n >= 0, n.isFinite {
            return .nanoseconds(Int64(n * scale * 1e9))
        }
    }
    if let n = Double(value), n >= 0, n.isFinite { return .nanoseconds(Int64(n * 1e9)) }
    throw SettingsError("expected a duration like 300ms, 5s or 2m, got '\(value)'")
}

/// `1048576`, `64KiB`, `1MiB`, `2GiB` (also KB/MB/GB as powers of 1000).
func size(_ value: String, _ range: ClosedRange<Int>) throws(SettingsError) -> Int {
    let units: [(String, Int)] = [
        ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
        ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("B", 1),
    ]
    for (suffix, scale) in units where value.hasSuffix(suffix) {
        if let n = Int(value.dropLast(suffix.count)), range.contains(n * scale) { return n * scale }
    }
    if let n = Int(value), range.contains(n) { return n }
    throw SettingsError("expected a size like 1MiB in \(range.lowerBound)...\(range.upperBound) bytes, got '\(value)'")
}

extension StringProtocol {
    fileprivate func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var slice = Substring(self)
        while let first = slice.first, chars.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, chars.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}

extension String {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
