import ArgumentParser
import Glibc
import Logging
import RulesDaemon
import SystemdSupport

/// The rulesd daemon's command line.
@main
struct RulesdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rulesd",
        abstract: "Serve feature flags, routing rules and config values from Lua rule files over a Unix socket.",
        discussion: """
            Every setting below can also be given in the config file as `name = value` (underscores for dashes) \
            and in the environment as RULESD_NAME (RULESD_SOCKET, RULESD_IDLE_TIMEOUT, ...). The command line wins \
            over the environment, which wins over the file. Unknown settings are errors.
            Durations: 300ms, 5s, 2m, 1h, or a bare number of seconds. Sizes: 65536, 64KiB, 1MiB, 2GiB.
            Signals: SIGHUP reloads the rules; SIGTERM and SIGINT stop gracefully.
            """,
        version: "0.1.0")

    @Option(
        help: ArgumentHelp(
            "Config file of `name = value` settings (default: $\(DaemonSettings.configFileVariable), else "
                + "\(DaemonSettings.defaultConfigFile) if it exists).",
            valueName: "path"))
    var config: String?

    @Flag(help: "Print the settings in effect as a config file, and exit.")
    var printSettings = false

    @Flag(
        help: ArgumentHelp(
            "Check the settings (config file, environment and options, as a start reads them), that every "
                + "namespace's rules directory exists and every user and group the roles name exists; print "
                + "'PATH: ok' and the namespaces, or every problem, and exit 0 or 2 without starting."))
    var checkConfig = false

    @OptionGroup(title: "Settings")
    var settingOptions: SettingOptions

    /// Set when rulesd starts itself as the rule process of a rule set with `isolation = process`.
    @Option(name: .customLong(RuleProcessWorker.modeOption), help: .hidden)
    var ruleProcessChannel: Int32?
    @Option(name: .customLong(RuleProcessWorker.memoryOption), help: .hidden)
    var ruleProcessMemory: Int?

    func run() async throws {
        if let channel = ruleProcessChannel {
            RuleProcessWorker.run(channel: channel, memoryLimit: ruleProcessMemory)
        }
        if checkConfig { throw ExitCode(checkConfiguration()) }
        let journal = JournalStream.isConnected()
        let settings: DaemonSettings
        do {
            settings = try DaemonSettings.resolve(
                commandLine: settingOptions.given, environment: Self.environment(), configFile: config)
        } catch {
            // Logged like every other failure to start, so that under systemd it reaches the journal with its
            // priority; the level and format asked for are unknown, since the settings are what failed.
            let logger = Logger(label: "rulesd") {
                DaemonLogHandler(label: $0, level: .info, format: .text, journal: journal, metadataProvider: nil)
            }
            logger.critical("invalid settings; not starting", error: error)
            throw ExitCode(64)  // EX_USAGE, as for a bad option
        }
        if printSettings {
            print(settings.configurationText, terminator: "")
            return
        }
        LoggingSystem.bootstrap(
            { label, provider in
                DaemonLogHandler(
                    label: label, level: settings.logLevel, format: settings.logFormat, journal: journal,
                    metadataProvider: provider)
            }, metadataProvider: nil)
        let logger = Logger(label: "rulesd")

        // systemd: the listening socket (socket activation), the notify socket and the watchdog. The variables
        // are removed from the environment once read, so nothing rulesd starts can mistake them for its own.
        let activated: ActivatedSocket?
        do {
            activated = try SocketActivation.querySocket()
        } catch {
            logger.critical("cannot use the socket handed over by systemd", error: error)
            throw ExitCode(1)
        }
        var notifier: LifecycleNotifier = NoLifecycleNotifier()
        do {
            if let systemd = try SystemdNotifier.fromEnvironment(unsetEnvironment: true) {
                notifier = SystemdLifecycleNotifier(notifier: systemd, logger: logger)
            }
        } catch {
            logger.warning("NOTIFY_SOCKET is unusable; not notifying systemd", error: error)
        }
        let watchdog = WatchdogSettings.fromEnvironment(unsetEnvironment: true)
        let status = await Daemon.run(
            settings: settings, notifier: notifier, activatedSocket: activated?.fd, watchdog: watchdog, logger: logger)
        if status != 0 { throw ExitCode(status) }
    }

    /// `--check-config`: the verdict on standard output, the problems on standard error.
    private func checkConfiguration() -> Int32 {
        let check = DaemonSettings.checkConfiguration(
            commandLine: settingOptions.given, environment: Self.environment(), configFile: config)
        let name = check.configFile ?? "(no config file)"
        guard check.problems.isEmpty, let settings = check.settings else {
            let count = check.problems.count
            var text = (check.problems + ["\(name): \(count) problem\(count == 1 ? "" : "s")"]).joined(separator: "\n")
            text += "\n"
            text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
            return 2
        }
        print("\(name): ok")
        for namespace in settings.allNamespaces {
            let isolation = namespace.isolation.rawValue
            print("namespace \(namespace.name): rules \(namespace.rulesDirectory), isolation \(isolation)")
        }
        return 0
    }

    private static func environment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}

