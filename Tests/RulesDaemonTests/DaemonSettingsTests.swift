import Foundation
import Logging
import Testing

@testable import RulesDaemon

#if canImport(Glibc)
    import Glibc
#endif

/// A scratch directory for config files and rules directories, removed with the value.
final class ScratchDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/rds.XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SettingsError("mkdtemp failed")
        }
        path = String(cString: result)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Writes `text` to `name` in the directory and returns its path.
    func write(_ name: String, _ text: String) throws -> String {
        let file = path + "/" + name
        try Data(text.utf8).write(to: URL(fileURLWithPath: file))
        return file
    }

    /// Creates the directory `name` (and its parents) and returns its path.
    func directory(_ name: String) throws -> String {
        let directory = path + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }
}

/// Applies `value` to a default settings value as the command line would.
private func settings(_ key: DaemonSettings.Key, _ value: String) throws(SettingsError) -> DaemonSettings {
    var settings = DaemonSettings()
    try settings.apply(key, value: value, from: .commandLine)
    return settings
}

/// The message of the error that applying `value` throws, or nil when it is accepted.
private func rejection(_ key: DaemonSettings.Key, _ value: String) -> String? {
    do {
        _ = try settings(key, value)
        return nil
    } catch {
        return error.message
    }
}

/// Resolves settings with no default config file, unless one is given.
private func resolve(
    commandLine: [(DaemonSettings.Key, String)] = [], environment: [String: String] = [:], configFile: String? = nil,
    defaultConfigFile: String = "/nonexistent/rulesd.conf"
) throws(SettingsError) -> DaemonSettings {
    try DaemonSettings.resolve(
        commandLine: commandLine, environment: environment, configFile: configFile,
        defaultConfigFile: defaultConfigFile)
}

@Suite("Settings: the descriptor table")
struct SettingDescriptorTests {
    @Test("every setting has exactly one descriptor, in the order of its key")
    func oneDescriptorPerKey() {
        #expect(DaemonSettings.descriptors.map(\.key) == DaemonSettings.Key.allCases)
    }

    @Test("names are spelt the same way in all three places")
    func spellings() {
        let key = DaemonSettings.Key.maxRequestBytes
        #expect(key.rawValue == "max_request_bytes")
        #expect(key.option == "--max-request-bytes")
        #expect(key.environmentVariable == "RULESD_MAX_REQUEST_BYTES")
    }

    @Test("each default, written as the config file spells it, reads back as the default")
    func defaultsRoundTrip() throws {
        for descriptor in DaemonSettings.descriptors {
            #expect(try settings(descriptor.key, descriptor.defaultValue) == DaemonSettings(), "\(descriptor.key)")
        }
    }

    @Test("each sample value is accepted")
    func samplesParse() throws {
        for descriptor in DaemonSettings.descriptors {
            #expect(rejection(descriptor.key, descriptor.sampleValue) == nil, "\(descriptor.key)")
        }
    }

    @Test("the printed configuration reads back as the same settings")
    func configurationTextRoundTrip() throws {
        var changed = DaemonSettings()
        changed.socketPath = "/tmp/a #1.sock"
        changed.socketGroup = .id(4321)
        changed.logLevel = .debug
        changed.logFormat = .json
        changed.idleTimeout = .milliseconds(1500)
        changed.watchMode = .poll
        changed.limits.memoryLimit = 3 << 20
        changed.metricsListen = "[::1]:9464"
        let scratch = try ScratchDirectory()
        var read = DaemonSettings()
        try read.apply(configFile: try scratch.write("printed.conf", changed.configurationText))
        #expect(read == changed)
    }

    @Test("help text gives the summary without Markdown, and the default")
    func helpText() {
        #expect(
            DaemonSettings.descriptor(.logFormat).helpText == "Log line format: text or json (default: text)")
        #expect(DaemonSettings.descriptor(.idleTimeout).helpText.hasSuffix("(default: 5m)"))
        #expect(DaemonSettings.descriptor(.workers).helpText.hasSuffix("(default: number of cores)"))
    }
}

