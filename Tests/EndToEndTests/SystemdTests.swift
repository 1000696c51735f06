import Foundation
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Whether `fd` has data to read right now.
func isReadable(_ fd: Int32) -> Bool {
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, 0) > 0
}

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

    /// The next datagram if one arrives within `milliseconds`; nil otherwise.
    func next(within milliseconds: Int32) -> [String: String]? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, milliseconds) > 0 else { return nil }
        return next()
    }

    /// Throws away every datagram already queued.
    func drain() {
        while next(within: 0) != nil {}
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
        // A 2 s interval: pings every second.
        try daemon.start(environment: ["NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"])
        var arrivals: [ContinuousClock.Instant] = []
        while arrivals.count < 5, let fields = notify.next() {
            if fields["WATCHDOG"] == "1" { arrivals.append(.now) }
        }
        try #require(arrivals.count == 5)
        let gaps = zip(arrivals.dropFirst(), arrivals).map { $0 - $1 }.sorted()
        // Never faster than half the interval: four periods cannot pass in less than about four seconds (the
        // first ping may have been read late, hence the margin).
        #expect(arrivals[4] - arrivals[0] > .seconds(3), "\(gaps)")
        // And not at the whole interval, which would let systemd kill a healthy daemon for one late ping:
        // most gaps are well under 2 s (one stalled read on a loaded machine may stretch a gap).
        #expect(gaps[2] < .milliseconds(1_800), "\(gaps)")
        #expect(daemon.logs.contains("watchdog.interval_us=2000000"), "\(daemon.logs)")
    }

    @Test("watchdog: a worker wedged in an evaluation stops the pings until it runs again")
    func watchdogWedgedWorker() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": "flag \"x\" {}\nflag \"spin\" { rule = function() local n = 0 while true do n = n + 1 end end }\n"
        ])
        let address = daemon.directory + "/notify"
        let notify = try FakeNotifySocket(address: address)
        // One worker, and an evaluation allowed to spin for 6 s: long enough to miss many 200 ms pings.
        try daemon.start(
            arguments: ["--eval-timeout", "6s", "--eval-instructions", "2147483647"],
            environment: ["NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"], workers: 1)
        #expect(notify.next(with: "WATCHDOG") != nil)

        let client = try daemon.connect()
        try client.send(#"{"op":"flag","flag":"spin"}"# + "\n")
        // The service notices within a ping period; from then on it withholds every ping while the worker spins.
        #expect(daemon.waitForLog("withholding the watchdog ping"), "\(daemon.logs)")
        notify.drain()
        // The worker writes its answer before its loop turns again, and only a turning loop lets a ping out:
        // a ping read while no answer is waiting was sent while the worker was wedged.
        var pingsWhileWedged = 0
        while !isReadable(client.fd) {
            if notify.next(within: 100)?["WATCHDOG"] == "1", !isReadable(client.fd) { pingsWhileWedged += 1 }
        }
        #expect(try client.readJSON()["result"]?["reason"] == "ERROR")
        #expect(pingsWhileWedged == 0)
        // Free again: the pings come back, and the worker answers.
        #expect(notify.next(with: "WATCHDOG") != nil)
        #expect(try daemon.request(#"{"op":"flag","flag":"x"}"#)["ok"] == true)
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
        _ = eventually { FileManager.default.fileExists(atPath: socket) }
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
