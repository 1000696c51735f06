import RuleModel

/// The quotas of ``RuleEngineLimits`` (`max_files`, `max_flags`, `max_rules_bytes`): how much one rule set may
/// hold, so that one namespace of a shared daemon cannot take the load time and memory its neighbours need.
///
/// A rule set over a quota fails to load like any other bad rule set (the last good one keeps serving); the
/// failure depends only on the files and the settings, so it is deterministic.
enum RuleQuotas {
    /// Checks the file count and the total size, before anything is loaded.
    static func checkFiles(_ sources: [RuleSource], limits: RuleEngineLimits) throws(RuleLoadFailure) {
        var problems: [String] = []
        if sources.count > limits.maxFiles {
            problems.append(
                "quota max_files = \(limits.maxFiles) exceeded: the rule set has \(sources.count) files "
                    + "(rule and data files together)")
        }
        let bytes = sources.reduce(0) { $0 + $1.content.count }
        if bytes > limits.maxRulesBytes {
            problems.append(
                "quota max_rules_bytes = \(limits.maxRulesBytes) exceeded: the rule set's files hold \(bytes) bytes "
                    + "(rule and data files together)")
        }
        guard problems.isEmpty else { throw failure(problems) }
    }

    /// Checks the number of flags the loaded files declare.
    static func checkFlags(_ count: Int, limits: RuleEngineLimits) throws(RuleLoadFailure) {
        guard count > limits.maxFlags else { return }
        throw failure(["quota max_flags = \(limits.maxFlags) exceeded: the rule files declare \(count) flags"])
    }

    private static func failure(_ messages: [String]) -> RuleLoadFailure {
        RuleLoadFailure(
            diagnostics: messages.map { RuleDiagnostic(location: SourceLocation(file: "", line: 0), message: $0) },
            cause: .content)
    }
}
