import RuleModel

/// The operations of the socket protocol.
public enum RequestOperation: String, Sendable, Hashable, CaseIterable {
    case ping, flag, flags, route, config, status, watch, reload, metrics
    /// The rule history: `history`, `show`, and the operate-level `rollback` and `resume`.
    case history, show, rollback, resume
    /// A `flag` or `route` question answered with a trace of what the rules did.
    case explain
    /// The captured requests (`capture = on`), optionally of one `flag` or of the routes only (`"route":true`).
    case capture
    /// Overrides (kill switches with an expiry): force a flag's `variant` for `ttl`, list them, clear one.
    case overrideSet = "override_set", overrideList = "override_list", overrideClear = "override_clear"
}

/// A request line, decoded. Ranges point into the line it was decoded from.
public struct DecodedRequest: Sendable, Hashable {
    public var operation: RequestOperation
    /// The raw JSON text of `id` (any JSON value), echoed verbatim in the answer.
    public var id: Range<Int>? {
        get { idSpan.range }
        set { idSpan = Span(newValue) }
    }
    /// `flag` (op flag): the key's UTF-8 bytes, straight from the line when it has no escapes.
    public var flagRange: Range<Int>? {
        get { flagSpan.range }
        set { flagSpan = Span(newValue) }
    }
    /// `flag` when the key had escapes and had to be decoded.
    public var flagDecoded: String? {
        get { texts?.value.flagDecoded }
        set { updateTexts { $0.flagDecoded = newValue } }
    }
    /// `key` (op config).
    public var key: String? {
        get { texts?.value.key }
        set { updateTexts { $0.key = newValue } }
    }
    /// `prefix` (op config).
    public var prefix: String? {
        get { texts?.value.prefix }
        set { updateTexts { $0.prefix = newValue } }
    }
    /// `at`: the time `now()` returns to rules, in seconds since the epoch.
    public var at: Double?
    /// The `context` object (ops flag, flags).
    public var context: Range<Int>? {
        get { contextSpan.range }
        set { contextSpan = Span(newValue) }
    }
    /// The `request` object (op route).
    public var request: Range<Int>? {
        get { requestSpan.range }
        set { requestSpan = Span(newValue) }
    }
    /// `revision` (ops show, rollback): a revision of the history, or its first hex digits.
    public var revision: String? {
        get { texts?.value.revision }
        set { updateTexts { $0.revision = newValue } }
    }
    /// `path` (op show): one file of that revision.
    public var path: String? {
        get { texts?.value.path }
        set { updateTexts { $0.path = newValue } }
    }
    /// `route` (op capture): only the routed requests.
    public var routesOnly = false
    /// `variant`, `ttl` (a duration such as `15m`, or a number of seconds, as text), `reason` and `namespace`
    /// (op override_set; `namespace` also override_list and override_clear).
    public var variant: String? {
        get { texts?.value.variant }
        set { updateTexts { $0.variant = newValue } }
    }
    public var ttl: String? {
        get { texts?.value.ttl }
        set { updateTexts { $0.ttl = newValue } }
    }
    public var reason: String? {
        get { texts?.value.reason }
        set { updateTexts { $0.reason = newValue } }
    }
    public var namespace: String? {
        get { texts?.value.namespace }
        set { updateTexts { $0.namespace = newValue } }
    }
    /// `namespace` of a synchronous operation (flag, flags, route, config, explain): the name's UTF-8 bytes,
    /// straight from the line when it has no escapes (otherwise decoded into `namespace`). Absent: `default`.
    public var namespaceRange: Range<Int>? {
        get { namespaceSpan.range }
        set { namespaceSpan = Span(newValue) }
    }

    /// The ranges, as 32-bit offsets: a request is copied on its way to its answer, and as five optional
    /// `Range<Int>` (24 bytes each with padding) it was 170 bytes rather than 80.
    private var idSpan = Span(), flagSpan = Span(), contextSpan = Span(), requestSpan = Span(), namespaceSpan = Span()

