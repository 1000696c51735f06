/// Why a flag evaluation produced its variant (OpenFeature's reasons).
public enum EvaluationReason: String, Sendable, Hashable, CaseIterable {
    /// The flag has no rule: its default variant.
    case staticValue = "STATIC"
    /// The rule chose a variant.
    case targetingMatch = "TARGETING_MATCH"
    /// The rule returned nil: the default variant.
    case defaultValue = "DEFAULT"
    /// The flag is disabled: the default variant.
    case disabled = "DISABLED"
    /// The rule failed: the default variant, with an error code.
    case error = "ERROR"
}

/// Why a rule failed to decide.
public enum RuleErrorCode: String, Sendable, Hashable, CaseIterable {
    /// The rule raised an error.
    case general = "GENERAL"
    /// An instruction, time or memory budget ran out.
    case resourceLimit = "RESOURCE_LIMIT"
    /// The rule returned something that is not one of the flag's variants (or not a target string).
    case typeMismatch = "TYPE_MISMATCH"
    /// The context (or request) could not be used: not an object, too deep, too big, invalid UTF-8.
    case invalidContext = "INVALID_CONTEXT"
    /// The flag's definition cannot be evaluated (`invalid`: a flagd targeting that did not translate).
    case parseError = "PARSE_ERROR"
}

/// A rule failure: its code and a plain, escaped message.
public struct RuleFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: RuleErrorCode
    public var message: String

    public init(code: RuleErrorCode, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// The decision for one flag. Values are looked up in the flag's definition by `variantIndex`.
public struct FlagDecision: Sendable, Hashable {
    /// Index into the flag's sorted variants.
    public var variantIndex: Int
    public var reason: EvaluationReason
    /// Set when `reason` is `.error`.
    public var failure: RuleFailure?

    public init(variantIndex: Int, reason: EvaluationReason, failure: RuleFailure? = nil) {
        self.variantIndex = variantIndex
        self.reason = reason
        self.failure = failure
    }
}

/// The decision for one routed request.
public enum RouteDecision: Sendable, Hashable {
    /// The route at this index (in priority order) matched and named `target`.
    case matched(routeIndex: Int, target: String)
    /// No route matched.
    case noRoute
    /// A route's `match` or `target` function failed; `routeIndex` is the failing route, when known.
    case failed(routeIndex: Int?, RuleFailure)
}

/// A line written by a rule with `log(level, message)`; the text is escaped and length-limited.
public struct RuleLogLine: Sendable, Hashable {
    public enum Level: Int, Sendable, Hashable {
        case debug = 0
        case info = 1
        case warning = 2
        case error = 3
    }

    public var level: Level
    /// The flag or route whose rule logged, or the file being loaded.
    public var origin: String
    public var text: String

    public init(level: Level, origin: String, text: String) {
        self.level = level
        self.origin = origin
        self.text = text
    }
}
