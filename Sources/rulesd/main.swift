import ArgumentParser
import Logging
import RulesDaemon
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The rulesd daemon's command line.
@main
struct RulesdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rulesd",
        abstract: "Serve feature flags, routing rules and config values from Lua rule files over a Unix socket.",
        discussion: """
            Settings come from the config file, then RULESD_* environment variables (RULESD_SOCKET, \
            RULESD_IDLE_TIMEOUT, ...), then these options; the command line wins. Unknown settings are errors.
            Signals: SIGHUP reloads the rules; SIGTERM and SIGINT stop gracefully.
            """,
        version: "0.1.0")

    @Option(help: "Directory of *.lua rule files (default /etc/rulesd/rules.d).")
    var rules: String?
    @Option(help: "Unix socket to serve (default /run/rulesd/rulesd.sock).")
    var socket: String?
    @Option(help: "Config file of `name = value` settings (default /etc/rulesd/rulesd.conf if it exists).")
    var config: String?
    @Option(
        help:
            "Worker threads, each serving its share of the connections with its own Lua states (default: the number of cores)."
    )
    var workers: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?
    @Option(name: .customLong("log-format"), help: "text or json.")
    var logFormat: String?
    @Option(name: .customLong("state-dir"), help: "Where the last known good rules are kept (default /var/lib/rulesd).")
    var stateDir: String?
    @Option(name: .customLong("socket-mode"), help: "Mode of the socket file, octal (default 0660).")
    var socketMode: String?
    @Option(name: .customLong("socket-group"), help: "Group owning the socket file; its members may reload.")
    var socketGroup: String?
    @Option(name: .customLong("max-connections"), help: "Connections served at once (default 1024).")
    var maxConnections: String?
    @Option(name: .customLong("idle-timeout"), help: "Close connections idle this long, e.g. 5m (default 300s).")
    var idleTimeout: String?
    @Option(name: .customLong("max-pipelined"), help: "Requests read ahead per connection (default 1024).")
    var maxPipelined: String?
    @Option(name: .customLong("max-request-bytes"), help: "Longest request line, e.g. 1MiB (default 1MiB).")
    var maxRequestBytes: String?
    @Option(name: .customLong("shutdown-timeout"), help: "Wait this long for in-flight requests at shutdown.")
    var shutdownTimeout: String?
    @Option(help: "How to follow the rules directory: inotify (default), poll or off.")
    var watch: String?
    @Option(name: .customLong("quiet-window"), help: "Reload once the tree was quiet this long (default 300ms).")
    var quietWindow: String?
    @Option(name: .customLong("max-delay"), help: "Reload at most this long after the first change (default 5s).")
    var maxDelay: String?
    @Option(name: .customLong("safety-rescan"), help: "Rescan this often regardless of events (default 60s).")
    var safetyRescan: String?
    @Option(name: .customLong("poll-interval"), help: "Polling period when inotify is unavailable (default 2s).")
    var pollInterval: String?
    @Option(name: .customLong("memory-limit"), help: "Lua memory per rule set and worker (default 64MiB).")
    var memoryLimit: String?
    @Option(name: .customLong("eval-timeout"), help: "Wall-clock budget of one evaluation (default 50ms).")
    var evalTimeout: String?
    @Option(name: .customLong("eval-instructions"), help: "Instruction budget of one evaluation (default 1000000).")
    var evalInstructions: String?
    @Option(name: .customLong("load-timeout"), help: "Wall-clock budget of loading one file (default 2s).")
    var loadTimeout: String?
    @Option(name: .customLong("load-instructions"), help: "Instruction budget of loading one file (default 50000000).")
    var loadInstructions: String?
    @Option(name: .customLong("max-file-bytes"), help: "Largest rule file (default 8MiB).")
    var maxFileBytes: String?
    @Option(name: .customLong("metrics-listen"), help: "Serve /metrics over HTTP on HOST:PORT (default off).")
    var metricsListen: String?

    func run() async throws {
        let environment = Self.environment()
        var settings = DaemonSettings()
        do {
            let configPath = config ?? environment["RULESD_CONFIG"]
            if let configPath {
                try settings.apply(configFile: configPath)
            } else if access("/etc/rulesd/rulesd.conf", R_OK) == 0 {
                try settings.apply(configFile: "/etc/rulesd/rulesd.conf")
            }
            try settings.apply(environment: environment)
            let options: [(String, String?)] = [
                ("rules", rules), ("socket", socket), ("workers", workers), ("log_level", logLevel),
                ("log_format", logFormat), ("state_dir", stateDir), ("socket_mode", socketMode),
                ("socket_group", socketGroup), ("max_connections", maxConnections), ("idle_timeout", idleTimeout),
                ("max_pipelined", maxPipelined), ("max_request_bytes", maxRequestBytes),
                ("shutdown_timeout", shutdownTimeout), ("watch", watch), ("quiet_window", quietWindow),
                ("max_delay", maxDelay), ("safety_rescan", safetyRescan), ("poll_interval", pollInterval),
                ("memory_limit", memoryLimit), ("eval_timeout", evalTimeout), ("eval_instructions", evalInstructions),
                ("load_timeout", loadTimeout), ("load_instructions", loadInstructions),
                ("max_file_bytes", maxFileBytes), ("metrics_listen", metricsListen),
            ]
            for (name, value) in options {
                if let value {
                    try settings.apply(name: name, value: value, origin: "--\(name.replacingUnderscores())")
                }
            }
        } catch {
            throw ValidationError(error.description)
        }
        let journal = JournalStream.isConnected()
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        let format: DaemonLogHandler.Format = settings.logFormat == "json" ? .json : .text
        LoggingSystem.bootstrap { label in
            DaemonLogHandler(label: label, level: level, format: format, journal: journal)
        }
        let logger = Logger(label: "rulesd")

        // systemd: the listening socket (socket activation), the notify socket and the watchdog. The variables
        // are removed from the environment once read, so nothing rulesd starts can mistake them for its own.
        let activated: ActivatedSocket?
        do {
            activated = try SocketActivation.querySocket()
        } catch {
            logger.critical("cannot use the socket handed over by systemd", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        var notifier: LifecycleNotifier = NoLifecycleNotifier()
        do {
            if let systemd = try SystemdNotifier.fromEnvironment(unsetEnvironment: true) {
                notifier = SystemdLifecycleNotifier(notifier: systemd, logger: logger)
            }
        } catch {
            logger.warning("NOTIFY_SOCKET is unusable; not notifying systemd", metadata: ["error": "\(error)"])
        }
        let watchdog = WatchdogSettings.fromEnvironment(unsetEnvironment: true)
        let status = await Daemon.run(
            settings: settings, notifier: notifier, activatedSocket: activated?.fd, watchdog: watchdog, logger: logger)
        if status != 0 { throw ExitCode(status) }
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

extension String {
    fileprivate func replacingUnderscores() -> String {
        String(map { $0 == "_" ? "-" : $0 })
    }
}
