import Foundation
import RuleModel
import RulesClient
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Runs blocking work (starting or stopping the daemon, running rulesctl) on a thread of its own, so that it
/// does not hold one of the few threads of the concurrency pool that the client's tasks need.
func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try work() }) }
        thread.start()
    }
}

/// The example rules of this checkout (config/rules.d).
let exampleRules = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("config/rules.d").path

/// Runs rulesctl against `socket` and returns its exit status and standard output.
func rulesctl(_ arguments: [String], socket: String) throws -> (status: Int32, stdout: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: DaemonHarness.binary("rulesctl"))
    process.arguments = arguments + ["--socket", socket]
    var environment = ProcessInfo.processInfo.environment
    environment["RULESD_SOCKET"] = nil
    environment["NO_COLOR"] = "1"
    process.environment = environment
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// A client of `daemon` that waits a short back-off, so that tests of reconnection do not idle.
func makeClient(_ daemon: DaemonHarness, requestTimeout: Duration? = .seconds(60)) -> RulesdClient {
    RulesdClient(
        configuration: RulesdClientConfiguration(
            socketPath: daemon.socketPath, requestTimeout: requestTimeout,
            backoff: .init(initial: .milliseconds(20), maximum: .milliseconds(200))))
}

/// The error `body` throws; records an issue when it succeeds.
func failure<T>(_ body: () async throws -> T) async -> RulesdClientError? {
    do {
        let value = try await body()
        Issue.record("expected an error, got \(value)")
        return nil
    } catch let error as RulesdClientError {
        return error
    } catch {
        Issue.record("expected a RulesdClientError, got \(error)")
        return nil
    }
}

/// Reads watch events until one satisfies `condition`, and returns it (nil if the sequence ends first).
func next(
    _ iterator: inout WatchEvents.AsyncIterator, where condition: (WatchEvent) -> Bool
) async -> WatchEvent? {
    while let event = await iterator.next() {
        if condition(event) { return event }
    }
    return nil
}

/// A listening Unix socket that accepts connections (in its backlog) and never answers.
final class SilentListener {
    let path: String
    let fd: Int32

    /// Listens on `path`, or on a new temporary path.
    init(path: String? = nil) throws {
        self.path = try path ?? (Self.temporaryDirectory() + "/s.sock")
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let bound = withUnixSocketAddress(self.path) { bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 16) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }

    /// A new empty directory.
    static func temporaryDirectory() throws -> String {
        var template = Array("/tmp/rcs.XXXXXX".utf8CString)
        guard let directory = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw CocoaError(.fileWriteUnknown)
        }
        return String(cString: directory)
    }

    deinit {
        close(fd)
        unlink(path)
        rmdir((path as NSString).deletingLastPathComponent)
    }
}