/// One option per setting, each named and explained by the setting's descriptor.
struct SettingOptions: ParsableArguments {
    @Option(name: .setting(.rules), help: .setting(.rules)) var rules: String?
    @Option(name: .setting(.stateDirectory), help: .setting(.stateDirectory)) var stateDirectory: String?
    @Option(name: .setting(.historySize), help: .setting(.historySize)) var historySize: String?
    @Option(name: .setting(.socket), help: .setting(.socket)) var socket: String?
    @Option(name: .setting(.socketMode), help: .setting(.socketMode)) var socketMode: String?
    @Option(name: .setting(.socketGroup), help: .setting(.socketGroup)) var socketGroup: String?
    @Option(name: .setting(.workers), help: .setting(.workers)) var workers: String?
    @Option(name: .setting(.maxConnections), help: .setting(.maxConnections)) var maxConnections: String?
    @Option(name: .setting(.idleTimeout), help: .setting(.idleTimeout)) var idleTimeout: String?
    @Option(name: .setting(.maxPipelined), help: .setting(.maxPipelined)) var maxPipelined: String?
    @Option(name: .setting(.maxRequestBytes), help: .setting(.maxRequestBytes)) var maxRequestBytes: String?
    @Option(name: .setting(.shutdownTimeout), help: .setting(.shutdownTimeout)) var shutdownTimeout: String?
    @Option(name: .setting(.logLevel), help: .setting(.logLevel)) var logLevel: String?
    @Option(name: .setting(.logFormat), help: .setting(.logFormat)) var logFormat: String?
    @Option(name: .setting(.watch), help: .setting(.watch)) var watch: String?
    @Option(name: .setting(.quietWindow), help: .setting(.quietWindow)) var quietWindow: String?
    @Option(name: .setting(.maxDelay), help: .setting(.maxDelay)) var maxDelay: String?
    @Option(name: .setting(.safetyRescan), help: .setting(.safetyRescan)) var safetyRescan: String?
    @Option(name: .setting(.pollInterval), help: .setting(.pollInterval)) var pollInterval: String?
    @Option(name: .setting(.memoryLimit), help: .setting(.memoryLimit)) var memoryLimit: String?
    @Option(name: .setting(.evalTimeout), help: .setting(.evalTimeout)) var evalTimeout: String?
    @Option(name: .setting(.evalInstructions), help: .setting(.evalInstructions)) var evalInstructions: String?
    @Option(name: .setting(.loadTimeout), help: .setting(.loadTimeout)) var loadTimeout: String?
    @Option(name: .setting(.loadInstructions), help: .setting(.loadInstructions)) var loadInstructions: String?
    @Option(name: .setting(.maxFileBytes), help: .setting(.maxFileBytes)) var maxFileBytes: String?
    @Option(name: .setting(.maxDataBytes), help: .setting(.maxDataBytes)) var maxDataBytes: String?
    @Option(name: .setting(.testBudget), help: .setting(.testBudget)) var testBudget: String?
    @Option(name: .setting(.maxFiles), help: .setting(.maxFiles)) var maxFiles: String?
    @Option(name: .setting(.maxFlags), help: .setting(.maxFlags)) var maxFlags: String?
    @Option(name: .setting(.maxRulesBytes), help: .setting(.maxRulesBytes)) var maxRulesBytes: String?
    @Option(name: .setting(.metricsListen), help: .setting(.metricsListen)) var metricsListen: String?
    @Option(name: .setting(.capture), help: .setting(.capture)) var capture: String?
    @Option(name: .setting(.captureSize), help: .setting(.captureSize)) var captureSize: String?
    @Option(name: .setting(.captureMemory), help: .setting(.captureMemory)) var captureMemory: String?
    @Option(name: .setting(.captureRedact), help: .setting(.captureRedact)) var captureRedact: String?
    @Option(name: .setting(.captureRedactMode), help: .setting(.captureRedactMode)) var captureRedactMode: String?
    @Option(name: .setting(.captureRedactKey), help: .setting(.captureRedactKey)) var captureRedactKey: String?
    @Option(name: .setting(.ofrepListen), help: .setting(.ofrepListen)) var ofrepListen: String?
    @Option(name: .setting(.flagdSocket), help: .setting(.flagdSocket)) var flagdSocket: String?
    @Option(name: .setting(.flagdListen), help: .setting(.flagdListen)) var flagdListen: String?
    @Option(name: .setting(.overrideMaxTTL), help: .setting(.overrideMaxTTL)) var overrideMaxTTL: String?
    @Option(name: .setting(.roleQuery), help: .setting(.roleQuery)) var roleQuery: String?
    @Option(name: .setting(.roleObserve), help: .setting(.roleObserve)) var roleObserve: String?
    @Option(name: .setting(.roleOperate), help: .setting(.roleOperate)) var roleOperate: String?
    @Option(name: .setting(.roleAdmin), help: .setting(.roleAdmin)) var roleAdmin: String?
    @Option(name: .setting(.auditMaxBytes), help: .setting(.auditMaxBytes)) var auditMaxBytes: String?
    @Option(name: .setting(.isolation), help: .setting(.isolation)) var isolation: String?

