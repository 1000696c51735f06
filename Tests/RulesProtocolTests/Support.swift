import NIOCore

enum ByteBufferStub {
    static func make() -> ByteBuffer { ByteBufferAllocator().buffer(capacity: 256) }
}
