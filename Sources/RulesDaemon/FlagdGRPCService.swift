import FlagdEvaluationAPI
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import NIOCore
import NIOPosix
import QueryServing
import RuleEngine
import RuleModel
import ServiceLifecycle
import SwiftProtobuf
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The optional gRPC listeners speaking flagd's evaluation API (`flagd.evaluation.v1.Service` and
/// `flagd.evaluation.v2.Service`): on a Unix socket (`flagd_socket`) and/or TCP (`flagd_listen`). Off unless one
/// of them is set. Answers come from the workers, through the same generations and evaluators as the socket's.
struct FlagdGRPCService: Service {
    let socketPath: String?
    let listenAddress: String?
    let services: DaemonServices
    let logger: Logger
    /// How often an idle event stream gets a `keep_alive` event (flagd: every 20 seconds).
    var keepAliveInterval: Duration = .seconds(20)
    /// The group given the socket file (`socket_group`), like the line protocol's socket.
    var socketGroup: gid_t? = nil

    func run() async throws {
        let streams = FlagdEventStreams(store: services.store)
        let token = ObjectIdentifier(streams)
        let streamsRef = streams
        services.watchHub.subscribe(token, eventLoop: MultiThreadedEventLoopGroup.singleton.any()) { _ in
            streamsRef.reloaded()
        }
        defer { services.watchHub.unsubscribe(token) }

        let answers = FlagdEvaluation(services: services)
        let rpcServices: [any RegistrableRPCService] = [
            FlagdServiceV1(answers: answers, streams: streams, keepAlive: keepAliveInterval),
            FlagdServiceV2(answers: answers, streams: streams, keepAlive: keepAliveInterval),
        ]
        var config = HTTP2ServerTransport.Posix.Config.defaults
        config.rpc.maxRequestPayloadSize = services.settings.maxRequestBytes
        var servers: [(name: String, server: GRPCServer<HTTP2ServerTransport.Posix>)] = []
        if let socketPath {
            removeStaleSocket(socketPath)
            servers.append(
                (
                    "unix:\(socketPath)",
                    GRPCServer(
                        transport: .http2NIOPosix(
                            address: .unixDomainSocket(path: socketPath), transportSecurity: .plaintext, config: config),
                        services: rpcServices)
                ))
        }
        if let listenAddress {
            let address = try Self.tcpAddress(listenAddress)
            servers.append(
                (
                    listenAddress,
                    GRPCServer(
                        transport: .http2NIOPosix(address: address, transportSecurity: .plaintext, config: config),
                        services: rpcServices)
                ))
        }
        let listeners = servers
        let logger = self.logger
        let socketMode = services.settings.socketMode
        let socketGroup = self.socketGroup
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (name, server) in listeners {
                    group.addTask {
                        do {
                            try await server.serve()
                        } catch {
                            throw StartupError("cannot serve flagd's gRPC API on \(name): \(error)")
                        }
                    }
                }
                for (name, server) in listeners {
                    do {
                        _ = try await server.listeningAddress
                    } catch {
                        // The server that did not start says why (the bind's error) as it ends.
                        try await group.waitForAll()
                        throw StartupError("cannot serve flagd's gRPC API on \(name): \(error)")
                    }
                    logger.info("serving flagd's gRPC evaluation API", metadata: ["flagd.listen": "\(name)"])
                }
                if let socketPath {
                    // The socket file takes the umask; it gets the query socket's mode and group instead.
                    chmod(socketPath, socketMode)
                    if let socketGroup { _ = chown(socketPath, uid_t.max, socketGroup) }
                }
                try await group.waitForAll()
            }
        } onGracefulShutdown: {
            // Event streams never end by themselves: ending them lets the servers finish their RPCs and stop.
            streams.closeAll()
            for (_, server) in listeners { server.beginGracefulShutdown() }
        }
        if let socketPath { unlink(socketPath) }
    }

    /// `HOST:PORT` (`[v6]:PORT` too) as a gRPC listening address.
    static func tcpAddress(_ text: String) throws -> GRPCNIOTransportCore.SocketAddress {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            throw StartupError("flagd_listen must be HOST:PORT, got \(text)")
        }
        var host = Substring(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
            return .ipv6(host: String(host), port: port)
        }
        return .ipv4(host: String(host), port: port)
    }

    /// A socket file left by a daemon that did not stop cleanly would make the bind fail; anything else at the
    /// path is left alone (and the bind then says why).
    private func removeStaleSocket(_ path: String) {
        var info = stat()
        if lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK { unlink(path) }
    }
}

