import Foundation
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A Unix-socket server that answers every request line with one canned line: a daemon in a state the real one
/// reaches only briefly or by a bug (answering without a rule set), so that the health probes' verdict on it can be
/// checked.
final class CannedAnswerServer: @unchecked Sendable {
    let path: String
    private let directory: String
    private let listener: Int32
    private let answer: String
    private let thread: Thread

    init(answer: String) throws {
        let directory = try DaemonHarness.makeTemporaryDirectory()
        let path = directory + "/rulesd.sock"
        self.directory = directory
        self.path = path
        self.answer = answer
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(errno)") }
        let bound = withUnixSocketAddress(path) { bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 8) == 0 else {
            close(fd)
            throw HarnessError("bind/listen \(path): \(String(cString: strerror(errno)))")
        }
        listener = fd
        let line = Array((answer + "\n").utf8)
        thread = Thread {
            while true {
                let client = accept(fd, nil, nil)
                guard client >= 0 else { return }
                var buffer = [UInt8](repeating: 0, count: 4096)
                // One answer per request line, until the client closes.
                while case let n = read(client, &buffer, buffer.count), n > 0 {
                    for byte in buffer[..<n] where byte == UInt8(ascii: "\n") {
                        _ = line.withUnsafeBytes { write(client, $0.baseAddress!, $0.count) }
                    }
                }
                close(client)
            }
        }
        thread.start()
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite("health probes: rulesctl ping and status")
struct HealthProbeTests {
    @Test("ping and status exit 1 when the daemon answers but serves no rule set")
    func answersWithoutRules() throws {
        let server = try CannedAnswerServer(answer: #"{"ok":true,"result":{"connections":1}}"#)
        for command in [["ping"], ["status"], ["status", "--json"], ["ping", "--json"]] {
            let run = try runRulesctl(["--socket", server.path] + command)
            #expect(run.status == 1, "\(command): \(run)")
            #expect(run.stderr.contains("serves no rule set"), "\(command): \(run.stderr)")
        }
    }

    @Test("ping and status exit 1 on the INTERNAL error a worker gives without a rule set")
    func internalError() throws {
        let server = try CannedAnswerServer(
            answer: #"{"ok":false,"error":{"code":"INTERNAL","message":"no rule set is loaded"}}"#)
        for command in [["ping"], ["status"]] {
            let run = try runRulesctl(["--socket", server.path] + command)
            #expect(run.status == 1, "\(command): \(run)")
            #expect((run.stdout + run.stderr).contains("INTERNAL"), "\(command): \(run)")
        }
    }

    @Test("ping and status exit 0 when the answer names the revision it serves")
    func serving() throws {
        let revision = String(repeating: "ab", count: 32)
        let server = try CannedAnswerServer(
            answer: #"{"ok":true,"revision":"\#(revision)","generation":1,"result":{"revision":"\#(revision)"}}"#)
        for command in [["ping"], ["status"], ["status", "--json"]] {
            let run = try runRulesctl(["--socket", server.path] + command)
            #expect(run.status == 0, "\(command): \(run)")
        }
    }
}
