import Logging
import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol
import Synchronization
import SystemClock

#if canImport(Glibc)
    import Glibc
#endif

/// Why an override was refused: the protocol error to answer.
struct OverrideRefusal: Error, Sendable {
    var error: ProtocolError
    init(_ code: ProtocolErrorCode, _ message: String) { error = ProtocolError(code, message) }
}

/// The one owner of the overrides: sets, clears, expires and drops them, keeps them in the state directory, and
/// publishes each new table to the workers (``OverrideBoard``).
///
/// Changes are rare and never on the query path, so they take a lock, and the file is written under it: the file
/// always ends at the newest table.
final class OverrideStore: Sendable {
    private struct State: ~Copyable {
        var entries: [String: FlagOverride] = [:]
        var version: UInt64 = 0
        /// The expiry timer, set for the earliest expiry.
        var timer: Scheduled<Void>?
        var stopped = false
        /// The newest generation ``reconcile(with:now:)`` saw: a `set` checks its flag against it too, so that an
        /// override cannot slip in for a flag a reload removed just before.
        var reconciled: ServingGeneration?
    }

    let board: OverrideBoard
    /// `overrides.json` in the state directory.
    let path: String
    let maxTTL: Duration
    private let announce: @Sendable ([UInt8]) -> Void
    /// Where every override set, cleared, expired or dropped is recorded.
    private let audit: AuditLog?
    private let logger: Logger
    private let loop: any EventLoop
    private let state = Mutex(State())

    /// - Parameters:
    ///   - announce: sends an event line to every `watch` connection.
    ///   - loop: where the expiry timer runs.
    ///   - audit: the audit log, if any.
    init(
        board: OverrideBoard, stateDirectory: String, maxTTL: Duration, loop: any EventLoop, logger: Logger,
        audit: AuditLog? = nil, announce: @escaping @Sendable ([UInt8]) -> Void
    ) {
        self.audit = audit
        self.board = board
        self.path = stateDirectory + "/overrides.json"
        self.maxTTL = maxTTL
        self.loop = loop
        self.logger = logger
        self.announce = announce
    }

    /// The overrides in force at `now`, soonest to expire first.
    func list(now: Double) -> [FlagOverride] {
        state.withLock { state in
            state.entries.values.filter { $0.expiresAt > now }.sorted {
                ($0.expiresAt, $0.flag) < ($1.expiresAt, $1.flag)
            }
        }
    }

    /// Reads the overrides the state directory keeps. Those whose time ran out while rulesd was stopped are
    /// dropped and logged: an expiry is absolute, so a restart never lengthens an override.
    /// - Returns: why the file could not be used, when it exists but cannot be read (rulesd then starts
    ///   without overrides, and the next change replaces the file).
    @discardableResult
    func loadSaved(now: Double) -> String? {
        let entries: [FlagOverride]
        switch Self.read(path) {
        case .success(let read): entries = read
        case .failure(let problem):
            logger.error("the saved overrides cannot be read; starting without them", metadata: ["error": "\(problem)"])
            return problem.message
        }
        var expired: [FlagOverride] = []
        state.withLock { state in
            for entry in entries {
                if entry.expiresAt <= now { expired.append(entry) } else { state.entries[entry.flag] = entry }
            }
            if !expired.isEmpty { persist(state.entries) }
            publish(&state, now: now)
        }
        for entry in expired {
            logger.info("override expired while rulesd was stopped", metadata: Self.metadata(entry))
            record("expired", entry, extra: [("while_stopped", true)])
        }
        return nil
    }

    /// Parses a time to live: a duration such as `90s`, `15m` or `2h`, or a number of seconds, from 1 s to
    /// `override_max_ttl`.
    static func parseTTL(_ text: String, max: Duration) throws(OverrideRefusal) -> Duration {
        let ttl: Duration
        do {
            ttl = try parseDuration(text, .nanoseconds(0)...(.seconds(Int64(1) << 30)))
        } catch {
            throw OverrideRefusal(.invalidRequest, "'ttl' must be a duration such as 90s, 15m or 2h, got '\(text)'")
        }
        guard ttl >= .seconds(1) else { throw OverrideRefusal(.invalidRequest, "'ttl' must be at least 1s") }
        guard ttl <= max else {
            throw OverrideRefusal(
                .invalidRequest, "'ttl' \(text) is longer than override_max_ttl (\(formatDuration(max)))")
        }
        return ttl
    }

