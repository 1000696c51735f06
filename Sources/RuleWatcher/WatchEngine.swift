import CInotifyTools
import Glibc
import Logging

/// Everything the watcher thread does: owns libinotifytools while in inotify mode, polls otherwise.
///
/// Lives on its one thread from start to exit; nothing else touches it. It watches one root or several (the
/// library allows one instance per process, so the roots of a group share it): each root has its own registry
/// and reports only to its own `WatcherCore`, so an event in one root signals that root alone. The instance is
/// shared, though, so a rebuild (an overflow, a root replaced) re-watches every root and each rescans once.
final class WatchEngine {
    /// One root: its watches in the current instance and the core it reports to.
    private final class Member {
        let core: WatcherCore
        let root: String
        let logger: Logger
        var registry = WatchRegistry(addWatch: InotifyLibrary.addWatch)
        var rootPresent = false
        var nextRootCheck = ContinuousClock.now

        init(core: WatcherCore, root: String) {
            self.core = core
            self.root = root.hasPrefix("/") ? root : PathResolver.join(PathResolver.currentDirectory(), root)
            var logger = core.logger
            logger[metadataKey: "rules.watcher.root"] = "\(self.root)"
            self.logger = logger
        }
    }

    private let members: [Member]
    private let settings: WatchSettings
    /// For what concerns the instance rather than one root.
    private let logger: Logger
    private let holder = InotifyLibrary.newHolderID()

    private var holdsLibrary = false
    /// Whether the library's read buffer is known to be empty (the last read timed out).
    private var drained = true
    private var pendingRebuild: (reason: String, since: ContinuousClock.Instant)?

    /// How long a rebuild waits for the queue to fall quiet before going ahead anyway.
    private let rebuildDrainLimit: Duration = .seconds(5)
    /// How long the first setup waits for a previous watcher in this process to let go of the library.
    private let leaseWait: Duration = .seconds(3)
    /// Interrupts this thread's read once the queue has been quiet for `drainWindow` while a rebuild waits for
    /// it: the library's own wait is a whole second, which made a ConfigMap swap (a rebuild) go live about a
    /// second later than a plain edit. Nil when no timer could be made: reads then wait the library's second.
    private var readInterrupter: ReadInterrupter?
    /// How long the queue must be quiet before a rebuild goes ahead.
    private var drainWindow: Duration { min(settings.quietWindow / 4, .milliseconds(50)) }

    convenience init(core: WatcherCore, root: String) {
        self.init(members: [(core, root)])
    }

    /// - Parameter members: every root with its core; the first one's `forcePolling` applies to all, and the
    ///   shortest of each interval paces the shared work (reads, polls, retries).
    init(members: [(core: WatcherCore, root: String)]) {
        precondition(!members.isEmpty, "a watch engine needs a root")
        self.members = members.map { Member(core: $0.core, root: $0.root) }
        var settings = members[0].core.settings
        for other in members.dropFirst().map(\.core.settings) {
            settings.quietWindow = min(settings.quietWindow, other.quietWindow)
            settings.maxDelay = min(settings.maxDelay, other.maxDelay)
            settings.pollInterval = min(settings.pollInterval, other.pollInterval)
            settings.inotifyRetryInterval = min(settings.inotifyRetryInterval, other.inotifyRetryInterval)
        }
        self.settings = settings
        if self.members.count == 1 {
            logger = self.members[0].logger
        } else {
            var logger = members[0].core.logger
            logger[metadataKey: "rules.watcher.roots"] = "\(self.members.map(\.root).joined(separator: ", "))"
            self.logger = logger
        }
    }

    /// The thread stops once every root's watcher is stopped.
    private var stopping: Bool { members.allSatisfy { $0.core.isStopping } }

    /// The thread's body: runs until `stop()`.
    func run() {
        readInterrupter = ReadInterrupter.forCurrentThread()
        defer {
            releaseLibrary()
            readInterrupter = nil
        }
        var fallback: String?
        if settings.forcePolling {
            fallback = "forcePolling is set"
        } else if case .unavailable(let reason) = setUpInotify(reason: "watching started", waitForLease: true) {
            fallback = reason
        }
        while !stopping {
            if let reason = fallback {
                releaseLibrary()
                for member in members {
                    member.core.setMode(.polling(reason: reason))
                    member.core.setWatchedDirectories(0)
                    member.logger.info(
                        "watching the rules directory by polling",
                        metadata: ["rules.watcher.mode": "polling", "rules.watcher.reason": "\(reason)"])
                    member.core.finishRebuild(reason: "polling: \(reason)", countsAsRebuild: false)
                }
                guard pollUntilInotifyReturns() else { return }
                fallback = nil
            }
            switch watchWithInotify() {
            case .stopped: return
            case .unavailable(let reason): fallback = reason
            }
        }
    }

