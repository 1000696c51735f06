import RuleEngine
import RuleModel

/// What replaying captured requests against two rule sets changed, per flag and for the routes.
public struct ReplayReport: Sendable, Hashable {
    /// One flag's requests, or the routed ones.
    public struct Subject: Sendable, Hashable {
        public enum Kind: Sendable, Hashable {
            case flag(String)
            case routes
        }

        public var kind: Kind
        public var replayed = 0
        /// Requests whose answer differs (variant, value, route or target, or error against answer).
        public var changed = 0
        /// Requests answered before that fail after (a rule error, a flag no longer defined).
        public var errorsIntroduced = 0
        /// Every change, most frequent first.
        public var transitions: [Transition] = []

        public init(kind: Kind) {
            self.kind = kind
        }

        /// `flag checkout.new-flow` or `routes`.
        public var name: String {
            switch kind {
            case .flag(let key): "flag \(key)"
            case .routes: "routes"
            }
        }
    }

    /// Requests whose answer went from one thing to another.
    public struct Transition: Sendable, Hashable {
        /// The old answer: a variant's name (with its value when only the value changed), `name (target)` for a
        /// route, or an error code.
        public var from: String
        public var to: String
        public var count: Int
        /// Up to ``ReplayReport/examplesPerTransition`` contexts (or requests) as JSON text, first seen first.
        public var examples: [String]

        public init(from: String, to: String, count: Int, examples: [String]) {
            self.from = from
            self.to = to
            self.count = count
            self.examples = examples
        }
    }

    public static let examplesPerTransition = 3

    /// Flags in key order, then the routes.
    public var subjects: [Subject]

    public init(subjects: [Subject]) {
        self.subjects = subjects
    }

    public var replayed: Int { subjects.reduce(0) { $0 + $1.replayed } }
    public var changed: Int { subjects.reduce(0) { $0 + $1.changed } }
    public var errorsIntroduced: Int { subjects.reduce(0) { $0 + $1.errorsIntroduced } }
    /// Whether anything changed: what decides `rulesctl diff`'s exit status.
    public var hasChanges: Bool { changed > 0 }
}

/// Replays captured requests against two rule sets, with the engine, in this process.
public enum ReplayDiff {
    /// One side's answer to one request, reduced to what a diff compares and shows.
    struct Outcome: Equatable {
        var label: String
        /// The variant's value JSON, so that a variant whose value changed counts as a change.
        var value: [UInt8]
        var isError: Bool
    }

    /// Replays every request against `old` and `new` and compares the answers.
    ///
    /// Runs on the caller's thread, which must have the stack the engine asks for (see ``ThreadStack``).
    /// - Parameters:
    ///   - requests: the captured requests.
    ///   - now: `now()` for requests captured without a time.
    /// - Returns: per flag (in key order) and for the routes, what changed.
    public static func replay(_ requests: [CapturedRequest], old: RuleEvaluator, new: RuleEvaluator, now: Double)
        -> ReplayReport
    {
        var flagOrder: [String] = []
        var flagRequests: [String: [CapturedRequest]] = [:]
        var routeRequests: [CapturedRequest] = []
        for request in requests {
            switch request.kind {
            case .flag(let key):
                if flagRequests[key] == nil { flagOrder.append(key) }
                flagRequests[key, default: []].append(request)
            case .route:
                routeRequests.append(request)
            }
        }
        var subjects: [ReplayReport.Subject] = []
        for key in flagOrder.sorted() {
            let oldIndex = old.ruleSet.flagIndex(forKey: key)
            let newIndex = new.ruleSet.flagIndex(forKey: key)
            subjects.append(
                compare(.flag(key), flagRequests[key]!) { request in
                    (
                        flagOutcome(old, oldIndex, request, now: now),
                        flagOutcome(new, newIndex, request, now: now)
                    )
                })
        }
        if !routeRequests.isEmpty {
            subjects.append(
                compare(.routes, routeRequests) { request in
                    (routeOutcome(old, request, now: now), routeOutcome(new, request, now: now))
                })
        }
        return ReplayReport(subjects: subjects)
    }

