import Glibc
import SystemdSupport
import Testing

@Suite("Notifier against a fake service manager")
struct NotifierTests {
    @Test("READY reaches a notify socket at a path, sent by our pid")
    func readyAtPath() throws {
        let scratch = ScratchDirectory()
        let manager = FakeNotifySocket(path: scratch.file("notify"))
        let notifier = try #require(try SystemdNotifier(notifySocket: manager.notifySocket))
        try notifier.ready(status: "serving")
        #expect(manager.receive() == ReceivedDatagram(payload: "READY=1\nSTATUS=serving", senderPID: getpid()))
        #expect(manager.drain().isEmpty)
    }

    @Test("Messages reach an abstract notify socket one datagram each, byte for byte")
    func sequenceAtAbstractName() throws {
        let manager = FakeNotifySocket(abstractName: uniqueAbstractName("seq"))
        let notifier = try #require(try SystemdNotifier(notifySocket: manager.notifySocket))
        try notifier.ready()
        try notifier.watchdog()
        try notifier.status("42 rules")
        try notifier.stopping(status: "stopping")
        let payloads = (0..<4).compactMap { _ in manager.receive()?.payload }
        #expect(payloads == ["READY=1", "WATCHDOG=1", "STATUS=42 rules", "STOPPING=1\nSTATUS=stopping"])
        #expect(manager.drain().isEmpty)
    }

    @Test("RELOADING carries the current CLOCK_MONOTONIC in microseconds")
    func reloadingCarriesMonotonicTime() throws {
        let manager = FakeNotifySocket(abstractName: uniqueAbstractName("reload"))
        let notifier = try #require(try SystemdNotifier(notifySocket: manager.notifySocket))
        let before = NotifyPayload.monotonicNow()
        try notifier.reloading(status: "reloading")
        let after = NotifyPayload.monotonicNow()
        let lines = try #require(manager.receive()).payload.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines.first == "RELOADING=1")
        #expect(lines.last == "STATUS=reloading")
        let stamp = try #require(lines.dropFirst().first.flatMap { UInt64($0.dropFirst("MONOTONIC_USEC=".count)) })
        #expect(lines[1].hasPrefix("MONOTONIC_USEC="))
        #expect((before...after).contains(stamp))
    }

    @Test("A multi-line status arrives as one STATUS line")
    func multiLineStatusArrivesAsOneLine() throws {
        let scratch = ScratchDirectory()
        let manager = FakeNotifySocket(path: scratch.file("notify"))
        let notifier = try #require(try SystemdNotifier(notifySocket: manager.notifySocket))
        try notifier.ready(status: "rules rejected:\nREADY=1\nsee journal")
        #expect(manager.receive()?.payload == "READY=1\nSTATUS=rules rejected: READY=1 see journal")
    }

    @Test("Timeout extensions and errno values arrive as sent")
    func extendTimeoutAndErrno() throws {
        let manager = FakeNotifySocket(abstractName: uniqueAbstractName("extend"))
        let notifier = try #require(try SystemdNotifier(notifySocket: manager.notifySocket))
        try notifier.extendTimeout(.seconds(20))
        try notifier.errno(EACCES, status: "cannot read rules")
        #expect(manager.receive()?.payload == "EXTEND_TIMEOUT_USEC=20000000")
        #expect(manager.receive()?.payload == "ERRNO=\(EACCES)\nSTATUS=cannot read rules")
    }

    @Test("Concurrent senders each deliver whole datagrams")
    func concurrentSenders() async throws {
        let manager = FakeNotifySocket(abstractName: uniqueAbstractName("concurrent"))
        let notifier = try #require(try SystemdNotifier(notifySocket: manager.notifySocket))
        // Fewer than net.unix.max_dgram_qlen (10 by default): nobody reads until all are sent, and a
        // full queue would block the senders.
        let senders = 8
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<senders {
                group.addTask { try notifier.status("worker \(index)") }
            }
            try await group.waitForAll()
        }
        let payloads = Set((0..<senders).compactMap { _ in manager.receive()?.payload })
        #expect(payloads == Set((0..<senders).map { "STATUS=worker \($0)" }))
    }

    @Test("No NOTIFY_SOCKET means no notifier")
    func unsetMeansNoNotifier() throws {
        #expect(try SystemdNotifier.fromEnvironment(.fixed([:])) == nil)
        #expect(try SystemdNotifier(notifySocket: nil) == nil)
    }

    @Test("An empty NOTIFY_SOCKET means no notifier")
    func emptyMeansNoNotifier() throws {
        #expect(try SystemdNotifier.fromEnvironment(.fixed(["NOTIFY_SOCKET": ""])) == nil)
    }

    @Test("NOTIFY_SOCKET from the environment is used and can be removed")
    func fromEnvironmentReadsAndUnsets() throws {
        let manager = FakeNotifySocket(abstractName: uniqueAbstractName("env"))
        let recorder = RecordingEnvironment(["NOTIFY_SOCKET": manager.notifySocket])
        let notifier = try #require(try SystemdNotifier.fromEnvironment(recorder.environment, unsetEnvironment: true))
        #expect(notifier.address.description == manager.notifySocket)
        #expect(recorder.removed == ["NOTIFY_SOCKET"])
        try notifier.watchdog()
        #expect(manager.receive()?.payload == "WATCHDOG=1")
    }

    @Test("A notify path nobody listens on gives an error instead of a signal")
    func missingListenerFails() throws {
        let scratch = ScratchDirectory()
        let notifier = try #require(try SystemdNotifier(notifySocket: scratch.file("absent")))
        #expect(throws: NotifyError.sendFailed(errno: ENOENT)) { try notifier.ready() }
    }

    @Test("An abstract name nobody listens on gives an error")
    func missingAbstractListenerFails() throws {
        let notifier = try #require(try SystemdNotifier(notifySocket: "@" + uniqueAbstractName("absent")))
        #expect(throws: NotifyError.sendFailed(errno: ECONNREFUSED)) { try notifier.watchdog() }
    }

    @Test("An oversized or empty payload is refused before sending")
    func payloadSizeLimits() throws {
        let manager = FakeNotifySocket(abstractName: uniqueAbstractName("size"))
        let notifier = try #require(try SystemdNotifier(notifySocket: manager.notifySocket))
        #expect(throws: NotifyError.invalidPayloadSize(5000)) { try notifier.send(String(repeating: "x", count: 5000)) }
        #expect(throws: NotifyError.invalidPayloadSize(0)) { try notifier.send("") }
        #expect(manager.drain().isEmpty)
    }
}