    // MARK: - inotify mode

    private enum Outcome {
        case stopped
        case unavailable(String)
    }

    private enum Setup {
        case ready
        case unavailable(String)
    }

    /// Takes the library, starts an instance and watches everything; on success the mode is inotify and a
    /// rebuild signal is on its way.
    private func setUpInotify(reason: String, waitForLease: Bool) -> Setup {
        let deadline = ContinuousClock.now + (waitForLease ? leaseWait : .zero)
        var stale = InotifyLibrary.acquire(holder)
        while stale == nil && ContinuousClock.now < deadline && !stopping {
            sleep(for: .milliseconds(50))
            stale = InotifyLibrary.acquire(holder)
        }
        guard let stale else {
            return .unavailable("libinotifytools is in use by another watcher in this process")
        }
        holdsLibrary = true
        drained = !stale
        // No signal can be recorded meanwhile (this thread is the only source), so none needs holding.
        switch rebuild() {
        case .ready:
            for member in members {
                member.core.setMode(.inotify)
                member.logger.info(
                    "watching the rules directory with inotify",
                    metadata: [
                        "rules.watcher.mode": "inotify",
                        "rules.watcher.watches": "\(member.registry.count)",
                        "rules.watcher.reason": "\(reason)",
                    ])
                member.core.finishRebuild(reason: reason)
            }
            return .ready
        case .unavailable(let why):
            releaseLibrary()
            return .unavailable(why)
        }
    }

    /// A fresh library instance with every watch added. The caller holds signals (`beginRebuild`) and releases
    /// them (`finishRebuild`).
    private func rebuild() -> Setup {
        if holdsLibrary { InotifyLibrary.cleanup() }
        for member in members { member.registry = WatchRegistry(addWatch: InotifyLibrary.addWatch) }
        pendingRebuild = nil
        switch InotifyLibrary.initialize() {
        case nil:
            break
        case .system(let code):
            let limit =
                WatchRegistry.readSmallFile("/proc/sys/user/max_inotify_instances")
                ?? WatchRegistry.readSmallFile("/proc/sys/fs/inotify/max_user_instances") ?? "?"
            return .unavailable(
                code == EMFILE
                    ? "inotify_init failed: too many inotify instances (max_inotify_instances=\(limit))"
                    : "inotify_init failed: \(String(cString: strerror(code)))")
        case .descriptorTooHigh:
            return .unavailable("the inotify descriptor is above select()'s limit of \(InotifyLibrary.selectLimit)")
        }
        if !drained { drainStaleEvents() }
        for member in members {
            do {
                member.rootPresent = try member.registry.register(root: member.root)
            } catch {
                return .unavailable(error.reason)
            }
            member.core.setWatchedDirectories(member.registry.count)
            member.nextRootCheck = ContinuousClock.now + settings.pollInterval
            if !member.rootPresent {
                member.logger.info(
                    "the rules directory does not exist; watching for it to appear",
                    metadata: ["rules.watcher.watches": "\(member.registry.count)"])
            }
        }
        return .ready
    }

    /// Reads and drops what the buffer still holds from an earlier instance, before any watch exists, so none of
    /// it is taken for an event of the new watches.
    private func drainStaleEvents() {
        let deadline = ContinuousClock.now + rebuildDrainLimit
        while !stopping && ContinuousClock.now < deadline {
            if case .event = readEvent(interruptAfter: drainWindow) { continue }
            break
        }
        drained = true
        InotifyLibrary.noteBuffer(holder, drained: true)
    }