    /// Forces `variant` of `flag` for `ttl`, replacing any override of that flag.
    /// - Parameter generation: the serving rules, which must have the flag and the variant.
    /// - Returns: the new override, the one it replaced, and why the state directory could not keep it (it is
    ///   in force all the same: a kill switch that a full disk refused would be no switch).
    func set(
        flag: String, variant: String, ttl ttlText: String, reason: String, by setter: OverrideSetter,
        generation: ServingGeneration?, now: Double
    ) throws(OverrideRefusal) -> (override: FlagOverride, replaced: FlagOverride?, stateDirectoryError: String?) {
        let ttl = try Self.parseTTL(ttlText, max: maxTTL)
        guard !reason.allSatisfy(\.isWhitespace) else {
            throw OverrideRefusal(.invalidRequest, "'reason' must say why the override is set")
        }
        let (seconds, attoseconds) = ttl.components
        let entry = FlagOverride(
            flag: flag, variant: variant, reason: reason, setBy: setter, setAt: now,
            expiresAt: now + Double(seconds) + Double(attoseconds) / 1e18)
        let (replaced, problem) = try state.withLock { state throws(OverrideRefusal) -> (FlagOverride?, String?) in
            let newest = [generation, state.reconciled].compactMap { $0 }.max { $0.number < $1.number }
            guard let ruleSet = newest?.ruleSet else { throw OverrideRefusal(.internal, "no rule set is loaded") }
            guard let index = ruleSet.flagIndex(forKey: flag) else {
                throw OverrideRefusal(.flagNotFound, RuleAnswers.flagNotFound(flag).message)
            }
            let variants = ruleSet.flags[index].variants.map(\.name)
            guard variants.contains(variant) else {
                throw OverrideRefusal(
                    .invalidRequest,
                    "flag '\(flag)' has no variant '\(variant)'; its variants: \(variants.joined(separator: ", "))")
            }
            let replaced = state.entries.updateValue(entry, forKey: flag)
            let problem = persist(state.entries)
            publish(&state, now: now)
            return (replaced, problem)
        }
        var metadata = Self.metadata(entry)
        metadata["override.ttl"] = "\(formatDuration(ttl))"
        if let replaced { metadata["override.replaced_variant"] = "\(replaced.variant)" }
        logger.notice("override set", metadata: metadata)
        announce(Self.event("override_set", entry, at: now, extra: replaced.map { [("replaced", $0.json)] } ?? []))
        record("set", entry, extra: replaced.map { [("replaced", $0.json)] } ?? [])
        return (entry, replaced, problem)
    }

    /// Ends the override of `flag` now.
    /// - Returns: the override that ended (nil when the flag had none), and why the state directory could not
    ///   record it.
    func clear(flag: String, by setter: OverrideSetter, now: Double) -> (
        cleared: FlagOverride?, stateDirectoryError: String?
    ) {
        let (cleared, problem) = state.withLock { state -> (FlagOverride?, String?) in
            guard let cleared = state.entries.removeValue(forKey: flag) else { return (nil, nil) }
            let problem = persist(state.entries)
            publish(&state, now: now)
            return (cleared, problem)
        }
        guard let cleared else { return (nil, nil) }
        var metadata = Self.metadata(cleared)
        metadata["override.cleared_by"] = "\(setter)"
        logger.notice("override cleared", metadata: metadata)
        announce(Self.event("override_cleared", cleared, at: now, extra: [("cleared_by", setter.json)]))
        record("cleared", cleared, extra: [("cleared_by", setter.json)])
        return (cleared, problem)
    }

