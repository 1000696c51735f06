import Synchronization

/// How a connection was let in.
public enum Admission: Sendable, Equatable {
    /// Within `max_connections`: every operation.
    case ordinary
    /// Beyond `max_connections`, in the small reserve kept for the liveness and health path: the connection
    /// answers one `ping` or `status` and closes; any other operation is answered TOO_MANY_CONNECTIONS. So one
    /// peer holding every ordinary connection cannot fail `rulesctl ping` and `rulesctl status`, and holding
    /// the reserve too costs it a new connection per request.
    case reserve
}

/// The one owner of the open connections: admits them against the limit, knows how to drain each at
/// shutdown, and tells the shutdown when the last one has closed (no polling of a counter).
public final class ConnectionRegistry: Sendable {
    private struct Entry {
        var drain: (@Sendable () -> Void)?
    }

    private struct State {
        var entries: [ObjectIdentifier: Entry] = [:]
        var draining = false
        var emptyWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Open connections, admitted and not yet closed.
    public var count: Int { state.withLock { $0.entries.count } }

    /// Counts a new connection in, when the limits allow it: up to `limits.maxConnections` as an ordinary
    /// connection, then up to `limits.reservedConnections` more as reserve connections (see
    /// ``Admission/reserve``).
    /// - Returns: how the connection is admitted, or nil when it must be refused.
    func admit(_ key: ObjectIdentifier, limits: ConnectionLimits) -> Admission? {
        state.withLock { state in
            guard !state.draining else { return nil }
            let open = state.entries.count
            let admission: Admission
            if open < limits.maxConnections {
                admission = .ordinary
            } else if open < limits.maxConnections + limits.reservedConnections {
                admission = .reserve
            } else {
                return nil
            }
            state.entries[key] = Entry()
            return admission
        }
    }

    /// Records how to drain an admitted connection; drains it at once when the shutdown already began.
    func setDrain(_ key: ObjectIdentifier, _ drain: @escaping @Sendable () -> Void) {
        let drainNow = state.withLock { state -> Bool in
            guard state.entries[key] != nil else { return false }
            state.entries[key]?.drain = drain
            return state.draining
        }
        if drainNow { drain() }
    }

    /// Counts a connection out.
    func remove(_ key: ObjectIdentifier) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard state.entries.removeValue(forKey: key) != nil, state.entries.isEmpty else { return [] }
            defer { state.emptyWaiters.removeAll() }
            return Array(state.emptyWaiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Refuses new connections from now on and asks every open one to finish what it has read.
    func drainAll() {
        let drains = state.withLock { state -> [@Sendable () -> Void] in
            state.draining = true
            return state.entries.values.compactMap(\.drain)
        }
        for drain in drains { drain() }
    }

    /// Waits until every connection has closed, or `timeout` has passed.
    /// - Returns: true when none is open.
    func waitUntilEmpty(timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.waitUntilEmpty() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first || count == 0
        }
    }

    private func waitUntilEmpty() async -> Bool {
        let id = state.withLock { state -> Int in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.entries.isEmpty || Task.isCancelled { return true }
                    state.emptyWaiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.emptyWaiters.removeValue(forKey: id) }
            waiter?.resume()
        }
        return !Task.isCancelled
    }
}
