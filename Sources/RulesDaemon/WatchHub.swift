import NIOCore
import Synchronization

/// The connections that asked to `watch`, and delivery of events to them.
///
/// Events are rare (one per reload), so a lock here is fine: it is never on the request path.
final class WatchHub: Sendable {
    private struct Subscriber: Sendable {
        var eventLoop: any EventLoop
        var deliver: @Sendable ([UInt8]) -> Void
    }

    private let subscribers = Mutex<[ObjectIdentifier: Subscriber]>([:])

    /// Registers a connection; `deliver` runs on `eventLoop`.
    func subscribe(_ id: ObjectIdentifier, eventLoop: any EventLoop, deliver: @escaping @Sendable ([UInt8]) -> Void) {
        subscribers.withLock { $0[id] = Subscriber(eventLoop: eventLoop, deliver: deliver) }
    }

    func unsubscribe(_ id: ObjectIdentifier) {
        _ = subscribers.withLock { $0.removeValue(forKey: id) }
    }

    var count: Int { subscribers.withLock { $0.count } }

    /// Sends one event line (without its newline) to every watcher.
    func publish(_ event: [UInt8]) {
        let targets = subscribers.withLock { Array($0.values) }
        for target in targets {
            target.eventLoop.execute { target.deliver(event) }
        }
    }
}