    /// A range of the line, or none (`lower < 0`). A line is never 2 GiB long (``RequestDecoder`` refuses one).
    private struct Span: Sendable, Hashable {
        var lower: Int32 = -1
        var upper: Int32 = 0

        init() {}

        @inline(__always)
        init(_ range: Range<Int>?) {
            if let range {
                lower = Int32(range.lowerBound)
                upper = Int32(range.upperBound)
            }
        }

        @inline(__always)
        var range: Range<Int>? { lower < 0 ? nil : Int(lower)..<Int(upper) }
    }

    /// The members decoded into strings, which most requests have none of: kept out of line, so that a request is
    /// small to copy and has one reference to count rather than nine.
    private var texts: TextBox?

    private struct Texts: Sendable, Hashable {
        var flagDecoded, key, prefix, revision, path, variant, ttl, reason, namespace: String?
    }

    private final class TextBox: Sendable, Hashable {
        let value: Texts
        init(_ value: Texts) { self.value = value }
        static func == (a: TextBox, b: TextBox) -> Bool { a.value == b.value }
        func hash(into hasher: inout Hasher) { value.hash(into: &hasher) }
    }

    private mutating func updateTexts(_ change: (inout Texts) -> Void) {
        var value = texts?.value ?? Texts()
        change(&value)
        texts = value == Texts() ? nil : TextBox(value)
    }

    /// Zero when the whole line was validated; else the nesting limit of the validation deferred by a decoder that
    /// skims contexts (``RequestDecoder/init(maxDepth:skimmingContexts:)``).
    public var deferredValidationDepth = 0

    public init(operation: RequestOperation) {
        self.operation = operation
    }

    /// Whether the whole line was validated when it was decoded. When it was not, its `context` or `request`
    /// object was only skimmed: the rule sandbox validates it as it reads it (exactly as the decoder would have),
    /// and whoever answers the request without that must first ask ``validationFailure(in:)``.
    @inline(__always)
    public var isValidated: Bool { deferredValidationDepth == 0 }

    /// The `PARSE_ERROR` a decoder validating the whole line answers for it, nil when the line is valid: for a
    /// request not ``isValidated``, before answering anything but what evaluating its context answers, and when
    /// evaluating it found its context not to be valid.
    public func validationFailure(in line: UnsafeRawBufferPointer) -> RequestDecodingFailure? {
        guard !isValidated else { return nil }
        let scanner = RequestDecoder.scanner(maxDepth: deferredValidationDepth)
        do {
            try scanner.scan(line) { _, _, _ in }
            return nil
        } catch {
            let message = (error as? JSONParseError)?.description ?? "\(error)"
            return RequestDecodingFailure(error: ProtocolError(.parseError, message), id: nil)
        }
    }

    /// The flag's key, decoded (for messages and tests; the request path uses the bytes).
    public func flag(in line: UnsafeRawBufferPointer) -> String? {
        if let flagDecoded { return flagDecoded }
        return flagRange.map { String(decoding: UnsafeRawBufferPointer(rebasing: line[$0]), as: UTF8.self) }
    }

    /// Whether the request names a namespace (absent: `default`).
    public var namesNamespace: Bool { namespaceRange != nil || namespace != nil }

