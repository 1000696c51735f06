import NIOCore
import RuleModel
import RulesProtocol
import Testing

@Suite("Request decoding")
struct RequestDecoderTests {
    private func decode(_ line: String) -> (Result<DecodedRequest, RequestDecodingFailure>, [UInt8]) {
        var decoder = RequestDecoder()
        let bytes = Array(line.utf8)
        return (bytes.withUnsafeBytes { decoder.decode($0) }, bytes)
    }

    private func failure(_ line: String) -> ProtocolError? {
        if case .failure(let failure) = decode(line).0 { return failure.error }
        return nil
    }

    @Test("a flag request gives its key, context, time and id as ranges of the line")
    func flagRequest() throws {
        let (result, bytes) = decode(
            #"{"id":[1,2],"op":"flag","flag":"checkout.new-flow","context":{"a":1},"at":12.5}"#)
        let request = try result.get()
        #expect(request.operation == .flag)
        bytes.withUnsafeBytes { line in
            #expect(request.flag(in: line) == "checkout.new-flow")
            #expect(String(decoding: line[request.id!], as: UTF8.self) == "[1,2]")
            #expect(String(decoding: line[request.context!], as: UTF8.self) == #"{"a":1}"#)
        }
        #expect(request.at == 12.5)
    }

    @Test("a decoded request is small to copy: its ranges are 32-bit offsets, absent ones nil")
    func compactRanges() throws {
        #expect(MemoryLayout<DecodedRequest>.size <= 96)
        let (result, _) = decode(#"{"op":"flag","flag":"f","context":{}}"#)
        var request = try result.get()
        #expect(request.id == nil && request.request == nil && request.namespaceRange == nil)
        #expect(request.flagRange == 21..<22 && request.context == 34..<36)
        request.id = 0..<0
        request.namespaceRange = 7..<9
        request.context = nil
        #expect(request.id == 0..<0 && request.namespaceRange == 7..<9 && request.context == nil)
    }

    @Test("escaped member names and flag keys are decoded")
    func escapes() throws {
        let (result, bytes) = decode(#"{"o\u0070":"flag","flag":"caf\u00e9"}"#)
        let request = try result.get()
        bytes.withUnsafeBytes { #expect(request.flag(in: $0) == "café") }
    }

    @Test("every operation decodes", arguments: RequestOperation.allCases)
    func operations(_ operation: RequestOperation) throws {
        var line = #"{"op":"\#(operation.rawValue)""#
        if operation == .flag || operation == .explain { line += #","flag":"x""# }
        if operation == .config { line += #","key":"x""# }
        if operation == .show || operation == .rollback { line += #","revision":"ab12""# }
        if operation == .overrideSet { line += #","flag":"x","variant":"off","ttl":"15m","reason":"incident""# }
        if operation == .overrideClear { line += #","flag":"x""# }
        #expect(try decode(line + "}").0.get().operation == operation)
    }

    @Test("explain asks about a flag (with a context) or a route request, never both")
    func explainRequests() throws {
        let (flag, flagBytes) = decode(#"{"op":"explain","flag":"checkout.new-flow","context":{"a":1},"at":5}"#)
        let flagRequest = try flag.get()
        #expect(flagRequest.operation == .explain)
        flagBytes.withUnsafeBytes { line in
            #expect(flagRequest.flag(in: line) == "checkout.new-flow")
            #expect(String(decoding: line[flagRequest.context!], as: UTF8.self) == #"{"a":1}"#)
        }
        #expect(flagRequest.at == 5)
        let (route, routeBytes) = decode(#"{"op":"explain","request":{"path":"/"}}"#)
        let routeRequest = try route.get()
        #expect(routeRequest.flagRange == nil && routeRequest.flagDecoded == nil)
        routeBytes.withUnsafeBytes {
            #expect(String(decoding: $0[routeRequest.request!], as: UTF8.self) == #"{"path":"/"}"#)
        }
        for line in [
            #"{"op":"explain"}"#, #"{"op":"explain","context":{}}"#,
            #"{"op":"explain","flag":"x","request":{}}"#, #"{"op":"explain","request":{},"context":{}}"#,
            #"{"op":"explain","flag":"x","key":"y"}"#,
        ] {
            #expect(failure(line)?.code == .invalidRequest, "\(line)")
        }
    }

    @Test("show and rollback carry a revision, show a path; both are refused elsewhere")
    func historyMembers() throws {
        let request = try decode(#"{"op":"show","revision":"ab12","path":"a/b.lua"}"#).0.get()
        #expect(request.revision == "ab12")
        #expect(request.path == "a/b.lua")
        #expect(throws: RequestDecodingFailure.self) { try decode(#"{"op":"rollback"}"#).0.get() }
        #expect(throws: RequestDecodingFailure.self) { try decode(#"{"op":"rollback","path":"x"}"#).0.get() }
        #expect(throws: RequestDecodingFailure.self) { try decode(#"{"op":"flag","flag":"x","revision":"a"}"#).0.get() }
    }

    @Test("override_set carries flag, variant, ttl (text or seconds), reason and namespace; the others less")
    func overrideMembers() throws {
        let set = try decode(
            #"{"op":"override_set","flag":"checkout","variant":"off","ttl":"15m","reason":"incident 7","namespace":"default"}"#
        ).0.get()
        #expect(set.flagDecoded == "checkout")
        #expect(set.variant == "off")
        #expect(set.ttl == "15m")
        #expect(set.reason == "incident 7")
        #expect(set.namespace == "default")
        let seconds = try decode(#"{"op":"override_set","flag":"x","variant":"v","ttl":90,"reason":"r"}"#).0.get()
        #expect(seconds.ttl == "90")
        let clear = try decode(#"{"op":"override_clear","flag":"checkout"}"#).0.get()
        #expect(clear.flagDecoded == "checkout")
        #expect(try decode(#"{"op":"override_list"}"#).0.get().operation == .overrideList)
        for line in [
            #"{"op":"override_set","flag":"x","variant":"v","ttl":"1m"}"#,
            #"{"op":"override_set","flag":"x","ttl":"1m","reason":"r"}"#,
            #"{"op":"override_set","flag":"x","variant":"v","ttl":true,"reason":"r"}"#,
            #"{"op":"override_set","flag":"x","variant":1,"ttl":"1m","reason":"r"}"#,
            #"{"op":"override_clear"}"#, #"{"op":"override_list","flag":"x"}"#,
            #"{"op":"flag","flag":"x","variant":"v"}"#,
        ] {
            #expect(failure(line)?.code == .invalidRequest, "\(line)")
        }
    }

    @Test("capture takes an optional flag (decoded, since the request outlives its line) or route filter")
    func captureMembers() throws {
        let all = try decode(#"{"op":"capture"}"#).0.get()
        #expect(all.flagDecoded == nil && !all.routesOnly)
        let flag = try decode(#"{"op":"capture","flag":"checkout.new-flow"}"#).0.get()
        #expect(flag.flagDecoded == "checkout.new-flow")
        #expect(try decode(#"{"op":"capture","route":true}"#).0.get().routesOnly)
        #expect(failure(#"{"op":"capture","route":1}"#)?.message == "'route' must be true or false")
        #expect(failure(#"{"op":"capture","flag":"a","route":true}"#)?.code == .invalidRequest)
        #expect(failure(#"{"op":"capture","context":{}}"#)?.code == .invalidRequest)
        #expect(failure(#"{"op":"flag","flag":"x","route":true}"#)?.code == .invalidRequest)
    }

    @Test("a line that is not a JSON object is a PARSE_ERROR")
    func parseErrors() {
        for line in ["not json", "[1]", #"{"op":"ping""#, #"{"op":"ping"} extra"#] {
            #expect(failure(line)?.code == .parseError, "\(line)")
        }
    }

    @Test("unknown ops, unknown fields, and missing or mistyped fields are INVALID_REQUEST, echoing the id")
    func invalidRequests() {
        let lines = [
            #"{"op":"nope","id":1}"#, #"{"id":1}"#, #"{"op":7,"id":1}"#, #"{"op":"flag","id":1}"#,
            #"{"op":"flag","flag":1,"id":1}"#, #"{"op":"flag","flag":"x","contxt":{},"id":1}"#,
            #"{"op":"ping","flag":"x","id":1}"#, #"{"op":"route","request":"x","id":1}"#,
            #"{"op":"config","id":1}"#, #"{"op":"config","key":"a","prefix":"b","id":1}"#,
            #"{"op":"flag","flag":"x","at":"now","id":1}"#, #"{"op":"flag","flag":"x","at":1e400,"id":1}"#,
        ]
        for line in lines {
            let (result, _) = decode(line)
            guard case .failure(let failure) = result else {
                Issue.record("accepted \(line)")
                continue
            }
            #expect(failure.error.code == .invalidRequest, "\(line)")
            #expect(failure.id != nil, "\(line)")
        }
    }

    @Test("an id is echoed as written, whatever its magnitude or nesting below the line's limit")
    func anyIdIsEchoed() throws {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        for id in ["1e400", "-123456789012345678901234567890e-99999", "123456789012345678901234567890", deep] {
            let (result, bytes) = decode(#"{"op":"ping","id":\#(id)}"#)
            let request = try result.get()
            bytes.withUnsafeBytes { #expect(String(decoding: $0[request.id!], as: UTF8.self) == id) }
        }
    }

    @Test("a context deeper or larger than the rules' limits, or with huge numbers, is left for the engine to refuse")
    func contextLimitsAreNotParseErrors() throws {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        for context in [#"{"a":\#(deep)}"#, #"{"n":1e400}"#] {
            for op in ["flags", "route"] {
                let member = op == "route" ? "request" : "context"
                let (result, bytes) = decode(#"{"op":"\#(op)","\#(member)":\#(context)}"#)
                let request = try result.get()
                let range = try #require(op == "route" ? request.request : request.context)
                bytes.withUnsafeBytes { #expect(String(decoding: $0[range], as: UTF8.self) == context) }
            }
        }
    }

    @Test("a line nested deeper than the decoder's limit is a PARSE_ERROR naming the limit")
    func lineDepthLimit() {
        let depth = RequestDecoder.defaultMaxDepth
        // The line's object is level 1 and the context level 2: arrays fill the levels after them.
        func arrays(_ n: Int) -> String { String(repeating: "[", count: n) + String(repeating: "]", count: n) }
        #expect(failure(#"{"op":"flags","context":{"a":\#(arrays(depth - 2))}}"#) == nil)
        let error = failure(#"{"op":"flags","context":{"a":\#(arrays(depth - 1))}}"#)
        #expect(error?.code == .parseError)
        #expect(error?.message.contains("\(depth)") == true)
    }

    @Test("a null context or request is the same as none")
    func nullObjects() throws {
        let request = try decode(#"{"op":"flags","context":null}"#).0.get()
        #expect(request.context == nil)
    }
}

@Suite("Answer encoding")
struct ResponseWriterTests {
    @Test("a success line carries the id, revision, generation and result, and parses back")
    func success() throws {
        var buffer = ByteBufferStub.make()
        let id = Array("7".utf8)
        id.withUnsafeBytes { idBytes in
            ResponseWriter.writeSuccess(
                id: idBytes, header: ResponseWriter.successHeader(revision: "0123456789abcdef", generation: 3),
                result: Array(#"{"x":1}"#.utf8), into: &buffer)
        }
        let line = String(buffer: buffer)
        #expect(line == #"{"id":7,"ok":true,"revision":"0123456789abcdef","generation":3,"result":{"x":1}}"# + "\n")
        let answer = try ProtocolAnswer(line: Array(line.utf8.dropLast()))
        #expect(answer.ok)
        #expect(answer.generation == 3)
        #expect(answer.resultJSON == Array(#"{"x":1}"#.utf8))
    }

    @Test("a failure line carries the code, message, details and problems, and parses back")
    func failure() throws {
        var buffer = ByteBufferStub.make()
        let error = ProtocolError(
            .reloadFailed, "bad \"rules\"", details: ["route": "r"],
            problems: [RuleDiagnostic(location: SourceLocation(file: "a.lua", line: 3), message: "oops")])
        ResponseWriter.writeFailure(id: nil, error: error, into: &buffer)
        let line = String(buffer: buffer)
        #expect(line.hasSuffix("\n"))
        let answer = try ProtocolAnswer(line: Array(line.utf8.dropLast()))
        #expect(!answer.ok)
        #expect(answer.error == error)
    }
}
