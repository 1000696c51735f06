import Atomics
import RuleEngine
import RuleModel
import RulesProtocol

/// Who set an override: the peer credentials of the connection that asked, and the user name of its uid.
struct OverrideSetter: Sendable, Hashable, CustomStringConvertible {
    var uid: UInt32?
    var user: String?
    var pid: Int32?

    var json: JSONValue {
        [
            "uid": uid.map { .integer(Int64($0)) } ?? .null, "user": user.map { .string($0) } ?? .null,
            "pid": pid.map { .integer(Int64($0)) } ?? .null,
        ]
    }

    init(uid: UInt32?, user: String?, pid: Int32?) {
        self.uid = uid
        self.user = user
        self.pid = pid
    }

    init(json: JSONValue?) {
        uid = json?["uid"]?.int64Value.flatMap { UInt32(exactly: $0) }
        user = json?["user"]?.stringValue
        pid = json?["pid"]?.int64Value.flatMap { Int32(exactly: $0) }
    }

    /// `alice (uid 1000, pid 4242)`.
    var description: String {
        guard let uid else { return "unknown" }
        let pidText = pid.map { "pid \($0)" }
        guard let user else { return "uid \(uid)" + (pidText.map { " (\($0))" } ?? "") }
        return "\(user) (uid \(uid)" + (pidText.map { ", \($0)" } ?? "") + ")"
    }
}

/// One override: flag `flag` answers `variant` for every context until `expiresAt`.
struct FlagOverride: Sendable, Hashable {
    var flag: String
    var variant: String
    /// Why it was set, as the operator said.
    var reason: String
    var setBy: OverrideSetter
    /// Wall-clock seconds since the epoch: the expiry is absolute, so that no restart can lengthen it.
    var setAt: Double
    var expiresAt: Double

    /// As answers, events and `override_list` show it: times in ISO 8601.
    var json: JSONValue {
        .object(
            JSONObject([
                ("flag", .string(flag)), ("variant", .string(variant)), ("reason", .string(reason)),
                ("set_by", setBy.json), ("set_at", .string(Timestamp.iso8601(setAt))),
                ("expires_at", .string(Timestamp.iso8601(expiresAt))),
            ]))
    }

    /// As the state directory keeps it: times as seconds since the epoch, to the microsecond.
    var storedJSON: JSONValue {
        .object(
            JSONObject([
                ("flag", .string(flag)), ("variant", .string(variant)), ("reason", .string(reason)),
                ("set_by", setBy.json), ("set_at", .number(setAt)), ("expires_at", .number(expiresAt)),
            ]))
    }

    init(flag: String, variant: String, reason: String, setBy: OverrideSetter, setAt: Double, expiresAt: Double) {
        self.flag = flag
        self.variant = variant
        self.reason = reason
        self.setBy = setBy
        self.setAt = setAt
        self.expiresAt = expiresAt
    }

    /// Reads one entry of the state directory's file; nil when a member is missing or mistyped.
    init?(stored json: JSONValue) {
        guard let flag = json["flag"]?.stringValue, let variant = json["variant"]?.stringValue,
            let setAt = json["set_at"]?.doubleValue, let expiresAt = json["expires_at"]?.doubleValue,
            setAt.isFinite, expiresAt.isFinite
        else { return nil }
        self.init(
            flag: flag, variant: variant, reason: json["reason"]?.stringValue ?? "",
            setBy: OverrideSetter(json: json["set_by"]),
            setAt: setAt, expiresAt: expiresAt)
    }

    /// The `override` member of a flag's answer: `{"reason","set_by","set_at","expires_at"}`.
    var answerMember: [UInt8] {
        let member: JSONValue = .object(
            JSONObject([
                ("reason", .string(reason)), ("set_by", setBy.json), ("set_at", .string(Timestamp.iso8601(setAt))),
                ("expires_at", .string(Timestamp.iso8601(expiresAt))),
            ]))
        return Array(JSONWriter.string(member).utf8)
    }
}

/// The overrides in force, as one immutable value: workers read it without a lock, and every change publishes a
/// new one (see ``OverrideBoard``).
final class OverrideTable: Sendable, AtomicReference {
    /// Increases with every change; 0 is the empty table rulesd starts with.
    let version: UInt64
    /// By flag key.
    let entries: [String: FlagOverride]
    /// A digest of the entries (empty when there are none), for OFREP's entity tags.
    let fingerprint: String

    init(version: UInt64, entries: [String: FlagOverride]) {
        self.version = version
        self.entries = entries
        if entries.isEmpty {
            fingerprint = ""
        } else {
            let stored = JSONValue.array(entries.keys.sorted().map { entries[$0]!.storedJSON })
            fingerprint = String(RuleRevision.digest(of: Array(JSONWriter.string(stored).utf8)).prefix(16))
        }
    }

    static let empty = OverrideTable(version: 0, entries: [:])

