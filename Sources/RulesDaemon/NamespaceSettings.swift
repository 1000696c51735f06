import RuleEngine

/// One namespace: a rule set of its own, with its own rules directory, budgets, reloads, history and last
/// known good copy.
///
/// The top-level settings (`rules`, `memory_limit`, …) describe the namespace named `default`, which every
/// request without a `namespace` member addresses; `[namespace NAME]` sections of the config file declare the
/// others (see ``DaemonSettings/namespaces``).
public struct NamespaceSettings: Sendable, Equatable {
    /// How a namespace's rules are run.
    public enum Isolation: String, Sendable, CaseIterable {
        /// Lua states inside the daemon, one per worker thread (the default).
        case thread
        /// A worker process of its own, started by rulesd, with kernel-enforced limits.
        case process
    }

    /// The name of the namespace the top-level settings describe.
    public static let defaultName = "default"

    /// `[a-z0-9][a-z0-9_-]{0,62}`; `default` names the top-level namespace.
    public var name: String
    public var rulesDirectory: String
    public var limits: RuleEngineLimits
    /// Rule sets kept in this namespace's history.
    public var historySize: Int
    public var isolation: Isolation
    /// Roles granted in this namespace only, on top of the daemon-wide ones (`role_*` in a section); none by
    /// default, so that a namespace grants exactly what the daemon-wide policy does.
    public var accessPolicy: AccessPolicy

    public init(
        name: String, rulesDirectory: String, limits: RuleEngineLimits = RuleEngineLimits(), historySize: Int = 20,
        isolation: Isolation = .thread, accessPolicy: AccessPolicy = .noGrants
    ) {
        self.name = name
        self.rulesDirectory = rulesDirectory
        self.limits = limits
        self.historySize = historySize
        self.isolation = isolation
        self.accessPolicy = accessPolicy
    }

    /// Where this namespace keeps its history, last known good copy and overrides: the state directory itself
    /// for `default` (as before namespaces existed), `namespaces/NAME` below it for the others.
    public func stateDirectory(under root: String) -> String {
        name == Self.defaultName ? root : root + "/namespaces/" + name
    }

    /// Whether `name` may name a namespace.
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, bytes.count <= 63 else { return false }
        func allowed(_ byte: UInt8) -> Bool {
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
        }
        return allowed(first) && bytes.allSatisfy { allowed($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }
}

extension DaemonSettings {
    /// The namespace the top-level settings describe.
    public var defaultNamespace: NamespaceSettings {
        NamespaceSettings(
            name: NamespaceSettings.defaultName, rulesDirectory: rulesDirectory, limits: limits,
            historySize: historySize, isolation: isolation, accessPolicy: .noGrants)
    }

    /// Every namespace served: `default` first, then the declared ones in the config file's order.
    public var allNamespaces: [NamespaceSettings] { [defaultNamespace] + namespaces }
}
