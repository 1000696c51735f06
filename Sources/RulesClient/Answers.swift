import RuleModel

/// Which rule set computed an answer: every answer is computed entirely by one generation.
public struct ServedBy: Sendable, Hashable {
    /// The first 16 hex digits of the rule set's revision.
    public var revision: String
    /// The generation counter, which increases with every rule set that goes live.
    public var generation: Int64
}

/// Why a flag has the value it has (docs/PROTOCOL.md, `flag`). Unknown reasons keep their spelling.
public struct FlagReason: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    /// The flag has no rule.
    public static let `static` = FlagReason(rawValue: "STATIC")
    /// The rule chose the variant.
    public static let targetingMatch = FlagReason(rawValue: "TARGETING_MATCH")
    /// The rule returned nil: the default variant.
    public static let `default` = FlagReason(rawValue: "DEFAULT")
    /// The flag is disabled.
    public static let disabled = FlagReason(rawValue: "DISABLED")
    /// The rule failed: the default variant, with ``FlagAnswer/ruleError``.
    public static let error = FlagReason(rawValue: "ERROR")
    /// An override forces the variant until it expires (docs/PROTOCOL.md, `override_set`).
    public static let override = FlagReason(rawValue: "OVERRIDE")

    public var description: String { rawValue }
}

/// Why a rule failed while the answer still carries a usable value (`error_code`, `error_message`).
public struct RuleFailure: Sendable, Hashable {
    /// `GENERAL`, `RESOURCE_LIMIT`, `TYPE_MISMATCH`, `INVALID_CONTEXT`, or a newer code.
    public var code: String
    public var message: String
}

/// One flag's value for one context.
public struct FlagAnswer: Sendable, Hashable {
    /// The flag's key.
    public var key: String
    /// The variant's value (any JSON).
    public var value: JSONValue
    /// The variant's name.
    public var variant: String?
    public var reason: FlagReason
    /// The `file:line` that declares the flag (`flag` answers only; `nil` in ``FlagsAnswer``).
    public var source: String?
    /// Set when ``reason`` is ``FlagReason/error``.
    public var ruleError: RuleFailure?
    /// Set when ``reason`` is ``FlagReason/override``: the override's `reason`, `set_by` (`uid`, `user`, `pid`),
    /// `set_at` and `expires_at` (docs/PROTOCOL.md, `flag`).
    public var override: JSONObject?
    /// The rule set that answered.
    public var servedBy: ServedBy

    init(key: String, object: JSONObject, servedBy: ServedBy) throws(RulesdClientError) {
        guard let value = object["value"], let reason = object["reason"]?.stringValue else {
            throw .invalidAnswer("a flag answer without value or reason")
        }
        self.key = key
        self.value = value
        self.variant = object["variant"]?.stringValue
        self.reason = FlagReason(rawValue: reason)
        self.source = object["source"]?.stringValue
        if let code = object["error_code"]?.stringValue {
            ruleError = RuleFailure(code: code, message: object["error_message"]?.stringValue ?? "")
        }
        self.override = object["override"]?.objectValue
        self.servedBy = servedBy
    }
}

/// Every flag for one context, in key order.
public struct FlagsAnswer: Sendable, Hashable {
    public var flags: [FlagAnswer]
    public var servedBy: ServedBy

    /// The answer for `key`, if the rule set has that flag.
    public subscript(key: String) -> FlagAnswer? { flags.first { $0.key == key } }
}

/// The route chosen for a request.
public struct RouteAnswer: Sendable, Hashable {
    /// The route's name.
    public var route: String
    /// What the route's `target` gave (usually a backend's name).
    public var target: JSONValue
    /// The `file:line` that declares the route.
    public var source: String?
    public var servedBy: ServedBy
}

/// A configuration value.
public struct ConfigAnswer: Sendable, Hashable {
    public var key: String
    public var value: JSONValue
    public var servedBy: ServedBy
}

/// The configuration values under a prefix, in key order.
public struct ConfigValues: Sendable, Hashable {
    public var values: JSONObject
    public var servedBy: ServedBy
}

/// What rulesd serves and how it is doing (`status`). The common members are typed; ``raw`` has them all.
public struct Status: Sendable, Hashable {
    /// The full 64-hex revision.
    public var revision: String
    public var generation: Int64
    /// `rules_directory`, `last_known_good` or `history`.
    public var origin: String?
    public var flagCount: Int?
    public var routeCount: Int?
    public var configCount: Int?
    public var fileCount: Int?
    /// `inotify`, `polling` or `off`.
    public var watcherMode: String?
    public var connections: Int?
    public var version: String?
    /// The whole `result` object.
    public var raw: JSONObject
}

/// The outcome of `reload`, `rollback` or `resume` (a rule set that does not load throws `RELOAD_FAILED`).
public struct ReloadOutcome: Sendable, Hashable {
    /// `reloaded`, `unchanged` or `rolled_back`.
    public var outcome: String
    /// The full revision that serves now.
    public var revision: String
    public var generation: Int64
    public var previousRevision: String?
    /// The whole `result` object.
    public var raw: JSONObject
}

/// Any successful answer, for operations without a typed method.
public struct RawAnswer: Sendable, Hashable {
    public var result: JSONValue
    public var servedBy: ServedBy?
}
