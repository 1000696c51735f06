import Foundation
import Logging
import RuleModel
import RulesTestSupport
import ServiceLifecycle
import Synchronization
import Testing

@testable import RulesDaemon

/// The daemon's log messages, each with the namespace it names (`-` for none).
private final class LogRecord: Sendable {
    private let lines = Mutex<[String]>([])

    func append(_ line: String) { lines.withLock { $0.append(line) } }
    func contains(_ line: String) -> Bool { lines.withLock { $0.contains(line) } }

    struct Handler: LogHandler {
        let record: LogRecord
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let namespace = (event.metadata?["namespace"] ?? metadata["namespace"]).map { "\($0)" } ?? "-"
            record.append("\(namespace): \(event.message)")
        }
    }
}

/// The daemon in this process, serving the default namespace and `payments`, on a temporary socket.
private final class TwoNamespaceDaemon: Sendable {
    let logs = LogRecord()
    let root: String
    let socketPath: String
    let settings: DaemonSettings
    private let group: ServiceGroup
    private let running: Task<Error?, Never>

    var defaultRules: String { root + "/rules" }
    var paymentsRules: String { root + "/payments" }

    /// Starts the daemon and waits until it serves (or until it stopped trying, when `expectStart` is false).
    init(
        defaultFiles: [String: String], paymentsFiles: [String: String], expectStart: Bool = true,
        configure: (inout DaemonSettings) -> Void = { _ in }
    ) async throws {
        root = try DaemonHarness.makeTemporaryDirectory()
        socketPath = root + "/s.sock"
        try FileSystemEdit.writeFiles(defaultFiles, in: root + "/rules")
        try FileSystemEdit.writeFiles(paymentsFiles, in: root + "/payments")
        var settings = DaemonSettings()
        settings.rulesDirectory = root + "/rules"
        settings.stateDirectory = root + "/state"
        settings.socketPath = socketPath
        settings.workers = 2
        settings.watchMode = .off
        settings.namespaces = [NamespaceSettings(name: "payments", rulesDirectory: root + "/payments")]
        configure(&settings)
        self.settings = settings
        let (ready, readiness) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let service = DaemonService(
            settings: settings, notifier: NoLifecycleNotifier(), activatedSocket: nil, watchdog: nil,
            logger: Logger(label: "rulesd-test") { [logs] _ in LogRecord.Handler(record: logs) },
            onReady: { _ in readiness.yield() })
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: [service], logger: Logger(label: "rulesd-test")))
        self.group = group
        running = Task {
            do {
                try await group.run()
                return nil
            } catch {
                return error
            }
        }
        guard expectStart else { return }
        var iterator = ready.makeAsyncIterator()
        await iterator.next()
    }

    /// How the daemon ended, once it did (for a daemon expected not to start).
    func outcome() async -> Error? { await running.value }

    /// Stops the daemon; its files are removed unless `keepingFiles`.
    func stop(keepingFiles: Bool = false) async {
        await group.triggerGracefulShutdown()
        _ = await running.value
        if !keepingFiles { try? FileSystemEdit.removeTree(root) }
    }

    /// Asks `line` until `condition` holds for the answer (for what the daemon does after answering, such as
    /// recording the history); the last answer.
    func request(_ line: String, until condition: (JSONValue) -> Bool) async throws -> JSONValue {
        var answer = try await request(line)
        for _ in 0..<500 where !condition(answer) {
            try await Task.sleep(for: .milliseconds(20))
            answer = try await request(line)
        }
        return answer
    }

    /// One request on a new connection, answered off the concurrency pool (the read blocks).
    func request(_ line: String) async throws -> JSONValue {
        let path = socketPath
        return try await offThePool { try LineClient(path: path).request(line) }
    }
}

/// Runs blocking work on a thread of its own, so that it cannot starve the 2-thread concurrency pool.
private func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

private let defaultFiles = [
    "main.lua": """
    config "marker" ("default")
    flag "secret" { default = "on" }
    """
]

