import Foundation
import Glibc
import NIOCore
import RuleModel
import RulesProtocol
import RulesTestSupport
import Synchronization
import SystemdSupport
import Testing

@testable import QueryServing

/// A backend that grants `quick` roles from the credentials alone and `full` ones after group lookups, and counts
/// both kinds of question and the refusals it is told of.
private final class RoleBackend: QueryBackend {
    let quick: AccessRoles
    let full: AccessRoles
    let quickLookups = Counter()
    let fullLookups = Counter()
    let refusals = Mutex<[RequestOperation]>([])

    init(quick: AccessRoles, full: AccessRoles) {
        self.quick = quick
        self.full = full
    }

    func responder(on loop: ServingEventLoop) -> QueryResponder { EchoResponder() }

    func answerWaiting(_ operation: RequestOperation, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        id.withUnsafeOptionalBytes { id in
            ResponseWriter.writeSuccess(
                id: id, revision: "r", generation: 1, result: Array(#"{"op":"\#(operation.rawValue)"}"#.utf8),
                into: &buffer)
        }
        return buffer
    }

    func watch(_ key: ObjectIdentifier, on loop: ServingEventLoop, deliver: @escaping @Sendable ([UInt8]) -> Void) {}
    func unwatch(_ key: ObjectIdentifier) {}

    func roles(for peer: PeerCredentials?, lookingUpGroups: Bool) -> AccessRoles {
        (lookingUpGroups ? fullLookups : quickLookups).add()
        return lookingUpGroups ? full : quick
    }

    func refused(_ operation: RequestOperation, peer: PeerCredentials?, held: AccessRoles) {
        refusals.withLock { $0.append(operation) }
    }
}

@Suite("A query connection's roles")
struct ConnectionRolesTests {
    /// A connection over a socketpair, served by `backend`; returns the client end and the loop.
    private func serve(_ backend: RoleBackend) async throws -> (LineClient, ServingEventLoop) {
        var pair: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let served = pair[0]
        _ = fcntl(served, F_SETFL, fcntl(served, F_GETFL) | O_NONBLOCK)
        let loop = try ServingEventLoop(name: "test-roles")
        try await loop.submit {
            let connection = QueryConnection(
                descriptor: served, loop: loop, responder: backend.responder(on: loop), backend: backend,
                limits: ConnectionHarness.limits(), peer: PeerCredentials(pid: 1, uid: 4242, gid: 4242),
                onClose: { _ in })
            _ = connection.start()
        }.get()
        return (LineClient(descriptor: pair[1], timeout: 20), loop)
    }

    private func request(_ client: LineClient, _ line: String) async throws -> JSONValue {
        try client.send(line + "\n")
        return try await offPool { try client.readJSON() }
    }

    @Test("an operation the roles do not allow is answered FORBIDDEN, in order, and the backend is told")
    func refusesInOrder() async throws {
        let backend = RoleBackend(quick: [.query], full: [.query])
        let (client, loop) = try await serve(backend)
        try client.send(
            #"{"op":"ping","id":1}"# + "\n" + #"{"op":"reload","id":2}"# + "\n" + #"{"op":"flag","flag":"x","id":3}"#
                + "\n")
        #expect(try await offPool { try client.readJSON() }["result"]?["op"] == "ping")
        let refused = try await offPool { try client.readJSON() }
        #expect(refused["id"] == 2)
        #expect(refused["error"]?["code"] == "FORBIDDEN")
        #expect(refused["error"]?["operation"] == "reload")
        #expect(refused["error"]?["required_role"] == "operate")
        #expect(try await offPool { try client.readJSON() }["id"] == 3)
        #expect(backend.refusals.withLock { $0 } == [.reload])
        try await loop.shutdownGracefully()
    }

    @Test("a refused request whose context is not JSON is a PARSE_ERROR first, as the whole line is validated")
    func parseErrorBeforeRefusal() async throws {
        let backend = RoleBackend(quick: [], full: [])
        let (client, loop) = try await serve(backend)
        for context in [#"{"a":tru}"#, #"{"a":"\x"}"#, #"{"a":null,"a":1}"#, #"{"a":1,"a":2}"#] {
            let answer = try await request(client, #"{"op":"flag","flag":"x","id":1,"context":"# + context + "}")
            #expect(answer["error"]?["code"] == "PARSE_ERROR", "\(context)")
            #expect(answer["id"] == nil, "\(context)")
        }
        let refused = try await request(client, #"{"op":"flag","flag":"x","id":2,"context":{"a":null}}"#)
        #expect(refused["error"]?["code"] == "FORBIDDEN")
        #expect(refused["id"] == 2)
        #expect(backend.refusals.withLock { $0 } == [.flag])
        try await loop.shutdownGracefully()
    }

    @Test("roles are asked once from the credentials, and looked up once more only when a request needs it")
    func looksUpOnlyWhenNeeded() async throws {
        let backend = RoleBackend(quick: [.query], full: [.query, .observe])
        let (client, loop) = try await serve(backend)
        for _ in 0..<3 { #expect(try await request(client, #"{"op":"ping"}"#)["ok"] == true) }
        #expect(backend.quickLookups.current == 1)
        #expect(backend.fullLookups.current == 0)
        // status needs observe, which only the lookup gives; then the answer is remembered.
        for _ in 0..<2 { #expect(try await request(client, #"{"op":"status"}"#)["ok"] == true) }
        #expect(try await request(client, #"{"op":"reload"}"#)["error"]?["code"] == "FORBIDDEN")
        #expect(try await request(client, #"{"op":"reload"}"#)["error"]?["code"] == "FORBIDDEN")
        #expect(backend.quickLookups.current == 1)
        #expect(backend.fullLookups.current == 1)
        #expect(backend.refusals.withLock { $0 } == [.reload, .reload])
        try await loop.shutdownGracefully()
    }
}