@Suite("Settings: values")
struct SettingValueTests {
    @Test("durations take ns, us, ms, s, m, h, decimals, and bare seconds")
    func durations() throws {
        #expect(try settings(.idleTimeout, "300ms").idleTimeout == .milliseconds(300))
        #expect(try settings(.idleTimeout, "1.5s").idleTimeout == .milliseconds(1500))
        #expect(try settings(.idleTimeout, "2m").idleTimeout == .seconds(120))
        #expect(try settings(.idleTimeout, "1h").idleTimeout == .seconds(3600))
        #expect(try settings(.idleTimeout, "5").idleTimeout == .seconds(5))
        #expect(try settings(.idleTimeout, "2500us").idleTimeout == .microseconds(2500))
        #expect(try settings(.shutdownTimeout, "0").shutdownTimeout == .zero)
    }

    @Test(
        "malformed durations are refused",
        arguments: ["", "-1s", "inf", "nan", "0x10", "1e3", "5 s", ".5s", "5.s", "1.2.3s", "5d", "٣s"])
    func malformedDurations(_ text: String) {
        #expect(rejection(.idleTimeout, text)?.contains("expected a duration") == true)
    }

    @Test("durations outside the setting's range are refused with the range")
    func durationRange() {
        #expect(rejection(.quietWindow, "61s")?.contains("from 1ms to 1m") == true)
        #expect(rejection(.quietWindow, "0") != nil)
        #expect(rejection(.quietWindow, "60s") == nil)
    }

    @Test(
        "a huge duration is an error naming the setting, never a trap",
        arguments: [
            "99999999999999999999999h", "1e300", String(repeating: "9", count: 400) + "s",
            "9223372036854775807s", "9223372036854775807ns1",
        ])
    func hugeDurations(_ text: String) {
        #expect(rejection(.idleTimeout, text)?.hasPrefix("option --idle-timeout: expected a duration") == true)
    }

    @Test("sizes take B, KiB, MiB, GiB, KB, MB, GB and bare bytes")
    func sizes() throws {
        #expect(try settings(.maxRequestBytes, "64KiB").maxRequestBytes == 65536)
        #expect(try settings(.maxRequestBytes, "1MB").maxRequestBytes == 1_000_000)
        #expect(try settings(.maxRequestBytes, "4096").maxRequestBytes == 4096)
        #expect(try settings(.maxRequestBytes, "1_000B").maxRequestBytes == 1000)
        #expect(try settings(.memoryLimit, "2GiB").limits.memoryLimit == 2 << 30)
    }

    @Test("malformed sizes are refused", arguments: ["", "1.5MiB", "-1", "1TiB", "MiB", "1 MiB", "0x100"])
    func malformedSizes(_ text: String) {
        #expect(rejection(.maxRequestBytes, text)?.contains("expected a size from 64B to 256MiB") == true)
    }

    @Test(
        "a huge size is an error naming the setting, never a trap",
        arguments: ["9223372036854775807GiB", "99999999999999999999", "17179869184GiB", "8589934592GiB"])
    func hugeSizes(_ text: String) {
        #expect(rejection(.memoryLimit, text)?.hasPrefix("option --memory-limit: expected a size") == true)
    }

    @Test("integers are checked against their range, including numbers too large for Int")
    func integers() throws {
        #expect(try settings(.workers, "8").workers == 8)
        #expect(try settings(.evalInstructions, "2_000_000").limits.evaluationInstructionLimit == 2_000_000)
        #expect(rejection(.workers, "0")?.contains("from 1 to 256") == true)
        #expect(rejection(.workers, "257") != nil)
        #expect(rejection(.evalInstructions, "2147483648") != nil)
        #expect(rejection(.loadInstructions, "99999999999999999999")?.hasPrefix("option --load-instructions") == true)
        #expect(rejection(.maxConnections, "ten") != nil)
    }