private let paymentsFiles = [
    "main.lua": """
    config "marker" ("payments")
    flag "probe" {
        rule = function(ctx)
            local variant = flag_value("secret", ctx)
            return variant
        end,
    }
    flag "kill" { default = "off" }
    """
]

@Suite("namespaces served at once", .serialized)
struct NamespaceServingTests {
    @Test func aRequestIsAnsweredFromTheNamespaceItNames() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        let plain = try await daemon.request(#"{"op":"config","key":"marker"}"#)
        let payments = try await daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)
        let named = try await daemon.request(#"{"op":"config","key":"marker","namespace":"default"}"#)
        #expect(plain["result"]?["value"] == "default")
        #expect(named["result"]?["value"] == "default")
        #expect(payments["result"]?["value"] == "payments")
        // Each answer carries its own namespace's revision.
        #expect(plain["revision"] != payments["revision"])
        #expect(plain["revision"] == named["revision"])
        await daemon.stop()
    }

    @Test func anUnknownNamespaceIsRefusedWithItsOwnCode() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        let flag = try await daemon.request(#"{"op":"flag","flag":"secret","namespace":"search"}"#)
        let status = try await daemon.request(#"{"op":"status","namespace":"search"}"#)
        let escaped = try await daemon.request(#"{"op":"config","key":"marker","namespace":"pay\u006dents"}"#)
        let watch = try await daemon.request(#"{"op":"watch","namespace":"search"}"#)
        await daemon.stop()
        #expect(flag["ok"] == false)
        #expect(flag["error"]?["code"] == "NAMESPACE_NOT_FOUND")
        #expect(flag["error"]?["message"]?.stringValue?.contains("'payments'") == true)
        #expect(status["error"]?["code"] == "NAMESPACE_NOT_FOUND")
        #expect(watch["error"]?["code"] == "NAMESPACE_NOT_FOUND")
        #expect(escaped["result"]?["value"] == "payments")
    }

    @Test func flagValueCannotReachAnotherNamespace() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        let inDefault = try await daemon.request(#"{"op":"flag","flag":"secret"}"#)
        let probe = try await daemon.request(#"{"op":"flag","flag":"probe","namespace":"payments"}"#)
        let secret = try await daemon.request(#"{"op":"flag","flag":"secret","namespace":"payments"}"#)
        await daemon.stop()
        #expect(inDefault["result"]?["variant"] == "on")
        // `secret` exists only in the default namespace: payments' rule asking for it fails as an unknown key.
        #expect(probe["result"]?["reason"] == "ERROR")
        #expect(probe["result"]?["variant"] != "on")
        #expect(secret["error"]?["code"] == "FLAG_NOT_FOUND")
    }

    @Test func aBrokenNamespaceDoesNotBlockAnothersReload() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        try FileSystemEdit.writeFiles(["main.lua": "config \"marker\" (\"payments\"\nflag {"], in: daemon.paymentsRules)
        try FileSystemEdit.writeFiles(
            ["main.lua": "config \"marker\" (\"default-2\")\nflag \"secret\" { default = \"on\" }\n"],
            in: daemon.defaultRules)
        let broken = try await daemon.request(#"{"op":"reload","namespace":"payments"}"#)
        let reloaded = try await daemon.request(#"{"op":"reload"}"#)
        let marker = try await daemon.request(#"{"op":"config","key":"marker"}"#)
        let paymentsMarker = try await daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)
        await daemon.stop()
        #expect(broken["error"]?["code"] == "RELOAD_FAILED")
        #expect(reloaded["result"]?["outcome"] == "reloaded")
        #expect(marker["result"]?["value"] == "default-2")
        // payments keeps serving its previous rules.
        #expect(paymentsMarker["result"]?["value"] == "payments")
    }

    @Test func aNamespaceStillLoadingDoesNotHoldUpAnothersReload() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles) {
            // payments' next load runs until the daemon stops (loads are abandoned between Lua steps).
            $0.namespaces[0].limits.loadInstructionLimit = Int.max
            $0.namespaces[0].limits.loadTimeout = .seconds(3600)
        }
        try FileSystemEdit.writeFiles(["main.lua": "while true do end\n"], in: daemon.paymentsRules)
        try FileSystemEdit.writeFiles(
            ["main.lua": "config \"marker\" (\"default-2\")\nflag \"secret\" { default = \"on\" }\n"],
            in: daemon.defaultRules)
        let paymentsAnswered = Mutex(false)
        let path = daemon.socketPath
        let payments = try await offThePool { try LineClient(path: path, timeout: 3600) }
        try payments.send(#"{"op":"reload","namespace":"payments"}"# + "\n")
        let pending = Task {
            let answer = try? await offThePool { try payments.readJSON() }
            paymentsAnswered.withLock { $0 = true }
            return answer
        }
        for _ in 0..<1500 where !daemon.logs.contains("payments: loading rules") {
            try await Task.sleep(for: .milliseconds(20))
        }
        let loading = daemon.logs.contains("payments: loading rules")
        let reloaded = try await daemon.request(#"{"op":"reload"}"#)
        let stillLoading = !paymentsAnswered.withLock { $0 }
        await daemon.stop()
        let abandoned = await pending.value
        #expect(loading)
        #expect(reloaded["result"]?["outcome"] == "reloaded")
        #expect(stillLoading)
        #expect(abandoned?["error"]?["code"] == "RELOAD_FAILED")
    }

    @Test func eachNamespaceFollowsItsOwnRulesDirectory() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles) {
            $0.watchMode = .inotify
            $0.watch.quietWindow = .milliseconds(50)
            $0.watch.pollInterval = .milliseconds(100)
        }
        try FileSystemEdit.writeFiles(["main.lua": "config \"marker\" (\"p2\")\n"], in: daemon.paymentsRules)
        try FileSystemEdit.writeFiles(
            ["main.lua": "config \"marker\" (\"d2\")\nflag \"secret\" { default = \"on\" }\n"], in: daemon.defaultRules)
        let payments = try await daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#) {
            $0["result"]?["value"] == "p2"
        }
        let plain = try await daemon.request(#"{"op":"config","key":"marker"}"#) { $0["result"]?["value"] == "d2" }
        await daemon.stop()
        #expect(payments["result"]?["value"] == "p2")
        #expect(plain["result"]?["value"] == "d2")
    }

    @Test func aNamespaceThatFailsAtStartAnswersUnavailableUntilItsRulesLoad() async throws {
        let daemon = try await TwoNamespaceDaemon(
            defaultFiles: defaultFiles, paymentsFiles: ["main.lua": "flag {"])
        let unavailable = try await daemon.request(#"{"op":"flag","flag":"kill","namespace":"payments"}"#)
        let serving = try await daemon.request(#"{"op":"flag","flag":"secret"}"#)
        let status = try await daemon.request(#"{"op":"status","namespace":"payments"}"#)
        try FileSystemEdit.writeFiles(paymentsFiles, in: daemon.paymentsRules)
        let reload = try await daemon.request(#"{"op":"reload","namespace":"payments"}"#)
        let recovered = try await daemon.request(#"{"op":"flag","flag":"kill","namespace":"payments"}"#)
        await daemon.stop()
        #expect(unavailable["error"]?["code"] == "NAMESPACE_UNAVAILABLE")
        #expect(unavailable["error"]?["message"]?.stringValue?.contains("payments") == true)
        #expect(serving["result"]?["variant"] == "on")
        #expect(status["result"]?["revision"] == .null)
        #expect(status["result"]?["last_reload"]?["ok"] == false)
        #expect(reload["result"]?["outcome"] == "reloaded")
        #expect(recovered["result"]?["variant"] == "off")
    }

    @Test func theDaemonRefusesToStartOnlyWhenNoNamespaceCanServe() async throws {
        let daemon = try await TwoNamespaceDaemon(
            defaultFiles: ["main.lua": "flag {"], paymentsFiles: ["main.lua": "flag {"], expectStart: false)
        let outcome = await daemon.outcome()
        try? FileSystemEdit.removeTree(daemon.root)
        let failure = try #require(outcome as? DaemonStartupFailure)
        #expect(failure.message.contains("no namespace can serve"))
        #expect(failure.message.contains("not starting"))
    }

    @Test func theDefaultNamespaceMayFailWhileAnotherServes() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: ["main.lua": "flag {"], paymentsFiles: paymentsFiles)
        let plain = try await daemon.request(#"{"op":"flag","flag":"secret"}"#)
        let payments = try await daemon.request(#"{"op":"flag","flag":"kill","namespace":"payments"}"#)
        await daemon.stop()
        #expect(plain["error"]?["code"] == "NAMESPACE_UNAVAILABLE")
        #expect(payments["result"]?["variant"] == "off")
    }

    @Test func statusNamesTheNamespaceAndSummarisesThemAll() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        let all = try await daemon.request(#"{"op":"status"}"#)
        let payments = try await daemon.request(#"{"op":"status","namespace":"payments"}"#)
        await daemon.stop()
        let summary = try #require(all["result"]?["namespaces"]?.arrayValue)
        #expect(summary.map { $0["name"] } == ["default", "payments"])
        #expect(summary.allSatisfy { $0["serving"] == true })
        #expect(all["result"]?["namespace"] == "default")
        #expect(payments["result"]?["namespace"] == "payments")
        #expect(payments["result"]?["rules_dir"]?.stringValue == daemon.paymentsRules)
        #expect(payments["result"]?["state_dir"]?.stringValue == daemon.root + "/state/namespaces/payments")
        #expect(payments["result"]?["revision"] == summary[1]["revision"])
    }

    @Test func eachNamespaceKeepsItsOwnHistoryInItsOwnStateDirectory() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        let recorded: (JSONValue) -> Bool = { $0["result"]?["revisions"]?.arrayValue?.count == 1 }
        let payments = try await daemon.request(#"{"op":"history","namespace":"payments"}"#, until: recorded)
        let plain = try await daemon.request(#"{"op":"history"}"#, until: recorded)
        let status = try await daemon.request(#"{"op":"status","namespace":"payments"}"#)
        let directory = daemon.root + "/state/namespaces/payments"
        let stored = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        await daemon.stop()
        let entry = try #require(payments["result"]?["revisions"]?[0])
        #expect(entry["revision"] == status["result"]?["revision"])
        #expect(plain["result"]?["revisions"]?[0]?["revision"] != entry["revision"])
        #expect(!stored.isEmpty)
    }

    @Test func anOverrideHoldsInItsNamespaceOnly() async throws {
        let daemon = try await TwoNamespaceDaemon(
            defaultFiles: ["main.lua": "flag \"kill\" { default = \"off\" }\n"], paymentsFiles: paymentsFiles)
        let set = try await daemon.request(
            #"{"op":"override_set","flag":"kill","variant":"on","ttl":"5m","reason":"incident","namespace":"payments"}"#
        )
        let inPayments = try await daemon.request(#"{"op":"flag","flag":"kill","namespace":"payments"}"#)
        let inDefault = try await daemon.request(#"{"op":"flag","flag":"kill"}"#)
        let listed = try await daemon.request(#"{"op":"override_list"}"#)
        await daemon.stop()
        #expect(set["ok"] == true)
        #expect(inPayments["result"]?["reason"] == "OVERRIDE")
        #expect(inDefault["result"]?["variant"] == "off")
        #expect(listed["result"]?["overrides"]?.arrayValue?.isEmpty == true)
    }

    @Test func aWatchNamingANamespaceGetsOnlyItsEventsEachNamingIt() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        let path = daemon.socketPath
        let watcher = try await offThePool { try LineClient(path: path) }
        let acknowledged = try await offThePool { try watcher.request(#"{"op":"watch","namespace":"payments"}"#) }
        let paymentsRevision = try await daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)
        try FileSystemEdit.writeFiles(
            ["main.lua": "config \"marker\" (\"d2\")\nflag \"secret\" { default = \"on\" }\n"], in: daemon.defaultRules)
        try FileSystemEdit.writeFiles(["main.lua": "config \"marker\" (\"p2\")\n"], in: daemon.paymentsRules)
        _ = try await daemon.request(#"{"op":"reload"}"#)
        _ = try await daemon.request(#"{"op":"reload","namespace":"payments"}"#)
        let event = try await offThePool { try watcher.readJSON() }
        await daemon.stop()
        #expect(acknowledged["ok"] == true)
        #expect(acknowledged["revision"] == paymentsRevision["revision"])
        // The default namespace's reload came first; the first event this watcher sees is payments'.
        #expect(event["event"] == "reloaded")
        #expect(event["namespace"] == "payments")
    }

    @Test func metricsLabelEachNamespacesRuleSet() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        _ = try await daemon.request(#"{"op":"flag","flag":"kill","namespace":"payments"}"#)
        let answer = try await daemon.request(#"{"op":"metrics"}"#)
        await daemon.stop()
        let text = try #require(answer["result"]?["text"]?.stringValue)
        #expect(text.contains(#"rulesd_generation{namespace="payments"} 1"#))
        #expect(text.contains(#"rulesd_generation{namespace="default"} 1"#))
        #expect(text.contains(#"rulesd_flags{namespace="payments"} 2"#))
        #expect(text.contains(#"namespace="payments",flag="kill""#))
    }

    @Test func auditLinesNameTheirNamespace() async throws {
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles)
        try FileSystemEdit.writeFiles(["main.lua": "config \"marker\" (\"p2\")\n"], in: daemon.paymentsRules)
        _ = try await daemon.request(#"{"op":"reload","namespace":"payments"}"#)
        await daemon.stop(keepingFiles: true)
        defer { try? FileSystemEdit.removeTree(daemon.root) }
        let lines = (try? String(contentsOfFile: daemon.root + "/state/audit/audit.jsonl", encoding: .utf8)) ?? ""
        let events = lines.split(separator: "\n").compactMap { try? JSONParser().parse(String($0)) }
        #expect(events.contains { $0["event"] == "reload" && $0["namespace"] == "payments" })
        #expect(events.contains { $0["event"] == "operation" && $0["namespace"] == "payments" })
    }

    @Test(
        "a namespace's own roles let a second user operate in it only",
        .enabled(if: ThrowawayUser.isUsable, Comment(rawValue: ThrowawayUser.skipReason ?? "")))
    func namespaceRolesAddToTheDaemonWideOnes() async throws {
        let user = try ThrowawayUser()
        let daemon = try await TwoNamespaceDaemon(defaultFiles: defaultFiles, paymentsFiles: paymentsFiles) {
            $0.socketMode = 0o666
            $0.namespaces[0].accessPolicy[.operate] = [.uid(user.uid)]
        }
        // mkdtemp makes the directory 0700: let the other user reach the socket inside it.
        #expect(chmod(daemon.root, 0o755) == 0)
        let socket = daemon.socketPath
        @Sendable func reload(_ extra: [String]) throws -> Int32 {
            let process = Process()
            let command = user.runAs() + [DaemonHarness.binary("rulesctl"), "reload", "--socket", socket] + extra
            process.executableURL = URL(fileURLWithPath: command[0])
            process.arguments = Array(command.dropFirst())
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            return process.terminationStatus
        }
        let inPayments = try await offThePool { try reload(["--namespace", "payments"]) }
        let inDefault = try await offThePool { try reload([]) }
        await daemon.stop()
        #expect(inPayments == 0)
        #expect(inDefault == 1)
    }
}
