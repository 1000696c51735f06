import RuleModel

/// One request from a capture file: a flag asked for a context, or a routed request.
public struct CapturedRequest: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case flag(String)
        case route
    }

    public var kind: Kind
    /// The context (for a flag) or the request (for a route), as JSON object text.
    public var json: [UInt8]
    /// The time the daemon answered it (what `now()` returned); nil replays at one fixed time.
    public var at: Double?

    public init(kind: Kind, json: [UInt8], at: Double? = nil) {
        self.kind = kind
        self.json = json
        self.at = at
    }
}

/// A line of a capture file that is not a captured request.
public struct CaptureFileError: Error, Sendable, Hashable, CustomStringConvertible {
    public var line: Int
    public var message: String

    public init(line: Int, message: String) {
        self.line = line
        self.message = message
    }

    public var description: String { "line \(line): \(message)" }
}

/// Capture files: JSON Lines as `rulesctl capture` writes them, one request a line:
/// `{"flag":"KEY","context":{...},"at":T}` or `{"route":{...},"at":T}` (`at` optional, `context` too).
public enum CaptureFile {
    /// Reads every request of `bytes`; blank lines are skipped.
    /// - Throws: ``CaptureFileError`` for the first line that is not a request.
    public static func parse(_ bytes: [UInt8]) throws(CaptureFileError) -> [CapturedRequest] {
        var requests: [CapturedRequest] = []
        let scanner = JSONObjectScanner()
        var members: [JSONMember] = []
        var lineNumber = 0
        var start = 0
        let result = bytes.withUnsafeBytes { all -> CaptureFileError? in
            while start < all.count {
                lineNumber += 1
                var end = start
                while end < all.count && all[end] != UInt8(ascii: "\n") { end += 1 }
                defer { start = end + 1 }
                var trimmed = end
                while trimmed > start && (all[trimmed - 1] == UInt8(ascii: "\r") || all[trimmed - 1] == 32) {
                    trimmed -= 1
                }
                if trimmed == start { continue }
                let line = UnsafeRawBufferPointer(rebasing: all[start..<trimmed])
                do throws(LineProblem) {
                    requests.append(try request(line, scanner: scanner, members: &members))
                } catch {
                    return CaptureFileError(line: lineNumber, message: error.message)
                }
            }
            return nil
        }
        if let result { throw result }
        return requests
    }

    private struct LineProblem: Error {
        var message: String
    }

    /// The member's name, compared as bytes for the four names a line has (no string per member).
    private static func name(_ member: JSONMember, _ line: UnsafeRawBufferPointer) -> String {
        if !member.keyIsEscaped {
            let key = UnsafeRawBufferPointer(rebasing: line[member.keyRange])
            if JSONObjectScanner.key(key, equals: "flag") { return "flag" }
            if JSONObjectScanner.key(key, equals: "context") { return "context" }
            if JSONObjectScanner.key(key, equals: "route") { return "route" }
            if JSONObjectScanner.key(key, equals: "at") { return "at" }
        }
        return member.keyString(in: line)
    }

    private static func request(
        _ line: UnsafeRawBufferPointer, scanner: JSONObjectScanner, members: inout [JSONMember]
    ) throws(LineProblem) -> CapturedRequest {
        do {
            try scanner.scan(line, into: &members)
        } catch {
            throw LineProblem(message: "not a JSON object: \(error.description)")
        }
        var flag: String?
        var json: [UInt8]?
        var isRoute = false
        var at: Double?
        for member in members {
            switch name(member, line) {
            case "flag":
                guard member.kind == .string,
                    let key = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                else { throw LineProblem(message: "'flag' must be a string") }
                flag = key
            case "context":
                guard member.kind == .object || member.kind == .null else {
                    throw LineProblem(message: "'context' must be an object")
                }
                if member.kind == .object { json = Array(line[member.valueRange]) }
            case "route":
                guard member.kind == .object else { throw LineProblem(message: "'route' must be an object") }
                json = Array(line[member.valueRange])
                isRoute = true
            case "at":
                guard member.kind == .number || member.kind == .null else {
                    throw LineProblem(message: "'at' must be a number of seconds since the epoch")
                }
                at = JSONObjectScanner.double(in: line, range: member.valueRange)
            default:
                // Later versions may add members; what is needed to replay is known.
                continue
            }
        }
        switch (flag, isRoute) {
        case (let key?, false): return CapturedRequest(kind: .flag(key), json: json ?? Array("{}".utf8), at: at)
        case (nil, true): return CapturedRequest(kind: .route, json: json ?? Array("{}".utf8), at: at)
        case (.some, true): throw LineProblem(message: "a line has 'flag' or 'route', not both")
        case (nil, false): throw LineProblem(message: "a line needs 'flag' (with 'context') or 'route'")
        }
    }
}
