import CRuleSandbox

/// The C stack that Lua evaluation runs on.
public enum ThreadStack {
    /// Lua's C recursion (and the pattern matcher's) is bounded, but needs a generous stack: at least this.
    public static let minimumBytes = 1 << 20

    /// The calling thread's stack size in bytes, or 0 when unknown.
    public static func currentBytes() -> Int { Int(rs_current_thread_stack_bytes()) }
}
