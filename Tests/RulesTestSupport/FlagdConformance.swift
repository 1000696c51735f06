import RuleModel

#if canImport(Glibc)
    import Glibc
#endif

/// flagd's conformance cases (Tests/RuleEngineTests/Fixtures/flagd/cases.json) and what an OpenFeature provider
/// makes of an answer, shared by the in-process, `rulesctl` and daemon runs of them.
public enum FlagdConformance {
    /// The fixture directory: the cases, the test bed's flag files and their notice.
    public static let fixtures: String = {
        let file = "\(#filePath)"
        let testsDirectory = file.split(separator: "/", omittingEmptySubsequences: false).dropLast(2)
            .joined(separator: "/")
        return testsDirectory + "/RuleEngineTests/Fixtures/flagd"
    }()

    /// One case: a flag definition, a context, and what flagd answers.
    public struct Case: Sendable, CustomStringConvertible {
        public var id: Int
        public var flag: String
        public var context: JSONValue
        public var definition: JSONValue?
        public var evaluators: JSONValue?
        public var fractionalV3: Bool
        /// "boolean", "string", "integer", "float" or "object": the typed call the provider makes.
        public var type: String
        public var defaultValue: JSONValue
        public var expected: Resolution
        public var expectedMetadata: JSONValue?

        public var description: String { "case \(id): \(flag)" }
    }

    /// What the provider hands the application: the value, variant, reason and error code.
    public struct Resolution: Sendable, Equatable, CustomStringConvertible {
        public var value: JSONValue
        public var variant: String?
        public var reason: String
        public var errorCode: String?

        public init(value: JSONValue, variant: String?, reason: String, errorCode: String?) {
            self.value = value
            self.variant = variant
            self.reason = reason
            self.errorCode = errorCode
        }

        public var description: String {
            "value \(JSONWriter.string(value)), variant \(variant ?? "none"), reason \(reason)"
                + (errorCode.map { ", error \($0)" } ?? "")
        }
    }

    /// Every case in cases.json.
    public static func cases() throws -> [Case] {
        guard let bytes = readFile(fixtures + "/cases.json") else { throw HarnessError("cannot read cases.json") }
        guard case .array(let items) = try JSONParser().parse(bytes) else { throw HarnessError("cases.json") }
        return try items.map { item in
            guard case .integer(let id)? = item["id"], case .string(let flag)? = item["flag"],
                case .string(let type)? = item["type"], case .string(let reason)? = item["expected_reason"]
            else { throw HarnessError("malformed case \(item)") }
            let definition = nonNull(item["flag_definition"])
            return Case(
                id: Int(id), flag: flag, context: item["context"] ?? .object(JSONObject()), definition: definition,
                evaluators: nonNull(item["evaluators"]),
                fractionalV3: item["fractional_algorithm"]?.stringValue == "v3", type: type,
                defaultValue: item["default_value"] ?? .null,
                expected: Resolution(
                    value: item["expected_value"] ?? .null, variant: item["expected_variant"]?.stringValue,
                    reason: reason, errorCode: item["expected_error_code"]?.stringValue),
                expectedMetadata: item["expected_metadata"])
        }
    }

    private static func nonNull(_ value: JSONValue?) -> JSONValue? {
        if let value, !value.isNull { return value }
        return Optional<JSONValue>.none
    }

    /// The cases split into groups that can share one rules directory: within a group, a flag key always comes
    /// with the same definition, evaluators and fractional algorithm.
    public static func groups(_ cases: [Case]) -> [[Case]] {
        var groups: [[Case]] = []
        for item in cases {
            let fits = groups.firstIndex { group in
                group.allSatisfy { other in
                    other.fractionalV3 == item.fractionalV3
                        && (other.flag != item.flag
                            || (other.definition == item.definition && other.evaluators == item.evaluators))
                        && compatibleEvaluators(other.evaluators, item.evaluators)
                }
            }
            if let fits { groups[fits].append(item) } else { groups.append([item]) }
        }
        return groups
    }

