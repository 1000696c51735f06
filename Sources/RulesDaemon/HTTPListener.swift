import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import QueryServing
import ServiceLifecycle

/// An HTTP/1.1 listener on `HOST:PORT` (`[v6]:PORT` too) that serves until the service group's graceful
/// shutdown: what the metrics and the OFREP listeners share. Each connection gets NIO's HTTP server pipeline and
/// one handler of `makeHandler`'s making.
struct HTTPListener {
    /// The setting that named the address, for messages (`metrics_listen`).
    let setting: String
    /// What is served, for messages and the log (`metrics`, `OFREP`).
    let served: String
    let address: String
    let group: any EventLoopGroup
    let logger: Logger
    /// Whether answers go out without Nagle's delay (request/response traffic on kept-alive connections).
    var noDelay = false
    let makeHandler: @Sendable () -> any ChannelHandler

    func run() async throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw StartupError("\(setting) must be HOST:PORT, got \(address)")
        }
        var host = Substring(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        let channel: any Channel
        do {
            channel = try await bootstrap(host: String(host), port: port)
        } catch {
            throw StartupError("cannot serve \(served) over HTTP on \(address): \(error)")
        }
        logger.info("serving \(served) over HTTP", metadata: ["\(setting.prefix { $0 != "_" }).listen": "\(address)"])
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }

    private func bootstrap(host: String, port: Int) async throws -> any Channel {
        let makeHandler = self.makeHandler
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: noDelay ? 1 : 0)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(makeHandler())
                }
            }
            .bind(host: host, port: port).get()
    }
}
