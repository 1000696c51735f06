import Dispatch
import Foundation
import NIOCore
import RuleModel
import RulesTestSupport
import Testing

@testable import QueryServing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("A query connection's life")
struct QueryConnectionTests {
    @Test("requests read together with operations that wait are all answered, in order")
    func mixedBatchAnsweredInOrder() async throws {
        let harness = try await ConnectionHarness()
        let operations = ["ping", "status", "flag", "reload", "config", "metrics", "flags", "route", "explain"]
        var batch = ""
        for (index, operation) in operations.enumerated() {
            batch += extraMembers(#"{"op":"\#(operation)","id":\#(index + 1)"#, operation) + "}\n"
        }
        try harness.client.send(batch)
        for (index, operation) in operations.enumerated() {
            let answer = try await harness.readJSON()
            #expect(answer["id"] == .integer(Int64(index + 1)))
            #expect(answer["result"]?["op"] == .string(operation))
        }
        #expect(try await harness.state() == .open)
        await harness.stop()
    }

    @Test("after a half-close, every request read is still answered in order, then the connection closes")
    func halfCloseAnswersEverything() async throws {
        let harness = try await ConnectionHarness()
        try harness.client.send(
            #"{"op":"reload","id":"r"}"# + "\n" + #"{"op":"config","key":"a","id":"c1"}"# + "\n"
                + #"{"op":"status","id":"s"}"# + "\n" + #"{"op":"ping","id":"last"}"#)
        harness.client.shutdownWrite()
        for id in ["r", "c1", "s", "last"] {
            #expect(try await harness.readJSON()["id"] == .string(id))
        }
        #expect(try await harness.readLine() == nil)
        #expect(harness.closed.isSet)
        await harness.stop()
    }

    @Test("a request the responder answers later holds back the ones after it, which are then answered in order")
    func laterAnswersKeepOrder() async throws {
        let later = LaterAnswers()
        let harness = try await ConnectionHarness(backend: EchoBackend(later: later))
        try harness.client.send(
            #"{"op":"flag","flag":"a","id":1}"# + "\n" + #"{"op":"ping","id":2}"# + "\n"
                + #"{"op":"flag","flag":"b","id":3}"# + "\n" + #"{"op":"ping","id":4}"# + "\n")
        while later.count < 1 { usleep(1000) }
        #expect(try await harness.state() == .awaitingAnswer)
        later.completeAll()
        #expect(try await harness.readJSON()["id"] == .integer(1))
        #expect(try await harness.readJSON()["id"] == .integer(2))
        while later.count < 1 { usleep(1000) }
        later.completeAll()
        for id in 3...4 { #expect(try await harness.readJSON()["id"] == .integer(Int64(id))) }
        #expect(try await harness.state() == .open)
        await harness.stop()
    }

    @Test("lines that arrive while an operation waits queue behind it, across reads")
    func laterReadsQueueBehindWaitingOperation() async throws {
        let backend = EchoBackend(held: true)
        let harness = try await ConnectionHarness(backend: backend)
        try harness.client.send(#"{"op":"reload","id":1}"# + "\n" + #"{"op":"ping","id":2}"# + "\n")
        while try await harness.state() != .awaitingAnswer { usleep(1000) }
        try harness.client.send(#"{"op":"ping","id":3}"# + "\n")
        backend.release()
        for id in 1...3 { #expect(try await harness.readJSON()["id"] == .integer(Int64(id))) }
        await harness.stop()
    }

    @Test("random mixes of every operation, split anywhere, with or without a half-close, lose no answer")
    func randomMixesLoseNoAnswer() async throws {
        let kinds = [
            "ping", "flag", "flags", "route", "config", "status", "metrics", "reload", "watch", "empty", "junk",
        ]
        for seed in UInt64(1)...UInt64(60) {
            var random = SeededGenerator(seed: seed)
            let backend = EchoBackend(delay: { .milliseconds(Int.random(in: 0...4)) })
            let harness = try await ConnectionHarness(backend: backend)
            var stream: [UInt8] = []
            var expected: [(id: Int64?, operation: String)] = []
            let count = Int.random(in: 1...30, using: &random)
            for index in 0..<count {
                let kind = kinds.randomElement(using: &random)!
                switch kind {
                case "empty":
                    stream += Array("\n".utf8)
                    expected.append((nil, kind))
                case "junk":
                    stream += Array("not json\n".utf8)
                    expected.append((nil, kind))
                default:
                    stream += Array((extraMembers(#"{"op":"\#(kind)","id":\#(index)"#, kind) + "}\n").utf8)
                    expected.append((Int64(index), kind))
                }
            }
            let halfClose = Bool.random(using: &random)
            let watches = expected.contains { $0.operation == "watch" }
            // Deliver the bytes in random pieces, sometimes pausing so pieces land in separate reads.
            var offset = 0
            while offset < stream.count {
                let length = min(stream.count - offset, Int.random(in: 1...40, using: &random))
                try harness.client.sendBytes(Array(stream[offset..<offset + length]))
                offset += length
                if Int.random(in: 0..<4, using: &random) == 0 { usleep(UInt32.random(in: 0...2000, using: &random)) }
            }
            if halfClose { harness.client.shutdownWrite() }
            for (position, request) in expected.enumerated() {
                let answer = try await harness.readJSON()
                let context = "seed \(seed), request \(position) (\(request.operation)): \(answer)"
                if let id = request.id {
                    #expect(answer["id"] == .integer(id), "\(context)")
                    let result = request.operation == "watch" ? answer["result"]?["watching"] : answer["result"]?["op"]
                    #expect(result == (request.operation == "watch" ? .bool(true) : .string(request.operation)))
                } else {
                    #expect(answer["id"] == nil && answer["ok"] == false, "\(context)")
                }
            }
            if halfClose && !watches {
                #expect(try await harness.readLine() == nil, "seed \(seed): the connection stays open")
            }
            await harness.stop()
        }
    }

    @Test("an empty line is answered INVALID_REQUEST and the connection goes on")
    func emptyLineIsAnswered() async throws {
        let harness = try await ConnectionHarness()
        try harness.client.send("\n\r\n" + #"{"op":"ping","id":9}"# + "\n")
        for _ in 0..<2 { #expect(try await harness.readJSON()["error"]?["code"] == "INVALID_REQUEST") }
        #expect(try await harness.readJSON()["id"] == .integer(9))
        await harness.stop()
    }

    @Test("bytes of a line that never ends do not keep an idle connection open")
    func unfinishedLineDoesNotResetIdleTimeout() async throws {
        let harness = try await ConnectionHarness(limits: ConnectionHarness.limits(idleTimeout: .milliseconds(400)))
        try harness.client.send(#"{"op":"ping","pad":""#)
        // Trickle bytes of the same line far longer than the idle timeout; the connection must close meanwhile.
        var closedWhileTrickling = false
        for _ in 0..<200 {
            if harness.closed.isSet {
                closedWhileTrickling = true
                break
            }
            _ = try? harness.client.send("x")
            usleep(50_000)
        }
        #expect(closedWhileTrickling)
        await harness.stop()
    }

    @Test("complete requests keep a connection open past its idle timeout")
    func requestsAreActivity() async throws {
        // Requests 200 ms apart for three idle timeouts of 1 s: only a stall of 800 ms between two of them, not a
        // merely slow machine, could let the timeout expire.
        let harness = try await ConnectionHarness(limits: ConnectionHarness.limits(idleTimeout: .seconds(1)))
        let start = ContinuousClock.now
        var id = 0
        while ContinuousClock.now - start < .seconds(3) {
            #expect(try await harness.request(#"{"op":"ping","id":\#(id)}"#)["id"] == .integer(Int64(id)))
            id += 1
            usleep(200_000)
        }
        #expect(!harness.closed.isSet)
        await harness.stop()
    }

    @Test("a line over the limit behind an operation that waits is refused after that operation's answer")
    func tooLargeLineWaitsItsTurn() async throws {
        let harness = try await ConnectionHarness(
            limits: ConnectionHarness.limits(maxRequestBytes: 64), backend: EchoBackend(delay: { .milliseconds(100) }))
        try harness.client.send(#"{"op":"status","id":1}"# + "\n" + String(repeating: "x", count: 200))
        #expect(try await harness.readJSON()["id"] == .integer(1))
        #expect(try await harness.readJSON()["error"]?["code"] == "REQUEST_TOO_LARGE")
        #expect(try await harness.readLine() == nil)
        await harness.stop()
    }

    @Test("draining answers what was read, the operation in flight included, then closes")
    func drainFinishesWork() async throws {
        // Held until drained: with a fixed delay, a slow machine could answer the reload before the drain.
        let backend = EchoBackend(held: true)
        let harness = try await ConnectionHarness(backend: backend)
        try harness.client.send(#"{"op":"reload","id":1}"# + "\n" + #"{"op":"ping","id":2}"# + "\n")
        while try await harness.state() != .awaitingAnswer { usleep(1000) }
        harness.drain()
        backend.release()
        #expect(try await harness.readJSON()["id"] == .integer(1))
        #expect(try await harness.readJSON()["id"] == .integer(2))
        #expect(try await harness.readLine() == nil)
        #expect(try await harness.state() == .closed)
        await harness.stop()
    }

    @Test("a watcher gets events in order with its answers, and stays subscribed after a half-close")
    func watcherGetsEvents() async throws {
        let backend = EchoBackend()
        let harness = try await ConnectionHarness(backend: backend)
        #expect(try await harness.request(#"{"op":"watch","id":1}"#)["result"]?["watching"] == true)
        harness.client.shutdownWrite()
        backend.publish(#"{"event":"reloaded","n":1}"#)
        #expect(try await harness.readJSON()["n"] == 1)
        #expect(try await harness.state() == .inputEnded)
        #expect(backend.watcherCount == 1)
        harness.drain()
        #expect(try await harness.readLine() == nil)
        #expect(backend.watcherCount == 0)
        await harness.stop()
    }

    @Test("a reserve connection answers one ping and closes; anything else is refused")
    func reserveConnection() async throws {
        let pinged = try await ConnectionHarness(admission: .reserve)
        #expect(try await pinged.request(#"{"op":"ping","id":1}"#)["ok"] == true)
        #expect(try await pinged.readLine() == nil)
        await pinged.stop()

        let status = try await ConnectionHarness(admission: .reserve)
        #expect(try await status.request(#"{"op":"status","id":2}"#)["result"]?["op"] == "status")
        #expect(try await status.readLine() == nil)
        await status.stop()

        let refused = try await ConnectionHarness(admission: .reserve)
        let answer = try await refused.request(#"{"op":"flag","flag":"f","id":3}"#)
        #expect(answer["error"]?["code"] == "TOO_MANY_CONNECTIONS")
        #expect(answer["id"] == .integer(3))
        #expect(try await refused.readLine() == nil)
        await refused.stop()
    }
}

@Suite("A query connection's memory")
struct QueryConnectionMemoryTests {
    /// Holds a connection without keeping it alive; read and written on its loop only.
    private final class WeakConnection: @unchecked Sendable {
        weak var connection: QueryConnection?
    }

    @Test("a closed connection is freed: what its home holds of it is let go as it closes")
    func closedConnectionIsFreed() async throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let served = pair[0]
        _ = fcntl(served, F_SETFL, fcntl(served, F_GETFL) | O_NONBLOCK)
        let loop = try ServingEventLoop(name: "test-connection")
        let backend = EchoBackend()
        let closed = DispatchSemaphore(value: 0)
        let held = WeakConnection()
        let home = try await loop.submit {
            let connection = QueryConnection(
                descriptor: served, loop: loop, responder: backend.responder(on: loop), backend: backend,
                limits: ConnectionHarness.limits(), peer: nil, onClose: { _ in closed.signal() })
            _ = connection.start()
            held.connection = connection
            return connection.home
        }.get()
        let client = LineClient(descriptor: pair[1], timeout: 20)
        try client.send(#"{"op":"ping","id":1}"# + "\n")
        #expect(try await offPool { try client.readJSON() }["id"] == .integer(1))
        #expect(try await loop.submit { held.connection != nil }.get())
        // The client shuts its side: the connection answers what it read (nothing), then closes.
        shutdown(client.fd, Int32(SHUT_WR))
        let closedInTime = try await offPool { closed.wait(timeout: .now() + 30) == .success }
        #expect(closedInTime)
        // The home outlives the connection (the shutdown's drain holds it); it must not keep it.
        #expect(try await loop.submit { held.connection == nil }.get())
        withExtendedLifetime(home) {}
        try await loop.shutdownGracefully()
    }
}

/// The members an operation needs besides `op` and `id`.
func extraMembers(_ prefix: String, _ operation: String) -> String {
    switch operation {
    case "flag": return prefix + #","flag":"f","context":{"user_id":"u"}"#
    case "config": return prefix + #","key":"k""#
    case "route": return prefix + #","request":{"path":"/"}"#
    case "explain": return prefix + #","flag":"f","context":{"user_id":"u"}"#
    default: return prefix
    }
}