    @Test("log level, log format and watch mode are enums")
    func enums() throws {
        for level in Logger.Level.allCases {
            #expect(try settings(.logLevel, level.rawValue).logLevel == level)
        }
        #expect(try settings(.logFormat, "json").logFormat == .json)
        #expect(try settings(.watch, "off").watchMode == .off)
        #expect(
            rejection(.logLevel, "verbose")
                == "option --log-level: expected trace, debug, info, notice, warning, error or critical, got 'verbose'")
        #expect(rejection(.logFormat, "xml") != nil)
        #expect(rejection(.watch, "fanotify") != nil)
    }

    @Test("watch = poll makes the watcher poll from the start; another mode undoes it")
    func pollForcesPolling() throws {
        var settings = try settings(.watch, "poll")
        #expect(settings.watch.forcePolling)
        try settings.apply(.watch, value: "inotify", from: .commandLine)
        #expect(!settings.watch.forcePolling)
    }

    @Test("socket_group is a group name or a group id; empty means none")
    func socketGroup() throws {
        #expect(try settings(.socketGroup, "rulesd").socketGroup == .name("rulesd"))
        #expect(try settings(.socketGroup, "10001").socketGroup == .id(10001))
        #expect(try settings(.socketGroup, "").socketGroup == nil)
        #expect(rejection(.socketGroup, "4294967295") != nil)
        #expect(rejection(.socketGroup, "99999999999") != nil)
        #expect(rejection(.socketGroup, "two words") != nil)
        #expect(rejection(.socketGroup, "a:b") != nil)
    }

    @Test("a group id is used as it is; a name is looked up")
    func groupResolution() {
        #expect(SocketGroup.id(10001).groupID == 10001)
        #expect(SocketGroup.name("root").groupID == 0)
        #expect(SocketGroup.name("no-such-group-here").groupID == nil)
    }

    @Test("socket_mode is octal, at most 0777")
    func socketMode() throws {
        #expect(try settings(.socketMode, "0640").socketMode == 0o640)
        #expect(try settings(.socketMode, "0o600").socketMode == 0o600)
        #expect(try settings(.socketMode, "666").socketMode == 0o666)
        for bad in ["", "0999", "1777", "abc", "-660", "00000660"] {
            #expect(rejection(.socketMode, bad) != nil, "\(bad)")
        }
    }

    @Test("the socket path must fit in sockaddr_un")
    func socketPath() {
        #expect(rejection(.socket, "/" + String(repeating: "s", count: 102)) == nil)
        #expect(
            rejection(.socket, "/" + String(repeating: "s", count: 103)) == "option --socket: longer than 103 bytes")
        #expect(rejection(.rules, "") == "option --rules: must not be empty")
    }

    @Test("metrics_listen is HOST:PORT or off")
    func metricsListen() throws {
        #expect(try settings(.metricsListen, "127.0.0.1:9464").metricsListen == "127.0.0.1:9464")
        #expect(try settings(.metricsListen, "off").metricsListen == nil)
        for bad in ["9464", ":9464", "localhost:0", "localhost:65536", "localhost:http"] {
            #expect(rejection(.metricsListen, bad) != nil, "\(bad)")
        }
    }

    @Test("ofrep_listen is HOST:PORT or off, and off by default")
    func ofrepListen() throws {
        #expect(DaemonSettings().ofrepListen == nil)
        #expect(try settings(.ofrepListen, "127.0.0.1:8016").ofrepListen == "127.0.0.1:8016")
        #expect(try settings(.ofrepListen, "off").ofrepListen == nil)
        for bad in ["8016", ":8016", "localhost:0", "localhost:65536"] {
            #expect(rejection(.ofrepListen, bad) != nil, "\(bad)")
        }
    }

    @Test("flagd_socket is a path of at most 103 bytes or off; flagd_listen is HOST:PORT or off; both off by default")
    func flagdListeners() throws {
        #expect(DaemonSettings().flagdSocket == nil)
        #expect(DaemonSettings().flagdListen == nil)
        #expect(try settings(.flagdSocket, "/run/rulesd/flagd.sock").flagdSocket == "/run/rulesd/flagd.sock")
        #expect(try settings(.flagdSocket, "off").flagdSocket == nil)
        #expect(rejection(.flagdSocket, "/" + String(repeating: "s", count: 103)) != nil)
        #expect(try settings(.flagdListen, "127.0.0.1:8013").flagdListen == "127.0.0.1:8013")
        #expect(try settings(.flagdListen, "off").flagdListen == nil)
        for bad in ["8013", ":8013", "localhost:0"] {
            #expect(rejection(.flagdListen, bad) != nil, "\(bad)")
        }
    }

    @Test("values are written back in the largest exact unit")
    func formatting() {
        #expect(formatDuration(.seconds(300)) == "5m")
        #expect(formatDuration(.milliseconds(1500)) == "1500ms")
        #expect(formatDuration(.zero) == "0s")
        #expect(formatSize(1 << 20) == "1MiB")
        #expect(formatSize(1000) == "1000B")
    }
}

