import RuleModel

/// The JSON form of every answer, shared by the daemon and `rulesctl eval` so that both print the same
/// thing for the same question. Each function appends one compact JSON object.
public enum RuleAnswers {
    /// `{"key","value","variant","reason","source"}`, plus `"error_code"` and `"error_message"` when the
    /// rule failed (the default variant's value is still served).
    @inline(__always)
    public static func appendFlag(_ ruleSet: RuleSet, flag index: Int, _ decision: FlagDecision, to out: inout [UInt8])
    {
        // Offsets into the rule set's arrays, read in place: nothing is copied out, so nothing is retained.
        let record = ruleSet.flagFragments.records[index]
        ruleSet.flagFragments.text.withUnsafeBytes { text in
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: text[Int(record.head)..<Int(record.tail)]))
            out.append(UInt8(ascii: ","))
            appendDecision(ruleSet.flagFragments, record, decision, to: &out)
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: text[Int(record.tail)..<Int(record.end)]))
        }
    }

    /// `{"flags":{KEY:{"value","variant","reason"},...}}`, keys in sorted order.
    public static func appendFlags(_ ruleSet: RuleSet, _ decisions: [FlagDecision], to out: inout [UInt8]) {
        out.append(contentsOf: #"{"flags":{"#.utf8)
        for (index, flag) in ruleSet.flags.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            JSONWriter.appendEscapedString(flag.key, to: &out)
            out.append(contentsOf: ":{".utf8)
            appendDecision(ruleSet.flagFragments, ruleSet.flagFragments.records[index], decisions[index], to: &out)
            out.append(UInt8(ascii: "}"))
        }
        out.append(contentsOf: "}}".utf8)
    }

    /// `{"route","target","source"}`.
    public static func appendRoute(_ route: RouteDefinition, target: String, to out: inout [UInt8]) {
        out.append(contentsOf: #"{"route":"#.utf8)
        JSONWriter.appendEscapedString(route.name, to: &out)
        out.append(contentsOf: #","target":"#.utf8)
        JSONWriter.appendEscapedString(target, to: &out)
        out.append(contentsOf: #","source":"#.utf8)
        JSONWriter.appendEscapedString(route.location.description, to: &out)
        out.append(UInt8(ascii: "}"))
    }

    /// `{"key","value"}`.
    public static func appendConfig(_ entry: ConfigEntry, to out: inout [UInt8]) {
        out.append(contentsOf: #"{"key":"#.utf8)
        JSONWriter.appendEscapedString(entry.key, to: &out)
        out.append(contentsOf: #","value":"#.utf8)
        out.append(contentsOf: entry.json)
        out.append(UInt8(ascii: "}"))
    }

    /// `{"values":{KEY:VALUE,...}}`.
    public static func appendConfigs(_ entries: [ConfigEntry], to out: inout [UInt8]) {
        out.append(contentsOf: #"{"values":{"#.utf8)
        for (index, entry) in entries.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            JSONWriter.appendEscapedString(entry.key, to: &out)
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: entry.json)
        }
        out.append(contentsOf: "}}".utf8)
    }

    /// `{"code","message"}` plus any extra fields, the `error` member of a failed answer.
    public static func appendError(
        code: String, message: String, extra: [(String, String)] = [], to out: inout [UInt8]
    ) {
        out.append(contentsOf: #"{"code":"#.utf8)
        JSONWriter.appendEscapedString(code, to: &out)
        out.append(contentsOf: #","message":"#.utf8)
        JSONWriter.appendEscapedString(message, to: &out)
        for (key, value) in extra {
            out.append(UInt8(ascii: ","))
            JSONWriter.appendEscapedString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            JSONWriter.appendEscapedString(value, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// The error answered when a flag does not exist.
    public static func flagNotFound(_ key: String) -> (code: String, message: String) {
        ("FLAG_NOT_FOUND", "no flag named '\(key)'")
    }

    /// The error answered when a config key does not exist.
    public static func configNotFound(_ key: String) -> (code: String, message: String) {
        ("CONFIG_NOT_FOUND", "no config value named '\(key)'")
    }

    /// The error answered when no config key starts with a (non-empty) prefix.
    public static func configPrefixNotFound(_ prefix: String) -> (code: String, message: String) {
        ("CONFIG_NOT_FOUND", "no config values under the prefix '\(prefix)'")
    }

    /// The error answered when no route matches.
    public static let noRoute = (code: "NO_ROUTE", message: "no route matches the request")

    /// The error answered when a route's rule fails: the route and the rule's own error code.
    public static func routeFailure(_ route: RouteDefinition?, _ failure: RuleFailure) -> (
        code: String, message: String, extra: [(String, String)]
    ) {
        var extra = [("rule_error_code", failure.code.rawValue)]
        var message = failure.message
        if let route {
            extra.append(("route", route.name))
            extra.append(("source", route.location.description))
            message = "route '\(route.name)': \(failure.message)"
        }
        return ("RULE_ERROR", message, extra)
    }

    @inline(__always)
    private static func appendDecision(
        _ table: borrowing FlagAnswerTable, _ record: FlagAnswerTable.Record, _ decision: FlagDecision,
        to out: inout [UInt8]
    ) {
        if decision.variantIndex >= 0 {
            let bound = Int(record.variants) + decision.variantIndex
            let start = Int(table.variantBounds[bound])
            let end = Int(table.variantBounds[bound + 1])
            table.variantText.withUnsafeBytes {
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[start..<end]))
            }
        } else {
            // A flag without a default variant (`default = false`): no value, no variant; the caller's default.
            appendStatic(#""value":null"#, to: &out)
        }
        switch decision.reason {
        case .staticValue: appendStatic(#","reason":"STATIC""#, to: &out)
        case .targetingMatch: appendStatic(#","reason":"TARGETING_MATCH""#, to: &out)
        case .defaultValue: appendStatic(#","reason":"DEFAULT""#, to: &out)
        case .disabled: appendStatic(#","reason":"DISABLED""#, to: &out)
        case .error: appendStatic(#","reason":"ERROR""#, to: &out)
        }
        if let failure = decision.failure {
            out.append(contentsOf: #","error_code":""#.utf8)
            out.append(contentsOf: failure.code.rawValue.utf8)
            out.append(contentsOf: #"","error_message":"#.utf8)
            JSONWriter.appendEscapedString(failure.message, to: &out)
        }
    }

    @inline(__always)
    private static func appendStatic(_ text: StaticString, to out: inout [UInt8]) {
        out.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }
}
