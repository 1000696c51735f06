import Foundation
import RuleModel

#if canImport(Glibc)
    import Glibc
#endif

/// A real `rulesd` process on a temporary rules directory, socket and state directory.
///
/// Tests talk to it over its socket exactly as clients do; the process is killed when the harness is
/// released, so a failing test never leaves a daemon behind.
public final class DaemonHarness: @unchecked Sendable {
    // @unchecked: the mutable state (the process handle and its output) is only touched by the test that
    // owns the harness, and Foundation's Process is not annotated for Sendable.
    public let directory: String
    public let rulesDirectory: String
    public let socketPath: String
    public let stateDirectory: String
    public private(set) var process: Process?
    private let logPath: String

    /// Creates the directories and writes `rules` (relative path => content) into the rules directory.
    public init(rules: [String: String] = [:]) throws {
        directory = try Self.makeTemporaryDirectory()
        rulesDirectory = directory + "/rules"
        socketPath = directory + "/s.sock"
        stateDirectory = directory + "/state"
        logPath = directory + "/rulesd.log"
        try FileManager.default.createDirectory(atPath: rulesDirectory, withIntermediateDirectories: true)
        // One log file for the harness's life: restarts append to it, and its inode stays the same.
        FileManager.default.createFile(atPath: logPath, contents: nil)
        for (path, content) in rules { try writeRule(path, content) }
    }

    deinit {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Writes one rule file (creating directories), replacing it atomically by rename.
    public func writeRule(_ path: String, _ content: String) throws {
        let full = rulesDirectory + "/" + path
        try FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let temporary = rulesDirectory + "/.tmp-\(UUID().uuidString)"
        try Data(content.utf8).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, full) == 0 else { throw HarnessError("rename failed: \(errno)") }
    }

    public func removeRule(_ path: String) throws {
        try FileManager.default.removeItem(atPath: rulesDirectory + "/" + path)
    }

    /// Starts rulesd; by default waits until it answers `ping`.
    /// - Parameters:
    ///   - arguments: extra command-line arguments.
    ///   - environment: extra environment variables.
    ///   - waitForSocket: wait for the daemon to answer before returning.
    ///   - launcher: a command to run rulesd through (e.g. `unshare ...`), given rulesd's path and arguments.
    public func start(
        arguments: [String] = [], environment: [String: String] = [:], waitForSocket: Bool = true,
        workers: Int = 2, launcher: [String] = []
    ) throws {
        let process = Process()
        // A quiet window of 1 s: wide enough that the test process being descheduled between two steps of one
        // save (hundreds of milliseconds on a loaded 2-core machine) does not split it into two reloads.
        let daemonArguments =
            [
                "--rules", rulesDirectory, "--socket", socketPath, "--state-dir", stateDirectory,
                "--workers", String(workers), "--quiet-window", "1s",
            ] + arguments
        if launcher.isEmpty {
            process.executableURL = URL(fileURLWithPath: Self.binary("rulesd"))
            process.arguments = daemonArguments
        } else {
            process.executableURL = URL(fileURLWithPath: launcher[0])
            process.arguments = Array(launcher.dropFirst()) + [Self.binary("rulesd")] + daemonArguments
        }
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("RULESD_") }
        env["NOTIFY_SOCKET"] = nil
        env["LISTEN_FDS"] = nil
        env["LISTEN_PID"] = nil
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let log = FileHandle(forWritingAtPath: logPath)
        log?.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        if waitForSocket { try waitUntilServing() }
    }

    /// Waits until the socket answers `ping`.
    public func waitUntilServing(timeout: Double = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let process, !process.isRunning {
                throw HarnessError("rulesd exited with status \(process.terminationStatus):\n\(logs)")
            }
            if let client = try? LineClient(path: socketPath),
                let answer = try? client.request(#"{"op":"ping"}"#), answer["ok"]?.boolValue == true
            {
                return
            }
            usleep(20_000)
        }
        throw HarnessError("rulesd did not start serving within \(timeout) s:\n\(logs)")
    }

    /// Sends a signal to the daemon.
    public func signal(_ signal: Int32) {
        if let process { kill(process.processIdentifier, signal) }
    }

    /// Waits for the process to exit and returns its status.
    @discardableResult
    public func waitForExit(timeout: Double = 30) throws -> Int32 {
        guard let process else { throw HarnessError("not started") }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw HarnessError("rulesd did not exit within \(timeout) s:\n\(logs)")
        }
        return process.terminationStatus
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    @discardableResult
    public func stop() throws -> Int32 {
        signal(SIGTERM)
        return try waitForExit()
    }

    /// Everything the daemon wrote to stdout and stderr.
    public var logs: String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    /// A new connection to the daemon.
    public func connect() throws -> LineClient { try LineClient(path: socketPath) }

    /// One request on a fresh connection.
    public func request(_ line: String) throws -> JSONValue { try connect().request(line) }

    /// The path of a binary built next to the test bundle.
    public static func binary(_ name: String) -> String {
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        for _ in 0..<4 {
            url.deleteLastPathComponent()
            let candidate = url.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/\(name)").path
    }

    public static func makeTemporaryDirectory() throws -> String {
        // Short: a Unix socket path must fit in about 108 bytes.
        var template = Array("/tmp/rdt.XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw HarnessError("mkdtemp failed")
        }
        return String(cString: result)
    }
}

/// A blocking newline-delimited JSON client over a Unix socket.
public final class LineClient: @unchecked Sendable {
    // @unchecked: one test thread uses a client at a time; the buffer is not shared.
    public let fd: Int32
    private var buffer: [UInt8] = []

    /// Uses an already connected socket (one end of a socketpair), which it closes when done.
    public init(descriptor: Int32, timeout: Double = 30) {
        fd = descriptor
        Self.setTimeouts(fd, timeout)
    }

    private static func setTimeouts(_ fd: Int32, _ timeout: Double) {
        let seconds = Int(timeout)
        var tv = timeval(tv_sec: seconds, tv_usec: Int((timeout - Double(seconds)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Connects to `path`.
    public init(path: String, timeout: Double = 30) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(errno)") }
        let status = withUnixSocketAddress(path) { Glibc.connect(fd, $0, $1) }
        guard status == 0 else {
            let error = errno
            close(fd)
            throw HarnessError("connect \(path): \(String(cString: strerror(error)))")
        }
        Self.setTimeouts(fd, timeout)
    }

    deinit { close(fd) }

    /// Sends raw bytes.
    public func send(_ text: String) throws {
        try sendBytes(Array(text.utf8))
    }

    public func sendBytes(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw HarnessError("send: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }

    /// Half-closes the connection (no more requests).
    public func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Reads one line (without its newline); nil at end of stream.
    public func readLine() throws -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw HarnessError("recv: \(String(cString: strerror(errno)))")
            }
            if n == 0 {
                if buffer.isEmpty { return nil }
                let line = String(decoding: buffer, as: UTF8.self)
                buffer.removeAll()
                return line
            }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }

    /// Reads one line and parses it as JSON.
    public func readJSON() throws -> JSONValue {
        guard let line = try readLine() else { throw HarnessError("connection closed") }
        do { return try JSONParser().parse(line) } catch { throw HarnessError("not JSON: \(line)") }
    }

    /// Sends one request line and reads its answer.
    public func request(_ line: String) throws -> JSONValue {
        try send(line + "\n")
        return try readJSON()
    }
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
