import Logging
import RuleEngine
import RuleWatcher
import RulesProtocol
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Everything that configures a running rulesd.
///
/// Settings come from, in increasing precedence: built-in defaults, the config file, `RULESD_*` environment
/// variables, and the command line. Each setting is described once, in ``descriptors``: its name in all three
/// places, its parser, its `--help` text and its documented default come from that one table, and tests hold
/// `config/rulesd.conf` and the table in `docs/OPERATIONS.md` to it. Unknown settings are errors everywhere: a
/// misspelt setting silently ignored is a production incident waiting for its moment.
public struct DaemonSettings: Sendable, Equatable {
    /// How the rules directory is followed.
    public enum WatchMode: String, Sendable, CaseIterable {
        /// inotify watches, falling back to polling while inotify is unavailable.
        case inotify
        /// Polling from the start, for file systems where inotify reports nothing.
        case poll
        /// No watching: reloads happen on SIGHUP and `rulesctl reload` only.
        case off
    }

    public var rulesDirectory = "/etc/rulesd/rules.d"
    public var socketPath = "/run/rulesd/rulesd.sock"
    public var socketMode: mode_t = 0o660
    public var socketGroup: SocketGroup?
    public var stateDirectory = "/var/lib/rulesd"
    public var historySize = 20
    public var workers = DaemonSettings.defaultWorkers
    public var logLevel: Logger.Level = .info
    public var logFormat: DaemonLogHandler.Format = .text
    public var maxConnections = 1024
    public var idleTimeout: Duration = .seconds(300)
    public var maxPipelinedRequests = 1024
    public var maxRequestBytes = 1 << 20
    public var shutdownTimeout: Duration = .seconds(10)
    public var watchMode: WatchMode = .inotify {
        didSet { watch.forcePolling = watchMode == .poll }
    }
    public var watch = WatchSettings()
    public var limits = RuleEngineLimits()
    public var metricsListen: String?
    public var capture = CaptureSettings()
    public var ofrepListen: String?
    public var flagdSocket: String?
    public var flagdListen: String?
    /// The longest an override (`rulesctl override set --ttl`) may last.
    public var overrideMaxTTL: Duration = .seconds(24 * 3600)
    /// Who holds which role (`role_query`, `role_observe`, `role_operate`, `role_admin`).
    public var accessPolicy = AccessPolicy()
    /// The size at which the audit log is rotated.
    public var auditMaxBytes = 4 << 20
    /// How the default namespace's rules run (`isolation`).
    public var isolation: NamespaceSettings.Isolation = .thread
    /// The namespaces declared besides `default` (`[namespace NAME]` sections of the config file), in order.
    public var namespaces: [NamespaceSettings] = []

    public init() {}

    public static var defaultWorkers: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// The config file read when neither `--config` nor `RULESD_CONFIG` names one, if it exists.
    public static let defaultConfigFile = "/etc/rulesd/rulesd.conf"

    /// The variable naming the config file; it is not a setting itself.
    public static let configFileVariable = "RULESD_CONFIG"

    /// The settings from every source, lowest precedence first: defaults, the config file, the environment, the
    /// command line.
    /// - Parameters:
    ///   - commandLine: settings given as options, in any order.
    ///   - environment: the process environment; every `RULESD_*` variable must be a setting or `RULESD_CONFIG`.
    ///   - configFile: the file named by `--config`, if any; else `RULESD_CONFIG`, else `defaultConfigFile` if
    ///     it exists.
    ///   - defaultConfigFile: the file read when none is named.
    /// - Returns: the settings in effect.
    /// - Throws: ``SettingsError`` naming the first setting that is unknown or has a bad value, and where it was.
    public static func resolve(
        commandLine: [(Key, String)], environment: [String: String], configFile: String?,
        defaultConfigFile: String = DaemonSettings.defaultConfigFile
    ) throws(SettingsError) -> DaemonSettings {
        try resolveReadingFile(
            commandLine: commandLine, environment: environment, configFile: configFile,
            defaultConfigFile: defaultConfigFile
        ).settings
    }

