import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import QueryServing
import RuleModel
import RulesProtocol
import ServiceLifecycle

/// The optional HTTP listener speaking the OpenFeature Remote Evaluation Protocol (OFREP):
/// `POST /ofrep/v1/evaluate/flags/{key}` and `POST /ofrep/v1/evaluate/flags`. Off unless `ofrep_listen` is set.
/// Answers come from the workers, through the same generations and evaluators as the socket's.
struct OFREPHTTPService: Service {
    let address: String
    let services: DaemonServices
    let group: any EventLoopGroup
    let logger: Logger

    func run() async throws {
        let services = self.services
        try await HTTPListener(
            setting: "ofrep_listen", served: "OFREP", address: address, group: group, logger: logger,
            noDelay: true, makeHandler: { OFREPHTTPHandler(services: services) }
        ).run()
    }
}

/// What an OFREP request asks for, from its path.
enum OFREPRoute: Equatable {
    /// `/ofrep/v1/evaluate/flags/{key}`, the key percent-decoded.
    case flag(String)
    /// `/ofrep/v1/evaluate/flags`.
    case allFlags

    private static let prefix = "/ofrep/v1/evaluate/flags"

    /// The route of a request URI (its query ignored); nil for any other path.
    init?(uri: String) {
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard path.hasPrefix(Self.prefix) else { return nil }
        let rest = path.dropFirst(Self.prefix.count)
        if rest.isEmpty || rest == "/" {
            self = .allFlags
            return
        }
        guard rest.first == "/", let key = Self.percentDecoded(rest.dropFirst()), !key.isEmpty else { return nil }
        self = .flag(key)
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension DaemonServices {
    /// Answers one OFREP request: parses the body on the caller's loop, evaluates on the next worker, and
    /// completes on `loop` (no task hops: the HTTP loop waits on the worker's future directly).
    func answerOFREP(_ route: OFREPRoute, body: [UInt8], ifNoneMatch: String?, on loop: any EventLoop)
        -> EventLoopFuture<OFREPResponse>
    {
        let key: String?
        if case .flag(let name) = route { key = name } else { key = nil }
        let context: [UInt8]
        switch OFREPAnswers.context(fromBody: body, key: key) {
        case .success(let bytes): context = bytes
        case .failure(let failure):
            return loop.makeSucceededFuture(OFREPResponse(status: .badRequest, body: failure.json))
        }
        let overrides = store.overrides
        let answer = pool.onNextWorker { worker -> OFREPResponse? in
            switch route {
            case .flag(let key):
                worker.evaluate(.flag) { generation, evaluator, metrics, now in
                    if let response = OFREPAnswers.overridden(
                        key: key, table: overrides.current, generation: generation, now: now)
                    {
                        return (response, true)
                    }
                    let response = OFREPAnswers.evaluate(
                        key: key, context: context, generation: generation, evaluator: evaluator, now: now,
                        observer: metrics)
                    return (response, response.status == .ok)
                }
            case .allFlags:
                worker.evaluate(.flags) { generation, evaluator, metrics, now in
                    let response = OFREPAnswers.evaluateAll(
                        context: context, ifNoneMatch: ifNoneMatch, generation: generation, evaluator: evaluator,
                        now: now, observer: metrics, overrides: overrides.current)
                    return (response, response.status == .ok || response.status == .notModified)
                }
            }
        }
        return answer.hop(to: loop).map { answer in
            if let answer { return answer }
            let failure = OFREPFailure(key: key, code: "GENERAL", details: "no rule set is loaded")
            return OFREPResponse(status: .internalServerError, body: failure.json)
        }.recover { error in
            let failure = OFREPFailure(key: key, code: "GENERAL", details: "not answered: \(error)")
            return OFREPResponse(status: .internalServerError, body: failure.json)
        }
    }
}

/// Reads one OFREP request (head and body, up to `max_request_bytes`) and writes its answer.
final class OFREPHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case reading(HTTPRequestHead, [UInt8])
        /// The body grew past the limit: the rest is dropped and the request answered 413.
        case discarding(HTTPRequestHead)
    }

    private let services: DaemonServices
    private let maxBodyBytes: Int
    private var state = State.idle

    init(services: DaemonServices) {
        self.services = services
        self.maxBodyBytes = services.settings.maxRequestBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let request), _):
            state = .reading(request, [])
        case (.body(var chunk), .reading(let request, var body)):
            if body.count + chunk.readableBytes > maxBodyBytes {
                state = .discarding(request)
            } else {
                state = .idle  // lets `body` be uniquely referenced while it grows
                body.append(contentsOf: chunk.readBytes(length: chunk.readableBytes) ?? [])
                state = .reading(request, body)
            }
        case (.body, _):
            break
        case (.end, .discarding(let request)):
            state = .idle
            let failure = OFREPFailure(
                key: nil, code: "PARSE_ERROR", details: "request body over \(maxBodyBytes) bytes")
            respond(context: context, request: request, OFREPResponse(status: .payloadTooLarge, body: failure.json))
        case (.end, .reading(let request, let body)):
            state = .idle
            answer(context: context, request: request, body: body)
        case (.end, .idle):
            break
        }
    }

    private func answer(context: ChannelHandlerContext, request: HTTPRequestHead, body: [UInt8]) {
        guard let route = OFREPRoute(uri: request.uri) else {
            let failure = OFREPFailure(
                key: nil, code: "GENERAL",
                details: "not found; OFREP answers POST /ofrep/v1/evaluate/flags and /ofrep/v1/evaluate/flags/{key}")
            respond(context: context, request: request, OFREPResponse(status: .notFound, body: failure.json))
            return
        }
        guard request.method == .POST else {
            let failure = OFREPFailure(key: nil, code: "GENERAL", details: "OFREP evaluations are POST requests")
            respond(context: context, request: request, OFREPResponse(status: .methodNotAllowed, body: failure.json))
            return
        }
        let answer = services.answerOFREP(
            route, body: body, ifNoneMatch: request.headers.first(name: "if-none-match"), on: context.eventLoop)
        answer.assumeIsolated().whenSuccess { [self] response in
            respond(context: context, request: request, response)
        }
    }

    private func respond(context: ChannelHandlerContext, request: HTTPRequestHead, _ response: OFREPResponse) {
        var headers = HTTPHeaders()
        if response.status != .notModified {
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(response.body.count))
        }
        if let etag = response.etag { headers.add(name: "etag", value: etag) }
        if response.status == .methodNotAllowed { headers.add(name: "allow", value: "POST") }
        if !request.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(
            wrapOutboundOut(
                .head(HTTPResponseHead(version: request.version, status: response.status, headers: headers))),
            promise: nil)
        if !response.body.isEmpty {
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))),
                promise: nil)
        }
        let keepAlive = request.isKeepAlive
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
