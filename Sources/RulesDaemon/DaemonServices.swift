import Atomics
import Logging
import NIOCore
import QueryServing
import RuleEngine
import RuleModel
import RuleWatcher
import RulesProtocol
import Synchronization
import SystemClock
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// What every connection shares: settings, the generation store, reloads, watchers, status and metrics.
///
/// The daemon's instance answers for the default namespace; each declared namespace has a view of its own (see
/// ``views``), sharing everything daemon-wide and holding that namespace's settings, store, reloads and
/// overrides, so that every answer of a waiting operation is written the same way whichever namespace it is in.
final class DaemonServices: QueryBackend {
    static let version = "0.1.0"

    let settings: DaemonSettings
    let store: GenerationStore
    let pool: WorkerPool
    let reloads: ReloadCoordinator
    let watchHub: WatchHub
    let metrics: DaemonMetrics
    let logger: Logger
    /// The query socket's open connections (their one owner; the server admits and removes them).
    let connections: ConnectionRegistry
    let startedAt: Double
    private let startedMonotonic: Double
    /// The namespace this instance answers for.
    let namespace: String
    /// The views of the declared namespaces (empty in a view).
    private let others: [DaemonServices]
    private let watcher = Mutex<RuleDirectoryWatcher?>(nil)
    /// Who holds which role.
    let access: ResolvedAccessPolicy
    /// What each declared namespace's own policy grants on top of `access`, for requests in it.
    let namespaceAccess: [String: ResolvedAccessPolicy]
    /// Where operations and refusals are recorded.
    let audit: AuditLog?
    /// The overrides (kill switches with an expiry).
    let overrides: OverrideStore

    /// - Parameter runtimes: every namespace served, `default` first.
    init(
        settings: DaemonSettings, runtimes: [NamespaceRuntime], pool: WorkerPool, watchHub: WatchHub,
        metrics: DaemonMetrics, access: ResolvedAccessPolicy, namespaceAccess: [String: ResolvedAccessPolicy] = [:],
        audit: AuditLog?, logger: Logger
    ) {
        let connections = ConnectionRegistry()
        let startedAt = SystemClock.epochSeconds()
        let startedMonotonic = SystemClock.monotonicSeconds()
        self.others = runtimes.dropFirst().map { runtime in
            DaemonServices(
                view: runtime, pool: pool, watchHub: watchHub, metrics: metrics, access: access,
                connections: connections, startedAt: startedAt, startedMonotonic: startedMonotonic)
        }
        let runtime = runtimes[0]
        self.namespace = runtime.name
        self.access = access
        self.namespaceAccess = namespaceAccess
        self.audit = runtime.audit ?? audit
        self.overrides = runtime.overrides
        self.settings = settings
        self.store = runtime.store
        self.pool = pool
        self.reloads = runtime.reloads
        self.watchHub = watchHub
        self.metrics = metrics
        self.logger = logger
        self.connections = connections
        self.startedAt = startedAt
        self.startedMonotonic = startedMonotonic
    }

    /// A declared namespace's view.
    private init(
        view runtime: NamespaceRuntime, pool: WorkerPool, watchHub: WatchHub, metrics: DaemonMetrics,
        access: ResolvedAccessPolicy, connections: ConnectionRegistry, startedAt: Double, startedMonotonic: Double
    ) {
        self.others = []
        self.namespace = runtime.name
        self.access = access
        self.namespaceAccess = [:]
        self.audit = runtime.audit
        self.overrides = runtime.overrides
        self.settings = runtime.settings
        self.store = runtime.store
        self.pool = pool
        self.reloads = runtime.reloads
        self.watchHub = watchHub
        self.metrics = metrics
        self.logger = runtime.logger
        self.connections = connections
        self.startedAt = startedAt
        self.startedMonotonic = startedMonotonic
    }

    /// Every namespace's instance: this one (`default`) first, then the declared namespaces' views.
    var views: [DaemonServices] { [self] + others }

    /// The instance answering for `name` (nil: the default namespace); nil when no such namespace is served.
    func view(_ name: String?) -> DaemonServices? {
        guard let name, name != namespace else { return self }
        return others.first { $0.namespace == name }
    }

