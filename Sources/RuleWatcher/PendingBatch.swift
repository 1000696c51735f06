/// The events gathered since the last signal, and when the next signal is due.
///
/// A pure state machine over instants, so the debounce rules can be checked without waiting.
struct PendingBatch {
    typealias Instant = ContinuousClock.Instant

    /// Relevant events in the batch.
    private(set) var events = 0
    private(set) var firstAt: Instant?
    private(set) var lastAt: Instant?
    /// Rule files written to and not yet closed: each postpones the signal up to the cap.
    private(set) var openWrites: Set<String> = []
    /// A rebuild has been asked for and is not done: nothing may be signalled before the watches are back.
    private(set) var rebuilding = false
    private var rebuildReason: String?
    private var pollChanged = false

    /// What the coordinator should do next.
    enum Decision: Equatable {
        /// Nothing pending.
        case idle
        /// A rebuild is under way; its end will be rung.
        case hold
        /// Wait until this instant (or a new event) and decide again.
        case wait(until: Instant)
        /// Send this signal now; the batch has been emptied.
        case emit(ChangeSignal)
    }

    var isEmpty: Bool { firstAt == nil && !rebuilding }

    /// Records a relevant event.
    /// - Returns: whether the signal may now be due earlier than decided before (a first event, or the last
    ///   open write closed), so that a waiting coordinator must decide again. Other events only push the due
    ///   time later, which the coordinator finds out when its wait ends.
    @discardableResult
    mutating func record(at now: Instant, opened: String? = nil, closed: String? = nil) -> Bool {
        let wasEmpty = firstAt == nil
        let hadOpenWrites = !openWrites.isEmpty
        events += 1
        touch(now)
        if let closed { openWrites.remove(closed) }
        if let opened { openWrites.insert(opened) }
        return wasEmpty || (hadOpenWrites && openWrites.isEmpty)
    }

    mutating func beginRebuild(at now: Instant) {
        rebuilding = true
        touch(now)
    }

    mutating func finishRebuild(reason: String, at now: Instant) {
        rebuilding = false
        rebuildReason = reason
        // Whatever was open was seen by the old watches; the rescan after the rebuild reads what is there now.
        openWrites.removeAll()
        touch(now)
    }

    mutating func pollDetectedChange(at now: Instant) {
        pollChanged = true
        touch(now)
    }

    private mutating func touch(_ now: Instant) {
        if firstAt == nil { firstAt = now }
        lastAt = now
    }

    /// Decides at `now`: a trailing quiet window after the last event, never later than the cap after the first
    /// one; while a rule file is open for writing, only the cap ends the wait.
    mutating func decide(now: Instant, quietWindow: Duration, maxDelay: Duration) -> Decision {
        guard let firstAt, let lastAt else { return rebuilding ? .hold : .idle }
        if rebuilding { return .hold }
        let cap = firstAt + maxDelay
        let due = openWrites.isEmpty ? min(lastAt + quietWindow, cap) : cap
        guard now >= due else { return .wait(until: due) }
        let cause: ChangeSignal.Cause
        if let rebuildReason {
            cause = .watchesRebuilt(rebuildReason)
        } else if pollChanged {
            cause = .pollDetectedChange
        } else {
            cause = .filesChanged
        }
        let signal = ChangeSignal(cause: cause, eventCount: events)
        self = PendingBatch()
        return .emit(signal)
    }
}
