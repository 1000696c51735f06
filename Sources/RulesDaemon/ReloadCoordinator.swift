import Logging
import NIOCore
import NIOPosix
import RuleEngine
import RuleModel
import RuleWatcher
import Synchronization
import SystemClock

/// What asked for a reload.
public enum ReloadTrigger: String, Sendable {
    case startup
    /// The `reload` operation on the socket (also `rulesctl reload` and systemd's ExecReload=).
    case request = "reload"
    /// SIGHUP.
    case signal = "sighup"
    /// The directory watcher saw changes, or its periodic safety rescan came due.
    case watcher
    /// `rollback`: a revision from the history.
    case rollback
    /// `resume`: leave a rollback's pin and reload from the rules directory.
    case resume
}

/// The result of one reload attempt.
public enum ReloadOutcome: Sendable {
    /// A new generation serves.
    case reloaded(ServingGeneration, durationMilliseconds: Double)
    /// The files on disk are what already serves: nothing to do.
    case unchanged(ServingGeneration)
    /// The candidate did not load; the previous generation (if any) keeps serving.
    case failed(RuleLoadFailure, candidate: RuleRevision?, serving: ServingGeneration?)
}

/// The last reload attempt, as `status` reports it.
public struct ReloadRecord: Sendable {
    public var ok: Bool
    public var outcome: String
    /// Seconds since the epoch.
    public var at: Double
    public var durationMilliseconds: Double
    public var trigger: ReloadTrigger
    public var revision: RuleRevision?
    public var failure: RuleLoadFailure?
}

/// The copy of the rules kept in the state directory, as `status`, `watch`, reload answers and metrics report it.
public struct SavedCopyRecord: Sendable, Equatable {
    /// The revision of the copy on disk; nil when none exists (yet).
    public var revision: RuleRevision?
    /// Why the last save failed; nil once a save succeeds. While set, the copy on disk (if any) is older than
    /// what serves, and a restart with broken rules would serve that older copy.
    public var error: String?
}

/// Notifications to the service manager around reloads (systemd's sd_notify, or nothing).
public protocol LifecycleNotifier: Sendable {
    func ready(status: String)
    func reloading(status: String)
    func stopping(status: String)
    func status(_ status: String)
    func extendStartup(by duration: Duration)
}

/// Runs reloads one at a time, whatever asked for them.
///
/// Requests that arrive while a reload runs are served together by the next one (it rescans, so it sees
/// everything they could have asked for). Loading happens entirely off the serving path: on a loader
/// thread, into fresh Lua states, one per worker; the result is published with one atomic switch.
public final class ReloadCoordinator: Sendable {
    private struct Job: Sendable {
        var trigger: ReloadTrigger
        var completion: CheckedContinuation<ReloadOutcome, Never>?
        /// The revision (or its first hex digits) a `rollback` job makes live.
        var rollbackTo: String?
    }

    private struct State: Sendable {
        var jobs: [Job] = []
        var nextGeneration: UInt64 = 1
        /// The last failure, remembered only when it is deterministic (see ``RuleLoadFailure/isDeterministic``).
        var lastFailure: (revision: RuleRevision, failure: RuleLoadFailure)?
        var lastRecord: ReloadRecord?
        var reloads = 0
        var failures = 0
        var savedCopy = SavedCopyRecord()
        /// Set once stopping began: nothing is published after it, and loads in progress are abandoned.
        var stopping = false
        /// The load in progress, to abandon when stopping.
        var loading: RuleLoadCancellation?
        /// Set by a rollback: the directory's revision then no longer decides what serves (see ``RulePin``).
        var pin: RulePin?
    }

    let settings: DaemonSettings
    /// The namespace whose rules these are (its events name it).
    let namespace: String
    let store: GenerationStore
    let pool: WorkerPool
    let loader: NIOThreadPool
    let lastKnownGood: LastKnownGoodStore
    let history: RuleHistoryStore
    let watchHub: WatchHub
    let notifier: LifecycleNotifier
    let reloadMetrics: ReloadMetrics
    let logger: Logger
    /// Where reloads that change what serves, and failed ones, are recorded.
    let audit: AuditLog?
    private let state = Mutex(State())
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation
    /// Told of every generation that goes live, right after it does.
    private let publicationObservers = Mutex<[@Sendable (ServingGeneration) -> Void]>([])

