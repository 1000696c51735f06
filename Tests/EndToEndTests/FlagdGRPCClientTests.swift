import FlagdEvaluationAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import RuleModel
import RulesTestSupport
import SwiftProtobuf
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Runs blocking work (the harness's polling, file edits) on a thread of its own, so that it cannot starve the
/// small concurrency pool the gRPC client runs on.
private func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try work() }) }
        thread.start()
    }
}

private func context(_ fields: [String: Google_Protobuf_Value]) -> Google_Protobuf_Struct {
    var object = Google_Protobuf_Struct()
    object.fields = fields
    return object
}

/// A gRPC client of the daemon's flagd socket.
private func withFlagdClient<T: Sendable>(
    _ socket: String, _ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T
) async throws -> T {
    try await withGRPCClient(
        transport: .http2NIOPosix(target: .unixDomainSocket(path: socket), transportSecurity: .plaintext),
        handleClient: body)
}

/// A bound on an event stream, so that a missing event fails the test instead of hanging it.
private var streamBound: CallOptions {
    var options = CallOptions.defaults
    options.timeout = .seconds(120)
    return options
}

@Suite("flagd's gRPC API of the real daemon, through a gRPC client")
struct FlagdGRPCClientTests {
    @Test("v1 and v2 answer the same flag alike, with the line protocol's value, variant, reason and revision")
    func bothVersions() async throws {
        let flagd = try await offPool { try FlagdGRPCDaemon() }
        let line = try await offPool {
            try flagd.daemon.request(#"{"op":"flag","flag":"layout","context":{"plan":"pro"}}"#)
        }
        try await withFlagdClient(flagd.grpcSocket) { client in
            var v1Request = Flagd_Evaluation_V1_ResolveObjectRequest()
            v1Request.flagKey = "layout"
            v1Request.context = context(["plan": Google_Protobuf_Value(stringValue: "pro")])
            let v1 = try await Flagd_Evaluation_V1_Service.Client(wrapping: client).resolveObject(v1Request)
            var v2Request = Flagd_Evaluation_V2_ResolveObjectRequest()
            v2Request.flagKey = "layout"
            v2Request.context = v1Request.context
            let v2 = try await Flagd_Evaluation_V2_Service.Client(wrapping: client).resolveObject(v2Request)
            #expect(v1.value.fields["columns"]?.numberValue == 3)
            #expect(v1.value.fields["theme"]?.stringValue == "dark")
            #expect(v2.value == v1.value)
            #expect(v1.variant == "wide" && v2.variant == "wide")
            #expect(v1.reason == line["result"]?["reason"]?.stringValue)
            #expect(v2.reason == "TARGETING_MATCH")
            #expect(v2.metadata.fields["revision"]?.stringValue == line["revision"]?.stringValue)
            #expect(v2.metadata.fields["source"]?.stringValue == line["result"]?["source"]?.stringValue)
        }
    }

    @Test("an override forces the variant over gRPC too, with reason OVERRIDE and who set it in metadata")
    func overridden() async throws {
        let flagd = try await offPool { try FlagdGRPCDaemon() }
        let set = try await offPool {
            try flagd.daemon.request(
                #"{"op":"override_set","flag":"layout","variant":"classic","ttl":"10m","reason":"incident 7"}"#)
        }
        #expect(set["ok"] == true, "\(set)")
        try await withFlagdClient(flagd.grpcSocket) { client in
            var request = Flagd_Evaluation_V2_ResolveObjectRequest()
            request.flagKey = "layout"
            request.context = context(["plan": Google_Protobuf_Value(stringValue: "pro")])
            let answer = try await Flagd_Evaluation_V2_Service.Client(wrapping: client).resolveObject(request)
            #expect(answer.reason == "OVERRIDE")
            #expect(answer.variant == "classic")
            #expect(answer.value.fields["columns"]?.numberValue == 1)
            #expect(answer.metadata.fields["override_reason"]?.stringValue == "incident 7")
            #expect(answer.metadata.fields["override_set_by"] != nil)

            let all = try await Flagd_Evaluation_V1_Service.Client(wrapping: client).resolveAll(
                Flagd_Evaluation_V1_ResolveAllRequest())
            #expect(all.flags["layout"]?.reason == "OVERRIDE")
            #expect(all.flags["layout"]?.variant == "classic")
        }
    }

    @Test("v1 ResolveAll answers every flag that has a value, leaving out the failed rule")
    func resolveAll() async throws {
        let flagd = try await offPool { try FlagdGRPCDaemon() }
        try await withFlagdClient(flagd.grpcSocket) { client in
            var request = Flagd_Evaluation_V1_ResolveAllRequest()
            request.context = context(["plan": Google_Protobuf_Value(stringValue: "pro")])
            let all = try await Flagd_Evaluation_V1_Service.Client(wrapping: client).resolveAll(request)
            #expect(all.flags.keys.sorted() == ["banner", "beta", "greeting", "integer-age", "layout", "limit"])
            #expect(all.flags["beta"]?.boolValue == true)
            #expect(all.flags["limit"]?.doubleValue == 10)
            #expect(all.flags["limit"]?.reason == "STATIC")
            #expect(all.flags["greeting"]?.stringValue == "Good day")
        }
    }

    @Test("statuses: unknown flag NOT_FOUND, type mismatch INVALID_ARGUMENT, failed rule UNKNOWN")
    func statuses() async throws {
        let flagd = try await offPool { try FlagdGRPCDaemon() }
        try await withFlagdClient(flagd.grpcSocket) { client in
            let v2 = Flagd_Evaluation_V2_Service.Client(wrapping: client)
            for (key, code) in [
                ("no-such-flag", RPCError.Code.notFound), ("greeting", .invalidArgument), ("boom", .unknown),
            ] {
                var request = Flagd_Evaluation_V2_ResolveBooleanRequest()
                request.flagKey = key
                do {
                    _ = try await v2.resolveBoolean(request)
                    Issue.record("\(key) answered")
                } catch let error as RPCError {
                    #expect(error.code == code, "\(key): \(error)")
                }
            }
        }
    }

    @Test("an integer-valued context field reaches the rule as an integer, as over the line protocol")
    func integerContext() async throws {
        let flagd = try await offPool { try FlagdGRPCDaemon() }
        let line = try await offPool {
            try flagd.daemon.request(#"{"op":"flag","flag":"integer-age","context":{"age":30}}"#)
        }
        try await withFlagdClient(flagd.grpcSocket) { client in
            var request = Flagd_Evaluation_V2_ResolveBooleanRequest()
            request.flagKey = "integer-age"
            request.context = context([
                "age": Google_Protobuf_Value(numberValue: 30),
                "targetingKey": Google_Protobuf_Value(nilLiteral: ()),
            ])
            let answer = try await Flagd_Evaluation_V2_Service.Client(wrapping: client).resolveBoolean(request)
            #expect(answer.value == true)
            #expect(line["result"]?["value"] == true)
            #expect(answer.variant == line["result"]?["variant"]?.stringValue)
        }
    }

    @Test("EventStream: provider_ready at once, then a configuration_change naming exactly the edited flag")
    func eventStream() async throws {
        let flagd = try await offPool { try FlagdGRPCDaemon() }
        let events = Mutex<[(String, Google_Protobuf_Struct)]>([])
        try await withFlagdClient(flagd.grpcSocket) { client in
            let v2 = Flagd_Evaluation_V2_Service.Client(wrapping: client)
            try await v2.eventStream(Flagd_Evaluation_V2_EventStreamRequest(), options: streamBound) { response in
                var messages = response.messages.makeAsyncIterator()
                let ready = try await messages.next()
                #expect(ready?.type == "provider_ready")
                try await offPool {
                    try flagd.daemon.writeRule(
                        "banner.lua",
                        #"flag "banner" { variants = { old = "old text", new = "new text" }, default = "new" }"#)
                }
                while let event = try await messages.next() {
                    events.withLock { $0.append((event.type, event.data)) }
                    if event.type == "configuration_change" { break }
                }
            }
        }
        let change = try #require(events.withLock { $0.last })
        #expect(change.0 == "configuration_change")
        let flags = change.1.fields["flags"]?.structValue.fields ?? [:]
        #expect(flags.keys.sorted() == ["banner"])
        #expect(flags["banner"]?.structValue.fields["type"]?.stringValue == "update")
    }

    @Test("a stop ends open event streams, exits 0 and removes the socket file")
    func stopWithOpenStream() async throws {
        let flagd = try await offPool { try FlagdGRPCDaemon() }
        let status = Mutex<Int32?>(nil)
        try await withFlagdClient(flagd.grpcSocket) { client in
            let v1 = Flagd_Evaluation_V1_Service.Client(wrapping: client)
            try await v1.eventStream(Flagd_Evaluation_V1_EventStreamRequest(), options: streamBound) { response in
                var messages = response.messages.makeAsyncIterator()
                #expect(try await messages.next()?.type == "provider_ready")
                let exit = try await offPool { try flagd.daemon.stop() }
                status.withLock { $0 = exit }
                // The stream ends, cleanly or with an error, rather than hanging.
                while (try? await messages.next()) != nil {}
            }
        }
        #expect(status.withLock { $0 } == 0, "\(flagd.daemon.logs)")
        #expect(access(flagd.grpcSocket, F_OK) != 0)
    }

    @Test("the TCP listener serves the same API")
    func tcpListener() async throws {
        let port = try freeLoopbackPort()
        let flagd = try await offPool { try FlagdGRPCDaemon(arguments: ["--flagd-listen", "127.0.0.1:\(port)"]) }
        #expect(flagd.daemon.logs.contains("127.0.0.1:\(port)"))
        try await withGRPCClient(
            transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
        ) { client in
            var request = Flagd_Evaluation_V2_ResolveIntRequest()
            request.flagKey = "limit"
            let answer = try await Flagd_Evaluation_V2_Service.Client(wrapping: client).resolveInt(request)
            #expect(answer.value == 10)
            #expect(answer.reason == "STATIC")
        }
    }
}
