import GRPCCore
import RuleEngine
import RuleModel
import SwiftProtobuf

/// The type a flagd `Resolve…` method asks for; a variant of another type is a type mismatch.
enum FlagdValueType: String, Sendable, CaseIterable {
    case boolean
    case string
    case integer
    case float
    case object

    /// Whether `value` can be answered as this type. Integers are floats too (JSON has one number type), and a
    /// whole-number float is an integer, as flagd reads them.
    func accepts(_ value: JSONValue) -> Bool {
        switch (self, value) {
        case (.boolean, .bool), (.string, .string), (.object, .object), (.integer, .integer), (.float, .integer),
            (.float, .number):
            return true
        case (.integer, .number(let number)):
            return Int64(exactly: number) != nil
        default:
            return false
        }
    }
}

/// One flag answered to a flagd client: the variant's value (nil when the flag has no default variant and no
/// rule chose one: the caller's own default), reason, variant name and metadata.
struct FlagdResolution: Sendable, Equatable {
    var value: JSONValue?
    var reason: String
    var variant: String?
    var metadata: Google_Protobuf_Struct
}

/// flagd's evaluation API answered from rulesd's decisions: the same evaluations as the line protocol, in
/// flagd's messages and with the gRPC statuses flagd gives its errors (its `errFormat`): an unknown flag is
/// `NOT_FOUND`, a type mismatch `INVALID_ARGUMENT`, a flag definition that cannot be evaluated `DATA_LOSS`
/// (flagd's `PARSE_ERROR`), and any other failed rule `UNKNOWN` (flagd's `GENERAL`). Clients read
/// `INVALID_ARGUMENT` as `TYPE_MISMATCH`, so a failed rule must never be answered with it.
enum FlagdAnswers {
    /// The evaluation context of a request as JSON for the evaluator. protobuf's `Struct` carries every number
    /// as a double; a whole number that fits in 64 bits becomes a JSON integer, so that rules see a Lua integer
    /// exactly as when the line protocol sends `30` rather than `30.0`.
    static func context(_ context: Google_Protobuf_Struct?) -> [UInt8] {
        guard let context, !context.fields.isEmpty else { return Array("{}".utf8) }
        return Array(JSONWriter.string(json(context)).utf8)
    }

    /// A `Struct` as JSON, whole-number doubles as integers.
    static func json(_ object: Google_Protobuf_Struct) -> JSONValue {
        // Sorted keys: the same context always gives the same bytes.
        .object(JSONObject(object.fields.sorted { $0.key < $1.key }.map { ($0.key, json($0.value)) }))
    }

    static func json(_ value: Google_Protobuf_Value) -> JSONValue {
        switch value.kind {
        case .nullValue?, nil: return .null
        case .boolValue(let flag)?: return .bool(flag)
        case .stringValue(let text)?: return .string(text)
        case .numberValue(let number)?:
            // 2^63 itself is a whole double that does not fit, so the range check comes from Int64(exactly:).
            if number.rounded(.towardZero) == number, let integer = Int64(exactly: number) { return .integer(integer) }
            return .number(number)
        case .listValue(let list)?: return .array(list.values.map(json))
        case .structValue(let object)?: return json(object)
        }
    }

    /// A JSON value as protobuf's `Value` (integers become doubles, as `Struct` has no other number).
    static func protobufValue(_ value: JSONValue) -> Google_Protobuf_Value {
        switch value {
        case .null: return Google_Protobuf_Value(nilLiteral: ())
        case .bool(let flag): return Google_Protobuf_Value(boolValue: flag)
        case .integer(let integer): return Google_Protobuf_Value(numberValue: Double(integer))
        case .number(let number): return Google_Protobuf_Value(numberValue: number)
        case .string(let text): return Google_Protobuf_Value(stringValue: text)
        case .array(let values):
            return Google_Protobuf_Value(listValue: Google_Protobuf_ListValue(values: values.map(protobufValue)))
        case .object(let members): return Google_Protobuf_Value(structValue: protobufStruct(members))
        }
    }

    static func protobufStruct(_ members: JSONObject) -> Google_Protobuf_Struct {
        var object = Google_Protobuf_Struct()
        for (key, value) in members { object.fields[key] = protobufValue(value) }
        return object
    }

