import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import QueryServing
import ServiceLifecycle

/// The optional HTTP listener serving `/metrics` (Prometheus text format) for scrapers that cannot use the
/// Unix socket. Off unless `metrics_listen` is set; bind it to loopback unless the network is trusted.
struct MetricsHTTPService: Service {
    let address: String
    let services: DaemonServices
    let group: any EventLoopGroup
    let logger: Logger

    func run() async throws {
        let services = self.services
        try await HTTPListener(
            setting: "metrics_listen", served: "metrics", address: address, group: group, logger: logger,
            noDelay: false, makeHandler: { MetricsHTTPHandler(services: services) }
        ).run()
    }
}

/// Answers `GET /metrics`; everything else is 404 (or 405 for other methods).
final class MetricsHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let services: DaemonServices
    private var head: HTTPRequestHead?

    init(services: DaemonServices) {
        self.services = services
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break
        case .end:
            guard let request = head else { return }
            head = nil
            let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
            guard path == "/metrics" else {
                respond(
                    context: context, request: request, status: .notFound, body: Array("not found; try /metrics\n".utf8)
                )
                return
            }
            guard request.method == .GET || request.method == .HEAD else {
                respond(context: context, request: request, status: .methodNotAllowed, body: [])
                return
            }
            let services = self.services
            let promise = context.eventLoop.makePromise(of: [UInt8].self)
            promise.completeWithTask { await services.metricsText() }
            promise.futureResult.assumeIsolated().whenSuccess { [self] text in
                respond(context: context, request: request, status: .ok, body: text)
            }
        }
    }

    private func respond(
        context: ChannelHandlerContext, request: HTTPRequestHead, status: HTTPResponseStatus, body: [UInt8]
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/plain; version=0.0.4; charset=utf-8")
        headers.add(name: "content-length", value: String(body.count))
        if !request.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
            promise: nil)
        if request.method != .HEAD {
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let keepAlive = request.isKeepAlive
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