    /// Calls `body` with the namespace's UTF-8 bytes (empty when the request names none).
    public func withNamespaceBytes<R>(in line: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        if let namespace { return Array(namespace.utf8).withUnsafeBytes(body) }
        return body(
            namespaceRange.map { UnsafeRawBufferPointer(rebasing: line[$0]) }
                ?? UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// Calls `body` with the flag key's UTF-8 bytes.
    public func withFlagBytes<R>(in line: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        if let flagDecoded { return Array(flagDecoded.utf8).withUnsafeBytes(body) }
        return body(
            flagRange.map { UnsafeRawBufferPointer(rebasing: line[$0]) } ?? UnsafeRawBufferPointer(start: nil, count: 0)
        )
    }
}

/// Why a line could not be decoded, and the `id` to echo when it could be read.
public struct RequestDecodingFailure: Error, Sendable, Hashable {
    public var error: ProtocolError
    public var id: Range<Int>?
}

/// Decodes request lines. Keeps a reusable buffer, so one decoder per connection.
///
/// Member names are compared as bytes, without building strings: this runs for every request. Unknown
/// members are refused rather than ignored: a misspelt `contxt` would otherwise silently evaluate with an
/// empty context.
public struct RequestDecoder {
    private var members: [JSONMember] = []
    /// What each of `members` is, classified once per line.
    private var fields: [Field] = []
    private let scanner: JSONObjectScanner
    private let skimsContexts: Bool

    /// The deepest nesting read in a line by default, the line's own object included.
    ///
    /// Far beyond the context limit (32 levels by default), so that a context or `id` deeper than that limit
    /// reaches the check that answers it with its documented code rather than `PARSE_ERROR`; bounded, so that a
    /// line of a million `[` costs the scanner a few KiB of bookkeeping rather than tens of MiB.
    public static let defaultMaxDepth = 512

    /// - Parameters:
    ///   - maxDepth: deepest nesting read anywhere in the line (the line's object is level 1); a deeper line is a
    ///     `PARSE_ERROR`.
    ///   - skimmingContexts: whether the `context` and `request` objects are only skimmed for their extent, their
    ///     validation left to the rule sandbox that reads them (a request then is not ``DecodedRequest/isValidated``:
    ///     see there what its reader owes). Otherwise every byte of the line is validated here. Every other answer
    ///     is the same either way: a line refused for another reason is validated whole first, so that a
    ///     `PARSE_ERROR` keeps its precedence.
    public init(maxDepth: Int = RequestDecoder.defaultMaxDepth, skimmingContexts: Bool = false) {
        scanner = Self.scanner(maxDepth: maxDepth)
        skimsContexts = skimmingContexts
        members.reserveCapacity(8)
        fields.reserveCapacity(8)
    }

    static func scanner(maxDepth: Int) -> JSONObjectScanner {
        // Numbers are checked against the grammar only: `id` is echoed as written, whatever its magnitude, and
        // the readers of `at` and of contexts refuse values beyond a double with their own codes.
        JSONObjectScanner(limits: JSONLimits(maxDepth: maxDepth, rejectsNumbersBeyondDouble: false))
    }

    private static let skimmedMembers: JSONSkimmedNames = ["context", "request"]

    /// The member and operation names as ``packedPrefix(_:)-(StaticString)`` words: with the length, one comparison
    /// each.
    private enum Names {
        static let id = packedPrefix("id"), op = packedPrefix("op"), at = packedPrefix("at")
        static let key = packedPrefix("key"), ttl = packedPrefix("ttl"), flag = packedPrefix("flag")
        static let path = packedPrefix("path"), route = packedPrefix("route"), prefix = packedPrefix("prefix")
        static let reason = packedPrefix("reason"), context = packedPrefix("context")
        static let request = packedPrefix("request"), variant = packedPrefix("variant")
        static let revision = packedPrefix("revision")
        static let ping = packedPrefix("ping"), show = packedPrefix("show"), flags = packedPrefix("flags")
        static let watch = packedPrefix("watch"), config = packedPrefix("config"), status = packedPrefix("status")
        static let reload = packedPrefix("reload"), resume = packedPrefix("resume")
        static let explain = packedPrefix("explain"), metrics = packedPrefix("metrics")
        static let capture = packedPrefix("capture"), history = packedPrefix("history")
        static let rollback = packedPrefix("rollback")
    }

    private enum Field {
        case id, op, flag, key, prefix, at, context, request, revision, path, route, unknown
        case variant, ttl, reason, namespace
    }

    private static func field(_ member: JSONMember, _ line: UnsafeRawBufferPointer) -> Field {
        if member.keyIsEscaped {
            switch member.keyString(in: line) {
            case "id": return .id
            case "op": return .op
            case "flag": return .flag
            case "key": return .key
            case "prefix": return .prefix
            case "at": return .at
            case "context": return .context
            case "request": return .request
            case "revision": return .revision
            case "path": return .path
            case "route": return .route
            case "variant": return .variant
            case "ttl": return .ttl
            case "reason": return .reason
            case "namespace": return .namespace
            default: return .unknown
            }
        }
        let key = UnsafeRawBufferPointer(rebasing: line[member.keyRange])
        let word = packedPrefix(key)
        switch key.count {
        case 2:
            if word == Names.id { return .id }
            if word == Names.op { return .op }
            if word == Names.at { return .at }
        case 3:
            if word == Names.key { return .key }
            if word == Names.ttl { return .ttl }
        case 4:
            if word == Names.flag { return .flag }
            if word == Names.path { return .path }
        case 5: if word == Names.route { return .route }
        case 6:
            if word == Names.prefix { return .prefix }
            if word == Names.reason { return .reason }
        case 7:
            if word == Names.context { return .context }
            if word == Names.request { return .request }
            if word == Names.variant { return .variant }
        case 8: if word == Names.revision { return .revision }
        case 9: if JSONObjectScanner.key(key, equals: "namespace") { return .namespace }
        default: break
        }
        return .unknown
    }

    /// Decodes one line.
    /// - Returns: the request, or the failure to answer (PARSE_ERROR or INVALID_REQUEST).
    public mutating func decode(_ line: UnsafeRawBufferPointer) -> Result<DecodedRequest, RequestDecodingFailure> {
        // A request keeps its ranges as 32-bit offsets; no frame decoder passes a line this long.
        guard line.count < Int(Int32.max) else {
            return .failure(
                RequestDecodingFailure(error: ProtocolError(.parseError, "line longer than 2 GiB"), id: nil))
        }
        let skimmed: Bool
        do {
            if skimsContexts {
                skimmed = try scanner.scan(line, into: &members, skimmingObjectsNamed: Self.skimmedMembers)
            } else {
                try scanner.scan(line, into: &members)
                skimmed = false
            }
        } catch {
            return .failure(RequestDecodingFailure(error: ProtocolError(.parseError, error.description), id: nil))
        }
        let deferredDepth = skimmed ? scanner.limits.maxDepth : 0
        let result = interpret(line, deferredDepth: deferredDepth)
        if skimmed, case .failure(let failure) = result {
            // Refused for another reason, it may still not be JSON: that answer comes first.
            var deferred = DecodedRequest(operation: .ping)
            deferred.deferredValidationDepth = deferredDepth
            return .failure(deferred.validationFailure(in: line) ?? failure)
        }
        return result
    }

    /// The request the members of `line` make, or why they make none.
    @inline(__always)
    private mutating func interpret(
        _ line: UnsafeRawBufferPointer, deferredDepth: Int
    ) -> Result<DecodedRequest, RequestDecodingFailure> {
        var id: Range<Int>?
        var operation: RequestOperation?
        var opMember: JSONMember?
        fields.removeAll(keepingCapacity: true)
        for member in members {
            let field = Self.field(member, line)
            fields.append(field)
            switch field {
            case .id: id = member.valueRange
            case .op: opMember = member
            default: break
            }
        }
        if let member = opMember {
            guard member.kind == .string, let op = Self.operation(member, line) else {
                if member.kind != .string { return .failure(invalid("'op' must be a string", id)) }
                let name = (try? JSONObjectScanner.string(in: line, range: member.valueRange)) ?? ""
                return .failure(invalid("unknown op '\(Self.clip(name))'", id))
            }
            operation = op
        }
        guard let operation else { return .failure(invalid("missing 'op'", id)) }
        var request = DecodedRequest(operation: operation)
        request.id = id
        request.deferredValidationDepth = deferredDepth
        for (member, field) in zip(members, fields) {
            if field == .id || field == .op { continue }
            guard Self.allowed(field, for: operation) else {
                let name = member.keyString(in: line)
                return .failure(invalid("unknown field '\(Self.clip(name))' for op '\(operation.rawValue)'", id))
            }
            switch field {
            case .flag:
                guard member.kind == .string else { return .failure(invalid("'flag' must be a string", id)) }
                let content = member.valueRange.lowerBound + 1..<member.valueRange.upperBound - 1
                // A capture or override request outlives its line (it waits), so its key is always decoded.
                if operation == .capture || operation == .overrideSet || operation == .overrideClear
                    || UnsafeRawBufferPointer(rebasing: line[content]).contains(UInt8(ascii: "\\"))
                {
                    request.flagDecoded = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                } else {
                    request.flagRange = content
                }
            case .key, .prefix:
                guard member.kind == .string,
                    let value = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                else { return .failure(invalid("'\(field == .key ? "key" : "prefix")' must be a string", id)) }
                if field == .key { request.key = value } else { request.prefix = value }
            case .revision, .path:
                guard member.kind == .string,
                    let value = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                else { return .failure(invalid("'\(field == .path ? "path" : "revision")' must be a string", id)) }
                if field == .path { request.path = value } else { request.revision = value }
            case .namespace where Self.isSynchronous(operation):
                guard member.kind == .string else { return .failure(invalid("'namespace' must be a string", id)) }
                let content = member.valueRange.lowerBound + 1..<member.valueRange.upperBound - 1
                // Compared as bytes against the configured names by the worker: no string on this path.
                if UnsafeRawBufferPointer(rebasing: line[content]).contains(UInt8(ascii: "\\")) {
                    request.namespace = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                } else {
                    request.namespaceRange = content
                }
            case .variant, .reason, .namespace:
                let name = field == .variant ? "variant" : field == .reason ? "reason" : "namespace"
                guard member.kind == .string,
                    let value = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                else { return .failure(invalid("'\(name)' must be a string", id)) }
                if field == .variant { request.variant = value }
                if field == .reason { request.reason = value }
                if field == .namespace { request.namespace = value }
            case .ttl:
                if member.kind == .number, let seconds = Self.number(line, member.valueRange), seconds.isFinite {
                    request.ttl = String(
                        decoding: UnsafeRawBufferPointer(rebasing: line[member.valueRange]), as: UTF8.self)
                } else if member.kind == .string,
                    let value = try? JSONObjectScanner.string(in: line, range: member.valueRange)
                {
                    request.ttl = value
                } else {
                    return .failure(invalid("'ttl' must be a duration such as \"15m\" or a number of seconds", id))
                }
            case .context, .request:
                if member.kind == .null { continue }
                let name = field == .context ? "context" : "request"
                guard member.kind == .object else { return .failure(invalid("'\(name)' must be an object", id)) }
                if field == .context {
                    request.context = member.valueRange
                } else {
                    request.request = member.valueRange
                }
            case .route:
                guard member.kind == .true || member.kind == .false else {
                    return .failure(invalid("'route' must be true or false", id))
                }
                request.routesOnly = member.kind == .true
            case .at:
                if member.kind == .null { continue }
                guard member.kind == .number, let value = Self.number(line, member.valueRange), value.isFinite else {
                    return .failure(invalid("'at' must be a number of seconds since the epoch", id))
                }
                request.at = value
            case .id, .op, .unknown:
                break
            }
        }
        switch operation {
        case .flag where request.flagRange == nil && request.flagDecoded == nil:
            return .failure(invalid("op 'flag' needs 'flag', the flag's key", id))
        case .config where (request.key == nil) == (request.prefix == nil):
            return .failure(invalid("op 'config' needs exactly one of 'key' or 'prefix'", id))
        case .explain
        where (request.flagRange == nil && request.flagDecoded == nil) == (request.request == nil)
            || (request.context != nil && request.request != nil):
            return .failure(
                invalid("op 'explain' needs either 'flag' (with an optional 'context') or 'request'", id))
        case .capture where request.routesOnly && request.flagDecoded != nil:
            return .failure(invalid("op 'capture' takes 'flag' or 'route', not both", id))
        case .show where request.revision == nil, .rollback where request.revision == nil:
            return .failure(invalid("op '\(operation.rawValue)' needs 'revision'", id))
        case .overrideSet
        where request.flagDecoded == nil || request.variant == nil || request.ttl == nil || request.reason == nil:
            return .failure(invalid("op 'override_set' needs 'flag', 'variant', 'ttl' and 'reason'", id))
        case .overrideClear where request.flagDecoded == nil:
            return .failure(invalid("op 'override_clear' needs 'flag'", id))
        default:
            return .success(request)
        }
    }

    private static func operation(_ member: JSONMember, _ line: UnsafeRawBufferPointer) -> RequestOperation? {
        let content = UnsafeRawBufferPointer(
            rebasing: line[member.valueRange.lowerBound + 1..<member.valueRange.upperBound - 1])
        if !content.contains(UInt8(ascii: "\\")) {
            let word = packedPrefix(content)
            switch content.count {
            case 4:
                if word == Names.flag { return .flag }
                if word == Names.ping { return .ping }
                if word == Names.show { return .show }
            case 5:
                if word == Names.flags { return .flags }
                if word == Names.route { return .route }
                if word == Names.watch { return .watch }
            case 6:
                if word == Names.config { return .config }
                if word == Names.status { return .status }
                if word == Names.reload { return .reload }
                if word == Names.resume { return .resume }
            case 7:
                if word == Names.explain { return .explain }
                if word == Names.metrics { return .metrics }
                if word == Names.capture { return .capture }
                if word == Names.history { return .history }
            case 8: if word == Names.rollback { return .rollback }
            case 12: if JSONObjectScanner.key(content, equals: "override_set") { return .overrideSet }
            case 13: if JSONObjectScanner.key(content, equals: "override_list") { return .overrideList }
            case 14: if JSONObjectScanner.key(content, equals: "override_clear") { return .overrideClear }
            default: break
            }
            return nil
        }
        return (try? JSONObjectScanner.string(in: line, range: member.valueRange)).flatMap(RequestOperation.init)
    }

    private func invalid(_ message: String, _ id: Range<Int>?) -> RequestDecodingFailure {
        RequestDecodingFailure(error: ProtocolError(.invalidRequest, message), id: id)
    }

    /// The operations a worker answers from the line itself (the others wait, and outlive their line).
    private static func isSynchronous(_ operation: RequestOperation) -> Bool {
        switch operation {
        case .ping, .flag, .flags, .route, .config, .explain: return true
        default: return false
        }
    }

    private static func allowed(_ field: Field, for operation: RequestOperation) -> Bool {
        // Every operation but `ping` and `metrics` (daemon-wide) may name a namespace.
        if field == .namespace { return operation != .ping && operation != .metrics }
        switch operation {
        case .flag: return field == .flag || field == .context || field == .at
        case .flags: return field == .context || field == .at
        case .route: return field == .request || field == .at
        case .explain: return field == .flag || field == .context || field == .request || field == .at
        case .config: return field == .key || field == .prefix
        case .show: return field == .revision || field == .path
        case .rollback: return field == .revision
        case .capture: return field == .flag || field == .route
        case .overrideSet:
            return field == .flag || field == .variant || field == .ttl || field == .reason || field == .namespace
        case .overrideClear: return field == .flag || field == .namespace
        case .overrideList: return field == .namespace
        case .ping, .status, .watch, .reload, .metrics, .history, .resume: return false
        }
    }

    private static func number(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Double? {
        if let integer = JSONObjectScanner.int64(in: bytes, range: range) { return Double(integer) }
        return JSONObjectScanner.double(in: bytes, range: range)
    }

    private static func clip(_ text: String) -> String {
        text.count > 64 ? String(text.prefix(64)) + "..." : text
    }
}
