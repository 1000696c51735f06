import NIOCore

/// One unit of input from a client connection.
public enum RequestFrame: Sendable, Equatable {
    /// A request line, without its line terminator (`\n` or `\r\n`).
    case line(ByteBuffer)
    /// The client sent more than the limit without a line break; the connection answers and closes.
    case tooLarge(limit: Int)
}

/// Splits a byte stream into newline-terminated lines, refusing lines over a maximum length.
///
/// The search for `\n` resumes where it left off, so a long line arriving in many small reads costs linear
/// time. Once a line is too large, everything after it is discarded: the connection is about to close.
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

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if discarding {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        let view = buffer.readableBytesView
        let start = view.startIndex + searched
        guard let newline = view[start...].firstIndex(of: UInt8(ascii: "\n")) else {
            searched = view.count
            if view.count > maxLineBytes {
                discarding = true
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                context.fireChannelRead(wrapInboundOut(.tooLarge(limit: maxLineBytes)))
            }
            return .needMoreData
        }
        let length = newline - view.startIndex
        searched = 0
        if length > maxLineBytes {
            discarding = true
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            context.fireChannelRead(wrapInboundOut(.tooLarge(limit: maxLineBytes)))
            return .needMoreData
        }
        var line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        if line.readableBytes > 0, line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
            line.moveWriterIndex(to: line.writerIndex - 1)
        }
        context.fireChannelRead(wrapInboundOut(.line(line)))
        return .continue
    }

    public mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        // A last line without its terminator (e.g. `printf '{"op":"ping"}' | socat ...`) is still a request.
        if !discarding, buffer.readableBytes > 0 {
            var line = buffer.readSlice(length: buffer.readableBytes)!
            if line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
                line.moveWriterIndex(to: line.writerIndex - 1)
            }
            searched = 0
            if line.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(.line(line))) }
        }
        return .needMoreData
    }
}
