import CRuleSandbox

/// Budgets that bound what rule files may do, per Lua state and per evaluation.
///
/// Every worker holds its own Lua state for a rule set, so the memory limit applies to each.
public struct RuleEngineLimits: Sendable, Hashable {
    /// Bytes the Lua allocator may hold for one rule set in one state.
    public var memoryLimit: Int = 64 << 20
    /// VM instructions (and equivalent work in bounded library functions) to load one file.
    public var loadInstructionLimit: Int = 50_000_000
    /// Wall-clock budget to load one file.
    public var loadTimeout: Duration = .seconds(2)
    /// VM instructions (and equivalent work) for one evaluation: one flag, or one routing decision.
    public var evaluationInstructionLimit: Int = 1_000_000
    /// Wall-clock budget of one evaluation.
    public var evaluationTimeout: Duration = .milliseconds(50)
    /// Deepest nesting accepted in a context or request object.
    public var maxContextDepth: Int = 32
    /// Most values accepted in one context or request object.
    public var maxContextValues: Int = 10_000
    /// Largest rule file accepted, in bytes.
    public var maxFileBytes: Int = 8 << 20
    /// Largest data file (`.txt`, `.json`) accepted, in bytes.
    public var maxDataBytes: Int = 64 << 20
    /// Lines a rule may log per evaluation, and bytes kept per line.
    public var logLinesPerEvaluation: Int = 8
    public var logLineBytes: Int = 512
    /// Wall-clock budget of all rule tests of one load together; a suite over it fails the load.
    public var testBudget: Duration = .seconds(2)
    /// Quota: most files (rule and data files together) one rule set may have; `Int.max` for none.
    public var maxFiles: Int = .max
    /// Quota: most flags one rule set may declare; `Int.max` for none.
    public var maxFlags: Int = .max
    /// Quota: most bytes of all files (rule and data files) of one rule set together; `Int.max` for none.
    public var maxRulesBytes: Int = .max

    public init() {}

    var sandboxLimits: rs_limits {
        var limits = rs_limits()
        limits.memory_limit = UInt64(max(memoryLimit, 1 << 20))
        limits.load_instruction_limit = UInt64(max(loadInstructionLimit, 1000))
        limits.load_timeout_ns = Self.nanoseconds(loadTimeout)
        limits.eval_instruction_limit = UInt64(max(evaluationInstructionLimit, 1000))
        limits.eval_timeout_ns = Self.nanoseconds(evaluationTimeout)
        limits.max_context_depth = UInt32(clamping: max(maxContextDepth, 1))
        limits.max_context_values = UInt32(clamping: max(maxContextValues, 1))
        limits.log_lines_per_eval = UInt32(clamping: max(logLinesPerEvaluation, 1))
        limits.log_line_bytes = UInt32(clamping: max(logLineBytes, 16))
        return limits
    }

    private static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        let ns = seconds * 1_000_000_000 + attoseconds / 1_000_000_000
        return UInt64(max(ns, 1_000_000))
    }
}