    /// Ends the overrides whose time is up; run by the expiry timer.
    func expire(now: Double) {
        let expired = state.withLock { state -> [FlagOverride] in
            state.timer = nil
            let expired = state.entries.values.filter { $0.expiresAt <= now }.sorted { $0.flag < $1.flag }
            for entry in expired { state.entries[entry.flag] = nil }
            guard !expired.isEmpty else {
                // Early by the clocks' difference: nothing changed, so workers keep their table.
                scheduleExpiry(&state, now: now)
                return []
            }
            persist(state.entries)
            publish(&state, now: now)
            return expired
        }
        for entry in expired {
            logger.notice("override expired", metadata: Self.metadata(entry))
            announce(Self.event("override_expired", entry, at: now))
            record("expired", entry)
        }
    }

    /// Drops the overrides that the newly serving rules can no longer honour: their flag is gone, or it has no
    /// such variant any more. Called for every generation that goes live.
    func reconcile(with generation: ServingGeneration, now: Double) {
        let ruleSet = generation.ruleSet
        let dropped = state.withLock { state -> [(FlagOverride, String)] in
            if generation.number > (state.reconciled?.number ?? 0) { state.reconciled = generation }
            var dropped: [(FlagOverride, String)] = []
            for entry in state.entries.values.sorted(by: { $0.flag < $1.flag }) {
                guard let index = ruleSet.flagIndex(forKey: entry.flag) else {
                    dropped.append((entry, "revision \(generation.shortRevision) has no flag '\(entry.flag)'"))
                    continue
                }
                if !ruleSet.flags[index].variants.contains(where: { $0.name == entry.variant }) {
                    dropped.append(
                        (
                            entry,
                            "flag '\(entry.flag)' has no variant '\(entry.variant)' in revision "
                                + generation.shortRevision
                        ))
                }
            }
            guard !dropped.isEmpty else { return [] }
            for (entry, _) in dropped { state.entries[entry.flag] = nil }
            persist(state.entries)
            publish(&state, now: now)
            return dropped
        }
        for (entry, why) in dropped {
            var metadata = Self.metadata(entry)
            metadata["override.dropped_because"] = "\(why)"
            metadata["rules.revision"] = "\(generation.ruleSet.revision.hex)"
            logger.warning("override dropped: the reloaded rules cannot honour it", metadata: metadata)
            announce(
                Self.event(
                    "override_dropped", entry, at: now,
                    extra: [("why", .string(why)), ("revision", .string(generation.ruleSet.revision.hex))]))
            record(
                "dropped", entry,
                extra: [("why", .string(why)), ("revision", .string(generation.ruleSet.revision.hex))])
        }
    }

    /// Stops the expiry timer (at shutdown); the file keeps the overrides for the next start.
    func stop() {
        state.withLock { state in
            state.stopped = true
            state.timer?.cancel()
            state.timer = nil
        }
    }

    // MARK: - Publishing and the timer

    /// Publishes the entries as a new table and sets the timer for the earliest expiry. Called with the lock held.
    private func publish(_ state: inout State, now: Double) {
        state.version += 1
        board.publish(OverrideTable(version: state.version, entries: state.entries))
        scheduleExpiry(&state, now: now)
    }

    /// Sets the timer for the earliest expiry, if any. Called with the lock held.
    private func scheduleExpiry(_ state: inout State, now: Double) {
        state.timer?.cancel()
        state.timer = nil
        guard !state.stopped, let next = state.entries.values.map(\.expiresAt).min() else { return }
        // The timer runs on the monotonic clock; should it fire a little before the wall-clock expiry, `expire`
        // finds nothing due and sets it again. Workers compare the wall clock themselves in the meantime.
        let delay = max(0.001, next - now)
        state.timer = loop.scheduleTask(in: .nanoseconds(Int64(min(delay, 1e9) * 1e9))) { [weak self] in
            self?.expire(now: SystemClock.epochSeconds())
        }
    }

    // MARK: - The state directory's file

