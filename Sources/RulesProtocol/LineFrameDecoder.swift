import Glibc
import NIOCore

/// One unit of input from a client connection.
public enum RequestFrame: Sendable, Equatable {
    /// One or more complete lines, each ending in `\n` (the last byte of the buffer is a `\n`). Handing
    /// over every complete line of a read at once keeps the per-line cost of pipelined requests to the
    /// handler's own work; ``RequestFrame/forEachLine(_:_:)`` splits them.
    case lines(ByteBuffer)
    /// A last line without a terminator, at the end of the stream (`printf '{"op":"ping"}' | socat ...`).
    case line(ByteBuffer)
    /// The client sent more than the limit without a line break; the connection answers and closes.
    case tooLarge(limit: Int)

    /// Calls `body` with each line's bytes (without `\r\n` or `\n`), in order, while it returns true.
    /// - Returns: the offset just past the last line handed to `body` (relative to the buffer's reader index).
    @discardableResult
    public static func forEachLine(_ buffer: ByteBuffer, _ body: (UnsafeRawBufferPointer, Range<Int>) -> Bool) -> Int {
        buffer.withUnsafeReadableBytes { bytes in
            var start = 0
            while start < bytes.count {
                let found = memchr(bytes.baseAddress! + start, 0x0A, bytes.count - start)
                let end = found.map { UnsafeRawPointer($0) - bytes.baseAddress! } ?? bytes.count
                var lineEnd = end
                if lineEnd > start && bytes[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
                let next = min(end + 1, bytes.count)
                if !body(UnsafeRawBufferPointer(rebasing: bytes[start..<lineEnd]), start..<next) { return next }
                start = next
            }
            return start
        }
    }
}

/// Splits a byte stream into newline-terminated lines, refusing lines over a maximum length.
///
/// The search for `\n` resumes where it left off, so a long line arriving in many small reads costs linear
/// time. Once a line is too large, everything after it is discarded: the connection is about to close.
/// Lines inside one ``RequestFrame/lines(_:)`` buffer are not measured here: the handler checks each
/// line's length as it splits them (it has to look at every byte anyway).
///
/// Clients use it as a `ByteToMessageDecoder`; the daemon's connection handler calls ``nextFrame(_:)`` on
/// each read itself, which spares every request a hop through a `ByteToMessageHandler`.
public struct LineFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = RequestFrame

    /// Longest accepted line, in bytes, not counting its terminator.
    public let maxLineBytes: Int
    private var searched = 0
    private var discarding = false

    /// - Parameter maxLineBytes: the longest accepted line.
    public init(maxLineBytes: Int) {
        self.maxLineBytes = maxLineBytes
    }

    /// The next frame in `buffer`, consuming its bytes; nil when more input is needed. Call it with the same
    /// growing buffer until it returns nil: the search for `\n` resumes where the last call left off.
    public mutating func nextFrame(_ buffer: inout ByteBuffer) -> RequestFrame? {
        if discarding {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return nil
        }
        let view = buffer.readableBytesView
        guard let lastNewline = view[(view.startIndex + searched)...].lastIndex(of: UInt8(ascii: "\n")) else {
            searched = view.count
            if view.count > maxLineBytes {
                discarding = true
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                return .tooLarge(limit: maxLineBytes)
            }
            return nil
        }
        searched = 0
        return .lines(buffer.readSlice(length: lastNewline - view.startIndex + 1)!)
    }

    /// The frames left in `buffer` at the end of the stream: complete lines, then a last unterminated line.
    public mutating func lastFrames(_ buffer: inout ByteBuffer) -> [RequestFrame] {
        var frames: [RequestFrame] = []
        while let frame = nextFrame(&buffer) { frames.append(frame) }
        if !discarding, buffer.readableBytes > 0 {
            var line = buffer.readSlice(length: buffer.readableBytes)!
            if line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
                line.moveWriterIndex(to: line.writerIndex - 1)
            }
            searched = 0
            if line.readableBytes > 0 { frames.append(.line(line)) }
        }
        return frames
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = nextFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        if case .tooLarge = frame { return .needMoreData }
        return .continue
    }

    public mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        for frame in lastFrames(&buffer) { context.fireChannelRead(wrapInboundOut(frame)) }
        return .needMoreData
    }
}