    /// The override of `flag` in `ruleSet` in force at `now`, with its variant's index; nil when there is none,
    /// its time is up, or the rule set has no such flag or variant.
    func resolve(_ flag: FlagDefinition, now: Double) -> (FlagOverride, variant: Int)? {
        guard let entry = entries[flag.key], now < entry.expiresAt,
            let variant = flag.variants.firstIndex(where: { $0.name == entry.variant })
        else { return nil }
        return (entry, variant)
    }
}

/// Where the overrides in force are published: one atomic reference, and a version number that workers
/// compare on every request (one atomic load), fetching the table only when it changed.
final class OverrideBoard: Sendable {
    private let table = ManagedAtomic<OverrideTable>(.empty)
    private let version = ManagedAtomic<UInt64>(0)

    /// Makes `next` the table every new request uses. The table is stored before its version, so a reader that
    /// saw the version finds at least that table.
    func publish(_ next: OverrideTable) {
        table.store(next, ordering: .releasing)
        version.store(next.version, ordering: .releasing)
    }

    var publishedVersion: UInt64 { version.load(ordering: .acquiring) }

    var current: OverrideTable { table.load(ordering: .acquiring) }
}

/// An override resolved against one generation's flag: its answers, encoded once.
struct ResolvedOverride {
    let expiresAt: Double
    /// The whole `flag` result: `{"key","value","variant","reason":"OVERRIDE","override":{…},"source"}`.
    let flagAnswer: [UInt8]
    /// The flag's entry in a `flags` result: `{"value","variant","reason":"OVERRIDE","override":{…}}`.
    let flagsEntry: [UInt8]

