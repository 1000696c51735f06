import NIOCore
import RuleModel

/// Encodes answer lines: `{"id":…,"ok":true,"revision":…,"generation":…,"result":…}` or
/// `{"id":…,"ok":false,"error":{"code":…,"message":…}}`, each followed by `\n`.
public enum ResponseWriter {
    /// Appends a success line.
    /// - Parameters:
    ///   - id: the raw JSON text of the request's `id`, or nil to leave it out.
    ///   - revision: the short revision of the rule set that computed the answer.
    ///   - generation: the generation that computed the answer.
    ///   - result: the `result` object's JSON text.
    public static func writeSuccess(
        id: UnsafeRawBufferPointer?, revision: String, generation: UInt64, result: [UInt8],
        into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString("{")
        if let id {
            buffer.writeStaticString("\"id\":")
            buffer.writeBytes(id)
            buffer.writeStaticString(",")
        }
        buffer.writeStaticString("\"ok\":true,\"revision\":\"")
        buffer.writeString(revision)
        buffer.writeStaticString("\",\"generation\":")
        buffer.writeString(String(generation))
        buffer.writeStaticString(",\"result\":")
        buffer.writeBytes(result)
        buffer.writeStaticString("}\n")
    }

    /// `"ok":true,"revision":"…","generation":N,"result":`, the part of every success line that only depends
    /// on the generation that answers.
    public static func successHeader(revision: String, generation: UInt64) -> [UInt8] {
        Array(#""ok":true,"revision":"\#(revision)","generation":\#(generation),"result":"#.utf8)
    }

    /// Appends a success line from a precomputed ``successHeader(revision:generation:)``.
    @inline(__always)
    public static func writeSuccess(
        id: UnsafeRawBufferPointer?, header: [UInt8], result: [UInt8], into buffer: inout ByteBuffer
    ) {
        // One write into the buffer, copying the parts itself: each of the buffer's own writes checks its storage
        // for exclusive access and uniqueness, which cost more than these copies.
        let idPart = id.map { $0.count + 6 } ?? 0
        let total = 1 + idPart + header.count + result.count + 2
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { out in
            var at = out.baseAddress!
            at.storeBytes(of: UInt8(ascii: "{"), as: UInt8.self)
            at += 1
            if let id {
                let key: StaticString = "\"id\":"
                at.copyMemory(from: key.utf8Start, byteCount: 5)
                at += 5
                if let bytes = id.baseAddress { at.copyMemory(from: bytes, byteCount: id.count) }
                at += id.count
                at.storeBytes(of: UInt8(ascii: ","), as: UInt8.self)
                at += 1
            }
            header.withUnsafeBytes { at.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            at += header.count
            result.withUnsafeBytes { if let bytes = $0.baseAddress { at.copyMemory(from: bytes, byteCount: $0.count) } }
            at += result.count
            at.storeBytes(of: UInt8(ascii: "}"), as: UInt8.self)
            (at + 1).storeBytes(of: UInt8(ascii: "\n"), as: UInt8.self)
            return total
        }
    }

    /// Appends a failure line.
    public static func writeFailure(id: UnsafeRawBufferPointer?, error: ProtocolError, into buffer: inout ByteBuffer) {
        var out: [UInt8] = []
        out.reserveCapacity(96 + error.message.utf8.count)
        out.append(UInt8(ascii: "{"))
        if let id {
            out.append(contentsOf: #""id":"#.utf8)
            out.append(contentsOf: id)
            out.append(UInt8(ascii: ","))
        }
        out.append(contentsOf: #""ok":false,"error":"#.utf8)
        appendError(error, to: &out)
        out.append(contentsOf: "}\n".utf8)
        buffer.writeBytes(out)
    }

    /// The `error` object alone: code, message, details in key order, problems.
    public static func appendError(_ error: ProtocolError, to out: inout [UInt8]) {
        out.append(contentsOf: #"{"code":""#.utf8)
        out.append(contentsOf: error.code.rawValue.utf8)
        out.append(contentsOf: #"","message":"#.utf8)
        JSONWriter.appendEscapedString(error.message, to: &out)
        for (key, value) in error.details.sorted(by: { $0.key < $1.key }) {
            out.append(UInt8(ascii: ","))
            JSONWriter.appendEscapedString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            JSONWriter.appendEscapedString(value, to: &out)
        }
        if !error.problems.isEmpty {
            out.append(contentsOf: #","problems":"#.utf8)
            appendProblems(error.problems, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// The `error` object as a value, for answers built as values (`status`): the same shape as
    /// ``appendError(_:to:)`` writes.
    public static func errorValue(_ error: ProtocolError) -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("code", .string(error.code.rawValue)), ("message", .string(error.message)),
        ]
        for (key, value) in error.details.sorted(by: { $0.key < $1.key }) { members.append((key, .string(value))) }
        if !error.problems.isEmpty {
            let problems: [JSONValue] = error.problems.map {
                [
                    "file": .string($0.location.file), "line": .integer(Int64($0.location.line)),
                    "message": .string($0.message),
                ]
            }
            members.append(("problems", .array(problems)))
        }
        return .object(JSONObject(members))
    }

    /// `[{"file":…,"line":…,"message":…},…]`.
    public static func appendProblems(_ problems: [RuleDiagnostic], to out: inout [UInt8]) {
        out.append(UInt8(ascii: "["))
        for (index, problem) in problems.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: #"{"file":"#.utf8)
            JSONWriter.appendEscapedString(problem.location.file, to: &out)
            out.append(contentsOf: #","line":"#.utf8)
            out.append(contentsOf: String(problem.location.line).utf8)
            out.append(contentsOf: #","message":"#.utf8)
            JSONWriter.appendEscapedString(problem.message, to: &out)
            out.append(UInt8(ascii: "}"))
        }
        out.append(UInt8(ascii: "]"))
    }

    /// Appends a pushed event line (`watch`): the event object's JSON text and `\n`.
    public static func writeEvent(_ json: [UInt8], into buffer: inout ByteBuffer) {
        buffer.writeBytes(json)
        buffer.writeStaticString("\n")
    }
}

/// An answer line as a client reads it.
public struct ProtocolAnswer: Sendable {
    /// The echoed `id`, when present.
    public var id: JSONValue?
    public var ok: Bool
    public var revision: String?
    public var generation: Int64?
    /// The `result` object's JSON text exactly as the daemon sent it.
    public var resultJSON: [UInt8]?
    public var error: ProtocolError?
    /// For pushed events (`watch`): the event name, e.g. `reloaded`.
    public var event: String?
    /// The whole line, parsed.
    public var value: JSONValue

    /// Parses one answer or event line.
    public init(line: [UInt8]) throws(JSONParseError) {
        value = try JSONParser().parse(line)
        id = value["id"]
        ok = value["ok"]?.boolValue ?? false
        revision = value["revision"]?.stringValue
        generation = value["generation"]?.int64Value
        event = value["event"]?.stringValue
        if let error = value["error"]?.objectValue {
            let code = error["code"]?.stringValue.flatMap(ProtocolErrorCode.init(rawValue:)) ?? .internal
            var details: [String: String] = [:]
            var problems: [RuleDiagnostic] = []
            for (key, member) in error where key != "code" && key != "message" {
                if key == "problems", let list = member.arrayValue {
                    problems = list.map {
                        RuleDiagnostic(
                            location: SourceLocation(
                                file: $0["file"]?.stringValue ?? "", line: Int($0["line"]?.int64Value ?? 0)),
                            message: $0["message"]?.stringValue ?? "")
                    }
                } else {
                    details[key] = member.stringValue ?? JSONWriter.string(member)
                }
            }
            self.error = ProtocolError(
                code, error["message"]?.stringValue ?? "", details: details, problems: problems)
        }
        // The line parsed as JSON above, so scanning it cannot fail; the raw `result` text is kept so
        // that clients print exactly what the daemon encoded.
        let scanner = JSONObjectScanner()
        resultJSON = line.withUnsafeBytes { bytes -> [UInt8]? in
            var members: [JSONMember] = []
            guard (try? scanner.scan(bytes, into: &members)) != nil else { return nil }
            return members.first { $0.keyEquals("result", in: bytes) }.map { Array(bytes[$0.valueRange]) }
        }
    }
}

extension Optional where Wrapped == [UInt8] {
    /// Calls `body` with the bytes, or with nil: for an `id` kept as bytes and written later.
    public func withUnsafeOptionalBytes<R>(_ body: (UnsafeRawBufferPointer?) -> R) -> R {
        switch self {
        case .some(let bytes): return bytes.withUnsafeBytes { body($0) }
        case .none: return body(nil)
        }
    }
}
