import RuleModel

/// The `error.code` values of failed answers. Clients rely on these names.
public enum ProtocolErrorCode: String, Sendable, Hashable, CaseIterable {
    /// The line is not JSON. That line fails; the connection stays usable.
    case parseError = "PARSE_ERROR"
    /// Unknown op, unknown field, missing or mistyped field.
    case invalidRequest = "INVALID_REQUEST"
    /// The line is over the limit; answered, then the connection is closed.
    case requestTooLarge = "REQUEST_TOO_LARGE"
    case flagNotFound = "FLAG_NOT_FOUND"
    case configNotFound = "CONFIG_NOT_FOUND"
    case noRoute = "NO_ROUTE"
    /// A route's `match` or `target` function failed.
    case ruleError = "RULE_ERROR"
    /// A process-isolated rule set's process was stopped for a limit (it hung, or reached a kernel limit) and
    /// is starting again; the request was not evaluated.
    case resourceLimit = "RESOURCE_LIMIT"
    /// `reload` found a rule set that does not load; the previous one keeps serving.
    case reloadFailed = "RELOAD_FAILED"
    /// The daemon is at its connection limit; the connection is closed after this answer.
    case tooManyConnections = "TOO_MANY_CONNECTIONS"
    /// The peer may not perform this operation (e.g. `reload` from outside the socket's group).
    case forbidden = "FORBIDDEN"
    /// `show` or `rollback` named a revision the history does not hold (or too few of its digits).
    case revisionNotFound = "REVISION_NOT_FOUND"
    /// The request's `namespace` is not one the daemon's configuration declares.
    case namespaceNotFound = "NAMESPACE_NOT_FOUND"
    /// The namespace is declared but has no rule set loaded yet (its rules did not load at start and there is no
    /// last known good copy); it answers again once a reload succeeds.
    case namespaceUnavailable = "NAMESPACE_UNAVAILABLE"
    case `internal` = "INTERNAL"
}

/// A failed answer, before encoding.
public struct ProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: ProtocolErrorCode
    public var message: String
    /// Additional string members of the `error` object.
    public var details: [String: String]
    /// Rule problems behind the error (`RELOAD_FAILED`), as `"problems":[{"file","line","message"}]`.
    public var problems: [RuleDiagnostic]

    public init(
        _ code: ProtocolErrorCode, _ message: String, details: [String: String] = [:], problems: [RuleDiagnostic] = []
    ) {
        self.code = code
        self.message = message
        self.details = details
        self.problems = problems
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