    init(_ entry: FlagOverride, flag: FlagDefinition, variant: Int) {
        expiresAt = entry.expiresAt
        var decision: [UInt8] = Array(#""value":"#.utf8)
        decision.append(contentsOf: flag.variants[variant].json)
        decision.append(contentsOf: #","variant":"#.utf8)
        JSONWriter.appendEscapedString(flag.variants[variant].name, to: &decision)
        decision.append(contentsOf: #","reason":"OVERRIDE","override":"#.utf8)
        decision.append(contentsOf: entry.answerMember)
        flagsEntry = [UInt8(ascii: "{")] + decision + [UInt8(ascii: "}")]
        var answer: [UInt8] = Array(#"{"key":"#.utf8)
        JSONWriter.appendEscapedString(flag.key, to: &answer)
        answer.append(UInt8(ascii: ","))
        answer.append(contentsOf: decision)
        if let metadata = flag.metadata {
            answer.append(contentsOf: #","metadata":"#.utf8)
            answer.append(contentsOf: JSONWriter.string(metadata).utf8)
        }
        answer.append(contentsOf: #","source":"#.utf8)
        JSONWriter.appendEscapedString(flag.location.description, to: &answer)
        answer.append(UInt8(ascii: "}"))
        flagAnswer = answer
    }
}

/// A worker's view of the overrides: the published table resolved against the generation it serves, rebuilt
/// only when either changes. With no override set, the whole cost on the query path is one atomic load and two
/// comparisons.
struct WorkerOverrides {
    private var generationNumber: UInt64 = 0
    private var tableVersion: UInt64 = 0
    /// By flag index; empty when no override applies.
    private var byFlag: [ResolvedOverride?] = []
    /// The flags whose variant the worker's evaluator forces for `flag_value()` (see
    /// ``RuleEvaluator/setOverride(flag:variant:)``), so that flags depending on an overridden one follow it.
    private var forced: [Int] = []

    /// Whether any override applies to the generation last synchronised.
    var isActive: Bool { !byFlag.isEmpty }

    /// Brings the view, and what `evaluator` forces, up to the published table; call before every answer.
    @inline(__always)
    mutating func sync(_ board: OverrideBoard, _ generation: ServingGeneration, _ evaluator: RuleEvaluator) {
        if board.publishedVersion != tableVersion || generation.number != generationNumber {
            rebuild(board.current, generation, evaluator)
        }
    }

    private mutating func rebuild(_ table: OverrideTable, _ generation: ServingGeneration, _ evaluator: RuleEvaluator) {
        // A worker has one evaluator per generation: the same generation means the same Lua state.
        if generation.number == generationNumber {
            for index in forced { evaluator.setOverride(flag: index, variant: nil) }
        }
        forced = []
        tableVersion = table.version
        generationNumber = generation.number
        byFlag = []
        guard !table.entries.isEmpty else { return }
        let flags = generation.ruleSet.flags
        var resolved = [ResolvedOverride?](repeating: nil, count: flags.count)
        var any = false
        for (key, entry) in table.entries {
            guard let index = generation.ruleSet.flagIndex(forKey: key),
                let variant = flags[index].variants.firstIndex(where: { $0.name == entry.variant })
            else { continue }
            resolved[index] = ResolvedOverride(entry, flag: flags[index], variant: variant)
            evaluator.setOverride(flag: index, variant: variant)
            forced.append(index)
            any = true
        }
        if any { byFlag = resolved }
    }

    /// The override of flag `index` in force at `now` (wall-clock seconds), if any. Checked here as well as by
    /// the expiry timer, so that no answer outlives an override's time even by a timer's lateness.
    @inline(__always)
    func override(at index: Int?, now: Double) -> ResolvedOverride? {
        guard let index, index < byFlag.count, let entry = byFlag[index], now < entry.expiresAt else { return nil }
        return entry
    }

    /// Answers `flags` with the overrides applied: every flag evaluated as usual, the overridden ones answered
    /// with their forced variant (and `"reason":"OVERRIDE"`). Call only when ``isActive``.
    /// - Returns: nil when `result` holds the answer, else the error to answer instead.
    func answerFlags<Observer: EvaluationObserver>(
        evaluator: RuleEvaluator, context: UnsafeRawBufferPointer, now: Double, clock: Double, observer: Observer,
        into result: inout [UInt8]
    ) -> ProtocolError? {
        let decisions: [FlagDecision]
        switch evaluator.evaluateAllFlags(context: context, now: now) {
        case .success(let all): decisions = all
        case .failure(let problem): return ProtocolError(.invalidRequest, "context: \(problem.message)")
        }
        let flags = evaluator.ruleSet.flags
        result.append(contentsOf: #"{"flags":{"#.utf8)
        for (index, flag) in flags.enumerated() {
            if index > 0 { result.append(UInt8(ascii: ",")) }
            JSONWriter.appendEscapedString(flag.key, to: &result)
            result.append(UInt8(ascii: ":"))
            if let entry = override(at: index, now: clock) {
                result.append(contentsOf: entry.flagsEntry)
                continue
            }
            observer.flagEvaluated(index: index, decision: decisions[index])
            Self.appendDecision(flag, decisions[index], to: &result)
        }
        result.append(contentsOf: "}}".utf8)
        return nil
    }

    /// `{"value","variant","reason"}` (with `error_code` and `error_message` when the rule failed), exactly as a
    /// `flags` answer without overrides spells it.
    private static func appendDecision(_ flag: FlagDefinition, _ decision: FlagDecision, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "{"))
        if decision.variantIndex >= 0 {
            out.append(contentsOf: #""value":"#.utf8)
            out.append(contentsOf: flag.variants[decision.variantIndex].json)
            out.append(contentsOf: #","variant":"#.utf8)
            JSONWriter.appendEscapedString(flag.variants[decision.variantIndex].name, to: &out)
        } else {
            out.append(contentsOf: #""value":null"#.utf8)
        }
        out.append(contentsOf: #","reason":""#.utf8)
        out.append(contentsOf: decision.reason.rawValue.utf8)
        out.append(UInt8(ascii: "\""))
        if let failure = decision.failure {
            out.append(contentsOf: #","error_code":""#.utf8)
            out.append(contentsOf: failure.code.rawValue.utf8)
            out.append(contentsOf: #"","error_message":"#.utf8)
            JSONWriter.appendEscapedString(failure.message, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// Turns an `explain` answer of an overridden flag into the override's answer, with what the rules would
    /// have answered (their trace included) as `without_override`.
    static func explainOverridden(_ entry: ResolvedOverride, explained result: inout [UInt8]) {
        var answer = entry.flagAnswer
        answer.removeLast()
        answer.append(contentsOf: #","without_override":"#.utf8)
        answer.append(contentsOf: result)
        answer.append(UInt8(ascii: "}"))
        result = answer
    }
}

extension OFREPAnswers {
    /// The OFREP answer of an overridden flag: reason `OVERRIDE`, with who set it, why and until when in its
    /// metadata (OFREP metadata holds flat values only).
    static func appendOverride(
        _ flag: FlagDefinition, _ entry: FlagOverride, variant: Int, generation: ServingGeneration,
        to out: inout [UInt8]
    ) {
        let value = flag.variants[variant]
        out.append(contentsOf: #"{"key":"#.utf8)
        JSONWriter.appendEscapedString(flag.key, to: &out)
        out.append(contentsOf: #","value":"#.utf8)
        out.append(contentsOf: value.json)
        out.append(contentsOf: #","reason":"OVERRIDE","variant":"#.utf8)
        JSONWriter.appendEscapedString(value.name, to: &out)
        let metadata: JSONValue = [
            "revision": .string(generation.shortRevision), "generation": .integer(Int64(generation.number)),
            "source": .string(flag.location.description), "override_reason": .string(entry.reason),
            "override_set_by": .string(entry.setBy.description),
            "override_expires_at": .string(Timestamp.iso8601(entry.expiresAt)),
        ]
        out.append(contentsOf: #","metadata":"#.utf8)
        out.append(contentsOf: JSONWriter.string(metadata).utf8)
        out.append(UInt8(ascii: "}"))
    }

    /// The answer for flag `key` when an override is in force for it.
    static func overridden(key: String, table: OverrideTable, generation: ServingGeneration, now: Double)
        -> OFREPResponse?
    {
        guard !table.entries.isEmpty, let index = generation.ruleSet.flagIndex(forKey: key) else { return nil }
        let flag = generation.ruleSet.flags[index]
        guard let (entry, variant) = table.resolve(flag, now: now) else { return nil }
        var body: [UInt8] = []
        appendOverride(flag, entry, variant: variant, generation: generation, to: &body)
        return OFREPResponse(status: .ok, body: body)
    }
}