    private static func compatibleEvaluators(_ a: JSONValue?, _ b: JSONValue?) -> Bool {
        guard case .object(let x)? = a, case .object(let y)? = b else { return true }
        return x.allSatisfy { y[$0.key] == nil || y[$0.key] == $0.value }
    }

    /// The flag file (`*.flagd.json`) holding the flags of `group`.
    public static func flagFile(_ group: [Case]) -> String {
        var flags = JSONObject()
        var evaluators = JSONObject()
        for item in group {
            if let definition = item.definition { flags[item.flag] = definition }
            if case .object(let shared)? = item.evaluators {
                for (name, body) in shared { evaluators[name] = body }
            }
        }
        var document: JSONObject = ["flags": .object(flags)]
        if !evaluators.isEmpty { document["$evaluators"] = .object(evaluators) }
        if group.first?.fractionalV3 == true { document["$rulesd"] = ["fractional": "v3"] }
        return JSONWriter.string(.object(document)) + "\n"
    }

    /// What an OpenFeature provider resolves from rulesd's answer to `{"op":"flag"}` for a typed call: an error
    /// answer (FLAG_NOT_FOUND) and a failed rule give the caller's default with the error code, an answer without
    /// a variant gives the caller's default with the answer's reason, and a value of another type is a
    /// TYPE_MISMATCH.
    /// - Parameters:
    ///   - answer: the `result` object of a successful answer.
    ///   - errorCode: the `error.code` of a failed answer.
    public static func resolve(_ item: Case, answer: JSONValue?, errorCode: String?) -> Resolution {
        if let errorCode {
            return Resolution(value: item.defaultValue, variant: nil, reason: "ERROR", errorCode: errorCode)
        }
        guard let answer, case .string(let reason)? = answer["reason"] else {
            return Resolution(value: item.defaultValue, variant: nil, reason: "ERROR", errorCode: "GENERAL")
        }
        if reason == "ERROR" {
            return Resolution(
                value: item.defaultValue, variant: nil, reason: "ERROR", errorCode: answer["error_code"]?.stringValue)
        }
        guard case .string(let variant)? = answer["variant"], let value = answer["value"] else {
            return Resolution(value: item.defaultValue, variant: nil, reason: reason, errorCode: nil)
        }
        guard hasType(item.type, value) else {
            return Resolution(value: item.defaultValue, variant: nil, reason: "ERROR", errorCode: "TYPE_MISMATCH")
        }
        return Resolution(value: value, variant: variant, reason: reason, errorCode: nil)
    }

    /// Whether the resolution (and the answer's metadata) is what flagd gives; nil when it is, else why not.
    public static func mismatch(_ item: Case, _ got: Resolution, metadata: JSONValue?) -> String? {
        var expected = item.expected
        // Numbers compare by value: 0.5 is 0.5 whether written as a float or not.
        if case .number(let d) = expected.value, d == d.rounded(), case .integer = got.value {
            expected.value = .integer(Int64(d))
        }
        if got != expected { return "case \(item.id): expected \(expected), got \(got)" }
        if let wanted = item.expectedMetadata, wanted != metadata {
            return "case \(item.id): expected metadata \(JSONWriter.string(wanted)), got "
                + (metadata.map { JSONWriter.string($0) } ?? "none")
        }
        return nil
    }

    private static func hasType(_ type: String, _ value: JSONValue) -> Bool {
        switch (type, value) {
        case ("boolean", .bool), ("string", .string), ("integer", .integer), ("float", .number), ("float", .integer),
            ("object", .object):
            return true
        default: return false
        }
    }

    /// The test bed's flag files, as paths relative to `testbed-flags`.
    public static let testbedFiles = [
        "evaluator/flags/testkit-flags.json", "flags/changing-flag.json", "flags/custom-ops.json",
        "flags/disabled-flags.json", "flags/edge-case-flags.json", "flags/evaluator-refs.json",
        "flags/metadata-flags.json", "flags/selector-flag-combined-metadata.json", "flags/selector-flags.json",
        "flags/testing-flags.json", "flags/zero-flags.json",
    ]

    /// A whole file, or nil.
    public static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<n])
        }
    }
}
