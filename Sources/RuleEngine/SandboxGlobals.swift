import CRuleSandbox

/// What the sandbox offers rule files.
public enum RuleSandbox {
    /// The names of the globals every rule file sees (the standard library the sandbox keeps, and the rule API),
    /// sorted; empty when a state cannot be created.
    public static func globalNames() -> [String] {
        var limits = RuleEngineLimits().sandboxLimits
        var error = [CChar](repeating: 0, count: 256)
        guard let state = rs_state_new(&limits, &error, error.count) else { return [] }
        defer { rs_state_free(state) }
        let count = rs_global_names(state, nil, 0)
        var names = [UnsafePointer<CChar>?](repeating: nil, count: count)
        let stored = rs_global_names(state, &names, count)
        return names.prefix(stored).compactMap { $0.map { String(cString: $0) } }.sorted()
    }
}
