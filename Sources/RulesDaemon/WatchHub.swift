import NIOCore
import Synchronization

/// The connections that asked to `watch`, and delivery of events to them.
///
/// Events are rare (one per reload), so a lock here is fine: it is never on the request path.
final class WatchHub: Sendable {
    private struct Subscriber: Sendable {
        var eventLoop: any EventLoop
        /// Only this namespace's events, when the `watch` request named one.
        var namespace: String?
        var deliver: @Sendable ([UInt8]) -> Void
    }

    private let subscribers = Mutex<[ObjectIdentifier: Subscriber]>([:])

    /// Whether events name their namespace: only when the daemon serves more than the default one, so that a
    /// single-namespace daemon's events stay as they always were.
    let namesNamespaces: Bool

    init(namesNamespaces: Bool = false) {
        self.namesNamespaces = namesNamespaces
    }

    /// Registers a connection; `deliver` runs on `eventLoop`.
    /// - Parameter namespace: deliver only the events of this namespace; nil for all.
    func subscribe(
        _ id: ObjectIdentifier, eventLoop: any EventLoop, namespace: String? = nil,
        deliver: @escaping @Sendable ([UInt8]) -> Void
    ) {
        subscribers.withLock { $0[id] = Subscriber(eventLoop: eventLoop, namespace: namespace, deliver: deliver) }
    }

    func unsubscribe(_ id: ObjectIdentifier) {
        _ = subscribers.withLock { $0.removeValue(forKey: id) }
    }

    var count: Int { subscribers.withLock { $0.count } }

    /// Sends one event line (without its newline) to every watcher.
    func publish(_ event: [UInt8]) {
        publish(event, namespace: nil)
    }

    /// Sends one event line of `namespace` to every watcher of it (and to those of all namespaces); the line
    /// gains a leading `"namespace"` member when the daemon serves several.
    func publish(_ event: [UInt8], namespace: String?) {
        let line = namesNamespaces ? Self.naming(namespace, in: event) : event
        let targets = subscribers.withLock { subscribers in
            subscribers.values.filter { $0.namespace == nil || namespace == nil || $0.namespace == namespace }
        }
        for target in targets {
            target.eventLoop.execute { target.deliver(line) }
        }
    }

    /// `{"namespace":"NAME",…}` from `{…}`. Names are `[a-z0-9_-]`, so they need no escaping.
    static func naming(_ namespace: String?, in event: [UInt8]) -> [UInt8] {
        guard let namespace, event.first == UInt8(ascii: "{") else { return event }
        var line: [UInt8] = []
        line.reserveCapacity(event.count + namespace.utf8.count + 16)
        line.append(contentsOf: #"{"namespace":""#.utf8)
        line.append(contentsOf: namespace.utf8)
        line.append(UInt8(ascii: "\""))
        if event.count > 2 { line.append(UInt8(ascii: ",")) }
        line.append(contentsOf: event.dropFirst())
        return line
    }
}