    /// The settings given on the command line. The switch is exhaustive, so a setting added to the table
    /// without an option here does not compile.
    var given: [(DaemonSettings.Key, String)] {
        DaemonSettings.Key.allCases.compactMap { key in value(of: key).map { (key, $0) } }
    }

    private func value(of key: DaemonSettings.Key) -> String? {
        switch key {
        case .rules: rules
        case .socket: socket
        case .socketMode: socketMode
        case .socketGroup: socketGroup
        case .stateDirectory: stateDirectory
        case .historySize: historySize
        case .workers: workers
        case .logLevel: logLevel
        case .logFormat: logFormat
        case .maxConnections: maxConnections
        case .idleTimeout: idleTimeout
        case .maxPipelined: maxPipelined
        case .maxRequestBytes: maxRequestBytes
        case .shutdownTimeout: shutdownTimeout
        case .watch: watch
        case .quietWindow: quietWindow
        case .maxDelay: maxDelay
        case .safetyRescan: safetyRescan
        case .pollInterval: pollInterval
        case .memoryLimit: memoryLimit
        case .evalTimeout: evalTimeout
        case .evalInstructions: evalInstructions
        case .loadTimeout: loadTimeout
        case .loadInstructions: loadInstructions
        case .maxFileBytes: maxFileBytes
        case .maxDataBytes: maxDataBytes
        case .testBudget: testBudget
        case .maxFiles: maxFiles
        case .maxFlags: maxFlags
        case .maxRulesBytes: maxRulesBytes
        case .metricsListen: metricsListen
        case .capture: capture
        case .captureSize: captureSize
        case .captureMemory: captureMemory
        case .captureRedact: captureRedact
        case .captureRedactMode: captureRedactMode
        case .captureRedactKey: captureRedactKey
        case .ofrepListen: ofrepListen
        case .flagdSocket: flagdSocket
        case .flagdListen: flagdListen
        case .overrideMaxTTL: overrideMaxTTL
        case .roleQuery: roleQuery
        case .roleObserve: roleObserve
        case .roleOperate: roleOperate
        case .roleAdmin: roleAdmin
        case .auditMaxBytes: auditMaxBytes
        case .isolation: isolation
        }
    }
}

extension NameSpecification {
    /// The setting's long option, `--socket-mode`.
    fileprivate static func setting(_ key: DaemonSettings.Key) -> NameSpecification {
        .customLong(key.longOption)
    }
}

extension ArgumentHelp {
    /// The setting's summary and default, from its descriptor.
    fileprivate static func setting(_ key: DaemonSettings.Key) -> ArgumentHelp {
        let descriptor = DaemonSettings.descriptor(key)
        return ArgumentHelp(descriptor.helpText, valueName: descriptor.valueName)
    }
}
