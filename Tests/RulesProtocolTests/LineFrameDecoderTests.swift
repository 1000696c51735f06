import NIOCore
import NIOEmbedded
import RulesProtocol
import Testing

@Suite("Line framing")
struct LineFrameDecoderTests {
    private func channel(limit: Int = 64) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maxLineBytes: limit)))
        return channel
    }

    private func lines(_ frames: [RequestFrame]) -> [String] {
        var result: [String] = []
        for frame in frames {
            switch frame {
            case .lines(let buffer):
                RequestFrame.forEachLine(buffer) { bytes, _ in
                    result.append(String(decoding: bytes, as: UTF8.self))
                    return true
                }
            case .line(let buffer): result.append("last:" + String(buffer: buffer))
            case .tooLarge(let limit): result.append("too large:\(limit)")
            }
        }
        return result
    }

    private func readAll(_ channel: EmbeddedChannel) throws -> [RequestFrame] {
        var frames: [RequestFrame] = []
        while let frame = try channel.readInbound(as: RequestFrame.self) { frames.append(frame) }
        return frames
    }

    @Test("every complete line of a read is handed over at once, without its terminator")
    func completeLines() throws {
        let channel = try channel()
        try channel.writeInbound(ByteBuffer(string: "a\nbb\r\nccc\n"))
        #expect(lines(try readAll(channel)) == ["a", "bb", "ccc"])
    }

    @Test("a line split across reads is handed over once complete")
    func splitLine() throws {
        let channel = try channel()
        try channel.writeInbound(ByteBuffer(string: "{\"op\":"))
        #expect(try readAll(channel).isEmpty)
        try channel.writeInbound(ByteBuffer(string: "\"ping\"}\nnext"))
        #expect(lines(try readAll(channel)) == [#"{"op":"ping"}"#])
        try channel.writeInbound(ByteBuffer(string: "\n"))
        #expect(lines(try readAll(channel)) == ["next"])
    }

    @Test("bytes beyond the limit without a line break are refused once, and then discarded")
    func tooLarge() throws {
        let channel = try channel(limit: 16)
        try channel.writeInbound(ByteBuffer(string: String(repeating: "x", count: 20)))
        #expect(lines(try readAll(channel)) == ["too large:16"])
        try channel.writeInbound(ByteBuffer(string: "more\n"))
        #expect(try readAll(channel).isEmpty)
    }

    @Test("a last line without a terminator is handed over at the end of the stream")
    func unterminatedLast() throws {
        let channel = try channel()
        try channel.writeInbound(ByteBuffer(string: "a\nlast"))
        #expect(lines(try readAll(channel)) == ["a"])
        channel.pipeline.fireChannelInactive()
        #expect(lines(try readAll(channel)) == ["last:last"])
    }

    @Test("called directly, nextFrame hands over complete lines and keeps the rest for the next read")
    func directFraming() {
        var framer = LineFrameDecoder(maxLineBytes: 64)
        var buffer = ByteBuffer(string: "a\nbb\ncc")
        var frames: [RequestFrame] = []
        while let frame = framer.nextFrame(&buffer) { frames.append(frame) }
        #expect(lines(frames) == ["a", "bb"])
        #expect(String(buffer: buffer) == "cc")
        buffer.writeString("c\r\nd")
        frames = []
        while let frame = framer.nextFrame(&buffer) { frames.append(frame) }
        #expect(lines(frames) == ["ccc"])
        #expect(lines(framer.lastFrames(&buffer)) == ["last:d"])
    }

    @Test("called directly, a partial line over the limit is refused once")
    func directTooLarge() {
        var framer = LineFrameDecoder(maxLineBytes: 8)
        var buffer = ByteBuffer(string: "12345")
        #expect(framer.nextFrame(&buffer) == nil)
        buffer.writeString("67890")
        #expect(framer.nextFrame(&buffer) == .tooLarge(limit: 8))
        #expect(buffer.readableBytes == 0)
        buffer.writeString("ok\n")
        #expect(framer.nextFrame(&buffer) == nil)
        #expect(framer.lastFrames(&buffer).isEmpty)
    }

    @Test("forEachLine stops when asked and says where")
    func stopEarly() {
        var seen: [String] = []
        let consumed = RequestFrame.forEachLine(ByteBuffer(string: "one\ntwo\nthree\n")) { bytes, _ in
            seen.append(String(decoding: bytes, as: UTF8.self))
            return seen.count < 2
        }
        #expect(seen == ["one", "two"])
        #expect(consumed == 8)
    }
}
