import Foundation
import RuleEngine
import RuleModel
import RulesProtocol
import Testing

@testable import RulesDaemon

@Suite("The rule process's frames")
struct RuleProcessFrameTests {
    static let messages: [RuleProcessMessage] = {
        var limits = RuleEngineLimits()
        limits.memoryLimit = 12 << 20
        limits.evaluationTimeout = .milliseconds(35)
        limits.testBudget = .seconds(3)
        return [
            .load(
                generation: 7, limits: limits,
                sources: [
                    RuleSource(path: "flags/a.lua", content: Array("flag \"a\" {}".utf8)),
                    RuleSource(path: "data/é.txt", content: [0, 255, 10]),
                ]),
            .evaluate(request: 42, now: 1_765_000_000.125, line: Array(#"{"op":"flag","flag":"a"}"#.utf8)),
            .loaded(generation: 7, failure: nil),
            .loaded(generation: 8, failure: "flags/a.lua:1: boom"),
            .answer(request: 42, ok: true, bytes: Array("{\"ok\":true}\n".utf8)),
            .answer(request: 43, ok: false, bytes: []),
        ]
    }()

    @Test("every message reads back as written")
    func roundTrip() throws {
        for message in Self.messages {
            var decoder = RuleProcessFrameDecoder()
            decoder.append(message.frame)
            #expect(try decoder.next() == message)
            #expect(try decoder.next() == nil)
            #expect(decoder.bufferedBytes == 0)
        }
    }

    @Test("messages arriving a byte at a time come out whole and in order")
    func byteAtATime() throws {
        var stream: [UInt8] = []
        for message in Self.messages { message.encode(into: &stream) }
        var decoder = RuleProcessFrameDecoder()
        var read: [RuleProcessMessage] = []
        for byte in stream {
            decoder.append([byte])
            while let message = try decoder.next() { read.append(message) }
        }
        #expect(read == Self.messages)
    }

    @Test("a length over the bound is refused before its bytes arrive")
    func oversizedFrame() {
        var decoder = RuleProcessFrameDecoder(maxFrameBytes: 64)
        decoder.append([0, 0, 0, 65])
        #expect(throws: RuleProcessFrameError.self) { try decoder.next() }
    }

    @Test("a frame whose fields overrun it, or that has bytes to spare, is refused")
    func malformedFrames() {
        // An answer whose byte string claims more than the frame holds.
        var overrun = RuleProcessFrameDecoder()
        overrun.append([0, 0, 0, 14, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 9])
        #expect(throws: RuleProcessFrameError.self) { try overrun.next() }
        // A `loaded` with a stray byte after its text.
        var frame = RuleProcessMessage.loaded(generation: 1, failure: nil).frame
        frame[3] += 1
        frame.append(0)
        var stray = RuleProcessFrameDecoder()
        stray.append(frame)
        #expect(throws: RuleProcessFrameError.self) { try stray.next() }
        // An unknown kind.
        var unknown = RuleProcessFrameDecoder()
        unknown.append([0, 0, 0, 1, 99])
        #expect(throws: RuleProcessFrameError.self) { try unknown.next() }
    }
}

@Suite("Restarting a rule process")
struct RestartBackoffTests {
    @Test("the delay doubles from 100 ms with each quick end, up to 30 s")
    func doubling() {
        var backoff = RestartBackoff()
        let delays = (0..<12).map { _ in backoff.delay(afterRunningFor: 0.5) }
        #expect(delays.prefix(5) == [0.1, 0.2, 0.4, 0.8, 1.6])
        #expect(delays.last == 30)
        #expect(delays.allSatisfy { $0 <= 30 })
    }

    @Test("a process that ran a stable minute starts the count anew")
    func resetAfterStableMinute() {
        var backoff = RestartBackoff()
        for _ in 0..<6 { _ = backoff.delay(afterRunningFor: 1) }
        #expect(backoff.delay(afterRunningFor: 59) == 6.4)
        #expect(backoff.delay(afterRunningFor: 60) == 0.1)
        #expect(backoff.delay(afterRunningFor: 2) == 0.2)
    }

    @Test("an end is told apart by its wait status")
    func exitReasons() {
        #expect(IsolatedRuleProcess.exitReason(status: SIGKILL, killedForHang: true).1)
        #expect(IsolatedRuleProcess.exitReason(status: SIGKILL, killedForHang: true).0.hasPrefix("hung"))
        #expect(!IsolatedRuleProcess.exitReason(status: SIGKILL, killedForHang: false).1)
        #expect(
            IsolatedRuleProcess.exitReason(status: SIGXCPU, killedForHang: false) == (
                "cpu_limit: RLIMIT_CPU reached", true
            ))
        #expect(IsolatedRuleProcess.exitReason(status: SIGSYS, killedForHang: false).0.hasPrefix("seccomp"))
        #expect(IsolatedRuleProcess.exitReason(status: 3 << 8, killedForHang: false) == ("exited with status 3", false))
    }
}

@Suite("A rule process's cgroup")
struct RuleProcessCgroupTests {
    /// A directory laid out like a delegated cgroup v2 subtree (plain files stand in for the kernel's).
    private func fakeHierarchy() throws -> String {
        let root = NSTemporaryDirectory() + "rulesd-cgroup-\(UUID().uuidString)"
        let service = root + "/system.slice/rulesd.service"
        try FileManager.default.createDirectory(atPath: service, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: root + "/cgroup.controllers", contents: Data("cpu memory".utf8))
        FileManager.default.createFile(atPath: service + "/cgroup.procs", contents: Data())
        FileManager.default.createFile(atPath: service + "/cgroup.subtree_control", contents: Data())
        return root
    }

    private func read(_ path: String) throws -> String { try String(contentsOfFile: path, encoding: .utf8) }

    @Test("in a delegated cgroup, rulesd moves itself aside, enables the controllers and limits the process")
    func delegated() throws {
        let root = try fakeHierarchy()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cgroup = try RuleProcessCgroup.prepare(
            root: root, membership: "0::/system.slice/rulesd.service\n", pid: 1234
        ).get()
        let service = root + "/system.slice/rulesd.service"
        #expect(try read(service + "/daemon/cgroup.procs") == "1234")
        #expect(try read(service + "/cgroup.subtree_control") == "+memory +cpu")
        #expect(cgroup.place(5678, namespace: "default", limits: .init(memoryLimit: 64 << 20)) == nil)
        #expect(try read(service + "/rules-default/cgroup.procs") == "5678")
        #expect(try read(service + "/rules-default/memory.max") == "\((128 << 20) + (256 << 20))")
        #expect(try read(service + "/rules-default/cpu.max") == "100000 100000")
    }

    @Test("without cgroup v2, in the root cgroup, or without write access, the reason is given")
    func unavailable() throws {
        let root = try fakeHierarchy()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let hybrid = RuleProcessCgroup.prepare(root: root + "/nowhere", membership: "0::/x\n", pid: 1)
        #expect(throws: RuleProcessCgroup.Unavailable.self) { try hybrid.get() }
        let top = RuleProcessCgroup.prepare(root: root, membership: "0::/\n", pid: 1)
        #expect(throws: RuleProcessCgroup.Unavailable("rulesd runs in the root cgroup")) { try top.get() }
        let missing = RuleProcessCgroup.prepare(root: root, membership: "0::/system.slice/other.service\n", pid: 1)
        #expect(throws: RuleProcessCgroup.Unavailable.self) { try missing.get() }
    }
}
