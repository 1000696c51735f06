import Glibc
import NIOCore
import RuleModel
import RulesProtocol
import RulesTestSupport
import SystemdSupport
import Testing

@testable import QueryServing

/// A backend that grants `query` everywhere and `operate` in the `payments` namespace only.
private final class NamespacedRoleBackend: QueryBackend {
    func responder(on loop: ServingEventLoop) -> QueryResponder { EchoResponder() }

    func answerWaiting(_ operation: RequestOperation, id: [UInt8]?, peer: PeerCredentials?) async -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        ResponseWriter.writeSuccess(
            id: nil, revision: "r", generation: 1, result: Array(#"{"op":"\#(operation.rawValue)"}"#.utf8),
            into: &buffer)
        return buffer
    }

    func watch(_ key: ObjectIdentifier, on loop: ServingEventLoop, deliver: @escaping @Sendable ([UInt8]) -> Void) {}
    func unwatch(_ key: ObjectIdentifier) {}

    func roles(for peer: PeerCredentials?, lookingUpGroups: Bool) -> AccessRoles { [.query] }

    func roles(for peer: PeerCredentials?, namespace: String, lookingUpGroups: Bool) -> AccessRoles {
        namespace == "payments" ? [.query, .operate] : [.query]
    }
}

@Suite("A namespace's own roles")
struct NamespaceRolesTests {
    @Test("a role a namespace grants permits requests in that namespace only")
    func namespaceGrantAddsToDaemonWideRoles() async throws {
        var pair: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let served = pair[0]
        _ = fcntl(served, F_SETFL, fcntl(served, F_GETFL) | O_NONBLOCK)
        let backend = NamespacedRoleBackend()
        let loop = try ServingEventLoop(name: "test-ns-roles")
        try await loop.submit {
            let connection = QueryConnection(
                descriptor: served, loop: loop, responder: backend.responder(on: loop), backend: backend,
                limits: ConnectionHarness.limits(), peer: PeerCredentials(pid: 1, uid: 4242, gid: 4242),
                onClose: { _ in })
            _ = connection.start()
        }.get()
        let client = LineClient(descriptor: pair[1], timeout: 20)
        func request(_ line: String) async throws -> JSONValue {
            try client.send(line + "\n")
            return try await offPool { try client.readJSON() }
        }
        #expect(try await request(#"{"op":"reload","namespace":"payments"}"#)["result"]?["op"] == "reload")
        #expect(try await request(#"{"op":"reload"}"#)["error"]?["code"] == "FORBIDDEN")
        #expect(try await request(#"{"op":"reload","namespace":"search"}"#)["error"]?["code"] == "FORBIDDEN")
        try await loop.shutdownGracefully()
    }
}
