import RuleModel
import RulesProtocol
import Testing

@Suite("Decoding the namespace member")
struct NamespaceDecodingTests {
    private func decode(_ line: String) -> (Result<DecodedRequest, RequestDecodingFailure>, [UInt8]) {
        var decoder = RequestDecoder()
        let bytes = Array(line.utf8)
        return (bytes.withUnsafeBytes { decoder.decode($0) }, bytes)
    }

    @Test("a synchronous request's namespace is a range of the line, compared as bytes")
    func synchronousNamespaceIsARange() throws {
        let (result, bytes) = decode(#"{"op":"flag","flag":"k","namespace":"payments"}"#)
        let request = try result.get()
        #expect(request.namespace == nil)
        #expect(request.namesNamespace)
        bytes.withUnsafeBytes { line in
            #expect(request.withNamespaceBytes(in: line) { String(decoding: $0, as: UTF8.self) } == "payments")
        }
    }

    @Test("an escaped namespace is decoded")
    func escapedNamespace() throws {
        let (result, bytes) = decode(#"{"op":"flags","namespace":"pay\u006dents"}"#)
        let request = try result.get()
        #expect(request.namespace == "payments")
        bytes.withUnsafeBytes { line in
            #expect(request.withNamespaceBytes(in: line) { String(decoding: $0, as: UTF8.self) } == "payments")
        }
    }

    @Test("a request without a namespace names none")
    func absentNamespace() throws {
        let request = try decode(#"{"op":"route","request":{}}"#).0.get()
        #expect(!request.namesNamespace)
    }

    @Test(
        "a waiting request's namespace is decoded, as it outlives its line",
        arguments: ["status", "reload", "history", "resume", "watch", "capture", "override_list"])
    func waitingNamespaceIsAString(_ operation: String) throws {
        let request = try decode(#"{"op":"\#(operation)","namespace":"payments"}"#).0.get()
        #expect(request.namespace == "payments")
        #expect(request.namespaceRange == nil)
    }

    @Test("ping and metrics are daemon-wide: they take no namespace", arguments: ["ping", "metrics"])
    func daemonWideOperations(_ operation: String) {
        guard case .failure(let failure) = decode(#"{"op":"\#(operation)","namespace":"payments"}"#).0 else {
            Issue.record("\(operation) with a namespace decoded")
            return
        }
        #expect(failure.error.code == .invalidRequest)
    }

    @Test("a namespace that is not a string is refused")
    func mistypedNamespace() {
        guard case .failure(let failure) = decode(#"{"op":"flag","flag":"k","namespace":7}"#).0 else {
            Issue.record("a numeric namespace decoded")
            return
        }
        #expect(failure.error.message.contains("'namespace' must be a string"))
    }
}