/// Evaluations for the gRPC services, run on the daemon's workers.
struct FlagdEvaluation: Sendable {
    let services: DaemonServices

    /// One flag, as `type`.
    func resolve(key: String, context: Google_Protobuf_Struct?, as type: FlagdValueType) async throws
        -> FlagdResolution
    {
        let contextBytes = FlagdAnswers.context(context)
        let answer = try await services.pool.onNextWorker { worker -> Result<FlagdResolution, RPCError>? in
            worker.evaluate(.flag) { generation, evaluator, metrics, now in
                let ruleSet = evaluator.ruleSet
                guard let index = ruleSet.flagIndex(forKey: key) else {
                    return (.failure(FlagdAnswers.flagNotFound(key)), false)
                }
                // An override (a kill switch with an expiry) answers before the rules, as on the line protocol.
                let overrides = services.store.overrides.current
                if !overrides.entries.isEmpty, let (entry, variant) = overrides.resolve(ruleSet.flags[index], now: now)
                {
                    let result = FlagdAnswers.overridden(
                        ruleSet.flags[index], entry, variant: variant, as: type, generation: generation)
                    if case .success = result { return (result, true) }
                    return (result, false)
                }
                let decision = contextBytes.withUnsafeBytes { evaluator.evaluateFlag(at: index, context: $0, now: now) }
                metrics.flagEvaluated(index: index, decision: decision)
                let result = FlagdAnswers.resolve(ruleSet.flags[index], decision, as: type, generation: generation)
                if case .success = result { return (result, true) }
                return (result, false)
            }
        }.get()
        switch answer {
        case .success(let resolution)?: return resolution
        case .failure(let error)?: throw error
        case nil: throw RPCError(code: .unavailable, message: "no rule set is loaded")
        }
    }

    /// Every flag (v1's `ResolveAll`): flags whose rule failed, or that have no value to give, are left out, as
    /// flagd leaves them out.
    func resolveAll(context: Google_Protobuf_Struct?) async throws -> [(key: String, resolution: FlagdResolution)] {
        let contextBytes = FlagdAnswers.context(context)
        let answer = try await services.pool.onNextWorker {
            worker -> Result<[(key: String, resolution: FlagdResolution)], RPCError>? in
            worker.evaluate(.flags) { generation, evaluator, metrics, now in
                let ruleSet = evaluator.ruleSet
                switch contextBytes.withUnsafeBytes({ evaluator.evaluateAllFlags(context: $0, now: now) }) {
                case .failure(let problem):
                    return (.failure(RPCError(code: .invalidArgument, message: "context: \(problem.message)")), false)
                case .success(let decisions):
                    let overrides = services.store.overrides.current
                    var flags: [(key: String, resolution: FlagdResolution)] = []
                    for (index, decision) in decisions.enumerated() {
                        let flag = ruleSet.flags[index]
                        if !overrides.entries.isEmpty, let (entry, variant) = overrides.resolve(flag, now: now),
                            case .success(let resolution) = FlagdAnswers.overridden(
                                flag, entry, variant: variant, as: nil, generation: generation)
                        {
                            flags.append((flag.key, resolution))
                            continue
                        }
                        metrics.flagEvaluated(index: index, decision: decision)
                        guard decision.failure == nil, decision.variantIndex >= 0 else { continue }
                        let variant = flag.variants[decision.variantIndex]
                        flags.append(
                            (
                                flag.key,
                                FlagdResolution(
                                    value: variant.value, reason: decision.reason.rawValue, variant: variant.name,
                                    metadata: FlagdAnswers.metadata(flag, generation: generation))
                            ))
                    }
                    return (.success(flags), true)
                }
            }
        }.get()
        switch answer {
        case .success(let flags)?: return flags
        case .failure(let error)?: throw error
        case nil: throw RPCError(code: .unavailable, message: "no rule set is loaded")
        }
    }
}

