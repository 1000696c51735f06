import RuleModel

/// One loaded rule file, as `status` reports it.
public struct RuleFileInfo: Sendable, Hashable {
    public var path: String
    public var bytes: Int
    /// SHA-256 of the content, hex.
    public var sha256: String

    public init(path: String, bytes: Int, sha256: String) {
        self.path = path
        self.bytes = bytes
        self.sha256 = sha256
    }
}

/// A validated rule set: what it declares and where, independent of any Lua state.
///
/// Immutable and shareable across threads; evaluation happens in ``RuleEvaluator``s made from it, one per
/// thread.
public final class RuleSet: Sendable {
    public let revision: RuleRevision
    public let sources: [RuleSource]
    public let files: [RuleFileInfo]
    /// Sorted by key.
    public let flags: [FlagDefinition]
    /// In the order they are tried: priority (highest first), then file path, then order in the file.
    public let routes: [RouteDefinition]
    /// Sorted by key.
    public let configs: [ConfigEntry]
    public let limits: RuleEngineLimits
    private let flagIndexes: [String: Int]
    private let configIndexes: [String: Int]

    init(
        revision: RuleRevision, sources: [RuleSource], flags: [FlagDefinition], routes: [RouteDefinition],
        configs: [ConfigEntry], limits: RuleEngineLimits
    ) {
        self.revision = revision
        self.sources = sources
        self.files = sources.map {
            RuleFileInfo(path: $0.path, bytes: $0.content.count, sha256: RuleRevision.digest(of: $0.content))
        }
        self.flags = flags
        self.routes = routes
        self.configs = configs
        self.limits = limits
        var flagIndexes: [String: Int] = [:]
        for (index, flag) in flags.enumerated() { flagIndexes[flag.key] = index }
        self.flagIndexes = flagIndexes
        var configIndexes: [String: Int] = [:]
        for (index, entry) in configs.enumerated() { configIndexes[entry.key] = index }
        self.configIndexes = configIndexes
    }

    /// Index of the flag named `key` in ``flags``.
    public func flagIndex(forKey key: String) -> Int? { flagIndexes[key] }

    /// The config value named `key`.
    public func config(key: String) -> ConfigEntry? { configIndexes[key].map { configs[$0] } }

    /// Every config value whose key starts with `prefix`, sorted by key.
    public func configs(prefix: String) -> [ConfigEntry] {
        if prefix.isEmpty { return configs }
        let target = Array(prefix.utf8)
        // Keys are sorted bytewise, so the matches are one contiguous run.
        var low = 0
        var high = configs.count
        while low < high {
            let mid = (low + high) / 2
            if Array(configs[mid].key.utf8).lexicographicallyPrecedes(target) { low = mid + 1 } else { high = mid }
        }
        var result: [ConfigEntry] = []
        var index = low
        while index < configs.count, configs[index].key.utf8.starts(with: target) {
            result.append(configs[index])
            index += 1
        }
        return result
    }
}

/// Why a rule set did not load: every problem found, each with its file and line.
public struct RuleLoadFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public var diagnostics: [RuleDiagnostic]

    public init(diagnostics: [RuleDiagnostic]) {
        self.diagnostics = diagnostics
    }

    public init(_ message: String) {
        self.diagnostics = [RuleDiagnostic(location: SourceLocation(file: "", line: 0), message: message)]
    }

    /// One `file:line: message` per line.
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
