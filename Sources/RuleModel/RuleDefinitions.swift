/// Where something was declared: a rule file's path relative to the rules directory, and a line.
public struct SourceLocation: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Path relative to the rules directory, `/`-separated.
    public var file: String
    /// 1-based line; 0 when unknown.
    public var line: Int

    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }

    /// `file.lua:12`, or just the file when the line is unknown.
    public var description: String { line > 0 ? "\(file):\(line)" : file }

    public static func < (lhs: SourceLocation, rhs: SourceLocation) -> Bool {
        (lhs.file, lhs.line) < (rhs.file, rhs.line)
    }
}

/// One rule file as read from disk.
public struct RuleSource: Sendable, Hashable {
    /// Path relative to the rules directory, `/`-separated, never starting with `/`.
    public var path: String
    /// The file's bytes, exactly as read.
    public var content: [UInt8]

    public init(path: String, content: [UInt8]) {
        self.path = path
        self.content = content
    }
}

/// One named value a flag can serve.
public struct FlagVariant: Sendable, Hashable {
    public var name: String
    public var value: JSONValue
    /// `value` as canonical JSON (sorted keys), ready to copy into answers.
    public var json: [UInt8]

    public init(name: String, value: JSONValue, json: [UInt8]) {
        self.name = name
        self.value = value
        self.json = json
    }
}

/// A feature flag as declared by `flag "key" { ... }`.
public struct FlagDefinition: Sendable, Hashable {
    public var key: String
    public var description: String?
    /// Sorted by name; evaluation results refer to variants by index into this array.
    public var variants: [FlagVariant]
    /// Index into `variants` of the variant served when no rule decides; -1 when the flag has none
    /// (`default = false`), and its answers then carry no value for the caller to use its own default.
    public var defaultVariant: Int
    public var enabled: Bool
    /// Whether the flag has a `rule` function (without one it is STATIC).
    public var hasRule: Bool
    public var location: SourceLocation
    /// The flag's `metadata` (an object), carried in its answers; nil when it has none.
    public var metadata: JSONValue?

    public init(
        key: String, description: String?, variants: [FlagVariant], defaultVariant: Int, enabled: Bool, hasRule: Bool,
        location: SourceLocation, metadata: JSONValue? = nil
    ) {
        self.key = key
        self.description = description
        self.variants = variants
        self.defaultVariant = defaultVariant
        self.enabled = enabled
        self.hasRule = hasRule
        self.location = location
        self.metadata = metadata
    }
}

/// A routing rule as declared by `route "name" { ... }`.
public struct RouteDefinition: Sendable, Hashable {
    public var name: String
    public var description: String?
    /// Higher wins; ties are broken by file path, then order within the file.
    public var priority: Int64
    /// False when the route has no `match` function and so takes every request.
    public var hasMatch: Bool
    /// The target when it is a constant; nil when `target` is a function.
    public var staticTarget: String?
    public var location: SourceLocation

    public init(
        name: String, description: String?, priority: Int64, hasMatch: Bool, staticTarget: String?,
        location: SourceLocation
    ) {
        self.name = name
        self.description = description
        self.priority = priority
        self.hasMatch = hasMatch
        self.staticTarget = staticTarget
        self.location = location
    }
}

/// A configuration value as declared by `config "key" (value)`.
public struct ConfigEntry: Sendable, Hashable {
    public var key: String
    public var value: JSONValue
    /// `value` as canonical JSON, ready to copy into answers.
    public var json: [UInt8]
    public var location: SourceLocation

    public init(key: String, value: JSONValue, json: [UInt8], location: SourceLocation) {
        self.key = key
        self.value = value
        self.json = json
        self.location = location
    }
}

/// A problem that keeps a rule set from loading, with the place it was found.
public struct RuleDiagnostic: Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String

    public init(location: SourceLocation, message: String) {
        self.location = location
        self.message = message
    }

    /// `file.lua:12: message`, the form editors and CI logs link to.
    public var description: String {
        location.file.isEmpty ? message : "\(location): \(message)"
    }
}
