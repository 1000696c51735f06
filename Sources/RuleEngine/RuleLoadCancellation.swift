import CRuleSandbox

/// A request to abandon a load, made from any thread while another thread scans or compiles.
///
/// The rule tree reader checks it between directory entries, the compiler between files, and the Lua
/// sandbox between VM steps of a file's chunk, so even a file that legitimately runs for seconds stops
/// within a few thousand instructions of the request.
public final class RuleLoadCancellation: Sendable {
    // The C object holds one atomic integer and is meant to be shared across threads; the pointer itself
    // never changes.
    nonisolated(unsafe) let token: OpaquePointer

    public init() {
        guard let token = rs_cancel_new() else { fatalError("out of memory creating a load cancellation") }
        self.token = token
    }

    deinit { rs_cancel_free(token) }

    /// Asks every load using this cancellation to stop.
    public func cancel() { rs_cancel_request(token) }

    /// Whether ``cancel()`` was called.
    public var isCancelled: Bool { rs_cancel_requested(token) != 0 }
}