    init(
        settings: DaemonSettings, store: GenerationStore, pool: WorkerPool, loader: NIOThreadPool,
        watchHub: WatchHub, notifier: LifecycleNotifier, reloadMetrics: ReloadMetrics, logger: Logger,
        audit: AuditLog? = nil, namespace: String = NamespaceSettings.defaultName
    ) {
        self.audit = audit
        self.namespace = namespace
        self.settings = settings
        self.store = store
        self.pool = pool
        self.loader = loader
        self.lastKnownGood = LastKnownGoodStore(stateDirectory: settings.stateDirectory)
        self.history = RuleHistoryStore(stateDirectory: settings.stateDirectory, capacity: settings.historySize)
        self.watchHub = watchHub
        self.notifier = notifier
        self.reloadMetrics = reloadMetrics
        self.logger = logger
        (wake, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Calls `observer` with every generation that goes live from now on (reloads, rollbacks, the first rules).
    func observePublications(_ observer: @escaping @Sendable (ServingGeneration) -> Void) {
        publicationObservers.withLock { $0.append(observer) }
    }

    /// The last reload attempt.
    public var lastReload: ReloadRecord? { state.withLock { $0.lastRecord } }

    /// The state directory's copy of the rules.
    public var savedCopy: SavedCopyRecord { state.withLock { $0.savedCopy } }

    /// Why the saved copy could not be used at start, when it exists but is damaged.
    public private(set) var savedCopyProblem: String? {
        get { savedCopyProblemBox.withLock { $0 } }
        set { savedCopyProblemBox.withLock { $0 = newValue } }
    }
    private let savedCopyProblemBox = Mutex<String?>(nil)

    /// Asks for a reload and waits for its outcome.
    public func reload(_ trigger: ReloadTrigger) async -> ReloadOutcome {
        await withCheckedContinuation { continuation in
            state.withLock { $0.jobs.append(Job(trigger: trigger, completion: continuation)) }
            wakeContinuation.yield()
        }
    }

    /// The pin a rollback set, while it holds.
    public var pin: RulePin? { state.withLock { $0.pin } }

    /// Makes the history's revision `name` (or the revision starting with it) live and pins the daemon to it.
    public func rollback(to name: String) async -> ReloadOutcome {
        await withCheckedContinuation { continuation in
            state.withLock { $0.jobs.append(Job(trigger: .rollback, completion: continuation, rollbackTo: name)) }
            wakeContinuation.yield()
        }
    }

    /// Asks for a reload without waiting.
    public func requestReload(_ trigger: ReloadTrigger) {
        state.withLock { $0.jobs.append(Job(trigger: trigger, completion: nil)) }
        wakeContinuation.yield()
    }

    /// Processes reload requests until `finish()` is called.
    func run() async {
        for await _ in wake {
            while true {
                let batch = state.withLock { state -> [Job] in
                    defer { state.jobs.removeAll() }
                    return state.jobs
                }
                if batch.isEmpty { break }
                // Rollbacks and resumes run alone, in order; the reloads between them are served together.
                var reloads: [Job] = []
                for job in batch {
                    guard job.trigger == .rollback || job.trigger == .resume else {
                        reloads.append(job)
                        continue
                    }
                    await performTogether(&reloads)
                    let outcome: ReloadOutcome
                    if let name = job.rollbackTo {
                        outcome = await performRollback(name)
                    } else {
                        outcome = await performResume()
                    }
                    job.completion?.resume(returning: outcome)
                }
                await performTogether(&reloads)
            }
        }
        // Whoever still waits gets the current state rather than hanging at shutdown.
        let leftovers = state.withLock { state -> [Job] in
            defer { state.jobs.removeAll() }
            return state.jobs
        }
        for job in leftovers {
            job.completion?.resume(returning: .failed(.shuttingDown, candidate: nil, serving: store.generation))
        }
    }

    /// Stops `run()`, abandoning the reload in progress.
    func finish() {
        abandonLoading()
        wakeContinuation.finish()
    }

    /// Stopping began: the load in progress stops between files or Lua steps, its result and any later one is
    /// never published, and whoever waits for a reload is told that rulesd is stopping.
    ///
    /// Called first thing on a graceful stop, before anything logs `stopping`, so that no rules go live after it.
    public func abandonLoading() {
        let loading = state.withLock { state -> RuleLoadCancellation? in
            state.stopping = true
            return state.loading
        }
        loading?.cancel()
    }

    /// A cancellation for the next load, or nil when stopping began.
    private func beginLoading() -> RuleLoadCancellation? {
        state.withLock { state -> RuleLoadCancellation? in
            if state.stopping { return nil }
            let cancellation = RuleLoadCancellation()
            state.loading = cancellation
            return cancellation
        }
    }

    private var isStopping: Bool { state.withLock { $0.stopping } }

    // MARK: - start-up

    /// Loads the rules directory at start; falls back to the last known good copy.
    /// - Returns: the first generation.
    /// - Throws: every problem of the rules directory when there is no usable last known good copy.
    func loadInitial() async throws(RuleLoadFailure) -> ServingGeneration {
        let started = SystemClock.monotonicSeconds()
        state.withLock { $0.savedCopy.revision = lastKnownGood.currentName().map { RuleRevision(hex: $0) } }
        let snapshot = await scan()
        let revision = RuleRevision(sources: snapshot.sources)
        if let generation = await loadPinned(directoryRevision: revision, started: started) { return generation }
        var failure: RuleLoadFailure
        if snapshot.problems.isEmpty {
            switch await build(snapshot.sources) {
            case .success(let built):
                guard let generation = publish(built, origin: .rulesDirectory) else { throw .cancelled }
                let duration = (SystemClock.monotonicSeconds() - started) * 1000
                record(
                    ReloadRecord(
                        ok: true, outcome: "loaded", at: SystemClock.epochSeconds(), durationMilliseconds: duration,
                        trigger: .startup, revision: revision, failure: nil))
                logLoaded(generation, duration: duration, trigger: .startup)
                persist(snapshot.sources, revision: revision, generation: generation, trigger: .startup)
                return generation
            case .failure(let problem):
                failure = problem
            }
        } else {
            failure = RuleLoadFailure(diagnostics: snapshot.problems)
        }
        let duration = (SystemClock.monotonicSeconds() - started) * 1000
        if failure.isDeterministic { state.withLock { $0.lastFailure = (revision, failure) } }
        record(
            ReloadRecord(
                ok: false, outcome: "failed", at: SystemClock.epochSeconds(), durationMilliseconds: duration,
                trigger: .startup,
                revision: revision, failure: failure))
        for diagnostic in failure.diagnostics {
            logger.error("rule problem", metadata: ["rules.problem": "\(diagnostic)"])
        }
        let maxFileBytes = settings.limits.maxFileBytes
        let maxDataBytes = settings.limits.maxDataBytes
        let lkg = lastKnownGood
        let saved =
            (try? await loader.runIfActive { lkg.load(maxFileBytes: maxFileBytes, maxDataBytes: maxDataBytes) })
            ?? .none
        let savedSources: [RuleSource]
        let savedRevision: RuleRevision
        switch saved {
        case .none:
            throw failure
        case .corrupt(let reason):
            savedCopyProblem = reason
            logger.error(
                "the last known good copy is corrupt and is not used",
                metadata: ["state.dir": "\(settings.stateDirectory)", "error": "\(reason)"])
            throw failure
        case .intact(let sources, let revision):
            savedSources = sources
            savedRevision = revision
        }
        switch await build(savedSources) {
        case .success(let built):
            guard let generation = publish(built, origin: .lastKnownGood) else { throw .cancelled }
            logger.critical(
                "the rules directory does not load: serving the last known good rules from the state directory",
                metadata: [
                    "rules.dir": "\(settings.rulesDirectory)", "rules.revision": "\(savedRevision.short)",
                    "rules.problems": "\(failure.diagnostics.count)", "state.dir": "\(settings.stateDirectory)",
                ])
            return generation
        case .failure(let problem):
            logger.error("the last known good copy does not load either", metadata: ["rules.problem": "\(problem)"])
            if problem.cause == .content { savedCopyProblem = "the last known good copy does not load: \(problem)" }
            throw failure
        }
    }

    // MARK: - one reload

    private func perform(_ triggers: [ReloadTrigger]) async -> ReloadOutcome {
        if isStopping { return .failed(.shuttingDown, candidate: nil, serving: store.generation) }
        let started = SystemClock.monotonicSeconds()
        let explicit = triggers.contains { $0 == .request || $0 == .signal || $0 == .resume }
        let trigger =
            triggers.first { $0 == .request } ?? triggers.first { $0 == .signal } ?? triggers.first { $0 == .resume }
            ?? .watcher
        if explicit { notifier.reloading(status: "reloading rules from \(settings.rulesDirectory)") }
        var snapshot = await scan()
        let serving = store.generation
        if snapshot.isCancelled { return .failed(.shuttingDown, candidate: nil, serving: serving) }
        var revision = RuleRevision(sources: snapshot.sources)
        if let pin = state.withLock({ $0.pin }), pin.directoryRevision == revision, let serving {
            // The directory still holds what it held at the rollback: the pin stays.
            if explicit { notifier.ready(status: statusLine(serving)) }
            record(
                ReloadRecord(
                    ok: true, outcome: "unchanged", at: SystemClock.epochSeconds(),
                    durationMilliseconds: (SystemClock.monotonicSeconds() - started) * 1000, trigger: trigger,
                    revision: serving.ruleSet.revision, failure: nil))
            return .unchanged(serving)
        }
        if snapshot.problems.isEmpty, let serving, serving.origin == .rulesDirectory,
            serving.ruleSet.revision == revision
        {
            let duration = (SystemClock.monotonicSeconds() - started) * 1000
            let wasFailing = state.withLock { $0.lastRecord?.ok == false }
            if explicit { notifier.ready(status: statusLine(serving)) }
            record(
                ReloadRecord(
                    ok: true, outcome: "unchanged", at: SystemClock.epochSeconds(), durationMilliseconds: duration,
                    trigger: trigger, revision: revision, failure: nil))
            if wasFailing { recover(serving, duration: duration, trigger: trigger) }
            return .unchanged(serving)
        }
        if let known = state.withLock({ $0.lastFailure }), known.revision == revision,
            snapshot.problems == known.failure.diagnostics || snapshot.problems.isEmpty
        {
            // Same bad content as last time: report it again only to whoever asked, never re-validate.
            if explicit { notifier.ready(status: statusLine(serving, failure: known.failure)) }
            return .failed(known.failure, candidate: revision, serving: serving)
        }
        // A tree that lost files or became empty may be caught mid-change (git checkout, rsync, an editor's
        // rename dance): when only the watcher asked, confirm it with one more quiet window.
        if !explicit, let serving, looksTransient(snapshot.sources, serving: serving.ruleSet.sources) {
            for _ in 0..<3 {
                try? await Task.sleep(for: settings.watch.quietWindow)
                let again = await scan()
                if again.isCancelled { return .failed(.shuttingDown, candidate: nil, serving: serving) }
                let againRevision = RuleRevision(sources: again.sources)
                if againRevision == revision && again.problems == snapshot.problems { break }
                snapshot = again
                revision = againRevision
            }
            if snapshot.problems.isEmpty, serving.ruleSet.revision == revision, serving.origin == .rulesDirectory {
                return .unchanged(serving)
            }
            if state.withLock({ $0.pin?.directoryRevision == revision }) { return .unchanged(serving) }
        }
        if !explicit { notifier.reloading(status: "reloading rules from \(settings.rulesDirectory)") }
        let result: Result<BuiltGeneration, RuleLoadFailure>
        if snapshot.problems.isEmpty {
            logger.info(
                "loading rules",
                metadata: ["rules.candidate": "\(revision.short)", "reload.trigger": "\(trigger.rawValue)"])
            result = await build(snapshot.sources)
        } else {
            result = .failure(RuleLoadFailure(diagnostics: snapshot.problems))
        }
        let duration = (SystemClock.monotonicSeconds() - started) * 1000
        switch result {
        case .failure(let failure) where failure.cause == .cancelled:
            logger.info("reload abandoned: rulesd is stopping", metadata: ["rules.candidate": "\(revision.short)"])
            return .failed(.shuttingDown, candidate: revision, serving: serving)
        case .success(let built):
            guard let generation = publish(built, origin: .rulesDirectory) else {
                logger.info("reload abandoned: rulesd is stopping", metadata: ["rules.candidate": "\(revision.short)"])
                return .failed(.shuttingDown, candidate: revision, serving: serving)
            }
            let unpinned = state.withLock { state -> RulePin? in
                defer { state.pin = nil }
                state.lastFailure = nil
                state.reloads += 1
                return state.pin
            }
            if let unpinned {
                logger.notice(
                    "the rules directory changed to a new revision: leaving the rollback's pin",
                    metadata: ["rules.pinned": "\(unpinned.revision.short)", "rules.revision": "\(revision.short)"])
                savePin(nil)
            }
            record(
                ReloadRecord(
                    ok: true, outcome: "reloaded", at: SystemClock.epochSeconds(), durationMilliseconds: duration,
                    trigger: trigger, revision: revision, failure: nil))
            reloadMetrics.recordReload(ok: true, seconds: duration / 1000)
            logLoaded(generation, duration: duration, trigger: trigger)
            audit?.record(
                .reload(
                    trigger: trigger, previous: serving, sources: snapshot.sources, revision: revision,
                    generation: generation, failure: nil, rulesDirectory: settings.rulesDirectory))
            watchHub.publish(
                WatchEvents.reloaded(
                    generation, previous: serving, duration: duration, trigger: trigger,
                    stateDirectoryError: savedCopy.error), namespace: namespace)
            notifier.ready(status: statusLine(generation))
            persist(snapshot.sources, revision: revision, generation: generation, trigger: trigger)
            return .reloaded(generation, durationMilliseconds: duration)
        case .failure(let failure):
            state.withLock {
                // A budget that ran out may be the machine's fault (a stall, a busy neighbour): only failures the
                // files themselves cause are remembered, so that a retry or the next change tries again.
                $0.lastFailure = failure.isDeterministic ? (revision, failure) : nil
                $0.failures += 1
            }
            record(
                ReloadRecord(
                    ok: false, outcome: "failed", at: SystemClock.epochSeconds(), durationMilliseconds: duration,
                    trigger: trigger, revision: revision, failure: failure))
            reloadMetrics.recordReload(ok: false, seconds: duration / 1000)
            logger.error(
                "reload failed; the previous rules keep serving",
                metadata: [
                    "rules.candidate": "\(revision.short)", "rules.serving": "\(serving?.shortRevision ?? "none")",
                    "reload.trigger": "\(trigger.rawValue)", "rules.problems": "\(failure.diagnostics.count)",
                ])
            for diagnostic in failure.diagnostics {
                logger.error("rule problem", metadata: ["rules.problem": "\(diagnostic)"])
            }
            audit?.record(
                .reload(
                    trigger: trigger, previous: serving, sources: snapshot.sources, revision: revision,
                    generation: nil, failure: failure, rulesDirectory: settings.rulesDirectory))
            watchHub.publish(
                WatchEvents.reloadFailed(failure, candidate: revision, serving: serving, trigger: trigger),
                namespace: namespace)
            notifier.ready(status: statusLine(serving, failure: failure))
            return .failed(failure, candidate: revision, serving: serving)
        }
    }

    /// The rules directory is back to the revision that serves after a failed reload (the bad edit was undone):
    /// nothing is rebuilt, but the failure is over. Forgets it, so that the same bad content saved again is
    /// reported again, and tells watchers and systemd with a `reloaded` event marked `recovered`.
    private func recover(_ serving: ServingGeneration, duration: Double, trigger: ReloadTrigger) {
        state.withLock { $0.lastFailure = nil }
        logger.info(
            "the rules directory is back to the serving revision: the failed reload is over",
            metadata: ["rules.revision": "\(serving.shortRevision)", "reload.trigger": "\(trigger.rawValue)"])
        watchHub.publish(
            WatchEvents.reloaded(serving, previous: serving, duration: duration, trigger: trigger, recovered: true),
            namespace: namespace)
        notifier.ready(status: statusLine(serving))
    }

    private func looksTransient(_ candidate: [RuleSource], serving: [RuleSource]) -> Bool {
        if candidate.isEmpty { return !serving.isEmpty }
        let paths = Set(candidate.map(\.path))
        return serving.contains { !paths.contains($0.path) }
    }

    private func performTogether(_ jobs: inout [Job]) async {
        guard !jobs.isEmpty else { return }
        let outcome = await perform(jobs.map(\.trigger))
        for job in jobs { job.completion?.resume(returning: outcome) }
        jobs.removeAll()
    }

    // MARK: - rollback and resume

    /// Builds a stored revision like any generation, publishes it and pins the daemon to it.
    private func performRollback(_ name: String) async -> ReloadOutcome {
        let serving = store.generation
        if isStopping { return .failed(.shuttingDown, candidate: nil, serving: serving) }
        let started = SystemClock.monotonicSeconds()
        let history = self.history
        let stored: Result<(HistoryEntry, [RuleSource]), HistoryError>
        do {
            stored = try await loader.runIfActive { () -> Result<(HistoryEntry, [RuleSource]), HistoryError> in
                do throws(HistoryError) {
                    let entry = try history.entry(named: name)
                    return .success((entry, try history.sources(of: entry)))
                } catch {
                    return .failure(error)
                }
            }
        } catch {
            return .failed(.shuttingDown, candidate: nil, serving: serving)
        }
        let entry: HistoryEntry
        let sources: [RuleSource]
        switch stored {
        case .success(let found): (entry, sources) = found
        case .failure(let error): return .failed(RuleLoadFailure(error.message), candidate: nil, serving: serving)
        }
        notifier.reloading(status: "rolling back to \(entry.revision.short)")
        let directory = await scan()
        if directory.isCancelled { return .failed(.shuttingDown, candidate: entry.revision, serving: serving) }
        let result = await build(sources)
        let duration = (SystemClock.monotonicSeconds() - started) * 1000
        switch result {
        case .failure(let failure):
            if failure.cause == .cancelled {
                return .failed(.shuttingDown, candidate: entry.revision, serving: serving)
            }
            logger.error(
                "rollback failed; the previous rules keep serving",
                metadata: ["rules.candidate": "\(entry.revision.short)", "error": "\(WatchEvents.summary(failure))"])
            audit?.record(
                .reload(
                    trigger: .rollback, previous: serving, sources: sources, revision: entry.revision,
                    generation: nil, failure: failure, rulesDirectory: nil))
            notifier.ready(status: statusLine(serving, failure: failure))
            return .failed(failure, candidate: entry.revision, serving: serving)
        case .success(let built):
            let pin = RulePin(revision: entry.revision, directoryRevision: RuleRevision(sources: directory.sources))
            state.withLock { $0.pin = pin }
            guard let generation = publish(built, origin: .history) else {
                return .failed(.shuttingDown, candidate: entry.revision, serving: serving)
            }
            record(
                ReloadRecord(
                    ok: true, outcome: "rolled_back", at: SystemClock.epochSeconds(), durationMilliseconds: duration,
                    trigger: .rollback, revision: entry.revision, failure: nil))
            reloadMetrics.recordReload(ok: true, seconds: duration / 1000)
            logLoaded(generation, duration: duration, trigger: .rollback)
            logger.notice("\(pin.message)", metadata: ["rules.revision": "\(entry.revision.short)"])
            audit?.record(
                .reload(
                    trigger: .rollback, previous: serving, sources: sources, revision: entry.revision,
                    generation: generation, failure: nil, rulesDirectory: nil))
            watchHub.publish(
                WatchEvents.reloaded(
                    generation, previous: serving, duration: duration, trigger: .rollback,
                    stateDirectoryError: savedCopy.error, pin: pin), namespace: namespace)
            notifier.ready(status: statusLine(generation))
            savePin(pin)
            persist(sources, revision: entry.revision, generation: nil, trigger: .rollback)
            return .reloaded(generation, durationMilliseconds: duration)
        }
    }

    /// Leaves the pin, then reloads from the rules directory.
    private func performResume() async -> ReloadOutcome {
        if state.withLock({ $0.pin }) != nil {
            state.withLock { $0.pin = nil }
            savePin(nil)
            logger.notice("leaving the rollback's pin: serving the rules directory again")
        }
        return await perform([.resume])
    }

    /// At start, a pin left by a rollback holds while the rules directory still has the revision it had then.
    private func loadPinned(directoryRevision: RuleRevision, started: Double) async -> ServingGeneration? {
        let history = self.history
        guard let pin = history.loadPin() else { return nil }
        guard pin.directoryRevision == directoryRevision else {
            logger.notice(
                "the rules directory changed while rulesd was stopped: leaving the rollback's pin",
                metadata: ["rules.pinned": "\(pin.revision.short)"])
            try? history.savePin(nil)
            return nil
        }
        let sources = try? await loader.runIfActive { () -> [RuleSource]? in
            guard let entry = try? history.entry(named: pin.revision.hex) else { return nil }
            return try? history.sources(of: entry)
        }
        guard let sources = sources ?? nil, case .success(let built) = await build(sources) else {
            logger.error(
                "the pinned revision cannot be loaded from the history: serving the rules directory",
                metadata: ["rules.pinned": "\(pin.revision.short)"])
            return nil
        }
        state.withLock { $0.pin = pin }
        guard let generation = publish(built, origin: .history) else { return nil }
        let duration = (SystemClock.monotonicSeconds() - started) * 1000
        record(
            ReloadRecord(
                ok: true, outcome: "loaded", at: SystemClock.epochSeconds(), durationMilliseconds: duration,
                trigger: .startup, revision: pin.revision, failure: nil))
        logLoaded(generation, duration: duration, trigger: .startup)
        logger.notice("\(pin.message)", metadata: ["rules.revision": "\(pin.revision.short)"])
        return generation
    }

    /// Stores the pin (or its absence) in the state directory, off the serving path.
    private func savePin(_ pin: RulePin?) {
        let history = self.history
        let logger = self.logger
        loader.submit { poolState in
            guard poolState == .active else { return }
            do {
                try history.savePin(pin)
            } catch {
                logger.warning("cannot store the rollback's pin", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: - building blocks

    struct BuiltGeneration: Sendable {
        var ruleSet: RuleSet
        var evaluators: [NIOLoopBoundBox<RuleEvaluator?>]
        var stateMemory: Int
    }

    private func scan() async -> RuleTreeSnapshot {
        let reader = RuleTreeReader(
            maxFileBytes: settings.limits.maxFileBytes, maxDataBytes: settings.limits.maxDataBytes)
        let root = settings.rulesDirectory
        guard let cancellation = beginLoading() else { return RuleTreeSnapshot(sources: [], isCancelled: true) }
        do {
            return try await loader.runIfActive { reader.read(root: root, cancellation: cancellation) }
        } catch {
            return RuleTreeSnapshot(
                sources: [],
                problems: [RuleDiagnostic(location: SourceLocation(file: "", line: 0), message: "\(error)")])
        }
    }

    /// Compiles the rule set and one Lua state per worker, on the loader thread.
    private func build(_ sources: [RuleSource]) async -> Result<BuiltGeneration, RuleLoadFailure> {
        let limits = settings.limits
        let loops = pool.loops
        guard let cancellation = beginLoading() else { return .failure(.cancelled) }
        do {
            let built = try await loader.runIfActive { () throws -> BuiltGeneration in
                let (ruleSet, first) = try RuleCompiler.compile(sources, limits: limits, cancellation: cancellation)
                let memory = first.memoryInUse
                var boxes = [NIOLoopBoundBox.makeBoxSendingValue(first, as: RuleEvaluator?.self, eventLoop: loops[0])]
                for loop in loops.dropFirst() {
                    let evaluator = try RuleCompiler.makeEvaluator(for: ruleSet, cancellation: cancellation)
                    boxes.append(
                        NIOLoopBoundBox.makeBoxSendingValue(evaluator, as: RuleEvaluator?.self, eventLoop: loop))
                }
                return BuiltGeneration(ruleSet: ruleSet, evaluators: boxes, stateMemory: memory)
            }
            return .success(built)
        } catch let failure as RuleLoadFailure {
            return .failure(failure)
        } catch {
            return .failure(RuleLoadFailure("loading stopped: \(error)", cause: .cancelled))
        }
    }

    /// Publishes a generation, unless stopping began: the check and the switch happen under one lock, so a
    /// generation either went live before stopping began or never does.
    private func publish(_ built: BuiltGeneration, origin: GenerationOrigin) -> ServingGeneration? {
        let published = state.withLock { state -> ServingGeneration? in
            if state.stopping { return nil }
            defer { state.nextGeneration += 1 }
            let generation = ServingGeneration(
                number: state.nextGeneration, ruleSet: built.ruleSet, origin: origin,
                loadedAt: SystemClock.epochSeconds(),
                stateMemory: built.stateMemory, evaluators: built.evaluators)
            store.publish(generation)
            return generation
        }
        guard let generation = published else { return nil }
        reloadMetrics.recordGeneration(generation)
        for observer in publicationObservers.withLock({ $0 }) { observer(generation) }
        // Idle workers switch now, so the previous generation's Lua states are closed promptly.
        pool.refreshAll()
        return generation
    }

    /// Saves the sources as the last known good copy, after answering: the loader thread runs its work in
    /// order, so the copy on disk always ends at the newest generation, and nobody waits for the fsyncs.
    private func persist(
        _ sources: [RuleSource], revision: RuleRevision, generation: ServingGeneration?, trigger: ReloadTrigger
    ) {
        let lkg = lastKnownGood
        let history = self.history
        let entry = generation.map {
            (number: $0.number, at: $0.loadedAt, ruleSet: $0.ruleSet)
        }
        let logger = self.logger
        let directory = settings.stateDirectory
        loader.submit { [self] poolState in
            guard poolState == .active else { return }
            do {
                try lkg.save(sources, revision: revision)
                let recovered = state.withLock { state -> Bool in
                    defer { state.savedCopy = SavedCopyRecord(revision: revision, error: nil) }
                    return state.savedCopy.error != nil
                }
                reloadMetrics.recordSave(ok: true)
                if recovered {
                    logger.info("the last known good rules are saved again", metadata: ["state.dir": "\(directory)"])
                }
            } catch {
                state.withLock { $0.savedCopy.error = "\(error)" }
                reloadMetrics.recordSave(ok: false)
                logger.warning(
                    "cannot save the last known good rules",
                    metadata: ["state.dir": "\(directory)", "error": "\(error)"])
            }
            // The history comes second: the copy that a restart with broken rules needs is saved first.
            if let entry {
                do {
                    try history.record(
                        sources, revision: revision, generation: entry.number, at: entry.at, trigger: trigger.rawValue,
                        flags: entry.ruleSet.flags.count, routes: entry.ruleSet.routes.count,
                        configs: entry.ruleSet.configs.count)
                } catch {
                    logger.warning(
                        "cannot record the rules in the history",
                        metadata: ["state.dir": "\(directory)", "error": "\(error)"])
                }
            }
        }
    }

    private func record(_ record: ReloadRecord) {
        state.withLock { $0.lastRecord = record }
    }

    private func logLoaded(_ generation: ServingGeneration, duration: Double, trigger: ReloadTrigger) {
        let ruleSet = generation.ruleSet
        logger.info(
            "rules loaded",
            metadata: [
                "rules.revision": "\(generation.shortRevision)", "rules.generation": "\(generation.number)",
                "rules.files": "\(ruleSet.files.count)", "rules.flags": "\(ruleSet.flags.count)",
                "rules.routes": "\(ruleSet.routes.count)", "rules.configs": "\(ruleSet.configs.count)",
                "reload.duration_ms": "\(Int(duration.rounded()))", "reload.trigger": "\(trigger.rawValue)",
            ])
    }

    /// One line for systemd's STATUS=: revision, counts, last error.
    func statusLine(_ generation: ServingGeneration?, failure: RuleLoadFailure? = nil) -> String {
        guard let generation else { return "no rules loaded" }
        let ruleSet = generation.ruleSet
        var line =
            "serving \(generation.shortRevision) (generation \(generation.number)): \(ruleSet.flags.count) flags, "
            + "\(ruleSet.routes.count) routes, \(ruleSet.configs.count) configs"
        if generation.origin == .lastKnownGood { line += "; LAST KNOWN GOOD (rules directory does not load)" }
        if let pin { line += "; " + pin.message }
        if let failure, let first = failure.diagnostics.first {
            line += "; last reload failed: \(first)"
        }
        return line
    }
}

extension RuleLoadFailure {
    /// The answer to a reload that stopping abandoned, or that was asked for after stopping began.
    static let shuttingDown = RuleLoadFailure("rulesd is stopping: the reload was abandoned", cause: .cancelled)
}
