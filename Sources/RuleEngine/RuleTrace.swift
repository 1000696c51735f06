import CRuleSandbox
import RuleModel

/// What one explained evaluation did, as JSON: the steps it ran in order, the context fields it read, and
/// whether the trace was cut at its cap.
///
/// The shape (documented in docs/PROTOCOL.md):
/// `{"steps":[...],"fields":[...],"truncated":false,"limit":1000}`, where a step is one of
/// `{"line":"file:line","count":N}`,
/// `{"call":"split","at":"file:line","args":[...],"result":V,...,"count":N}`,
/// `{"flag":"KEY","at":"file:line","variant":"on","reason":"TARGETING_MATCH","steps":[...]}` or
/// `{"route":"NAME","source":"file:line","matched":true,"steps":[...]}`,
/// and a field is `{"path":"user.id","present":true,"value":V,"at":"file:line","reads":N}`.
public struct RuleTrace: Sendable, Hashable {
    /// The most records a trace keeps unless told otherwise.
    public static let defaultLimit = 1000

    public var json: JSONValue

    public init(json: JSONValue) { self.json = json }

    /// The steps, in execution order.
    public var steps: [JSONValue] { json["steps"]?.arrayValue ?? [] }
    /// The context fields read, each once, in first-read order.
    public var fields: [JSONValue] { json["fields"]?.arrayValue ?? [] }
    /// Whether records were left out because the trace reached its cap.
    public var truncated: Bool { json["truncated"]?.boolValue ?? false }
}

extension RuleEvaluator {
    /// Evaluates the flag at `index` like ``evaluateFlag(at:context:now:)`` and records what its rule did.
    /// - Parameters:
    ///   - index: the flag's index in ``RuleSet/flags``.
    ///   - context: a JSON object (empty bytes mean an empty context).
    ///   - now: what `now()` returns to the rule, in seconds since the epoch.
    ///   - limit: the most records the trace keeps.
    /// - Returns: the decision, exactly as a plain evaluation gives it, and the trace.
    public func explainFlag(
        at index: Int, context: UnsafeRawBufferPointer, now: Double, limit: Int = RuleTrace.defaultLimit
    ) -> (FlagDecision, RuleTrace) {
        var outcome = rs_outcome()
        rs_explain_flag(
            state, index, context.baseAddress?.assumingMemoryBound(to: CChar.self), context.count, now,
            max(limit, 1), &outcome)
        let decision = decision(outcome, flag: index)
        return (decision, readTrace(limit: limit))
    }

    /// Explains the flag named `key` for a context given as a JSON value; nil when there is no such flag.
    public func explainFlag(
        key: String, context: JSONValue = .object(JSONObject()), now: Double = RuleClock.now(),
        limit: Int = RuleTrace.defaultLimit
    ) -> (FlagDecision, RuleTrace)? {
        guard let index = ruleSet.flagIndex(forKey: key) else { return nil }
        return Array(JSONWriter.string(context).utf8).withUnsafeBytes {
            explainFlag(at: index, context: $0, now: now, limit: limit)
        }
    }

    /// Routes a request like ``route(request:now:)`` and records every route tried, up to the winner.
    public func explainRoute(request: UnsafeRawBufferPointer, now: Double, limit: Int = RuleTrace.defaultLimit)
        -> (RouteDecision, RuleTrace)
    {
        var outcome = rs_outcome()
        rs_explain_route(
            state, request.baseAddress?.assumingMemoryBound(to: CChar.self), request.count, now, max(limit, 1),
            &outcome)
        let decision = routeDecision(outcome)
        return (decision, readTrace(limit: limit))
    }

    /// Explains routing a request given as a JSON value.
    public func explainRoute(
        request: JSONValue, now: Double = RuleClock.now(), limit: Int = RuleTrace.defaultLimit
    ) -> (RouteDecision, RuleTrace) {
        Array(JSONWriter.string(request).utf8).withUnsafeBytes { explainRoute(request: $0, now: now, limit: limit) }
    }

    /// The Lua hook mask in force; a line hook (`LUA_MASKLINE`, 4) appears only while an explain runs.
    public var hookMask: Int32 { rs_hook_mask(state) }

    private func readTrace(limit: Int) -> RuleTrace {
        var records: [rs_trace_entry] = []
        let count = rs_trace_count(state)
        records.reserveCapacity(count)
        for index in 0..<count { records.append(rs_trace_at(state, index)) }
        var position = 0
        let steps = Self.steps(records, depth: 0, position: &position)
        var fields: [JSONValue] = []
        for index in 0..<rs_trace_field_count(state) {
            let record = rs_trace_field_at(state, index)
            var field = JSONObject()
            field["path"] = .string(record.name.map { String(cString: $0) } ?? "")
            let detail = Self.detail(record)
            field["present"] = detail["present"] ?? .bool(false)
            if let value = detail["value"] { field["value"] = value }
            if let at = Self.location(record) { field["at"] = .string(at) }
            field["reads"] = .integer(Int64(record.count))
            fields.append(.object(field))
        }
        return RuleTrace(
            json: .object([
                "steps": .array(steps), "fields": .array(fields),
                "truncated": .bool(rs_trace_truncated(state) != 0), "limit": .integer(Int64(limit)),
            ]))
    }

    private static func steps(_ records: [rs_trace_entry], depth: Int32, position: inout Int) -> [JSONValue] {
        var steps: [JSONValue] = []
        while position < records.count, records[position].depth >= depth {
            let record = records[position]
            position += 1
            if record.depth > depth {
                // Records deeper than expected (their opening record fell beyond the cap): keep them in place.
                position -= 1
                steps.append(contentsOf: Self.steps(records, depth: record.depth, position: &position))
                continue
            }
            var step = JSONObject()
            let name = record.name.map { String(cString: $0) } ?? ""
            let detail = detail(record)
            switch Int(record.kind) {
            case Int(RS_TRACE_LINE.rawValue):
                step["line"] = .string(location(record) ?? "?")
                step["count"] = .integer(Int64(record.count))
            case Int(RS_TRACE_CALL.rawValue):
                step["call"] = .string(name)
                if let at = location(record) { step["at"] = .string(at) }
                for (key, value) in detail { step[key] = value }
                if record.count > 1 { step["count"] = .integer(Int64(record.count)) }
            case Int(RS_TRACE_FLAG.rawValue):
                step["flag"] = .string(name)
                if let at = location(record) { step["at"] = .string(at) }
                for (key, value) in detail { step[key] = value }
                step["steps"] = .array(Self.steps(records, depth: depth + 1, position: &position))
            case Int(RS_TRACE_ROUTE.rawValue):
                step["route"] = .string(name)
                if let at = location(record) { step["source"] = .string(at) }
                for (key, value) in detail { step[key] = value }
                step["steps"] = .array(Self.steps(records, depth: depth + 1, position: &position))
            default:
                continue
            }
            steps.append(.object(step))
        }
        return steps
    }

    private static func location(_ record: rs_trace_entry) -> String? {
        guard let file = record.file else { return nil }
        return "\(String(cString: file)):\(record.line)"
    }

    private static func detail(_ record: rs_trace_entry) -> JSONObject {
        guard let text = record.detail else { return JSONObject() }
        let bytes = Array(String(cString: text).utf8)
        return (try? JSONParser().parse(bytes))?.objectValue ?? JSONObject()
    }
}