/// What an event stream sends after `provider_ready`.
enum FlagdEvent: Sendable, Equatable {
    /// A reload added, changed or removed these flags.
    case configurationChange([String: FlagDigests.Change])
    case keepAlive

    /// The event's `type` and `data`, as flagd sends them.
    var message: (type: String, data: Google_Protobuf_Struct?) {
        switch self {
        case .keepAlive:
            return ("keep_alive", nil)
        case .configurationChange(let changes):
            var flags = Google_Protobuf_Struct()
            for (key, change) in changes {
                var entry = Google_Protobuf_Struct()
                entry.fields["type"] = Google_Protobuf_Value(stringValue: change.rawValue)
                flags.fields[key] = Google_Protobuf_Value(structValue: entry)
            }
            var data = Google_Protobuf_Struct()
            data.fields["flags"] = Google_Protobuf_Value(structValue: flags)
            return ("configuration_change", data)
        }
    }

    static let providerReady = "provider_ready"
}

/// The open event streams, and what the last reload changed for them.
///
/// Told of every reload event (one per reload, so a lock is fine); compares the serving generation's flags with
/// those it last reported and sends the differences to every stream.
final class FlagdEventStreams: Sendable {
    private struct State {
        var known: FlagDigests
        var streams: [Int: AsyncStream<FlagdEvent>.Continuation] = [:]
        var nextID = 0
        var closed = false
    }

    private let store: GenerationStore
    private let state: Mutex<State>

    init(store: GenerationStore) {
        self.store = store
        self.state = Mutex(State(known: store.generation.map { FlagDigests($0.ruleSet) } ?? FlagDigests(digests: [:])))
    }

    /// A new stream's events; nil once the listener is stopping.
    func open() -> (id: Int, events: AsyncStream<FlagdEvent>, continuation: AsyncStream<FlagdEvent>.Continuation)? {
        let (events, continuation) = AsyncStream<FlagdEvent>.makeStream(bufferingPolicy: .unbounded)
        let id = state.withLock { state -> Int? in
            if state.closed { return nil }
            defer { state.nextID += 1 }
            state.streams[state.nextID] = continuation
            return state.nextID
        }
        guard let id else {
            continuation.finish()
            return nil
        }
        return (id, events, continuation)
    }

    func close(_ id: Int) {
        _ = state.withLock { $0.streams.removeValue(forKey: id) }
    }

    var count: Int { state.withLock { $0.streams.count } }

    /// Compares the serving generation with the flags last reported and tells every stream what changed.
    func reloaded() {
        guard let generation = store.generation else { return }
        let current = FlagDigests(generation.ruleSet)
        let (changes, targets) = state.withLock { state in
            let changes = current.changes(since: state.known)
            state.known = current
            return (changes, Array(state.streams.values))
        }
        guard !changes.isEmpty else { return }
        for target in targets { target.yield(.configurationChange(changes)) }
    }

    /// Ends every stream, and refuses new ones.
    func closeAll() {
        let targets = state.withLock { state in
            state.closed = true
            defer { state.streams.removeAll() }
            return Array(state.streams.values)
        }
        for target in targets { target.finish() }
    }

    /// Runs one `EventStream` RPC: `provider_ready` at once, then the reloads' changes and keep-alives, until
    /// the client goes away or the listener stops.
    func serve(keepAlive: Duration, write: (String, Google_Protobuf_Struct?) async throws -> Void) async throws {
        guard let (id, events, continuation) = open() else {
            throw RPCError(code: .unavailable, message: "rulesd is stopping")
        }
        defer { close(id) }
        try await write(FlagdEvent.providerReady, nil)
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: keepAlive)
                if Task.isCancelled { break }
                continuation.yield(.keepAlive)
            }
        }
        defer { ticker.cancel() }
        for await event in events {
            let (type, data) = event.message
            try await write(type, data)
        }
    }
}

/// `flagd.evaluation.v1.Service`.
struct FlagdServiceV1: Flagd_Evaluation_V1_Service.SimpleServiceProtocol {
    let answers: FlagdEvaluation
    let streams: FlagdEventStreams
    let keepAlive: Duration

