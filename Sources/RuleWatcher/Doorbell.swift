import Synchronization

/// Wakes one async waiter from any thread, or lets it sleep until a deadline, whichever comes first.
///
/// The watcher thread rings after each event; the coordinator task waits on it between decisions. A ring with
/// nobody waiting is remembered, so a ring between two waits is never lost.
final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var nextWait: UInt64 = 0
        /// The wait whose deadline passed before its continuation was installed.
        var expired: UInt64?
        var waiter: (id: UInt64, continuation: CheckedContinuation<Void, Never>)?
    }

    private let state = Mutex(State())

    /// Wakes the waiter, or the next one if nobody is waiting.
    func ring() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.rung = true
                return nil
            }
            state.waiter = nil
            return waiter.continuation
        }
        waiter?.resume()
    }

    /// Returns after a ring (including one that came since the last wait) or at `deadline`.
    /// One waiter at a time.
    func wait(until deadline: ContinuousClock.Instant) async {
        let id = state.withLock { state -> UInt64 in
            state.nextWait += 1
            return state.nextWait
        }
        let timer = Task { [self] in
            try? await Task.sleep(until: deadline, clock: .continuous)
            expire(id)
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                if state.rung || state.expired == id {
                    state.rung = false
                    return true
                }
                state.waiter = (id, continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
        timer.cancel()
    }

    private func expire(_ id: UInt64) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter, waiter.id == id else {
                state.expired = id
                return nil
            }
            state.waiter = nil
            return waiter.continuation
        }
        waiter?.resume()
    }
}