    /// Writes the entries to the state directory: a temporary file, fsync'ed, renamed over the old one, and the
    /// directory fsync'ed, so that a crash leaves either the old file or the new one. Called with the lock held.
    /// - Returns: what went wrong, if anything (also logged).
    @discardableResult
    private func persist(_ entries: [String: FlagOverride]) -> String? {
        let stored: JSONValue = [
            "overrides": .array(entries.keys.sorted().map { entries[$0]!.storedJSON })
        ]
        do throws(OverrideFileError) {
            try Self.writeAtomically(Array((JSONWriter.string(stored) + "\n").utf8), to: path)
            return nil
        } catch {
            logger.warning(
                "cannot save the overrides in the state directory; they are in force until rulesd stops",
                metadata: ["error": "\(error)", "state.file": "\(path)"])
            return error.message
        }
    }

    /// The overrides a file holds (none when it does not exist).
    static func read(_ path: String) -> Result<[FlagOverride], OverrideFileError> {
        guard let text = DaemonSettings.readFile(path) else {
            if errno == ENOENT { return .success([]) }
            return .failure(OverrideFileError(message: "cannot read \(path): \(String(cString: strerror(errno)))"))
        }
        let document: JSONValue
        do { document = try JSONParser().parse(Array(text.utf8)) } catch {
            return .failure(OverrideFileError(message: "\(path) is not JSON: \(error)"))
        }
        guard let list = document["overrides"]?.arrayValue else {
            return .failure(OverrideFileError(message: "\(path) has no 'overrides' list"))
        }
        var entries: [FlagOverride] = []
        for item in list {
            guard let entry = FlagOverride(stored: item) else {
                return .failure(OverrideFileError(message: "\(path) holds an entry that is not an override: \(item)"))
            }
            entries.append(entry)
        }
        return .success(entries)
    }

    static func writeAtomically(_ bytes: [UInt8], to path: String) throws(OverrideFileError) {
        func failure(_ what: String) -> OverrideFileError {
            OverrideFileError(message: "\(what): \(String(cString: strerror(errno)))")
        }
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        var prefix = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o750) != 0 && errno != EEXIST { throw failure("cannot create \(prefix)") }
        }
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw failure("cannot write \(temporary)") }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                let error = failure("cannot write \(temporary)")
                close(fd)
                unlink(temporary)
                throw error
            }
            offset += n
        }
        guard fsync(fd) == 0 else {
            let error = failure("cannot sync \(temporary)")
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let error = failure("cannot move \(temporary) to \(path)")
            unlink(temporary)
            throw error
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            _ = fsync(directoryFD)
            close(directoryFD)
        }
    }

    // MARK: - Logs and events

    static func metadata(_ entry: FlagOverride) -> Logger.Metadata {
        [
            "override.flag": "\(entry.flag)", "override.variant": "\(entry.variant)",
            "override.reason": "\(entry.reason)", "override.set_by": "\(entry.setBy)",
            "override.expires_at": "\(Timestamp.iso8601(entry.expiresAt))",
        ]
    }

    /// `{"event":NAME,"flag","variant","reason","set_by","set_at","expires_at",…,"at"}`.
    /// Records an override's change in the audit log: `action` is set, cleared, expired or dropped.
    private func record(_ action: String, _ entry: FlagOverride, extra: [(String, JSONValue)] = []) {
        guard let audit else { return }
        audit.record(
            AuditEvent(
                kind: .override,
                members: [("action", .string(action)), ("override", entry.json)] + extra,
                message: "override \(action): \(entry.flag) -> \(entry.variant) (set by \(entry.setBy))",
                isFailure: action == "dropped"))
    }

    static func event(_ name: String, _ entry: FlagOverride, at now: Double, extra: [(String, JSONValue)] = [])
        -> [UInt8]
    {
        var members: [(String, JSONValue)] = [("event", .string(name))]
        members.append(contentsOf: entry.json.objectValue.map { Array($0) }?.map { ($0.key, $0.value) } ?? [])
        members.append(contentsOf: extra)
        members.append(("at", .string(Timestamp.iso8601(now))))
        return Array(JSONWriter.string(.object(JSONObject(members))).utf8)
    }
}

/// The state directory's overrides file could not be read or written.
struct OverrideFileError: Error, Sendable, Equatable, CustomStringConvertible {
    var message: String
    var description: String { message }
}