    private static func compare(
        _ kind: ReplayReport.Subject.Kind, _ requests: [CapturedRequest],
        _ answer: (CapturedRequest) -> (Outcome, Outcome)
    ) -> ReplayReport.Subject {
        var subject = ReplayReport.Subject(kind: kind)
        var order: [String] = []
        var transitions: [String: ReplayReport.Transition] = [:]
        for request in requests {
            subject.replayed += 1
            let (before, after) = answer(request)
            if before == after { continue }
            subject.changed += 1
            if after.isError && !before.isError { subject.errorsIntroduced += 1 }
            var from = before.label
            var to = after.label
            if from == to {
                // Same variant, another value: the value says what changed.
                from += " " + String(decoding: before.value, as: UTF8.self)
                to += " " + String(decoding: after.value, as: UTF8.self)
            }
            let key = from + "\u{0}" + to
            if transitions[key] == nil {
                order.append(key)
                transitions[key] = ReplayReport.Transition(from: from, to: to, count: 0, examples: [])
            }
            transitions[key]!.count += 1
            if transitions[key]!.examples.count < ReplayReport.examplesPerTransition {
                transitions[key]!.examples.append(String(decoding: request.json, as: UTF8.self))
            }
        }
        // Most frequent first; ties in the order they were first seen.
        let position = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, $0) })
        subject.transitions = order.sorted { left, right in
            let (a, b) = (transitions[left]!.count, transitions[right]!.count)
            return a != b ? a > b : position[left]! < position[right]!
        }.map { transitions[$0]! }
        return subject
    }

    private static func flagOutcome(_ evaluator: RuleEvaluator, _ index: Int?, _ request: CapturedRequest, now: Double)
        -> Outcome
    {
        guard let index else { return Outcome(label: "FLAG_NOT_FOUND", value: [], isError: true) }
        let decision = request.json.withUnsafeBytes {
            evaluator.evaluateFlag(at: index, context: $0, now: request.at ?? now)
        }
        if decision.reason == .error {
            let code = decision.failure?.code.rawValue ?? "GENERAL"
            return Outcome(label: "ERROR (\(code))", value: [], isError: true)
        }
        guard decision.variantIndex >= 0 else {
            // A flag without a default variant that no rule decided: no variant, the caller's own default.
            return Outcome(label: "(no variant)", value: Array("null".utf8), isError: false)
        }
        let variant = evaluator.ruleSet.flags[index].variants[decision.variantIndex]
        return Outcome(label: variant.name, value: variant.json, isError: false)
    }

    private static func routeOutcome(_ evaluator: RuleEvaluator, _ request: CapturedRequest, now: Double) -> Outcome {
        let decision = request.json.withUnsafeBytes { evaluator.route(request: $0, now: request.at ?? now) }
        switch decision {
        case .matched(let index, let target):
            return Outcome(label: "\(evaluator.ruleSet.routes[index].name) (\(target))", value: [], isError: false)
        case .noRoute:
            return Outcome(label: "NO_ROUTE", value: [], isError: false)
        case .failed(_, let failure):
            if failure.code == .invalidContext { return Outcome(label: "INVALID_REQUEST", value: [], isError: true) }
            return Outcome(label: "RULE_ERROR (\(failure.code.rawValue))", value: [], isError: true)
        }
    }
}

extension ReplayReport {
    /// The report for people: per flag and route, the counts, the from → to table and examples, then a total line.
    public var text: String {
        var out = ""
        for subject in subjects {
            var line = "\(subject.name): \(subject.replayed.grouped) replayed, \(subject.changed.grouped) changed"
            if subject.changed > 0 && subject.replayed > 0 {
                let share = Double(subject.changed) / Double(subject.replayed) * 100
                line += " (\((share * 10).rounded() / 10)%)"
            }
            if subject.errorsIntroduced > 0 { line += ", \(subject.errorsIntroduced.grouped) errors introduced" }
            out += line + "\n"
            let width = subject.transitions.map { "\($0.from) → \($0.to)".count }.max() ?? 0
            for transition in subject.transitions {
                let arrow = "\(transition.from) → \(transition.to)"
                out +=
                    "  " + arrow + String(repeating: " ", count: width - arrow.count) + "  "
                    + transition.count.grouped + "\n"
                for example in transition.examples { out += "      e.g. \(example)\n" }
            }
        }
        out +=
            "\(replayed.grouped) replayed, \(changed.grouped) changed, \(errorsIntroduced.grouped) errors introduced\n"
        return out
    }

    /// The report for tools.
    public var json: JSONValue {
        func subjectJSON(_ subject: Subject) -> JSONValue {
            var members: [(String, JSONValue)] = []
            switch subject.kind {
            case .flag(let key): members.append(("flag", .string(key)))
            case .routes: members.append(("routes", true))
            }
            members += [
                ("replayed", .integer(Int64(subject.replayed))), ("changed", .integer(Int64(subject.changed))),
                ("errors_introduced", .integer(Int64(subject.errorsIntroduced))),
                (
                    "transitions",
                    .array(
                        subject.transitions.map { transition in
                            [
                                "from": .string(transition.from), "to": .string(transition.to),
                                "count": .integer(Int64(transition.count)),
                                "examples": .array(
                                    transition.examples.map { (try? JSONParser().parse($0)) ?? .string($0) }),
                            ]
                        })
                ),
            ]
            return .object(JSONObject(members))
        }
        return [
            "replayed": .integer(Int64(replayed)), "changed": .integer(Int64(changed)),
            "errors_introduced": .integer(Int64(errorsIntroduced)),
            "subjects": .array(subjects.map(subjectJSON)),
        ]
    }
}

extension Int {
    /// `3,120`: thousands grouped with commas.
    fileprivate var grouped: String {
        let digits = String(magnitude)
        var out = ""
        for (offset, digit) in digits.enumerated() {
            if offset > 0 && (digits.count - offset) % 3 == 0 { out.append(",") }
            out.append(digit)
        }
        return self < 0 ? "-" + out : out
    }
}
