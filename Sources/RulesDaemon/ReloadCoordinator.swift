import Logging
import NIOCore
import NIOPosix
import RuleEngine
import RuleModel
import RuleWatcher
import Synchronization

/// What asked for a reload.
public enum ReloadTrigger: String, Sendable {
    case startup
    /// The `reload` operation on the socket (also `rulesctl reload` and systemd's ExecReload=).
    case request = "reload"
    /// SIGHUP.
    case signal = "sighup"
    /// The directory watcher saw changes, or its periodic safety rescan came due.
    case watcher
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
    }

    private struct State: Sendable {
        var jobs: [Job] = []
        var nextGeneration: UInt64 = 1
        var lastFailure: (revision: RuleRevision, failure: RuleLoadFailure)?
        var lastRecord: ReloadRecord?
        var reloads = 0
        var failures = 0
    }

    let settings: DaemonSettings
    let store: GenerationStore
    let pool: WorkerPool
    let loader: NIOThreadPool
    let lastKnownGood: LastKnownGoodStore
    let watchHub: WatchHub
    let notifier: LifecycleNotifier
    let reloadMetrics: ReloadMetrics
    let logger: Logger
    private let state = Mutex(State())
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation

    init(
        settings: DaemonSettings, store: GenerationStore, pool: WorkerPool, loader: NIOThreadPool,
        watchHub: WatchHub, notifier: LifecycleNotifier, reloadMetrics: ReloadMetrics, logger: Logger
    ) {
        self.settings = settings
        self.store = store
        self.pool = pool
        self.loader = loader
        self.lastKnownGood = LastKnownGoodStore(stateDirectory: settings.stateDirectory)
        self.watchHub = watchHub
        self.notifier = notifier
        self.reloadMetrics = reloadMetrics
        self.logger = logger
        (wake, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// The last reload attempt.
    public var lastReload: ReloadRecord? { state.withLock { $0.lastRecord } }

    /// Asks for a reload and waits for its outcome.
    public func reload(_ trigger: ReloadTrigger) async -> ReloadOutcome {
        await withCheckedContinuation { continuation in
            state.withLock { $0.jobs.append(Job(trigger: trigger, completion: continuation)) }
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
                let outcome = await perform(batch.map(\.trigger))
                for job in batch { job.completion?.resume(returning: outcome) }
            }
        }
        // Whoever still waits gets the current state rather than hanging at shutdown.
        let leftovers = state.withLock { state -> [Job] in
            defer { state.jobs.removeAll() }
            return state.jobs
        }
        for job in leftovers {
            job.completion?.resume(
                returning: .failed(
                    RuleLoadFailure("rulesd is shutting down"), candidate: nil, serving: store.generation))
        }
    }

    /// Stops `run()` after the reload in progress.
    func finish() {
        wakeContinuation.finish()
    }

    // MARK: - start-up

    /// Loads the rules directory at start; falls back to the last known good copy.
    /// - Returns: the first generation.
    /// - Throws: every problem of the rules directory when there is no usable last known good copy.
    func loadInitial() async throws(RuleLoadFailure) -> ServingGeneration {
        let started = RuleClockTime.monotonic()
        let snapshot = await scan()
        let revision = RuleRevision(sources: snapshot.sources)
        var failure: RuleLoadFailure
        if snapshot.problems.isEmpty {
            switch await build(snapshot.sources) {
            case .success(let built):
                let generation = publish(built, origin: .rulesDirectory)
                let duration = (RuleClockTime.monotonic() - started) * 1000
                record(
                    ReloadRecord(
                        ok: true, outcome: "loaded", at: RuleClockTime.now(), durationMilliseconds: duration,
                        trigger: .startup, revision: revision, failure: nil))
                logLoaded(generation, duration: duration, trigger: .startup)
                persist(snapshot.sources, revision: revision)
                return generation
            case .failure(let problem):
                failure = problem
            }
        } else {
            failure = RuleLoadFailure(diagnostics: snapshot.problems)
        }
        let duration = (RuleClockTime.monotonic() - started) * 1000
        state.withLock { $0.lastFailure = (revision, failure) }
        record(
            ReloadRecord(
                ok: false, outcome: "failed", at: RuleClockTime.now(), durationMilliseconds: duration,
                trigger: .startup,
                revision: revision, failure: failure))
        for diagnostic in failure.diagnostics {
            logger.error("rule problem", metadata: ["rules.problem": "\(diagnostic)"])
        }
        let maxFileBytes = settings.limits.maxFileBytes
        let lkg = lastKnownGood
        let saved = try? await loader.runIfActive { lkg.load(maxFileBytes: maxFileBytes) }
        guard let saved = saved ?? nil else { throw failure }
        switch await build(saved.sources) {
        case .success(let built):
            let generation = publish(built, origin: .lastKnownGood)
            logger.critical(
                "the rules directory does not load: serving the last known good rules from the state directory",
                metadata: [
                    "rules.dir": "\(settings.rulesDirectory)", "rules.revision": "\(saved.revision.short)",
                    "rules.problems": "\(failure.diagnostics.count)", "state.dir": "\(settings.stateDirectory)",
                ])
            return generation
        case .failure(let problem):
            logger.error("the last known good copy does not load either", metadata: ["rules.problem": "\(problem)"])
            throw failure
        }
    }

    // MARK: - one reload

    private func perform(_ triggers: [ReloadTrigger]) async -> ReloadOutcome {
        let started = RuleClockTime.monotonic()
        let explicit = triggers.contains { $0 == .request || $0 == .signal }
        let trigger = triggers.first { $0 == .request } ?? triggers.first { $0 == .signal } ?? .watcher
        if explicit { notifier.reloading(status: "reloading rules from \(settings.rulesDirectory)") }
        var snapshot = await scan()
        var revision = RuleRevision(sources: snapshot.sources)
        let serving = store.generation
        if snapshot.problems.isEmpty, let serving, serving.origin == .rulesDirectory,
            serving.ruleSet.revision == revision
        {
            if explicit { notifier.ready(status: statusLine(serving)) }
            record(
                ReloadRecord(
                    ok: true, outcome: "unchanged", at: RuleClockTime.now(),
                    durationMilliseconds: (RuleClockTime.monotonic() - started) * 1000, trigger: trigger,
                    revision: revision, failure: nil))
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
                let againRevision = RuleRevision(sources: again.sources)
                if againRevision == revision && again.problems == snapshot.problems { break }
                snapshot = again
                revision = againRevision
            }
            if snapshot.problems.isEmpty, serving.ruleSet.revision == revision, serving.origin == .rulesDirectory {
                return .unchanged(serving)
            }
        }
        if !explicit { notifier.reloading(status: "reloading rules from \(settings.rulesDirectory)") }
        let result: Result<BuiltGeneration, RuleLoadFailure>
        if snapshot.problems.isEmpty {
            result = await build(snapshot.sources)
        } else {
            result = .failure(RuleLoadFailure(diagnostics: snapshot.problems))
        }
        let duration = (RuleClockTime.monotonic() - started) * 1000
        switch result {
        case .success(let built):
            let generation = publish(built, origin: .rulesDirectory)
            state.withLock {
                $0.lastFailure = nil
                $0.reloads += 1
            }
            record(
                ReloadRecord(
                    ok: true, outcome: "reloaded", at: RuleClockTime.now(), durationMilliseconds: duration,
                    trigger: trigger, revision: revision, failure: nil))
            reloadMetrics.recordReload(ok: true, seconds: duration / 1000)
            logLoaded(generation, duration: duration, trigger: trigger)
            watchHub.publish(WatchEvents.reloaded(generation, previous: serving, duration: duration, trigger: trigger))
            notifier.ready(status: statusLine(generation))
            persist(snapshot.sources, revision: revision)
            return .reloaded(generation, durationMilliseconds: duration)
        case .failure(let failure):
            state.withLock {
                $0.lastFailure = (revision, failure)
                $0.failures += 1
            }
            record(
                ReloadRecord(
                    ok: false, outcome: "failed", at: RuleClockTime.now(), durationMilliseconds: duration,
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
            watchHub.publish(WatchEvents.reloadFailed(failure, candidate: revision, serving: serving, trigger: trigger))
            notifier.ready(status: statusLine(serving, failure: failure))
            return .failed(failure, candidate: revision, serving: serving)
        }
    }

    private func looksTransient(_ candidate: [RuleSource], serving: [RuleSource]) -> Bool {
        if candidate.isEmpty { return !serving.isEmpty }
        let paths = Set(candidate.map(\.path))
        return serving.contains { !paths.contains($0.path) }
    }

    // MARK: - building blocks

    struct BuiltGeneration: Sendable {
        var ruleSet: RuleSet
        var evaluators: [NIOLoopBoundBox<RuleEvaluator?>]
        var stateMemory: Int
    }

    private func scan() async -> RuleTreeSnapshot {
        let reader = RuleTreeReader(maxFileBytes: settings.limits.maxFileBytes)
        let root = settings.rulesDirectory
        do {
            return try await loader.runIfActive { reader.read(root: root) }
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
        do {
            let built = try await loader.runIfActive { () throws -> BuiltGeneration in
                let (ruleSet, first) = try RuleCompiler.compile(sources, limits: limits)
                let memory = first.memoryInUse
                var boxes = [NIOLoopBoundBox.makeBoxSendingValue(first, as: RuleEvaluator?.self, eventLoop: loops[0])]
                for loop in loops.dropFirst() {
                    let evaluator = try RuleCompiler.makeEvaluator(for: ruleSet)
                    boxes.append(
                        NIOLoopBoundBox.makeBoxSendingValue(evaluator, as: RuleEvaluator?.self, eventLoop: loop))
                }
                return BuiltGeneration(ruleSet: ruleSet, evaluators: boxes, stateMemory: memory)
            }
            return .success(built)
        } catch let failure as RuleLoadFailure {
            return .failure(failure)
        } catch {
            return .failure(RuleLoadFailure("loading stopped: \(error)"))
        }
    }

    private func publish(_ built: BuiltGeneration, origin: GenerationOrigin) -> ServingGeneration {
        let number = state.withLock { state -> UInt64 in
            defer { state.nextGeneration += 1 }
            return state.nextGeneration
        }
        let generation = ServingGeneration(
            number: number, ruleSet: built.ruleSet, origin: origin, loadedAt: RuleClockTime.now(),
            stateMemory: built.stateMemory, evaluators: built.evaluators)
        store.publish(generation)
        reloadMetrics.recordGeneration(generation)
        // Idle workers switch now, so the previous generation's Lua states are closed promptly.
        pool.refreshAll()
        return generation
    }

    /// Saves the sources as the last known good copy, after answering: the loader thread runs its work in
    /// order, so the copy on disk always ends at the newest generation, and nobody waits for the fsyncs.
    private func persist(_ sources: [RuleSource], revision: RuleRevision) {
        let lkg = lastKnownGood
        let logger = self.logger
        let directory = settings.stateDirectory
        loader.submit { state in
            guard state == .active else { return }
            do {
                try lkg.save(sources, revision: revision)
            } catch {
                logger.warning(
                    "cannot save the last known good rules",
                    metadata: ["state.dir": "\(directory)", "error": "\(error)"])
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
        if let failure, let first = failure.diagnostics.first {
            line += "; last reload failed: \(first)"
        }
        return line
    }
}
