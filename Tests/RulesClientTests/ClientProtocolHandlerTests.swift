import NIOCore
import NIOEmbedded
import RuleModel
import Synchronization
import Testing

@testable import RulesClient

/// Collects the event lines a handler passes on.
final class EventLog: Sendable {
    private let box = Mutex<[JSONObject]>([])
    func append(_ line: JSONObject) { box.withLock { $0.append(line) } }
    var lines: [JSONObject] { box.withLock { $0 } }
}

@Suite("The client's protocol handler on an embedded channel")
struct ClientProtocolHandlerTests {
    /// Sends a request through the handler and returns its promise and the `id` the handler wrote.
    func send(_ channel: EmbeddedChannel, _ members: JSONObject) throws -> (EventLoopPromise<JSONValue>, Int64) {
        let answer = channel.eventLoop.makePromise(of: JSONValue.self)
        try channel.writeOutbound(OutgoingRequest(members: members, answer: answer, timeout: nil))
        var line = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(line.readableBytesView.last == UInt8(ascii: "\n"))
        let request = try JSONParser().parse(Array(line.readBytes(length: line.readableBytes - 1)!))
        #expect(request["op"] == members["op"])
        return (answer, try #require(request["id"]?.int64Value))
    }

    @Test("answers are matched to their requests by id, in whatever order they come")
    func matchesByID() async throws {
        let channel = EmbeddedChannel(handler: ClientProtocolHandler(onEvent: nil))
        let (first, firstID) = try send(channel, ["op": "flag", "flag": "a"])
        let (second, secondID) = try send(channel, ["op": "flag", "flag": "b"])
        #expect(firstID != secondID)
        try channel.writeInbound(ByteBuffer(string: #"{"id":\#(secondID),"ok":true,"result":{"key":"b"}}"#))
        try channel.writeInbound(ByteBuffer(string: #"{"id":\#(firstID),"ok":true,"result":{"key":"a"}}"#))
        #expect(try await first.futureResult.get()["result"]?["key"] == "a")
        #expect(try await second.futureResult.get()["result"]?["key"] == "b")
        _ = try channel.finish()
    }

    @Test("event lines go to the event handler, not to a waiting request")
    func eventLines() async throws {
        let events = EventLog()
        let channel = EmbeddedChannel(handler: ClientProtocolHandler(onEvent: { events.append($0) }))
        let (answer, id) = try send(channel, ["op": "ping"])
        try channel.writeInbound(ByteBuffer(string: #"{"event":"reloaded","generation":2}"#))
        try channel.writeInbound(ByteBuffer(string: #"{"id":\#(id),"ok":true,"result":{}}"#))
        #expect(events.lines.map { $0["event"] } == ["reloaded"])
        #expect(try await answer.futureResult.get()["ok"] == true)
        _ = try channel.finish()
    }

    @Test("a refusal without an id fails the waiting requests with its code when the connection closes")
    func refusalWithoutID() async throws {
        let channel = EmbeddedChannel(handler: ClientProtocolHandler(onEvent: nil))
        let (answer, _) = try send(channel, ["op": "flag", "flag": "a"])
        try channel.writeInbound(
            ByteBuffer(string: #"{"ok":false,"error":{"code":"TOO_MANY_CONNECTIONS","message":"full"}}"#))
        try await channel.close()
        await #expect(
            throws: RulesdClientError.daemon(
                DaemonError(
                    code: .tooManyConnections, message: "full",
                    details: ["code": "TOO_MANY_CONNECTIONS", "message": "full"]))
        ) {
            try await answer.futureResult.get()
        }
    }

    @Test("lines split across reads are put together, and a line beyond the limit is refused")
    func lineSplitting() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(LineSplitter(maxLineBytes: 16)))
        try channel.writeInbound(ByteBuffer(string: #"{"a":"#))
        try channel.writeInbound(ByteBuffer(string: "1}\n{}\n{"))
        #expect(try channel.readInbound(as: ByteBuffer.self).map { String(buffer: $0) } == #"{"a":1}"#)
        #expect(try channel.readInbound(as: ByteBuffer.self).map { String(buffer: $0) } == "{}")
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        #expect(throws: LineTooLong.self) {
            try channel.writeInbound(ByteBuffer(string: String(repeating: "x", count: 40)))
        }
    }
}
