import NIOCore
import NIOPosix
import RuleModel

/// A client of rulesd's line protocol (docs/PROTOCOL.md) over its Unix socket.
///
/// Requests from any number of tasks share one pipelined connection: each is sent at once with its own `id`
/// and its answer is matched by that `id`. The connection is made on the first request, and made again by the
/// first request after it was lost (the daemon restarted). While the daemon cannot be reached, requests fail
/// with ``RulesdClientError/unavailable(socketPath:reason:)``; after a failed attempt, requests within the
/// back-off delay fail at once without trying, so a missing daemon costs its clients nothing.
///
/// ```swift
/// let client = RulesdClient(configuration: RulesdClientConfiguration(socketPath: "/run/rulesd/rulesd.sock"))
/// let answer = try await client.flag("checkout.new-flow", context: ["user_id": "u-42"])
/// if answer.value == true { … }
/// await client.shutdown()
/// ```
public actor RulesdClient {
    private enum ConnectionState {
        /// No connection. After a failed attempt, `retryAfter` is when the next may be made.
        case idle(retryAfter: ContinuousClock.Instant?, lastFailure: RulesdClientError?)
        /// An attempt in progress, which concurrent requests wait for; `attempt` tells attempts apart.
        case connecting(Task<ClientConnection, Error>, attempt: Int)
        case connected(ClientConnection)
        case shutDown
    }

    public nonisolated let configuration: RulesdClientConfiguration
    private let group: EventLoopGroup
    private var state = ConnectionState.idle(retryAfter: nil, lastFailure: nil)
    private var attempts = 0
    private var consecutiveFailures = 0
    private var inFlight = 0
    private var drainWaiters: [CheckedContinuation<Void, Never>] = []
    private var watchTasks: [Int: Task<Void, Never>] = [:]
    private var nextWatch = 0

    /// Creates a client; nothing connects until the first request.
    /// - Parameters:
    ///   - configuration: the socket, timeouts and back-off.
    ///   - eventLoopGroup: where the connections run (default: NIO's shared group).
    public init(
        configuration: RulesdClientConfiguration = RulesdClientConfiguration(),
        eventLoopGroup: EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.group = eventLoopGroup
    }

    deinit {
        if case .connected(let connection) = state { connection.channel.close(promise: nil) }
        for task in watchTasks.values { task.cancel() }
    }

    // MARK: - Operations

    /// Checks that the daemon serves.
    /// - Returns: the rule set that serves.
    public func ping() async throws(RulesdClientError) -> ServedBy {
        guard let servedBy = try await perform(["op": "ping"]).servedBy else {
            throw .invalidAnswer("a ping answer without revision")
        }
        return servedBy
    }

    /// Evaluates one flag.
    /// - Parameters:
    ///   - key: the flag's key.
    ///   - context: what the rule sees as `ctx`.
    ///   - at: seconds since the epoch that the rule's `now()` returns (default: the current time).
    /// - Returns: the value, variant, reason and source; a failed rule still gives the default variant, with
    ///   ``FlagAnswer/ruleError`` set.
    /// - Throws: ``RulesdClientError/daemon(_:)`` with ``RulesErrorCode/flagNotFound`` for an unknown flag.
    public func flag(_ key: String, context: JSONObject = JSONObject(), at: Double? = nil)
        async throws(RulesdClientError) -> FlagAnswer
    {
        var members: [(String, JSONValue)] = [("op", "flag"), ("flag", .string(key)), ("context", .object(context))]
        if let at { members.append(("at", .number(at))) }
        let answer = try await perform(JSONObject(members))
        guard let result = answer.result.objectValue, let servedBy = answer.servedBy else {
            throw .invalidAnswer("a flag answer without result")
        }
        return try FlagAnswer(key: result["key"]?.stringValue ?? key, object: result, servedBy: servedBy)
    }

    /// Evaluates every flag for one context.
    public func flags(context: JSONObject = JSONObject(), at: Double? = nil) async throws(RulesdClientError)
        -> FlagsAnswer
    {
        var members: [(String, JSONValue)] = [("op", "flags"), ("context", .object(context))]
        if let at { members.append(("at", .number(at))) }
        let answer = try await perform(JSONObject(members))
        guard let flags = answer.result["flags"]?.objectValue, let servedBy = answer.servedBy else {
            throw .invalidAnswer("a flags answer without flags")
        }
        var answers: [FlagAnswer] = []
        for (key, entry) in flags {
            guard let entry = entry.objectValue else { throw .invalidAnswer("flag \(key) is not an object") }
            answers.append(try FlagAnswer(key: key, object: entry, servedBy: servedBy))
        }
        return FlagsAnswer(flags: answers, servedBy: servedBy)
    }

    /// Picks a route for a request.
    /// - Parameters:
    ///   - request: what the routes' `match` and `target` functions see (method, path, headers...).
    /// - Throws: ``RulesErrorCode/noRoute`` when no route matches, ``RulesErrorCode/ruleError`` when a route's
    ///   function failed (details: `route`, `source`, `rule_error_code`).
    public func route(_ request: JSONObject, at: Double? = nil) async throws(RulesdClientError) -> RouteAnswer {
        var members: [(String, JSONValue)] = [("op", "route"), ("request", .object(request))]
        if let at { members.append(("at", .number(at))) }
        let answer = try await perform(JSONObject(members))
        guard let route = answer.result["route"]?.stringValue, let servedBy = answer.servedBy else {
            throw .invalidAnswer("a route answer without route")
        }
        return RouteAnswer(
            route: route, target: answer.result["target"] ?? .null, source: answer.result["source"]?.stringValue,
            servedBy: servedBy)
    }

    /// Reads one configuration value.
    /// - Throws: ``RulesErrorCode/configNotFound`` when there is no such key.
    public func config(_ key: String) async throws(RulesdClientError) -> ConfigAnswer {
        let answer = try await perform(["op": "config", "key": .string(key)])
        guard let value = answer.result["value"], let servedBy = answer.servedBy else {
            throw .invalidAnswer("a config answer without value")
        }
        return ConfigAnswer(key: key, value: value, servedBy: servedBy)
    }

    /// Reads every configuration value whose key starts with `prefix` (the empty prefix reads all).
    /// - Throws: ``RulesErrorCode/configNotFound`` when a non-empty prefix matches nothing.
    public func config(prefix: String) async throws(RulesdClientError) -> ConfigValues {
        let answer = try await perform(["op": "config", "prefix": .string(prefix)])
        guard let values = answer.result["values"]?.objectValue, let servedBy = answer.servedBy else {
            throw .invalidAnswer("a config answer without values")
        }
        return ConfigValues(values: values, servedBy: servedBy)
    }

    /// What the daemon serves and how it is doing.
    public func status() async throws(RulesdClientError) -> Status {
        let answer = try await perform(["op": "status"])
        guard let raw = answer.result.objectValue, let revision = raw["revision"]?.stringValue else {
            throw .invalidAnswer("a status answer without revision")
        }
        let counts = raw["counts"]
        return Status(
            revision: revision, generation: raw["generation"]?.int64Value ?? 0, origin: raw["origin"]?.stringValue,
            flagCount: counts?["flags"]?.intValue, routeCount: counts?["routes"]?.intValue,
            configCount: counts?["configs"]?.intValue, fileCount: counts?["files"]?.intValue,
            watcherMode: raw["watcher"]?["mode"]?.stringValue, connections: raw["connections"]?.intValue,
            version: raw["version"]?.stringValue, raw: raw)
    }

    /// Makes the daemon rescan its rules now and waits for the outcome. Never repeated on a lost connection.
    /// - Throws: ``RulesErrorCode/reloadFailed`` (details: `problems`) when the rules do not load;
    ///   ``RulesErrorCode/forbidden`` when this user may not reload.
    public func reload() async throws(RulesdClientError) -> ReloadOutcome {
        let answer = try await perform(["op": "reload"], idempotent: false)
        guard let raw = answer.result.objectValue, let outcome = raw["outcome"]?.stringValue,
            let revision = raw["revision"]?.stringValue
        else { throw .invalidAnswer("a reload answer without outcome") }
        return ReloadOutcome(
            outcome: outcome, revision: revision, generation: raw["generation"]?.int64Value ?? 0,
            previousRevision: raw["previous_revision"]?.stringValue, raw: raw)
    }

    /// Sends any request (its `op` and members; the `id` is chosen here) and returns its `result`.
    /// - Parameters:
    ///   - idempotent: whether the request may be sent again on a new connection when the one it went out on
    ///     turns out to be closed (true for questions, false for operations that change something).
    public func request(_ members: JSONObject, idempotent: Bool = false) async throws(RulesdClientError)
        -> RawAnswer
    {
        try await perform(members, idempotent: idempotent)
    }

    // MARK: - Watching

    /// Follows reloads: the events of the `watch` operation, on a connection of its own.
    ///
    /// The first element is ``WatchEvent/subscribed(revision:generation:)`` once the daemon confirms the
    /// subscription. When the connection is lost the sequence gives ``WatchEvent/disconnected(_:)`` once,
    /// subscribes again with back-off, and gives `subscribed` again when it succeeds. The sequence ends when the
    /// iterating task is cancelled or the client is shut down.
    public func watch() -> WatchEvents {
        let (stream, continuation) = AsyncStream.makeStream(of: WatchEvent.self)
        guard !isShutDown else {
            continuation.finish()
            return WatchEvents(stream: stream)
        }
        let number = nextWatch
        nextWatch += 1
        let configuration = configuration
        let group = group
        let task = Task {
            await Self.runWatch(configuration: configuration, group: group, continuation: continuation)
            self.watchEnded(number)
        }
        watchTasks[number] = task
        continuation.onTermination = { _ in task.cancel() }
        return WatchEvents(stream: stream)
    }

    private func watchEnded(_ number: Int) {
        watchTasks[number] = nil
    }

    private static func runWatch(
        configuration: RulesdClientConfiguration, group: EventLoopGroup,
        continuation: AsyncStream<WatchEvent>.Continuation
    ) async {
        var failures = 0
        var reportedOutage = false
        while !Task.isCancelled {
            let (lines, linesContinuation) = AsyncStream.makeStream(of: JSONObject.self)
            var connection: ClientConnection?
            do {
                let opened = try await Self.connect(configuration: configuration, group: group) { line in
                    linesContinuation.yield(line)
                }
                connection = opened
                opened.channel.closeFuture.whenComplete { _ in linesContinuation.finish() }
                let answer = try Self.decode(
                    try await opened.send(["op": "watch"], timeout: configuration.requestTimeout))
                failures = 0
                reportedOutage = false
                continuation.yield(
                    .subscribed(
                        revision: answer.servedBy?.revision ?? "", generation: answer.servedBy?.generation ?? 0))
                // Ends when the connection closes, or when this task is cancelled.
                for await line in lines { continuation.yield(WatchEvent(line: line)) }
                if !Task.isCancelled {
                    continuation.yield(.disconnected(.connectionLost(reason: "rulesd closed the connection")))
                    reportedOutage = true
                }
            } catch {
                if !Task.isCancelled && !reportedOutage {
                    continuation.yield(.disconnected(Self.clientError(error, configuration: configuration)))
                    reportedOutage = true
                }
            }
            await connection?.close()
            if Task.isCancelled { break }
            failures += 1
            do {
                try await Task.sleep(for: configuration.backoff.delay(afterFailures: failures))
            } catch { break }
        }
        continuation.finish()
    }

    // MARK: - Shutting down

    /// Stops the client: new requests fail with ``RulesdClientError/shutDown``, requests already sent get their
    /// answers (or their timeouts), then the connection closes and every watch sequence ends.
    public func shutdown() async {
        if isShutDown { return }
        let previous = state
        state = .shutDown
        for task in watchTasks.values { task.cancel() }
        watchTasks = [:]
        if inFlight > 0 { await withCheckedContinuation { drainWaiters.append($0) } }
        switch previous {
        case .connected(let connection): await connection.close()
        case .connecting(let task, _): (try? await task.value).map { $0.channel.close(promise: nil) }
        case .idle, .shutDown: break
        }
    }

    private var isShutDown: Bool {
        if case .shutDown = state { return true }
        return false
    }

    // MARK: - Requests and connections

    private func perform(_ members: JSONObject, idempotent: Bool = true) async throws(RulesdClientError)
        -> RawAnswer
    {
        if let problem = Self.unsendable(.object(members)) { throw .invalidArgument(problem) }
        inFlight += 1
        defer {
            inFlight -= 1
            if inFlight == 0 {
                for waiter in drainWaiters { waiter.resume() }
                drainWaiters = []
            }
        }
        var retried = false
        while true {
            let (connection, fresh) = try await openConnection()
            do {
                return try Self.decode(try await connection.send(members, timeout: configuration.requestTimeout))
            } catch {
                let clientError = Self.clientError(error, configuration: configuration)
                guard case .connectionLost = clientError else { throw clientError }
                forget(connection)
                // A connection that served earlier requests may have been closed by a daemon restart before
                // this request went out: a question is asked once more, on a new connection.
                if idempotent && !fresh && !retried && !isShutDown {
                    retried = true
                    continue
                }
                throw clientError
            }
        }
    }

    /// The open connection, or a new one; `fresh` when this call made it.
    private func openConnection() async throws(RulesdClientError) -> (ClientConnection, fresh: Bool) {
        switch state {
        case .shutDown:
            throw .shutDown
        case .connected(let connection) where connection.isActive:
            return (connection, false)
        case .connecting(let task, let attempt):
            return (try await finish(task, attempt: attempt), true)
        case .idle(let retryAfter?, let lastFailure?) where ContinuousClock.now < retryAfter:
            throw lastFailure
        case .idle, .connected:
            attempts += 1
            let attempt = attempts
            let configuration = configuration
            let group = group
            let task = Task { try await Self.connect(configuration: configuration, group: group, onEvent: nil) }
            state = .connecting(task, attempt: attempt)
            return (try await finish(task, attempt: attempt), true)
        }
    }

    private func finish(_ task: Task<ClientConnection, Error>, attempt: Int) async throws(RulesdClientError)
        -> ClientConnection
    {
        let result = await task.result
        let current: Bool
        if case .connecting(_, let ongoing) = state, ongoing == attempt { current = true } else { current = false }
        switch result {
        case .success(let connection):
            if current {
                consecutiveFailures = 0
                state = .connected(connection)
            } else if isShutDown {
                connection.channel.close(promise: nil)
                throw .shutDown
            }
            return connection
        case .failure(let error):
            let clientError = Self.clientError(error, configuration: configuration)
            if current {
                consecutiveFailures += 1
                let delay = configuration.backoff.delay(afterFailures: consecutiveFailures)
                state = .idle(retryAfter: ContinuousClock.now + delay, lastFailure: clientError)
            }
            throw clientError
        }
    }

    private func forget(_ connection: ClientConnection) {
        if case .connected(let current) = state, current === connection {
            state = .idle(retryAfter: nil, lastFailure: nil)
        }
        connection.channel.close(promise: nil)
    }

    private static func connect(
        configuration: RulesdClientConfiguration, group: EventLoopGroup,
        onEvent: (@Sendable (JSONObject) -> Void)?
    ) async throws(RulesdClientError) -> ClientConnection {
        do {
            return try await ClientConnection.connect(
                to: configuration.socketPath, group: group, timeout: configuration.connectTimeout,
                maxLineBytes: configuration.maxLineBytes, onEvent: onEvent)
        } catch let error as IOError {
            throw .unavailable(socketPath: configuration.socketPath, reason: String(describing: error))
        } catch {
            throw .unavailable(socketPath: configuration.socketPath, reason: "\(error)")
        }
    }

    private static func clientError(_ error: Error, configuration: RulesdClientConfiguration) -> RulesdClientError {
        if let error = error as? RulesdClientError { return error }
        return .connectionLost(reason: "\(error)")
    }

    /// An answer line as a ``RawAnswer``, or the daemon's error.
    static func decode(_ line: JSONValue) throws(RulesdClientError) -> RawAnswer {
        guard let ok = line["ok"]?.boolValue else { throw .invalidAnswer("an answer without ok") }
        guard ok else { throw .daemon(ClientProtocolHandler.daemonError(line["error"] ?? .null)) }
        var servedBy: ServedBy?
        if let revision = line["revision"]?.stringValue, let generation = line["generation"]?.int64Value {
            servedBy = ServedBy(revision: revision, generation: generation)
        }
        return RawAnswer(result: line["result"] ?? .null, servedBy: servedBy)
    }

    /// Why a request cannot be written as JSON (a number that is not finite), or nil.
    static func unsendable(_ value: JSONValue) -> String? {
        switch value {
        case .number(let number) where !number.isFinite:
            return "\(number) is not a JSON number"
        case .array(let elements):
            return elements.lazy.compactMap(unsendable).first
        case .object(let object):
            return object.values.lazy.compactMap(unsendable).first
        default:
            return nil
        }
    }
}

/// The events of ``RulesdClient/watch()``.
public struct WatchEvents: AsyncSequence, Sendable {
    public typealias Element = WatchEvent
    let stream: AsyncStream<WatchEvent>

    public func makeAsyncIterator() -> AsyncStream<WatchEvent>.Iterator {
        stream.makeAsyncIterator()
    }
}
