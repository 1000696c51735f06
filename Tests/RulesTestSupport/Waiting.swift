import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Polls `condition` every 20 ms until it holds or `timeout` seconds pass; returns whether it held.
///
/// Tests wait for the event they need with this instead of sleeping a fixed time: a shared, loaded machine
/// makes any fixed sleep either too short (a flaky failure) or needlessly long.
public func eventually(timeout: Double = 30, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(20_000)
    }
    return try condition()
}

extension DaemonHarness {
    /// How many lines of the daemon's output contain `text`.
    public func logLines(containing text: String) -> Int {
        logs.split(separator: "\n").filter { $0.contains(text) }.count
    }

    /// Waits until at least `count` lines of the daemon's output contain `text`.
    public func waitForLog(_ text: String, count: Int = 1, timeout: Double = 30) -> Bool {
        eventually(timeout: timeout) { logLines(containing: text) >= count }
    }

    /// The full revision the daemon serves now (from `status`).
    public func servedRevision() throws -> String? {
        try request(#"{"op":"status"}"#)["result"]?["revision"]?.stringValue
    }
}