    /// ``resolve(commandLine:environment:configFile:defaultConfigFile:)``, with the config file as read.
    static func resolveReadingFile(
        commandLine: [(Key, String)], environment: [String: String], configFile: String?,
        defaultConfigFile: String
    ) throws(SettingsError) -> (settings: DaemonSettings, file: ConfigFile?) {
        var settings = DaemonSettings()
        var file: ConfigFile?
        if let path = configFile ?? environment[configFileVariable] {
            file = try readConfigFile(path)
        } else if access(defaultConfigFile, F_OK) == 0 {
            // An existing default file is read, and an unreadable one is an error rather than silently skipped.
            file = try readConfigFile(defaultConfigFile)
        }
        if let file { try settings.apply(topLevelOf: file) }
        try settings.apply(environment: environment)
        for (key, value) in commandLine {
            try settings.apply(key, value: value, from: .commandLine)
        }
        // A namespace inherits the top-level values in effect after every source, so sections are read last.
        if let file { try settings.declareNamespaces(of: file) }
        return (settings, file)
    }

    /// Applies one setting given as text.
    /// - Throws: ``SettingsError`` naming the setting as its source spells it, and what is wrong with the value.
    public mutating func apply(_ key: Key, value: String, from source: SettingSource) throws(SettingsError) {
        do {
            try Self.descriptor(key).parse(&self, value)
        } catch let problem {
            throw SettingsError(source.naming(key) + ": " + problem.message)
        }
    }

    /// Applies a config file: `name = value` lines, `#` comments, values optionally in double quotes, and
    /// `[namespace NAME]` sections, which declare ``namespaces``.
    /// - Throws: ``SettingsError`` when the file cannot be read, or naming the line of the first unknown setting,
    ///   malformed line or bad value.
    public mutating func apply(configFile path: String) throws(SettingsError) {
        let file = try Self.readConfigFile(path)
        try apply(topLevelOf: file)
        try declareNamespaces(of: file)
    }

    /// Applies the settings above the first section of a config file.
    mutating func apply(topLevelOf file: ConfigFile) throws(SettingsError) {
        for line in file.topLevel {
            try apply(line.key, value: line.value, from: .configFile(path: file.path, line: line.number))
        }
    }

