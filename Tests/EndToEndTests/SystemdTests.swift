import Foundation
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A fake systemd notify socket: a datagram socket the test reads, at a path or an abstract name.
final class FakeNotifySocket {
    let fd: Int32
    let address: String

    init(address: String) throws {
        self.address = address
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(address.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let status = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard status == 0 else { throw HarnessError("bind \(address): \(errno)") }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// The next datagram as KEY=VALUE fields; nil on timeout.
    func next() -> [String: String]? {
        var buffer = [UInt8](repeating: 0, count: 8192)
        var n = -1
        repeat {
            // Other tests' child processes exiting interrupt the wait (SIGCHLD); only a timeout ends it.
            n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        } while n < 0 && errno == EINTR
        guard n > 0 else { return nil }
        var fields: [String: String] = [:]
        for line in String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n") {
            if let equals = line.firstIndex(of: "=") {
                fields[String(line[..<equals])] = String(line[line.index(after: equals)...])
            }
        }
        return fields
    }

    /// Skips datagrams until one has `key`; watchdog pings in between are ignored unless asked for.
    func next(with key: String) -> [String: String]? {
        while let fields = next() {
            if fields[key] != nil { return fields }
        }
        return nil
    }
}

@Suite("systemd integration, without systemd as PID 1")
struct SystemdTests {
    @Test(
        "notify: READY after loading, RELOADING with MONOTONIC_USEC then READY around reloads, STOPPING",
        arguments: [false, true])
    func notifySequence(abstract: Bool) throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        let address =
            abstract ? "@rulesd-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" : daemon.directory + "/notify"
        let notify = try FakeNotifySocket(address: address)
        try daemon.start(arguments: ["--watch", "off"], environment: ["NOTIFY_SOCKET": address])
        let ready = try #require(notify.next(with: "READY"))
        #expect(ready["READY"] == "1")
        #expect(ready["STATUS"]?.contains("serving") == true)
        #expect(ready["STATUS"]?.contains("1 flags") == true)

        try daemon.writeRule("a.lua", "flag \"x\" {}\nflag \"y\" {}\n")
        _ = try daemon.request(#"{"op":"reload"}"#)
        let reloading = try #require(notify.next(with: "RELOADING"))
        #expect(UInt64(reloading["MONOTONIC_USEC"] ?? "") != nil)
        let readyAgain = try #require(notify.next(with: "READY"))
        #expect(readyAgain["STATUS"]?.contains("2 flags") == true)

        try daemon.writeRule("a.lua", "flag \"x\" { nope = 1 }\n")
        daemon.signal(SIGHUP)
        #expect(notify.next(with: "RELOADING") != nil)
        let failedReady = try #require(notify.next(with: "READY"))
        #expect(failedReady["STATUS"]?.contains("last reload failed: a.lua:1:") == true)

        daemon.signal(SIGTERM)
        #expect(notify.next(with: "STOPPING")?["STOPPING"] == "1")
        #expect(try daemon.waitForExit() == 0)
    }

    @Test("watchdog: WATCHDOG=1 pings at half the interval")
    func watchdog() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        let address = daemon.directory + "/notify"
        let notify = try FakeNotifySocket(address: address)
        try daemon.start(environment: ["NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"])
        var pings = 0
        while pings < 3, let fields = notify.next() {
            if fields["WATCHDOG"] == "1" { pings += 1 }
        }
        #expect(pings == 3)
    }

    @Test("socket activation: systemd-socket-activate hands rulesd its listening socket, which rulesd never removes")
    func socketActivation() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        let socket = daemon.directory + "/q.sock"
        let notifyAddress = daemon.directory + "/notify"
        let notify = try FakeNotifySocket(address: notifyAddress)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
        process.arguments = [
            "-l", socket, "--fdname=query", "-E", "NOTIFY_SOCKET=\(notifyAddress)",
            DaemonHarness.binary("rulesd"), "--rules", daemon.rulesDirectory, "--state-dir", daemon.stateDirectory,
            "--socket", daemon.directory + "/unused.sock", "--watch", "off",
        ]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: socket) { usleep(10_000) }
        // The first connection makes systemd-socket-activate start rulesd; the query waits in the backlog
        // until rulesd serves, instead of failing.
        let client = try LineClient(path: socket)
        let answer = try client.request(#"{"op":"flag","flag":"x"}"#)
        #expect(answer["ok"] == true)
        #expect(notify.next(with: "READY") != nil)
        #expect(!FileManager.default.fileExists(atPath: daemon.directory + "/unused.sock"))
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(FileManager.default.fileExists(atPath: socket), "rulesd removed the socket systemd owns")
    }
}
