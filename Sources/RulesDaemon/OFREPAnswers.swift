import NIOHTTP1
import RuleEngine
import RuleModel
import RulesProtocol

/// One OFREP answer: its HTTP status, JSON body (empty for 304) and, for bulk answers, its entity tag.
struct OFREPResponse: Sendable, Equatable {
    var status: HTTPResponseStatus
    var body: [UInt8]
    var etag: String? = nil
}

/// The OpenFeature Remote Evaluation Protocol's answers, built from rulesd's own evaluations: the same
/// decisions the line protocol answers, in OFREP's shapes (`{key, value, reason, variant, metadata}`, errors as
/// `{key, errorCode, errorDetails}`).
enum OFREPAnswers {
    /// The context of a request body `{"context":{…}}`, as JSON text for the evaluator. An empty body or one
    /// without `context` is the empty context.
    /// - Returns: the context's JSON bytes, or the 400 answer for a body that is not JSON (`PARSE_ERROR`) or a
    ///   context that is not an object (`INVALID_CONTEXT`).
    static func context(fromBody body: [UInt8], key: String?) -> Result<[UInt8], OFREPFailure> {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            return .success(Array("{}".utf8))
        }
        let document: JSONValue
        do {
            document = try JSONParser().parse(body)
        } catch {
            return .failure(OFREPFailure(key: key, code: "PARSE_ERROR", details: "request body: \(error)"))
        }
        guard case .object(let members) = document else {
            return .failure(OFREPFailure(key: key, code: "PARSE_ERROR", details: "request body is not a JSON object"))
        }
        switch members["context"] {
        case nil, .null?:
            return .success(Array("{}".utf8))
        case .object(let context)?:
            return .success(Array(JSONWriter.string(.object(context)).utf8))
        default:
            return .failure(OFREPFailure(key: key, code: "INVALID_CONTEXT", details: "context is not a JSON object"))
        }
    }

    /// Evaluates flag `key` for one context: 200 with the answer, 404 `FLAG_NOT_FOUND`, or 400 when the
    /// context could not be used (`INVALID_CONTEXT`) or the rule failed (`GENERAL`).
    static func evaluate<Observer: EvaluationObserver>(
        key: String, context: [UInt8], generation: ServingGeneration, evaluator: RuleEvaluator, now: Double,
        observer: Observer
    ) -> OFREPResponse {
        let ruleSet = evaluator.ruleSet
        guard let index = ruleSet.flagIndex(forKey: key) else {
            let failure = OFREPFailure(key: key, code: "FLAG_NOT_FOUND", details: RuleAnswers.flagNotFound(key).message)
            return OFREPResponse(status: .notFound, body: failure.json)
        }
        let decision = context.withUnsafeBytes { evaluator.evaluateFlag(at: index, context: $0, now: now) }
        observer.flagEvaluated(index: index, decision: decision)
        if let failure = decision.failure {
            return OFREPResponse(status: .badRequest, body: OFREPFailure(key: key, failure).json)
        }
        var body: [UInt8] = []
        appendSuccess(ruleSet.flags[index], decision, generation: generation, to: &body)
        return OFREPResponse(status: .ok, body: body)
    }

    /// Evaluates every flag for one context: `{"flags":[…]}` with an entity tag covering the revision and the
    /// context; 304 with no body when `ifNoneMatch` names that tag already; 400 `INVALID_CONTEXT` when the
    /// context could not be used. A flag whose rule failed is an entry `{key, errorCode, errorDetails}`.
    static func evaluateAll<Observer: EvaluationObserver>(
        context: [UInt8], ifNoneMatch: String?, generation: ServingGeneration, evaluator: RuleEvaluator, now: Double,
        observer: Observer, overrides: OverrideTable = .empty
    ) -> OFREPResponse {
        var tag = entityTag(revision: generation.ruleSet.revision, context: context)
        // Setting or clearing an override changes the answers of the same rules and context.
        if !overrides.fingerprint.isEmpty { tag = String(tag.dropLast()) + "-" + overrides.fingerprint + "\"" }
        if let ifNoneMatch, matches(ifNoneMatch, tag: tag) {
            return OFREPResponse(status: .notModified, body: [], etag: tag)
        }
        let ruleSet = evaluator.ruleSet
        let decisions: [FlagDecision]
        switch context.withUnsafeBytes({ evaluator.evaluateAllFlags(context: $0, now: now) }) {
        case .success(let all): decisions = all
        case .failure(let problem):
            let failure = OFREPFailure(key: nil, code: "INVALID_CONTEXT", details: "context: \(problem.message)")
            return OFREPResponse(status: .badRequest, body: failure.json)
        }
        var body: [UInt8] = Array(#"{"flags":["#.utf8)
        for (index, decision) in decisions.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            if !overrides.entries.isEmpty, let (entry, variant) = overrides.resolve(ruleSet.flags[index], now: now) {
                appendOverride(ruleSet.flags[index], entry, variant: variant, generation: generation, to: &body)
                continue
            }
            observer.flagEvaluated(index: index, decision: decision)
            if let failure = decision.failure {
                body.append(contentsOf: OFREPFailure(key: ruleSet.flags[index].key, failure).json)
            } else {
                appendSuccess(ruleSet.flags[index], decision, generation: generation, to: &body)
            }
        }
        body.append(contentsOf: "]}".utf8)
        return OFREPResponse(status: .ok, body: body, etag: tag)
    }

    /// A strong tag from the revision and the context's bytes: another rule set or another context is another
    /// tag. (Rules that read `now()` can change their answer under the same tag; clients poll for that.)
    static func entityTag(revision: RuleRevision, context: [UInt8]) -> String {
        "\"\(revision.short)-\(RuleRevision.digest(of: context).prefix(16))\""
    }

    /// Whether an `If-None-Match` header names `tag` (a list, weak tags and `*` included).
    static func matches(_ header: String, tag: String) -> Bool {
        header.split(separator: ",").contains { candidate in
            var trimmed = candidate.drop { $0 == " " || $0 == "\t" }
            while trimmed.last == " " || trimmed.last == "\t" { trimmed.removeLast() }
            if trimmed == "*" { return true }
            if trimmed.hasPrefix("W/") { trimmed.removeFirst(2) }
            return trimmed == tag
        }
    }

    /// `{"key","value","reason","variant","metadata":{"revision","generation","source"}}`. A flag without a
    /// default variant whose rule chose none has no value to give: OFREP's code-default answer,
    /// `{"key","reason","metadata"}` without `value` and `variant`, tells the provider to use the code's default.
    private static func appendSuccess(
        _ flag: FlagDefinition, _ decision: FlagDecision, generation: ServingGeneration, to out: inout [UInt8]
    ) {
        guard decision.variantIndex >= 0, decision.variantIndex < flag.variants.count else {
            out.append(contentsOf: #"{"key":"#.utf8)
            JSONWriter.appendEscapedString(flag.key, to: &out)
            out.append(contentsOf: #","reason":""#.utf8)
            out.append(contentsOf: decision.reason.rawValue.utf8)
            out.append(UInt8(ascii: "\""))
            appendMetadata(flag, generation: generation, to: &out)
            return
        }
        let variant = flag.variants[decision.variantIndex]
        out.append(contentsOf: #"{"key":"#.utf8)
        JSONWriter.appendEscapedString(flag.key, to: &out)
        out.append(contentsOf: #","value":"#.utf8)
        out.append(contentsOf: variant.json)
        out.append(contentsOf: #","reason":""#.utf8)
        out.append(contentsOf: decision.reason.rawValue.utf8)
        out.append(contentsOf: #"","variant":"#.utf8)
        JSONWriter.appendEscapedString(variant.name, to: &out)
        appendMetadata(flag, generation: generation, to: &out)
    }

    /// `,"metadata":{"revision","generation","source"}}`: the end of a success answer.
    private static func appendMetadata(_ flag: FlagDefinition, generation: ServingGeneration, to out: inout [UInt8]) {
        out.append(contentsOf: #","metadata":{"revision":""#.utf8)
        out.append(contentsOf: generation.shortRevision.utf8)
        out.append(contentsOf: #"","generation":"#.utf8)
        out.append(contentsOf: String(generation.number).utf8)
        out.append(contentsOf: #","source":"#.utf8)
        JSONWriter.appendEscapedString(flag.location.description, to: &out)
        out.append(contentsOf: "}}".utf8)
    }
}

/// An OFREP error: `{"key","errorCode","errorDetails"}` (`key` left out when the error is not about one flag).
struct OFREPFailure: Error, Sendable, Equatable {
    var key: String?
    var code: String
    var details: String

    init(key: String?, code: String, details: String) {
        self.key = key
        self.code = code
        self.details = details
    }

    /// A failed rule: `INVALID_CONTEXT` when the context could not be used, else `GENERAL` (OFREP has no code
    /// for a failed rule; rulesd's own code leads the details).
    init(key: String, _ failure: RuleFailure) {
        self.key = key
        self.code = failure.code == .invalidContext ? "INVALID_CONTEXT" : "GENERAL"
        self.details = "\(failure.code.rawValue): \(failure.message)"
    }

    var json: [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "{")]
        if let key {
            out.append(contentsOf: #""key":"#.utf8)
            JSONWriter.appendEscapedString(key, to: &out)
            out.append(UInt8(ascii: ","))
        }
        out.append(contentsOf: #""errorCode":"#.utf8)
        JSONWriter.appendEscapedString(code, to: &out)
        out.append(contentsOf: #","errorDetails":"#.utf8)
        JSONWriter.appendEscapedString(details, to: &out)
        out.append(UInt8(ascii: "}"))
        return out
    }
}