@Suite("Settings: sources and precedence")
struct SettingSourceTests {
    @Test("the command line wins over the environment, which wins over the file")
    func precedence() throws {
        let scratch = try ScratchDirectory()
        let file = try scratch.write(
            "rulesd.conf", "idle_timeout = 1s\nlog_level = debug\nworkers = 3\n")
        let settings = try resolve(
            commandLine: [(.idleTimeout, "3s")],
            environment: ["RULESD_IDLE_TIMEOUT": "2s", "RULESD_LOG_LEVEL": "error"], configFile: file)
        #expect(settings.idleTimeout == .seconds(3))
        #expect(settings.logLevel == .error)
        #expect(settings.workers == 3)
    }

    @Test("--config wins over RULESD_CONFIG, which wins over the default file")
    func configFileChoice() throws {
        let scratch = try ScratchDirectory()
        let given = try scratch.write("given.conf", "workers = 5\n")
        let variable = try scratch.write("variable.conf", "workers = 6\n")
        let fallback = try scratch.write("default.conf", "workers = 7\n")
        let environment = ["RULESD_CONFIG": variable]
        #expect(try resolve(environment: environment, configFile: given, defaultConfigFile: fallback).workers == 5)
        #expect(try resolve(environment: environment, defaultConfigFile: fallback).workers == 6)
        #expect(try resolve(defaultConfigFile: fallback).workers == 7)
        #expect(try resolve(defaultConfigFile: scratch.path + "/absent.conf") == DaemonSettings())
    }

    @Test("a named config file that cannot be read is an error")
    func missingNamedFile() {
        #expect(throws: SettingsError.self) { try resolve(configFile: "/nonexistent/rulesd.conf") }
        #expect(throws: SettingsError.self) { try resolve(environment: ["RULESD_CONFIG": "/nonexistent/x.conf"]) }
    }

    @Test("an unknown setting in the file is an error naming the file and line")
    func unknownSettingInFile() throws {
        let scratch = try ScratchDirectory()
        let file = try scratch.write("rulesd.conf", "# settings\nworkers = 2\n\ncolour = blue\n")
        #expect(throws: SettingsError("\(file):4: unknown setting 'colour'")) { try resolve(configFile: file) }
    }

    @Test("a bad value in the file names the file, the line and the setting")
    func badValueInFile() throws {
        let scratch = try ScratchDirectory()
        let file = try scratch.write("rulesd.conf", "workers = 2\nidle-timeout = \"forever\"  # dashes are fine\n")
        #expect(
            throws: SettingsError(
                "\(file):2: idle_timeout: expected a duration from 1ms to 168h such as 300ms, 5s or 2m, got 'forever'")
        ) { try resolve(configFile: file) }
    }

    @Test("a line without '=' names its line")
    func malformedLine() throws {
        let scratch = try ScratchDirectory()
        let file = try scratch.write("rulesd.conf", "workers = 2\r\nworkers 3\r\n")
        #expect(throws: SettingsError("\(file):2: expected 'name = value'")) { try resolve(configFile: file) }
    }

    @Test("quoted values keep '#' and surrounding spaces")
    func quotedValues() throws {
        let scratch = try ScratchDirectory()
        let file = try scratch.write("rulesd.conf", "socket = \"/tmp/a #1.sock\" # the socket\n")
        #expect(try resolve(configFile: file).socketPath == "/tmp/a #1.sock")
    }

    @Test("an unknown RULESD_ variable is an error naming it; RULESD_CONFIG is not a setting")
    func unknownVariable() throws {
        #expect(throws: SettingsError("environment variable RULESD_COLOUR: unknown setting 'colour'")) {
            try resolve(environment: ["RULESD_COLOUR": "blue"])
        }
        #expect(throws: SettingsError("environment variable RULESD_workers: unknown setting 'workers'")) {
            try resolve(environment: ["RULESD_workers": "2"])
        }
        #expect(try resolve(environment: ["RULESD_WORKERS": "2", "PATH": "/bin"]).workers == 2)
    }

    @Test("a bad value from the environment names the variable")
    func badValueInEnvironment() {
        #expect(throws: SettingsError("environment variable RULESD_WATCH: expected inotify, poll or off, got 'yes'")) {
            try resolve(environment: ["RULESD_WATCH": "yes"])
        }
    }
}