    /// The event loop: one blocking read at a time, at most a second each, so `stop()` is seen promptly.
    private func watchWithInotify() -> Outcome {
        while true {
            if stopping { return .stopped }
            let paused = members.filter { $0.core.readingPaused.load(ordering: .acquiring) }
            for member in members {
                member.core.readingPauseObserved.store(!paused.isEmpty, ordering: .releasing)
            }
            if !paused.isEmpty {
                sleep(for: .milliseconds(10))
                continue
            }
            switch readEvent(interruptAfter: pendingRebuild == nil ? nil : drainWindow) {
            case .event(let event):
                drained = false
                handle(event)
                if let pending = pendingRebuild, ContinuousClock.now - pending.since >= rebuildDrainLimit {
                    // The queue never fell quiet: rebuild anyway and drop what the old instance buffered.
                    if case .unavailable(let why) = performRebuild() { return .unavailable(why) }
                }
            case .timeout:
                drained = true
                if pendingRebuild != nil {
                    if case .unavailable(let why) = performRebuild() { return .unavailable(why) }
                }
            case .failure(let code):
                let message = String(cString: strerror(code))
                logger.debug(
                    "reading inotify events failed; rebuilding", metadata: ["rules.watcher.error": "\(message)"])
                drained = false
                failedReads += 1
                // A fresh instance fixes a broken descriptor; reads that fail again and again mean inotify is not
                // usable here, and rebuilding in a loop would only spin.
                if failedReads >= 3 { return .unavailable("reading inotify events keeps failing: \(message)") }
                requestRebuild("reading events failed: \(message)")
                if case .unavailable(let why) = performRebuild() { return .unavailable(why) }
                continue
            }
            failedReads = 0
            if let reason = unavailableReason {
                unavailableReason = nil
                return .unavailable(reason)
            }
            for member in members { checkForMissingRoot(member) }
        }
    }

    /// One read; with `interruptAfter`, it ends as a timeout once that long passes without an event (the library
    /// only waits when its buffer is empty, so an interrupted wait means the same as its own timeout).
    private func readEvent(interruptAfter window: Duration?) -> InotifyLibrary.Read {
        guard let window, let readInterrupter else { return InotifyLibrary.nextEvent() }
        readInterrupter.arm(after: window)
        defer { readInterrupter.disarm() }
        return InotifyLibrary.nextEvent()
    }

    private func performRebuild() -> Setup {
        let reason = pendingRebuild?.reason ?? "rebuild"
        logger.debug("rebuilding every watch", metadata: ["rules.watcher.reason": "\(reason)"])
        let outcome = rebuild()
        if case .ready = outcome {
            for member in members { member.core.finishRebuild(reason: reason) }
        }
        return outcome
    }

    private func requestRebuild(_ reason: String) {
        guard pendingRebuild == nil else { return }
        pendingRebuild = (reason, ContinuousClock.now)
        // The instance is shared: every root's watches are rebuilt, and each root is rescanned afterwards.
        for member in members { member.core.beginRebuild() }
    }

    /// While the root is missing its parent is watched, but a root that appears through a path no watch covers
    /// (an ancestor created, a mount) is also caught by looking for it now and then.
    private func checkForMissingRoot(_ member: Member) {
        guard !member.rootPresent, pendingRebuild == nil, ContinuousClock.now >= member.nextRootCheck else { return }
        member.nextRootCheck = ContinuousClock.now + settings.pollInterval
        var st = stat()
        if stat(member.root, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
            requestRebuild("the rules directory appeared")
        }
    }

    /// Hands the event to the roots that watch its directory (a directory two roots share goes to both); an
    /// overflow, or an event of no known watch, goes to every root, so nothing is lost.
    private func handle(_ event: InotifyLibrary.Event) {
        let owners = members.filter { $0.registry.directories[event.descriptor] != nil }
        let toEveryRoot = owners.isEmpty || event.mask & UInt32(IN_Q_OVERFLOW) != 0
        for member in toEveryRoot ? members : owners {
            handle(event, for: member)
        }
    }

    private func handle(_ event: InotifyLibrary.Event, for member: Member) {
        let registry = member.registry
        let core = member.core
        let logger = member.logger
        let verdict = registry.verdict(descriptor: event.descriptor, mask: event.mask, name: event.name)
        core.countEvent(overflow: verdict.overflow)
        if logger.logLevel <= .trace {
            logger.trace(
                "inotify event",
                metadata: [
                    "rules.watcher.wd": "\(event.descriptor)", "rules.watcher.mask": "\(event.mask)",
                    "rules.watcher.name": "\(event.name)", "rules.watcher.relevant": "\(verdict.relevant)",
                ])
        }
        if let reason = verdict.rebuild {
            requestRebuild(reason)
        }
        if verdict.relevant {
            core.recordChange(opened: verdict.writeOpened, closed: verdict.writeClosed)
        }
        // While a rebuild is pending the registry is out of date; the rebuild will walk the new entries anyway.
        if let appeared = verdict.appeared, pendingRebuild == nil {
            do {
                try member.registry.registerEntry(
                    in: appeared.directory, name: appeared.name, depth: appeared.depth)
                core.setWatchedDirectories(member.registry.count)
            } catch {
                // The watch limit was hit on the way: give up inotify; the switch to polling signals a rescan.
                unavailableReason = error.reason
            }
        }
    }

