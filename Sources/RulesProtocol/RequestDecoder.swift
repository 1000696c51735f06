import RuleModel

/// The operations of the socket protocol.
public enum RequestOperation: String, Sendable, Hashable, CaseIterable {
    case ping, flag, flags, route, config, status, watch, reload, metrics
}

/// A request line, decoded. Ranges point into the line it was decoded from.
public struct DecodedRequest: Sendable, Hashable {
    public var operation: RequestOperation
    /// The raw JSON text of `id` (any JSON value), echoed verbatim in the answer.
    public var id: Range<Int>?
    /// `flag` (op flag).
    public var flag: String?
    /// `key` (op config).
    public var key: String?
    /// `prefix` (op config).
    public var prefix: String?
    /// `at`: the time `now()` returns to rules, in seconds since the epoch.
    public var at: Double?
    /// The `context` object (ops flag, flags).
    public var context: Range<Int>?
    /// The `request` object (op route).
    public var request: Range<Int>?

    public init(operation: RequestOperation) {
        self.operation = operation
    }
}

/// Why a line could not be decoded, and the `id` to echo when it could be read.
public struct RequestDecodingFailure: Error, Sendable, Hashable {
    public var error: ProtocolError
    public var id: Range<Int>?
}

/// Decodes request lines. Keeps a reusable buffer, so one decoder per connection.
///
/// Unknown fields are refused rather than ignored: a misspelt `contxt` would otherwise silently evaluate
/// with an empty context.
public struct RequestDecoder {
    private var members: [JSONMember] = []
    private let scanner: JSONObjectScanner

    /// - Parameter maxDepth: deepest nesting accepted anywhere in the line.
    public init(maxDepth: Int = 64) {
        scanner = JSONObjectScanner(limits: JSONLimits(maxDepth: maxDepth))
        members.reserveCapacity(8)
    }

    /// Decodes one line.
    /// - Returns: the request, or the failure to answer (PARSE_ERROR or INVALID_REQUEST).
    public mutating func decode(_ line: UnsafeRawBufferPointer) -> Result<DecodedRequest, RequestDecodingFailure> {
        do {
            try scanner.scan(line, into: &members)
        } catch {
            return .failure(RequestDecodingFailure(error: ProtocolError(.parseError, error.description), id: nil))
        }
        var id: Range<Int>?
        var operation: RequestOperation?
        for member in members where member.keyEquals("id", in: line) {
            id = member.valueRange
        }
        for member in members where member.keyEquals("op", in: line) {
            guard member.kind == .string, let name = try? JSONObjectScanner.string(in: line, range: member.valueRange)
            else {
                return .failure(invalid("'op' must be a string", id))
            }
            guard let op = RequestOperation(rawValue: name) else {
                return .failure(invalid("unknown op '\(Self.clip(name))'", id))
            }
            operation = op
        }
        guard let operation else { return .failure(invalid("missing 'op'", id)) }
        var request = DecodedRequest(operation: operation)
        request.id = id
        for member in members {
            if member.keyEquals("id", in: line) || member.keyEquals("op", in: line) { continue }
            let name = member.keyString(in: line)
            guard Self.allowed(name, for: operation) else {
                return .failure(invalid("unknown field '\(Self.clip(name))' for op '\(operation.rawValue)'", id))
            }
            switch name {
            case "flag", "key", "prefix":
                guard member.kind == .string, let value = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                else { return .failure(invalid("'\(name)' must be a string", id)) }
                if name == "flag" { request.flag = value } else if name == "key" { request.key = value } else {
                    request.prefix = value
                }
            case "context", "request":
                if member.kind == .null { continue }
                guard member.kind == .object else { return .failure(invalid("'\(name)' must be an object", id)) }
                if name == "context" { request.context = member.valueRange } else { request.request = member.valueRange }
            case "at":
                if member.kind == .null { continue }
                guard member.kind == .number, let value = Self.number(line, member.valueRange), value.isFinite else {
                    return .failure(invalid("'at' must be a number of seconds since the epoch", id))
                }
                request.at = value
            default:
                return .failure(invalid("unknown field '\(Self.clip(name))'", id))
            }
        }
        switch operation {
        case .flag where request.flag == nil:
            return .failure(invalid("op 'flag' needs 'flag', the flag's key", id))
        case .config where (request.key == nil) == (request.prefix == nil):
            return .failure(invalid("op 'config' needs exactly one of 'key' or 'prefix'", id))
        default:
            return .success(request)
        }
    }

    private func invalid(_ message: String, _ id: Range<Int>?) -> RequestDecodingFailure {
        RequestDecodingFailure(error: ProtocolError(.invalidRequest, message), id: id)
    }

    private static func allowed(_ field: String, for operation: RequestOperation) -> Bool {
        switch operation {
        case .flag: return field == "flag" || field == "context" || field == "at"
        case .flags: return field == "context" || field == "at"
        case .route: return field == "request" || field == "at"
        case .config: return field == "key" || field == "prefix"
        case .ping, .status, .watch, .reload, .metrics: return false
        }
    }

    private static func number(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Double? {
        if let integer = JSONObjectScanner.int64(in: bytes, range: range) { return Double(integer) }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
        return Double(text)
    }

    private static func clip(_ text: String) -> String {
        text.count > 64 ? String(text.prefix(64)) + "..." : text
    }
}
