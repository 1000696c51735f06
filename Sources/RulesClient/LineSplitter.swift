import NIOCore

/// Splits the daemon's byte stream into lines, each without its newline.
///
/// Answers can be large (`flags` over many flags, `show` of a big file), so the limit is generous; a line
/// beyond it means the peer is not rulesd, and the connection is closed rather than buffering without end.
struct LineSplitter: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    let maxLineBytes: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
            return .needMoreData
        }
        let length = newline - buffer.readerIndex
        if length > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
        let line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        context.fireChannelRead(wrapInboundOut(line))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        while try decode(context: context, buffer: &buffer) == .continue {}
        // rulesd ends every line with a newline; a trailing fragment is a line cut off by the close.
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }
}

/// A line from the daemon longer than the client accepts.
struct LineTooLong: Error, CustomStringConvertible {
    let limit: Int
    var description: String { "the daemon sent a line longer than \(limit) bytes" }
}