    /// The metadata of every answer: the flag's own `metadata`, then the revision and generation that answered
    /// and the flag's `file:line`.
    static func metadata(_ flag: FlagDefinition, generation: ServingGeneration) -> Google_Protobuf_Struct {
        var object = Google_Protobuf_Struct()
        if case .object(let members)? = flag.metadata {
            for (key, value) in members { object.fields[key] = protobufValue(value) }
        }
        object.fields["revision"] = Google_Protobuf_Value(stringValue: generation.shortRevision)
        object.fields["generation"] = Google_Protobuf_Value(numberValue: Double(generation.number))
        object.fields["source"] = Google_Protobuf_Value(stringValue: flag.location.description)
        return object
    }

    /// The answer to one `Resolve…` call, or the `RPCError` flagd would give.
    static func resolve(
        _ flag: FlagDefinition, _ decision: FlagDecision, as type: FlagdValueType, generation: ServingGeneration
    ) -> Result<FlagdResolution, RPCError> {
        if let failure = decision.failure { return .failure(error(flag.key, failure)) }
        let metadata = metadata(flag, generation: generation)
        guard decision.variantIndex >= 0 else {
            // No default variant and nothing chosen: no value, so that the client uses its own default.
            return .success(
                FlagdResolution(value: nil, reason: decision.reason.rawValue, variant: nil, metadata: metadata))
        }
        let variant = flag.variants[decision.variantIndex]
        guard type.accepts(variant.value) else {
            return .failure(
                RPCError(
                    code: .invalidArgument,
                    message:
                        "TYPE_MISMATCH: flag '\(flag.key)' has \(typeName(variant.value)) variant '\(variant.name)', "
                        + "not \(type.rawValue)"))
        }
        return .success(
            FlagdResolution(
                value: variant.value, reason: decision.reason.rawValue, variant: variant.name, metadata: metadata))
    }

    /// The answer to one `Resolve…` call for a flag an override forces (reason `OVERRIDE`): the forced variant,
    /// type-checked like any other, with who set the override, why and until when in `metadata`.
    static func overridden(
        _ flag: FlagDefinition, _ entry: FlagOverride, variant index: Int, as type: FlagdValueType?,
        generation: ServingGeneration
    ) -> Result<FlagdResolution, RPCError> {
        let variant = flag.variants[index]
        if let type, !type.accepts(variant.value) {
            return .failure(
                RPCError(
                    code: .invalidArgument,
                    message:
                        "TYPE_MISMATCH: flag '\(flag.key)' has \(typeName(variant.value)) variant '\(variant.name)', "
                        + "not \(type.rawValue)"))
        }
        var metadata = metadata(flag, generation: generation)
        metadata.fields["override_set_by"] = Google_Protobuf_Value(stringValue: entry.setBy.description)
        metadata.fields["override_reason"] = Google_Protobuf_Value(stringValue: entry.reason)
        metadata.fields["override_expires_at"] = Google_Protobuf_Value(
            stringValue: Timestamp.iso8601(entry.expiresAt))
        return .success(
            FlagdResolution(value: variant.value, reason: "OVERRIDE", variant: variant.name, metadata: metadata))
    }

    /// The status of an unknown flag.
    static func flagNotFound(_ key: String) -> RPCError {
        RPCError(code: .notFound, message: "FLAG_NOT_FOUND: " + RuleAnswers.flagNotFound(key).message)
    }

    /// The status of a failed rule: `DATA_LOSS` for a definition that cannot be evaluated, else `UNKNOWN`, with
    /// rulesd's own code leading the message.
    static func error(_ key: String, _ failure: RuleFailure) -> RPCError {
        let code: RPCError.Code = failure.code == .parseError ? .dataLoss : .unknown
        return RPCError(code: code, message: "\(failure.code.rawValue): flag '\(key)': \(failure.message)")
    }

    private static func typeName(_ value: JSONValue) -> String {
        switch value {
        case .null: "a null"
        case .bool: "a boolean"
        case .integer: "an integer"
        case .number: "a float"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}