    /// Reads a config file's lines and sections, checking every name; values are checked when applied.
    static func readConfigFile(_ path: String) throws(SettingsError) -> ConfigFile {
        guard let text = Self.readFile(path) else {
            throw SettingsError("cannot read config file \(path): \(String(cString: strerror(errno)))")
        }
        var file = ConfigFile(path: path)
        var lineNumber = 0
        // "\r\n" is one Character in Swift, so it is a line break of its own.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            var line = Substring(rawLine)
            if let hash = Self.commentStart(line) { line = line[..<hash] }
            let trimmed = line.trimmingCharacters(in: " \t\r")
            if trimmed.isEmpty { continue }
            if trimmed.hasPrefix("[") {
                try file.beginSection(trimmed, line: lineNumber)
                continue
            }
            guard let equals = trimmed.firstIndex(of: "=") else {
                throw SettingsError("\(path):\(lineNumber): expected 'name = value'")
            }
            let name = String(trimmed[..<equals].trimmingCharacters(in: " \t").map { $0 == "-" ? "_" : $0 })
            var value = trimmed[trimmed.index(after: equals)...].trimmingCharacters(in: " \t")
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
                value = String(value.dropFirst().dropLast())
            }
            if !file.sections.isEmpty {
                try file.addToSection(name: name, value: value, line: lineNumber)
                continue
            }
            guard let key = Key(rawValue: name) else {
                throw SettingsError("\(path):\(lineNumber): unknown setting '\(name)'")
            }
            file.topLevel.append(ConfigFile.Setting(key: key, value: value, number: lineNumber))
        }
        return file
    }

    /// Applies every `RULESD_*` variable except `RULESD_CONFIG` (the config file's path, read first).
    /// - Throws: ``SettingsError`` naming the first unknown variable or bad value.
    public mutating func apply(environment: [String: String]) throws(SettingsError) {
        for (variable, value) in environment.sorted(by: { $0.key < $1.key }) where variable.hasPrefix("RULESD_") {
            if variable == Self.configFileVariable { continue }
            let name = String(variable.dropFirst("RULESD_".count)).lowercased()
            guard let key = Key(rawValue: name), key.environmentVariable == variable else {
                throw SettingsError("environment variable \(variable): unknown setting '\(name)'")
            }
            try apply(key, value: value, from: .environment)
        }
    }

    /// Every setting as a `name = value` line, in the order of ``descriptors``, then a `[namespace NAME]` section
    /// for each of ``namespaces``: a config file that reproduces these settings.
    public var configurationText: String {
        Self.descriptors.map { "\($0.key.rawValue) = \(Self.quotedIfNeeded($0.render(self)))\n" }.joined()
            + namespaces.map { "\n" + sectionText($0) }.joined()
    }

    static func quotedIfNeeded(_ value: String) -> String {
        let needsQuotes =
            value.isEmpty || value.contains("#") || value.first == " " || value.last == " " || value.first == "\""
        return needsQuotes ? "\"\(value)\"" : value
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
            if n < 0 { return nil }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The group that owns a socket rulesd binds itself: a name looked up when the socket is created, or a number
/// used as it is (a container may have no group database).
public enum SocketGroup: Sendable, Equatable, CustomStringConvertible {
    case name(String)
    case id(gid_t)

    /// The group id, or nil when no group has this name.
    public var groupID: gid_t? {
        switch self {
        case .name(let name): GroupMembership.groupID(named: name)
        case .id(let id): id
        }
    }

    public var description: String {
        switch self {
        case .name(let name): name
        case .id(let id): String(id)
        }
    }
}

/// Where a setting was given; errors name the setting as that source spells it.
public enum SettingSource: Sendable, Equatable {
    case configFile(path: String, line: Int)
    case environment
    case commandLine

    func naming(_ key: DaemonSettings.Key) -> String {
        switch self {
        case .configFile(let path, let line): "\(path):\(line): \(key.rawValue)"
        case .environment: "environment variable \(key.environmentVariable)"
        case .commandLine: "option \(key.option)"
        }
    }
}

/// A setting that could not be applied; the message names the setting and where it was given (file:line,
/// variable, option).
public struct SettingsError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension DaemonSettings {
    /// The name of every setting: `name` in the config file, `--name-with-dashes` on the command line and
    /// `RULESD_NAME` in the environment.
    public enum Key: String, Sendable, CaseIterable {
        case rules
        case stateDirectory = "state_dir"
        case historySize = "history_size"
        case socket
        case socketMode = "socket_mode"
        case socketGroup = "socket_group"
        case workers
        case maxConnections = "max_connections"
        case idleTimeout = "idle_timeout"
        case maxPipelined = "max_pipelined"
        case maxRequestBytes = "max_request_bytes"
        case shutdownTimeout = "shutdown_timeout"
        case logLevel = "log_level"
        case logFormat = "log_format"
        case watch
        case quietWindow = "quiet_window"
        case maxDelay = "max_delay"
        case safetyRescan = "safety_rescan"
        case pollInterval = "poll_interval"
        case memoryLimit = "memory_limit"
        case evalTimeout = "eval_timeout"
        case evalInstructions = "eval_instructions"
        case loadTimeout = "load_timeout"
        case loadInstructions = "load_instructions"
        case maxFileBytes = "max_file_bytes"
        case maxDataBytes = "max_data_bytes"
        case testBudget = "test_budget"
        case maxFiles = "max_files"
        case maxFlags = "max_flags"
        case maxRulesBytes = "max_rules_bytes"
        case metricsListen = "metrics_listen"
        case capture
        case captureSize = "capture_size"
        case captureMemory = "capture_memory"
        case captureRedact = "capture_redact"
        case captureRedactMode = "capture_redact_mode"
        case captureRedactKey = "capture_redact_key"
        case ofrepListen = "ofrep_listen"
        case flagdSocket = "flagd_socket"
        case flagdListen = "flagd_listen"
        case overrideMaxTTL = "override_max_ttl"
        case roleQuery = "role_query"
        case roleObserve = "role_observe"
        case roleOperate = "role_operate"
        case roleAdmin = "role_admin"
        case auditMaxBytes = "audit_max_bytes"
        case isolation

        /// The command-line option's long name, without the leading dashes: `socket-mode`.
        public var longOption: String { String(rawValue.map { $0 == "_" ? "-" : $0 }) }
        /// `--socket-mode`.
        public var option: String { "--" + longOption }
        /// `RULESD_SOCKET_MODE`.
        public var environmentVariable: String { "RULESD_" + rawValue.uppercased() }
    }

    /// The descriptor of one setting.
    public static func descriptor(_ key: Key) -> SettingDescriptor {
        descriptors.first { $0.key == key }!
    }

    /// Every setting, in the order of `--help`, `config/rulesd.conf` and the documentation.
    public static let descriptors: [SettingDescriptor] = [
        .text(.rules, \.rulesDirectory, valueName: "directory", summary: "the rules directory"),
        .text(
            .stateDirectory, \.stateDirectory, valueName: "directory",
            summary: "where the last known good rules are kept"),
        .integer(.historySize, \.historySize, 1...1000, summary: "rule sets kept in the history, for rollback"),
        .text(
            .socket, \.socketPath, valueName: "path", maxBytes: 103,
            summary: "the socket to bind when systemd does not hand one over"),
        SettingDescriptor(
            key: .socketMode, valueName: "mode", summary: "mode of a socket rulesd binds itself, octal",
            parse: { settings, text throws(SettingsError) in
                let digits = text.hasPrefix("0o") ? String(text.dropFirst(2)) : text
                guard !digits.isEmpty, digits.allSatisfy({ ("0"..."7").contains($0) }), digits.count <= 4,
                    let mode = mode_t(digits, radix: 8), mode <= 0o777
                else {
                    throw SettingsError("expected an octal mode such as 0660, got '\(text)'")
                }
                settings.socketMode = mode
            },
            render: { settings in
                let octal = String(settings.socketMode, radix: 8)
                return String(repeating: "0", count: max(0, 4 - octal.count)) + octal
            }),
        SettingDescriptor(
            key: .socketGroup, valueName: "group",
            summary: "group of that socket, by name or number; its members may connect",
            defaultNote: "none", example: "rulesd",
            parse: { settings, text throws(SettingsError) in
                settings.socketGroup = try parseGroup(text)
            },
            render: { $0.socketGroup?.description ?? "" }),
        .integer(
            .workers, \.workers, 1...256,
            summary:
                "worker threads: the most that serve connections at once (how many do follows the load); each has its own Lua state per rule set",
            defaultNote: "number of cores", example: "4"),
        .integer(.maxConnections, \.maxConnections, 1...1_000_000, summary: "connections served at once"),
        .duration(
            .idleTimeout, \.idleTimeout, .milliseconds(1)...(.seconds(7 * 86400)),
            summary: "close connections idle this long"),
        .integer(
            .maxPipelined, \.maxPipelinedRequests, 1...1_000_000,
            summary: "requests read ahead per connection while an earlier one waits"),
        .size(.maxRequestBytes, \.maxRequestBytes, 64...(256 << 20), summary: "longest request line"),
        .duration(
            .shutdownTimeout, \.shutdownTimeout, .zero...(.seconds(3600)),
            summary: "how long a stop waits for in-flight requests"),
        .choice(.logLevel, \.logLevel, summary: "lowest level logged"),
        .choice(.logFormat, \.logFormat, summary: "log line format"),
        .choice(.watch, \.watchMode, summary: "how the rules directory is followed"),
        .duration(
            .quietWindow, \.watch.quietWindow, .milliseconds(1)...(.seconds(60)),
            summary: "reload once the tree has been quiet this long"),
        .duration(
            .maxDelay, \.watch.maxDelay, .milliseconds(1)...(.seconds(600)),
            summary: "reload at most this long after the first change"),
        .duration(
            .safetyRescan, \.watch.safetyRescanInterval, .seconds(1)...(.seconds(86400)),
            summary: "rescan this often whatever the watcher saw"),
        .duration(
            .pollInterval, \.watch.pollInterval, .milliseconds(10)...(.seconds(3600)),
            summary: "polling period when inotify cannot be used"),
        .size(
            .memoryLimit, \.limits.memoryLimit, (1 << 20)...(64 << 30), summary: "Lua memory per rule set and worker"),
        .duration(
            .evalTimeout, \.limits.evaluationTimeout, .milliseconds(1)...(.seconds(60)),
            summary: "wall-clock budget of one evaluation"),
        .integer(
            .evalInstructions, \.limits.evaluationInstructionLimit, 1000...Int(Int32.max),
            summary: "instruction budget of one evaluation"),
        .duration(
            .loadTimeout, \.limits.loadTimeout, .milliseconds(1)...(.seconds(600)),
            summary: "wall-clock budget of loading one file"),
        .integer(
            .loadInstructions, \.limits.loadInstructionLimit, 1000...Int.max,
            summary: "instruction budget of loading one file"),
        .size(.maxFileBytes, \.limits.maxFileBytes, 1024...(256 << 20), summary: "largest rule file"),
        .size(.maxDataBytes, \.limits.maxDataBytes, 1024...(1 << 30), summary: "largest data file (.txt or .json)"),
        .duration(
            .testBudget, \.limits.testBudget, .milliseconds(1)...(.seconds(600)),
            summary: "wall-clock budget of all rule tests of one reload"),
        .quota(
            .integer(
                .maxFiles, \.limits.maxFiles, 1...100_000,
                summary: "quota: most files (rule and data files together) in the rules directory, or `unlimited`"),
            \.limits.maxFiles),
        .quota(
            .integer(
                .maxFlags, \.limits.maxFlags, 1...1_000_000, summary: "quota: most flags declared, or `unlimited`"),
            \.limits.maxFlags),
        .quota(
            .size(
                .maxRulesBytes, \.limits.maxRulesBytes, (1 << 10)...(512 << 20),
                summary: "quota: most bytes of all files of the rules directory together, or `unlimited`"),
            \.limits.maxRulesBytes),
        SettingDescriptor(
            key: .metricsListen, valueName: "host:port",
            summary: "`HOST:PORT` for the `/metrics` HTTP listener, or `off`", example: "127.0.0.1:9464",
            parse: { settings, text throws(SettingsError) in
                settings.metricsListen = try parseListenAddress(text)
            },
            render: { $0.metricsListen ?? "off" }),
        .choice(
            .capture, \.capture.capture,
            summary: "keep recent distinct requests in memory for `rulesctl capture` and `rulesctl diff --live`"),
        .integer(
            .captureSize, \.capture.size, 1...1_000_000,
            summary: "distinct requests captured per flag and for the routes"
        ),
        .size(
            .captureMemory, \.capture.memory, (64 << 10)...(16 << 30),
            summary: "memory all captured requests may use; the oldest are forgotten first"),
        SettingDescriptor(
            key: .captureRedact, valueName: "fields",
            summary: "top-level context and request fields never captured as sent, comma-separated",
            defaultNote: "none", example: "email,ip",
            parse: { settings, text throws(SettingsError) in
                settings.capture.redact = try parseFieldList(text)
            },
            render: { $0.capture.redact.joined(separator: ",") }),
        .choice(.captureRedactMode, \.capture.redactMode, summary: "what happens to a redacted field"),
        SettingDescriptor(
            key: .captureRedactKey, valueName: "text", summary: "the HMAC key of `capture_redact_mode = hash`",
            defaultNote: "random at each start", example: "a-long-secret",
            parse: { settings, text throws(SettingsError) in settings.capture.redactKey = text },
            render: { $0.capture.redactKey }),
        SettingDescriptor(
            key: .ofrepListen, valueName: "host:port",
            summary: "`HOST:PORT` for the OpenFeature (OFREP) HTTP listener, or `off`", example: "127.0.0.1:8016",
            parse: { settings, text throws(SettingsError) in
                settings.ofrepListen = try parseListenAddress(text)
            },
            render: { $0.ofrepListen ?? "off" }),
        SettingDescriptor(
            key: .flagdSocket, valueName: "path",
            summary: "Unix socket for flagd's gRPC evaluation API (OpenFeature flagd providers), or `off`",
            example: "/run/rulesd/flagd.sock",
            parse: { settings, text throws(SettingsError) in
                settings.flagdSocket = try parseSocketPath(text)
            },
            render: { $0.flagdSocket ?? "off" }),
        SettingDescriptor(
            key: .flagdListen, valueName: "host:port",
            summary: "`HOST:PORT` for flagd's gRPC evaluation API over TCP, or `off`", example: "127.0.0.1:8013",
            parse: { settings, text throws(SettingsError) in
                settings.flagdListen = try parseListenAddress(text)
            },
            render: { $0.flagdListen ?? "off" }),
        .duration(
            .overrideMaxTTL, \.overrideMaxTTL, .seconds(1)...(.seconds(366 * 86400)),
            summary: "the longest `--ttl` an override may have (`rulesctl override set`)"),
        .role(
            .roleQuery, .query, summary: "who may `ping`, `flag`, `flags`, `route`, `config`, `explain` and `watch`"),
        .role(
            .roleObserve, .observe,
            summary: "who may read `status`, `metrics`, `history`, `show`, `capture` and `override_list`"),
        .role(
            .roleOperate, .operate,
            summary: "who may `reload`, `rollback`, `resume`, `override_set` and `override_clear`",
            defaultNote: "root and rulesd's user only"),
        .role(.roleAdmin, .admin, summary: "who holds every role", defaultNote: "root and rulesd's user only"),
        .size(
            .auditMaxBytes, \.auditMaxBytes, (64 << 10)...(1 << 30),
            summary: "size at which `state_dir/audit/audit.jsonl` is rotated; 3 older files are kept"),
        .choice(
            .isolation, \.isolation,
            summary:
                "where the rules run: in rulesd's worker threads, or in a rule process of their own with kernel limits"),
    ]
}

/// One setting: its name, how its value is read and written back, and what `--help` and the documentation say
/// about it.
public struct SettingDescriptor: Sendable {
    public let key: DaemonSettings.Key
    /// What the value is, for `--help`: `duration`, `size`, `path`.
    public let valueName: String
    /// One line saying what the setting does (Markdown: values in backticks).
    public let summary: String
    /// Said instead of the default value when that depends on the machine or means "not set".
    public let defaultNote: String?
    /// The value shown in the sample config file when ``defaultNote`` is set.
    public let example: String?
    let parse: @Sendable (inout DaemonSettings, String) throws(SettingsError) -> Void
    let render: @Sendable (DaemonSettings) -> String

    init(
        key: DaemonSettings.Key, valueName: String, summary: String, defaultNote: String? = nil,
        example: String? = nil, parse: @escaping @Sendable (inout DaemonSettings, String) throws(SettingsError) -> Void,
        render: @escaping @Sendable (DaemonSettings) -> String
    ) {
        self.key = key
        self.valueName = valueName
        self.summary = summary
        self.defaultNote = defaultNote
        self.example = example
        self.parse = parse
        self.render = render
    }

    /// The setting's value in `settings`, spelt as the config file accepts it.
    public func value(in settings: DaemonSettings) -> String { render(settings) }

    /// The built-in default as the config file spells it.
    public var defaultValue: String { render(DaemonSettings()) }

    /// The default for people: ``defaultNote`` or the default value.
    public var defaultText: String { defaultNote ?? defaultValue }

    /// The value the sample config file shows: the default, or ``example`` when the default cannot be written.
    public var sampleValue: String { example ?? defaultValue }

    /// The `--help` text: the summary without Markdown, and the default.
    public var helpText: String {
        let plain = summary.filter { $0 != "`" }
        return plain.prefix(1).uppercased() + plain.dropFirst() + " (default: \(defaultText))"
    }

    static func text(
        _ key: DaemonSettings.Key, _ path: WritableKeyPath<DaemonSettings, String> & Sendable, valueName: String,
        maxBytes: Int? = nil, summary: String
    ) -> SettingDescriptor {
        SettingDescriptor(
            key: key, valueName: valueName, summary: summary,
            parse: { settings, text throws(SettingsError) in
                guard !text.isEmpty else { throw SettingsError("must not be empty") }
                if let maxBytes, text.utf8.count > maxBytes {
                    throw SettingsError("longer than \(maxBytes) bytes")
                }
                settings[keyPath: path] = text
            },
            render: { $0[keyPath: path] })
    }

    /// A `role_*` setting: principals separated by spaces (`group:ops user:alice uid:1001`, `*` for everyone who
    /// can connect), empty for nobody but root and rulesd's user.
    static func role(
        _ key: DaemonSettings.Key, _ role: AccessRole, summary: String, defaultNote: String? = nil
    ) -> SettingDescriptor {
        SettingDescriptor(
            key: key, valueName: "principals",
            summary: summary + ": `*`, `user:NAME`, `uid:N`, `group:NAME`, `gid:N`, separated by spaces",
            defaultNote: defaultNote, example: defaultNote == nil ? nil : "group:ops",
            parse: { settings, text throws(SettingsError) in
                settings.accessPolicy[role] = try AccessPolicy.parsePrincipals(text)
            },
            render: { AccessPolicy.render($0.accessPolicy[role]) })
    }

    static func integer(
        _ key: DaemonSettings.Key, _ path: WritableKeyPath<DaemonSettings, Int> & Sendable, _ range: ClosedRange<Int>,
        summary: String, defaultNote: String? = nil, example: String? = nil
    ) -> SettingDescriptor {
        SettingDescriptor(
            key: key, valueName: "n", summary: summary, defaultNote: defaultNote, example: example,
            parse: { settings, text throws(SettingsError) in
                // Int(_:) returns nil rather than overflow, so a huge number is reported like any other bad one.
                guard let n = Int(String(text.filter { $0 != "_" })), range.contains(n) else {
                    throw SettingsError(
                        "expected an integer from \(range.lowerBound) to \(range.upperBound), got '\(text)'")
                }
                settings[keyPath: path] = n
            },
            render: { String($0[keyPath: path]) })
    }

    /// A quota: the values of `plain` (a setting of `path`), or `unlimited`, kept as `Int.max`.
    static func quota(
        _ plain: SettingDescriptor, _ path: WritableKeyPath<DaemonSettings, Int> & Sendable
    ) -> SettingDescriptor {
        SettingDescriptor(
            key: plain.key, valueName: plain.valueName, summary: plain.summary,
            parse: { settings, text throws(SettingsError) in
                if text == "unlimited" {
                    settings[keyPath: path] = .max
                    return
                }
                do throws(SettingsError) {
                    try plain.parse(&settings, text)
                } catch {
                    throw SettingsError("expected unlimited or " + error.message.dropFirst("expected ".count))
                }
            },
            render: { $0[keyPath: path] == .max ? "unlimited" : plain.render($0) })
    }

    static func choice<Choice: RawRepresentable<String> & CaseIterable & Sendable>(
        _ key: DaemonSettings.Key, _ path: WritableKeyPath<DaemonSettings, Choice> & Sendable, summary: String
    ) -> SettingDescriptor {
        let names = Choice.allCases.map(\.rawValue)
        let list = names.dropLast().map { "`\($0)`" }.joined(separator: ", ") + " or `\(names.last!)`"
        return SettingDescriptor(
            key: key, valueName: names.joined(separator: "|"), summary: "\(summary): \(list)",
            parse: { settings, text throws(SettingsError) in
                guard let value = Choice(rawValue: text) else {
                    throw SettingsError("expected \(list.filter { $0 != "`" }), got '\(text)'")
                }
                settings[keyPath: path] = value
            },
            render: { $0[keyPath: path].rawValue })
    }

    static func duration(
        _ key: DaemonSettings.Key, _ path: WritableKeyPath<DaemonSettings, Duration> & Sendable,
        _ range: ClosedRange<Duration>, summary: String
    ) -> SettingDescriptor {
        SettingDescriptor(
            key: key, valueName: "duration", summary: summary,
            parse: { settings, text throws(SettingsError) in
                settings[keyPath: path] = try parseDuration(text, range)
            },
            render: { formatDuration($0[keyPath: path]) })
    }

    static func size(
        _ key: DaemonSettings.Key, _ path: WritableKeyPath<DaemonSettings, Int> & Sendable, _ range: ClosedRange<Int>,
        summary: String
    ) -> SettingDescriptor {
        SettingDescriptor(
            key: key, valueName: "size", summary: summary,
            parse: { settings, text throws(SettingsError) in
                settings[keyPath: path] = try parseSize(text, range)
            },
            render: { formatSize($0[keyPath: path]) })
    }
}

private let durationUnits: [(suffix: String, nanoseconds: Int64)] = [
    ("ns", 1), ("us", 1000), ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
]

/// `300ms`, `5s`, `1.5s`, `2m`, `1h`, or a bare number of seconds, within `range`.
///
/// The number is checked against the range before it is converted, so no value, however long, can overflow.
func parseDuration(_ text: String, _ range: ClosedRange<Duration>) throws(SettingsError) -> Duration {
    let expected =
        "expected a duration from \(formatDuration(range.lowerBound)) to \(formatDuration(range.upperBound)) "
        + "such as 300ms, 5s or 2m, got '\(text)'"
    let number = text.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
    let unit = text.dropFirst(number.count)
    let scale: Int64
    if unit.isEmpty {
        scale = 1_000_000_000
    } else if let match = durationUnits.first(where: { $0.suffix == unit }) {
        scale = match.nanoseconds
    } else {
        throw SettingsError(expected)
    }
    // Digits with at most one decimal point: Double(_:) alone would also take "inf", "nan" and hex.
    guard !number.isEmpty, number.filter({ $0 == "." }).count <= 1, number.first != ".", number.last != ".",
        let value = Double(number), value.isFinite
    else {
        throw SettingsError(expected)
    }
    let nanoseconds = value * Double(scale)
    let lower =
        Double(range.lowerBound.components.seconds) * 1e9 + Double(range.lowerBound.components.attoseconds) / 1e9
    let upper =
        Double(range.upperBound.components.seconds) * 1e9 + Double(range.upperBound.components.attoseconds) / 1e9
    guard nanoseconds >= lower, nanoseconds <= upper else { throw SettingsError(expected) }
    return .nanoseconds(Int64(nanoseconds.rounded()))
}

/// The largest unit that states `duration` exactly: `5m`, `300ms`, `1500ms`.
func formatDuration(_ duration: Duration) -> String {
    let (seconds, attoseconds) = duration.components
    let nanoseconds = seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    if nanoseconds == 0 { return "0s" }
    for unit in durationUnits.reversed() where nanoseconds % unit.nanoseconds == 0 {
        return "\(nanoseconds / unit.nanoseconds)\(unit.suffix)"
    }
    return "\(nanoseconds)ns"
}

private let sizeUnits: [(suffix: String, bytes: Int)] = [
    ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000),
    ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10), ("B", 1),
]

/// `1048576`, `1_048_576`, `64KiB`, `1MiB`, `2GiB` (also KB, MB, GB as powers of 1000), within `range`; overflow
/// is an error.
func parseSize(_ text: String, _ range: ClosedRange<Int>) throws(SettingsError) -> Int {
    let expected =
        "expected a size from \(formatSize(range.lowerBound)) to \(formatSize(range.upperBound)), got '\(text)'"
    let plain = text.filter { $0 != "_" }
    let digits = plain.prefix { $0.isASCII && $0.isNumber }
    let unit = plain.dropFirst(digits.count)
    let scale: Int
    if unit.isEmpty {
        scale = 1
    } else if let match = sizeUnits.first(where: { $0.suffix == unit }) {
        scale = match.bytes
    } else {
        throw SettingsError(expected)
    }
    guard !digits.isEmpty, let count = Int(digits) else { throw SettingsError(expected) }
    let (bytes, overflow) = count.multipliedReportingOverflow(by: scale)
    guard !overflow, range.contains(bytes) else { throw SettingsError(expected) }
    return bytes
}

/// The largest binary unit that states `bytes` exactly: `1MiB`, `64KiB`, `1000B`.
func formatSize(_ bytes: Int) -> String {
    for (suffix, scale) in sizeUnits where suffix.hasSuffix("iB") && bytes != 0 && bytes % scale == 0 {
        return "\(bytes / scale)\(suffix)"
    }
    return "\(bytes)B"
}

/// A group name as `useradd` accepts it, or a group id; empty for none.
func parseGroup(_ text: String) throws(SettingsError) -> SocketGroup? {
    if text.isEmpty { return nil }
    if text.allSatisfy({ $0.isASCII && $0.isNumber }) {
        // (gid_t)-1 means "leave unchanged" to chown(2), so it cannot name a group.
        guard let id = gid_t(text), id != gid_t.max else {
            throw SettingsError("group id '\(text)' is out of range")
        }
        return .id(id)
    }
    let allowed = text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-$".contains($0)) }
    guard allowed, text.first != "-", text.utf8.count <= 32 else {
        throw SettingsError("expected a group name or number, got '\(text)'")
    }
    return .name(text)
}

/// Field names separated by commas (spaces around them ignored); empty for none.
func parseFieldList(_ text: String) throws(SettingsError) -> [String] {
    let names = text.split(separator: ",", omittingEmptySubsequences: false).map {
        $0.trimmingCharacters(in: " \t")
    }
    if names == [""] { return [] }
    guard !names.contains(where: \.isEmpty) else {
        throw SettingsError("expected field names separated by commas, got '\(text)'")
    }
    return names
}

/// `HOST:PORT` (`[v6]:PORT` too), or `off` / empty for no listener.
func parseListenAddress(_ text: String) throws(SettingsError) -> String? {
    if text.isEmpty || text == "off" { return nil }
    guard let colon = text.lastIndex(of: ":"), colon != text.startIndex,
        let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port)
    else {
        throw SettingsError("expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:9464, got '\(text)'")
    }
    return text
}

/// A socket path of at most 103 bytes (what `sun_path` holds), or `off` / empty for no socket.
func parseSocketPath(_ text: String) throws(SettingsError) -> String? {
    if text.isEmpty || text == "off" { return nil }
    guard text.utf8.count <= 103 else { throw SettingsError("longer than 103 bytes") }
    return text
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