    func attach(watcher: RuleDirectoryWatcher?) {
        self.watcher.withLock { $0 = watcher }
    }

    var watcherMode: WatcherMode? { watcher.withLock { $0?.mode } }

    // MARK: - QueryBackend

    func responder(on loop: ServingEventLoop) -> QueryResponder {
        pool.worker(on: loop)
    }

    func answerWaiting(_ operation: RequestOperation, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 512)
        await answerWaiting(operation, id: id, peer: peer, into: &buffer)
        return buffer
    }

    func answerWaiting(_ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 512)
        guard let view = view(request.namespace) else {
            failure(
                id: id, error: Worker.unknownNamespace(request.namespace ?? "", among: views.map(\.namespace)),
                into: &buffer)
            return buffer
        }
        if view !== self {
            await view.answerInNamespace(request, id: id, peer: peer, into: &buffer)
            return buffer
        }
        switch request.operation {
        case .history, .show, .rollback, .resume: await answerHistory(request, id: id, peer: peer, into: &buffer)
        case .capture: await answerCapture(request, id: id, peer: peer, into: &buffer)
        case .overrideSet, .overrideList, .overrideClear: answerOverride(request, id: id, peer: peer, into: &buffer)
        default: await answerWaiting(request.operation, id: id, peer: peer, into: &buffer)
        }
        return buffer
    }

    /// Answers a waiting request in this (declared) namespace's view.
    private func answerInNamespace(
        _ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?, into buffer: inout ByteBuffer
    ) async {
        switch request.operation {
        case .history, .show, .rollback, .resume: await answerHistory(request, id: id, peer: peer, into: &buffer)
        case .overrideSet, .overrideList, .overrideClear: answerOverride(request, id: id, peer: peer, into: &buffer)
        case .capture:
            failure(
                id: id,
                error: ProtocolError(
                    .invalidRequest, "the capture records the default namespace only, not '\(namespace)'"),
                into: &buffer)
        default: await answerWaiting(request.operation, id: id, peer: peer, into: &buffer)
        }
    }

    func watch(_ key: ObjectIdentifier, on loop: ServingEventLoop, deliver: @escaping @Sendable ([UInt8]) -> Void) {
        watchHub.subscribe(key, eventLoop: loop, deliver: deliver)
    }

    func watchRefusal(namespace: String) -> ProtocolError? {
        view(namespace) == nil ? Worker.unknownNamespace(namespace, among: views.map(\.namespace)) : nil
    }

    func watch(
        _ key: ObjectIdentifier, namespace: String?, on loop: ServingEventLoop,
        deliver: @escaping @Sendable ([UInt8]) -> Void
    ) {
        watchHub.subscribe(key, eventLoop: loop, namespace: namespace, deliver: deliver)
    }

    func unwatch(_ key: ObjectIdentifier) {
        watchHub.unsubscribe(key)
    }

    /// The limits of every query connection, from the settings.
    var connectionLimits: ConnectionLimits {
        ConnectionLimits(
            maxRequestBytes: settings.maxRequestBytes, maxPipelinedRequests: settings.maxPipelinedRequests,
            idleTimeout: TimeAmount(settings.idleTimeout), maxContextDepth: settings.limits.maxContextDepth,
            maxConnections: settings.maxConnections)
    }

    /// Answers the operations that wait for something: `status`, `metrics`, `reload`.
    private func answerWaiting(
        _ operation: RequestOperation, id: [UInt8]?, peer: PeerCredentials?, into buffer: inout ByteBuffer
    ) async {
        let generation = store.generation
        switch operation {
        case .status:
            var result = status()
            if case .object(var members) = result {
                if watchHub.namesNamespaces { members["namespace"] = .string(namespace) }
                result = .object(members)
            }
            success(id: id, generation: generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
        case .metrics:
            let text = await metricsText()
            var result: [UInt8] = []
            result.append(contentsOf: #"{"content_type":"text/plain; version=0.0.4","text":"#.utf8)
            JSONWriter.appendEscapedString(String(decoding: text, as: UTF8.self), to: &result)
            result.append(UInt8(ascii: "}"))
            success(id: id, generation: generation, result: result, into: &buffer)
        case .reload:
            let outcome = await reloads.reload(.request)
            recordOperation(.reload, peer: peer, outcome: outcome, previous: generation)
            switch outcome {
            case .reloaded(let next, let duration):
                let result: JSONValue = [
                    "outcome": "reloaded", "revision": .string(next.ruleSet.revision.hex),
                    "generation": .integer(Int64(next.number)),
                    "previous_revision": generation.map { .string($0.ruleSet.revision.hex) } ?? .null,
                    "duration_ms": .number((duration * 1000).rounded() / 1000),
                    "state_dir_error": reloads.savedCopy.error.map { .string($0) } ?? .null,
                ]
                success(id: id, generation: next, result: Array(JSONWriter.string(result).utf8), into: &buffer)
            case .unchanged(let serving):
                let result: JSONValue = [
                    "outcome": "unchanged", "revision": .string(serving.ruleSet.revision.hex),
                    "generation": .integer(Int64(serving.number)),
                    "state_dir_error": reloads.savedCopy.error.map { .string($0) } ?? .null,
                ]
                success(id: id, generation: serving, result: Array(JSONWriter.string(result).utf8), into: &buffer)
            case .failed(let problem, _, let serving):
                var message = WatchEvents.summary(problem)
                if let serving { message += "; still serving \(serving.shortRevision)" }
                failure(
                    id: id, error: ProtocolError(.reloadFailed, message, problems: problem.diagnostics), into: &buffer)
            }
        default:
            failure(
                id: id, error: ProtocolError(.internal, "operation \(operation.rawValue) does not wait"), into: &buffer)
        }
    }

    func success(id: [UInt8]?, generation: ServingGeneration?, result: [UInt8], into buffer: inout ByteBuffer) {
        id.withUnsafeOptionalBytes { idBytes in
            ResponseWriter.writeSuccess(
                id: idBytes, revision: generation?.shortRevision ?? "", generation: generation?.number ?? 0,
                result: result, into: &buffer)
        }
    }

    func failure(id: [UInt8]?, error: ProtocolError, into buffer: inout ByteBuffer) {
        id.withUnsafeOptionalBytes { idBytes in ResponseWriter.writeFailure(id: idBytes, error: error, into: &buffer) }
    }

    /// Prometheus text for `rulesctl metrics` and the HTTP listener.
    func metricsText() async -> [UInt8] {
        let snapshots = await pool.metricsSnapshots()
        let capture = pool.captureTotals
        metrics.recordCapture(entries: capture.entries, bytes: capture.bytes)
        var text = metrics.render(
            workers: snapshots, openConnections: connections.count,
            watchSubscribers: watchHub.count, watcherMode: watcherMode,
            namespaceWorkers: others.isEmpty ? [:] : await pool.namespaceMetricsSnapshots())
        text.append(contentsOf: IsolatedRuleProcess.metricsText(views.compactMap(\.store.isolated)).utf8)
        return text
    }

    /// The `status` result.
    func status() -> JSONValue {
        var object: [(String, JSONValue)] = []
        let generation = store.generation
        if let generation {
            let ruleSet = generation.ruleSet
            object.append(("revision", .string(ruleSet.revision.hex)))
            object.append(("generation", .integer(Int64(generation.number))))
            object.append(("origin", .string(generation.origin.rawValue)))
            object.append(("loaded_at", .string(Timestamp.iso8601(generation.loadedAt))))
            object.append(
                (
                    "counts",
                    [
                        "files": .integer(Int64(ruleSet.files.count)), "flags": .integer(Int64(ruleSet.flags.count)),
                        "routes": .integer(Int64(ruleSet.routes.count)),
                        "configs": .integer(Int64(ruleSet.configs.count)),
                    ]
                ))
            object.append(
                (
                    "files",
                    .array(
                        ruleSet.files.map {
                            [
                                "path": .string($0.path), "bytes": .integer(Int64($0.bytes)),
                                "sha256": .string($0.sha256),
                            ]
                        })
                ))
            object.append(("lua_state_bytes", .integer(Int64(generation.stateMemory))))
            // Data sets are held once per rule set, shared by the workers' states, outside lua_state_bytes.
            object.append(("data", ruleSet.dataSummary))
        } else {
            object.append(("revision", .null))
            object.append(("generation", .integer(0)))
        }
        object.append(("rules_dir", .string(settings.rulesDirectory)))
        object.append(("state_dir", .string(settings.stateDirectory)))
        object.append(("pinned", reloads.pin?.json ?? .null))
        object.append(("overrides", .integer(Int64(overrides.list(now: SystemClock.epochSeconds()).count))))
        let saved = reloads.savedCopy
        object.append(
            (
                "saved_copy",
                [
                    "revision": saved.revision.map { .string($0.hex) } ?? .null,
                    "current": .bool(saved.revision != nil && saved.revision == generation?.ruleSet.revision),
                    "error": saved.error.map { .string($0) } ?? .null,
                ]
            ))
        if let record = reloads.lastReload {
            var last: [(String, JSONValue)] = [
                ("ok", .bool(record.ok)), ("outcome", .string(record.outcome)),
                ("at", .string(Timestamp.iso8601(record.at))),
                ("duration_ms", .number((record.durationMilliseconds * 1000).rounded() / 1000)),
                ("trigger", .string(record.trigger.rawValue)),
                ("revision", record.revision.map { .string($0.hex) } ?? .null),
            ]
            if let failure = record.failure {
                last.append(("error", ResponseWriter.errorValue(WatchEvents.reloadFailure(failure))))
            } else {
                last.append(("error", .null))
            }
            object.append(("last_reload", .object(JSONObject(last))))
        } else {
            object.append(("last_reload", .null))
        }
        switch watcherMode {
        case .inotify?: object.append(("watcher", ["mode": "inotify"]))
        case .polling(let reason)?: object.append(("watcher", ["mode": "polling", "reason": .string(reason)]))
        case nil: object.append(("watcher", ["mode": "off"]))
        }
        object.append(("started_at", .string(Timestamp.iso8601(startedAt))))
        object.append(
            ("uptime_seconds", .number(((SystemClock.monotonicSeconds() - startedMonotonic) * 1000).rounded() / 1000)))
        object.append(("connections", .integer(Int64(connections.count))))
        object.append(("watchers", .integer(Int64(watchHub.count))))
        object.append(("requests_served", .integer(Int64(pool.requestsServed))))
        object.append(("capture", captureStatus))
        object.append(("workers", .integer(Int64(pool.loops.count))))
        object.append(("isolation", store.isolated?.status ?? ["mode": "thread"]))
        object.append(("pid", .integer(Int64(getpid()))))
        object.append(("version", .string(Self.version)))
        if !others.isEmpty { object.append(("namespaces", .array(views.map(\.namespaceSummary)))) }
        return .object(JSONObject(object))
    }

    /// One namespace in the `namespaces` list of `status`.
    var namespaceSummary: JSONValue {
        let generation = store.generation
        var object: [(String, JSONValue)] = [
            ("name", .string(namespace)), ("serving", .bool(generation != nil)),
            ("revision", generation.map { .string($0.ruleSet.revision.hex) } ?? .null),
            ("generation", .integer(Int64(generation?.number ?? 0))),
            ("origin", generation.map { .string($0.origin.rawValue) } ?? .null),
            ("flags", .integer(Int64(generation?.ruleSet.flags.count ?? 0))),
            ("rules_dir", .string(settings.rulesDirectory)),
            ("isolation", .string(settings.isolation.rawValue)),
        ]
        if let record = reloads.lastReload {
            object.append(("last_reload_ok", .bool(record.ok)))
            object.append(
                ("error", record.failure.map { ResponseWriter.errorValue(WatchEvents.reloadFailure($0)) } ?? .null))
        } else {
            object.append(("last_reload_ok", .null))
            object.append(("error", .null))
        }
        return .object(JSONObject(object))
    }
}
