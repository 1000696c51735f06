import RuleModel

/// One thing that happened to the rules, as `watch` reports it, or to the watch itself.
public enum WatchEvent: Sendable, Hashable {
    /// A new rule set went live.
    case reloaded(Reloaded)
    /// A changed rule set did not load; the previous one keeps serving.
    case reloadFailed(ReloadFailed)
    /// An event this version of the library does not know: its name and the whole line.
    case other(name: String, line: JSONObject)
    /// The daemon confirmed the subscription: always the first event, and again after each
    /// ``disconnected(_:)`` once the watch has subscribed again. Reloads while disconnected were not reported,
    /// so re-read anything cached. `revision` (16 hex digits) and `generation` are what serves now.
    case subscribed(revision: String, generation: Int64)
    /// The connection to the daemon was lost, or could not be made; the watch connects and subscribes again,
    /// with back-off. Given once per outage.
    case disconnected(RulesdClientError)

    /// A `reloaded` event.
    public struct Reloaded: Sendable, Hashable {
        /// The full revision now serving.
        public var revision: String
        public var generation: Int64
        public var previousRevision: String?
        /// `watcher`, `reload`, `sighup`, `rollback` or `resume`.
        public var trigger: String
        /// The whole event line.
        public var line: JSONObject
    }

    /// A `reload_failed` event.
    public struct ReloadFailed: Sendable, Hashable {
        /// The revision of the rules that did not load.
        public var revision: String?
        /// The revision that keeps serving.
        public var servingRevision: String?
        public var trigger: String
        /// The daemon's error, with `problems` (each with `file`, `line`, `message`) in its details.
        public var error: DaemonError
        /// The whole event line.
        public var line: JSONObject
    }

    init(line: JSONObject) {
        let name = line["event"]?.stringValue ?? ""
        switch name {
        case "reloaded":
            self = .reloaded(
                Reloaded(
                    revision: line["revision"]?.stringValue ?? "", generation: line["generation"]?.int64Value ?? 0,
                    previousRevision: line["previous_revision"]?.stringValue,
                    trigger: line["trigger"]?.stringValue ?? "", line: line))
        case "reload_failed":
            self = .reloadFailed(
                ReloadFailed(
                    revision: line["revision"]?.stringValue, servingRevision: line["serving_revision"]?.stringValue,
                    trigger: line["trigger"]?.stringValue ?? "",
                    error: ClientProtocolHandler.daemonError(line["error"] ?? .null), line: line))
        default:
            self = .other(name: name, line: line)
        }
    }
}
