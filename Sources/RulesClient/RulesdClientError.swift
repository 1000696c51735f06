import RuleModel

/// An error code of the line protocol (docs/PROTOCOL.md, "Error codes").
///
/// New codes may be added to the daemon; a code this library does not know arrives as ``unknown(_:)`` and
/// should be treated like ``internal``.
public enum RulesErrorCode: Sendable, Hashable, CustomStringConvertible {
    case parseError
    case invalidRequest
    case requestTooLarge
    case flagNotFound
    case configNotFound
    case noRoute
    case ruleError
    case reloadFailed
    case forbidden
    case revisionNotFound
    case tooManyConnections
    case `internal`
    /// A code this version of the library does not know, spelt as the daemon sent it.
    case unknown(String)

    private static let known: [(RulesErrorCode, String)] = [
        (.parseError, "PARSE_ERROR"), (.invalidRequest, "INVALID_REQUEST"), (.requestTooLarge, "REQUEST_TOO_LARGE"),
        (.flagNotFound, "FLAG_NOT_FOUND"), (.configNotFound, "CONFIG_NOT_FOUND"), (.noRoute, "NO_ROUTE"),
        (.ruleError, "RULE_ERROR"), (.reloadFailed, "RELOAD_FAILED"), (.forbidden, "FORBIDDEN"),
        (.revisionNotFound, "REVISION_NOT_FOUND"), (.tooManyConnections, "TOO_MANY_CONNECTIONS"),
        (.internal, "INTERNAL"),
    ]

    /// The code for the protocol's spelling, such as `FLAG_NOT_FOUND`.
    public init(rawValue: String) {
        self = Self.known.first { $0.1 == rawValue }?.0 ?? .unknown(rawValue)
    }

    /// The protocol's spelling of the code.
    public var rawValue: String {
        if case .unknown(let raw) = self { return raw }
        return Self.known.first { $0.0 == self }!.1
    }

    public var description: String { rawValue }
}

/// What a failed request answered: the daemon's `error` object.
public struct DaemonError: Sendable, Hashable, CustomStringConvertible {
    /// The error's code.
    public var code: RulesErrorCode
    /// The daemon's message, for people.
    public var message: String
    /// The whole `error` object, with the members some codes add (`problems` for `RELOAD_FAILED`; `route`,
    /// `source` and `rule_error_code` for `RULE_ERROR`).
    public var details: JSONObject

    public init(code: RulesErrorCode, message: String, details: JSONObject = JSONObject()) {
        self.code = code
        self.message = message
        self.details = details
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// Why a request through ``RulesdClient`` failed.
public enum RulesdClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The daemon answered `ok:false`.
    case daemon(DaemonError)
    /// No connection to the daemon could be made: it is not running, or the socket refuses this user. Requests
    /// made while the back-off delay after such a failure runs fail at once with this error, without trying.
    case unavailable(socketPath: String, reason: String)
    /// The connection closed before the answer came (the daemon stopped or restarted). The request may or may
    /// not have been carried out; the next request connects again.
    case connectionLost(reason: String)
    /// No answer within the request timeout. The connection stays open; a late answer is dropped.
    case timedOut(Duration)
    /// The task waiting for the answer was cancelled. The request may still be carried out; its answer is
    /// dropped.
    case cancelled
    /// The client was shut down.
    case shutDown
    /// The daemon's answer did not have the shape the protocol promises.
    case invalidAnswer(String)
    /// A request that cannot be sent, such as a context holding a number that is not finite.
    case invalidArgument(String)

    /// The protocol's error code, when the daemon answered with one.
    public var code: RulesErrorCode? {
        if case .daemon(let error) = self { return error.code }
        return nil
    }

    public var description: String {
        switch self {
        case .daemon(let error): return "rulesd answered \(error)"
        case .unavailable(let path, let reason): return "cannot reach rulesd at \(path): \(reason)"
        case .connectionLost(let reason): return "the connection to rulesd was lost before the answer: \(reason)"
        case .timedOut(let timeout): return "rulesd did not answer within \(timeout)"
        case .cancelled: return "the request was cancelled"
        case .shutDown: return "the client was shut down"
        case .invalidAnswer(let why): return "rulesd's answer is not what the protocol promises: \(why)"
        case .invalidArgument(let why): return "cannot send the request: \(why)"
        }
    }
}