    /// Set when adding a watch for a new directory failed for good; the event loop then switches to polling.
    private var unavailableReason: String?
    /// Reads in a row that failed (not timed out).
    private var failedReads = 0

    private func releaseLibrary() {
        pendingRebuild = nil
        guard holdsLibrary else { return }
        InotifyLibrary.cleanup()
        InotifyLibrary.release(holder, drained: drained)
        holdsLibrary = false
        for member in members { member.registry = WatchRegistry(addWatch: InotifyLibrary.addWatch) }
    }

    // MARK: - Polling mode

    /// Polls until inotify can be used again (then returns true, watching) or until stopped (false).
    private func pollUntilInotifyReturns() -> Bool {
        var fingerprints = members.map(takeFingerprint)
        var nextRetry = ContinuousClock.now + settings.inotifyRetryInterval
        while true {
            guard sleepUnlessStopped(settings.pollInterval) else { return false }
            for (index, member) in members.enumerated() {
                var current = takeFingerprint(member)
                guard current != fingerprints[index] else { continue }
                // Let a burst (a checkout, a copy) finish before signalling, as the quiet window does for events.
                let start = ContinuousClock.now
                while ContinuousClock.now - start < settings.maxDelay {
                    guard sleepUnlessStopped(settings.quietWindow) else { return false }
                    let again = takeFingerprint(member)
                    if again == current { break }
                    current = again
                }
                fingerprints[index] = current
                member.core.pollDetectedChange()
            }
            if !settings.forcePolling && ContinuousClock.now >= nextRetry {
                nextRetry = ContinuousClock.now + settings.inotifyRetryInterval
                switch setUpInotify(reason: "inotify is available again", waitForLease: false) {
                case .ready: return true
                case .unavailable(let reason):
                    for member in members { member.core.setMode(.polling(reason: reason)) }
                    logger.debug("inotify is still unavailable", metadata: ["rules.watcher.reason": "\(reason)"])
                }
            }
        }
    }

    private func takeFingerprint(_ member: Member) -> TreeFingerprint {
        member.core.countPoll()
        return TreeFingerprint.take(root: member.root)
    }

    /// Sleeps in short slices so that `stop()` is honoured within 50 ms. Returns false when stopped.
    private func sleepUnlessStopped(_ duration: Duration) -> Bool {
        let deadline = ContinuousClock.now + duration
        while true {
            if stopping { return false }
            let left = deadline - ContinuousClock.now
            if left <= .zero { return true }
            sleep(for: min(left, .milliseconds(50)))
        }
    }

    private func sleep(for duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR {
            request = remaining
        }
    }
}

/// A timer that interrupts the blocking read of the thread that made it, with SIGURG (see CInotifyTools' shim).
final class ReadInterrupter {
    /// The kernel's timer id (nil for the first timer, whose id is 0).
    private let timer: UnsafeMutableRawPointer?

    private static let handlerInstalled: Bool = rulesd_install_wake_handler() == 0

    private init(timer: UnsafeMutableRawPointer?) {
        self.timer = timer
    }

    /// A timer for the calling thread; nil when the signal handler or the timer cannot be set up.
    static func forCurrentThread() -> ReadInterrupter? {
        var timer: UnsafeMutableRawPointer?
        guard handlerInstalled, rulesd_thread_timer_create(&timer) == 0 else { return nil }
        return ReadInterrupter(timer: timer)
    }

    deinit { rulesd_thread_timer_delete(timer) }

    func arm(after duration: Duration) {
        let (seconds, attoseconds) = duration.components
        _ = rulesd_thread_timer_arm(timer, max(seconds * 1_000_000_000 + attoseconds / 1_000_000_000, 1))
    }

    func disarm() { _ = rulesd_thread_timer_arm(timer, 0) }
}