    func resolveAll(request: Flagd_Evaluation_V1_ResolveAllRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V1_ResolveAllResponse
    {
        var response = Flagd_Evaluation_V1_ResolveAllResponse()
        for (key, resolution) in try await answers.resolveAll(context: request.hasContext ? request.context : nil) {
            var flag = Flagd_Evaluation_V1_AnyFlag()
            flag.reason = resolution.reason
            flag.variant = resolution.variant ?? ""
            flag.metadata = resolution.metadata
            switch resolution.value {
            case .bool(let value)?: flag.boolValue = value
            case .string(let value)?: flag.stringValue = value
            case .integer(let value)?: flag.doubleValue = Double(value)
            case .number(let value)?: flag.doubleValue = value
            case .object(let members)?: flag.objectValue = FlagdAnswers.protobufStruct(members)
            default: continue  // arrays and null have no field in AnyFlag
            }
            response.flags[key] = flag
        }
        return response
    }

    func resolveBoolean(request: Flagd_Evaluation_V1_ResolveBooleanRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V1_ResolveBooleanResponse
    {
        let resolution = try await resolve(request.flagKey, request.hasContext ? request.context : nil, .boolean)
        var response = Flagd_Evaluation_V1_ResolveBooleanResponse()
        if case .bool(let value)? = resolution.value { response.value = value }
        response.reason = resolution.reason
        response.variant = resolution.variant ?? ""
        response.metadata = resolution.metadata
        return response
    }

    func resolveString(request: Flagd_Evaluation_V1_ResolveStringRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V1_ResolveStringResponse
    {
        let resolution = try await resolve(request.flagKey, request.hasContext ? request.context : nil, .string)
        var response = Flagd_Evaluation_V1_ResolveStringResponse()
        if case .string(let value)? = resolution.value { response.value = value }
        response.reason = resolution.reason
        response.variant = resolution.variant ?? ""
        response.metadata = resolution.metadata
        return response
    }

    func resolveFloat(request: Flagd_Evaluation_V1_ResolveFloatRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V1_ResolveFloatResponse
    {
        let resolution = try await resolve(request.flagKey, request.hasContext ? request.context : nil, .float)
        var response = Flagd_Evaluation_V1_ResolveFloatResponse()
        response.value = resolution.value?.flagdDouble ?? 0
        response.reason = resolution.reason
        response.variant = resolution.variant ?? ""
        response.metadata = resolution.metadata
        return response
    }

    func resolveInt(request: Flagd_Evaluation_V1_ResolveIntRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V1_ResolveIntResponse
    {
        let resolution = try await resolve(request.flagKey, request.hasContext ? request.context : nil, .integer)
        var response = Flagd_Evaluation_V1_ResolveIntResponse()
        response.value = resolution.value?.flagdInteger ?? 0
        response.reason = resolution.reason
        response.variant = resolution.variant ?? ""
        response.metadata = resolution.metadata
        return response
    }

    func resolveObject(request: Flagd_Evaluation_V1_ResolveObjectRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V1_ResolveObjectResponse
    {
        let resolution = try await resolve(request.flagKey, request.hasContext ? request.context : nil, .object)
        var response = Flagd_Evaluation_V1_ResolveObjectResponse()
        if case .object(let members)? = resolution.value { response.value = FlagdAnswers.protobufStruct(members) }
        response.reason = resolution.reason
        response.variant = resolution.variant ?? ""
        response.metadata = resolution.metadata
        return response
    }

    func eventStream(
        request: Flagd_Evaluation_V1_EventStreamRequest,
        response: RPCWriter<Flagd_Evaluation_V1_EventStreamResponse>, context: ServerContext
    ) async throws {
        try await streams.serve(keepAlive: keepAlive) { type, data in
            var event = Flagd_Evaluation_V1_EventStreamResponse()
            event.type = type
            if let data { event.data = data }
            try await response.write(event)
        }
    }

    /// v1's values are not optional: a flag with no value to give is answered `NOT_FOUND`, so that the client
    /// falls back to its own default rather than to protobuf's zero value.
    private func resolve(_ key: String, _ context: Google_Protobuf_Struct?, _ type: FlagdValueType) async throws
        -> FlagdResolution
    {
        let resolution = try await answers.resolve(key: key, context: context, as: type)
        guard resolution.value != nil else {
            throw RPCError(
                code: .notFound, message: "FLAG_NOT_FOUND: flag '\(key)' has no default variant; use the code default")
        }
        return resolution
    }
}

/// `flagd.evaluation.v2.Service`: v1 without `ResolveAll`, and with optional values (none for a flag that has no
/// value to give, so that the client uses its own default).
struct FlagdServiceV2: Flagd_Evaluation_V2_Service.SimpleServiceProtocol {
    let answers: FlagdEvaluation
    let streams: FlagdEventStreams
    let keepAlive: Duration

    func resolveBoolean(request: Flagd_Evaluation_V2_ResolveBooleanRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V2_ResolveBooleanResponse
    {
        let resolution = try await answers.resolve(
            key: request.flagKey, context: request.hasContext ? request.context : nil, as: .boolean)
        var response = Flagd_Evaluation_V2_ResolveBooleanResponse()
        if case .bool(let value)? = resolution.value { response.value = value }
        response.reason = resolution.reason
        if let variant = resolution.variant { response.variant = variant }
        response.metadata = resolution.metadata
        return response
    }

    func resolveString(request: Flagd_Evaluation_V2_ResolveStringRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V2_ResolveStringResponse
    {
        let resolution = try await answers.resolve(
            key: request.flagKey, context: request.hasContext ? request.context : nil, as: .string)
        var response = Flagd_Evaluation_V2_ResolveStringResponse()
        if case .string(let value)? = resolution.value { response.value = value }
        response.reason = resolution.reason
        if let variant = resolution.variant { response.variant = variant }
        response.metadata = resolution.metadata
        return response
    }

    func resolveFloat(request: Flagd_Evaluation_V2_ResolveFloatRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V2_ResolveFloatResponse
    {
        let resolution = try await answers.resolve(
            key: request.flagKey, context: request.hasContext ? request.context : nil, as: .float)
        var response = Flagd_Evaluation_V2_ResolveFloatResponse()
        if let value = resolution.value?.flagdDouble { response.value = value }
        response.reason = resolution.reason
        if let variant = resolution.variant { response.variant = variant }
        response.metadata = resolution.metadata
        return response
    }

    func resolveInt(request: Flagd_Evaluation_V2_ResolveIntRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V2_ResolveIntResponse
    {
        let resolution = try await answers.resolve(
            key: request.flagKey, context: request.hasContext ? request.context : nil, as: .integer)
        var response = Flagd_Evaluation_V2_ResolveIntResponse()
        if let value = resolution.value?.flagdInteger { response.value = value }
        response.reason = resolution.reason
        if let variant = resolution.variant { response.variant = variant }
        response.metadata = resolution.metadata
        return response
    }

    func resolveObject(request: Flagd_Evaluation_V2_ResolveObjectRequest, context: ServerContext) async throws
        -> Flagd_Evaluation_V2_ResolveObjectResponse
    {
        let resolution = try await answers.resolve(
            key: request.flagKey, context: request.hasContext ? request.context : nil, as: .object)
        var response = Flagd_Evaluation_V2_ResolveObjectResponse()
        if case .object(let members)? = resolution.value { response.value = FlagdAnswers.protobufStruct(members) }
        response.reason = resolution.reason
        if let variant = resolution.variant { response.variant = variant }
        response.metadata = resolution.metadata
        return response
    }

    func eventStream(
        request: Flagd_Evaluation_V2_EventStreamRequest,
        response: RPCWriter<Flagd_Evaluation_V2_EventStreamResponse>, context: ServerContext
    ) async throws {
        try await streams.serve(keepAlive: keepAlive) { type, data in
            var event = Flagd_Evaluation_V2_EventStreamResponse()
            event.type = type
            if let data { event.data = data }
            try await response.write(event)
        }
    }
}

extension JSONValue {
    /// A number as a double (integers included).
    fileprivate var flagdDouble: Double? {
        switch self {
        case .integer(let value): Double(value)
        case .number(let value): value
        default: nil
        }
    }

    /// An integer, or a whole-number float, as an Int64.
    fileprivate var flagdInteger: Int64? {
        switch self {
        case .integer(let value): value
        case .number(let value): Int64(exactly: value)
        default: nil
        }
    }
}