/// The sample config file and the documentation agree with the descriptor table.
@Suite("Settings: documentation")
struct SettingDocumentationTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func read(_ relativePath: String) throws -> String {
        try String(contentsOf: repositoryRoot.appendingPathComponent(relativePath), encoding: .utf8)
    }

    /// `#name = value` lines of the sample file, in order.
    static func sampleLines(_ text: String) -> [(name: String, value: String)] {
        text.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("#"), !line.hasPrefix("# "), !line.hasPrefix("##"), line.count > 1,
                let equals = line.firstIndex(of: "=")
            else { return nil }
            let name = line[line.index(after: line.startIndex)..<equals].trimmingCharacters(in: .whitespaces)
            return (name, line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces))
        }
    }

    @Test("config/rulesd.conf shows every setting once, in table order, commented, with its sample value")
    func sampleConfigFile() throws {
        let text = try Self.read("config/rulesd.conf")
        let lines = Self.sampleLines(text)
        #expect(lines.map(\.name) == DaemonSettings.descriptors.map(\.key.rawValue))
        for (name, value) in lines {
            let descriptor = try #require(DaemonSettings.Key(rawValue: name).map(DaemonSettings.descriptor))
            #expect(value == descriptor.sampleValue, "\(name)")
        }
        // Nothing else looks like a setting: no uncommented line, no commented line of another shape.
        let otherSettingLines = text.split(separator: "\n").filter { line in
            line.contains("=") && !line.hasPrefix("# ") && !lines.contains { "#\($0.name) = \($0.value)" == line }
        }
        #expect(otherSettingLines.isEmpty)
    }

    @Test("config/rulesd.conf changes nothing as shipped, and reads cleanly with every line uncommented")
    func sampleConfigFileApplies() throws {
        let path = Self.repositoryRoot.appendingPathComponent("config/rulesd.conf").path
        var shipped = DaemonSettings()
        try shipped.apply(configFile: path)
        #expect(shipped == DaemonSettings())

        let uncommented = Self.sampleLines(try Self.read("config/rulesd.conf")).map { "\($0.name) = \($0.value)\n" }
        let scratch = try ScratchDirectory()
        var all = DaemonSettings()
        try all.apply(configFile: try scratch.write("all.conf", uncommented.joined()))
        #expect(all.socketGroup == .name("rulesd"))
    }

    @Test("docs/OPERATIONS.md's settings table is the descriptor table")
    func operationsTable() throws {
        let text = try Self.read("docs/OPERATIONS.md")
        let section =
            try #require(text.components(separatedBy: "\n## Settings\n").dropFirst().first)
            .components(separatedBy: "\n## ").first ?? ""
        let rows = section.split(separator: "\n").filter { $0.hasPrefix("| `") }.map(String.init)
        let expected = DaemonSettings.descriptors.map { descriptor in
            let defaultCell = descriptor.defaultNote ?? "`\(descriptor.defaultValue)`"
            return "| `\(descriptor.key.rawValue)` | \(defaultCell) | \(descriptor.summary) |"
        }
        #expect(rows == expected, "expected rows:\n\(expected.joined(separator: "\n"))")
    }
}
