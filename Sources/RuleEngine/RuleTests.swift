import RuleModel

/// A rule test as declared in a rule file: `test "name" { ... }` (data only, run against the rule set) or
/// `test "name" (function() ... end)` (a function run in the candidate's Lua state, with `expect` assertions).
public struct RuleTestDefinition: Sendable, Hashable {
    public var name: String
    public var location: SourceLocation
    /// The definition table, as JSON; `null` for a function test.
    public var definition: JSONValue
    /// For a function test, its index among the tests of the rule set's Lua states; nil for a declarative test.
    public var functionIndex: Int?

    public var isFunction: Bool { functionIndex != nil }

    public init(name: String, location: SourceLocation, definition: JSONValue, functionIndex: Int? = nil) {
        self.name = name
        self.location = location
        self.definition = definition
        self.functionIndex = functionIndex
    }
}

/// The outcome of one rule test.
public struct RuleTestResult: Sendable, Hashable {
    public var test: RuleTestDefinition
    /// What was expected and what came back; nil when the test passed.
    public var failure: String?
    /// Where a function test failed (the failing assertion's `file:line`); nil for the test's own line.
    public var failureLocation: SourceLocation?

    public init(test: RuleTestDefinition, failure: String?, failureLocation: SourceLocation? = nil) {
        self.test = test
        self.failure = failure
        self.failureLocation = failureLocation
    }

    public var passed: Bool { failure == nil }

    /// The diagnostic a failing test reports at its `file:line` (a function test: the failing assertion's).
    public var diagnostic: RuleDiagnostic? {
        failure.map {
            RuleDiagnostic(location: failureLocation ?? test.location, message: "test '\(test.name)' failed: \($0)")
        }
    }
}

/// The outcome of a run of rule tests.
public struct RuleTestReport: Sendable, Hashable {
    /// Results of the tests that ran, in declaration order.
    public var results: [RuleTestResult]
    /// Tests that did not run because the run's budget ran out.
    public var notRun: Int
    /// Where the first test that did not run is declared.
    public var stoppedAt: SourceLocation?
    /// The budget of the whole run.
    public var budget: Duration

    public var passedCount: Int { results.count { $0.passed } }
    public var failedCount: Int { results.count { !$0.passed } }
    public var overBudget: Bool { notRun > 0 }
    public var allPassed: Bool { failedCount == 0 && !overBudget }

    /// One diagnostic per failing test, then one for a run over budget.
    public var diagnostics: [RuleDiagnostic] {
        var diagnostics = results.compactMap(\.diagnostic)
        if overBudget, let stoppedAt {
            diagnostics.append(
                RuleDiagnostic(
                    location: stoppedAt,
                    message:
                        "rule tests exceeded their budget of \(RuleTestRunner.describe(budget)) (test_budget) here; "
                        + "\(notRun) tests did not run"))
        }
        return diagnostics
    }
}

/// Runs rule tests in an evaluator of the candidate rule set: the answers tests see are the answers clients get.
public enum RuleTestRunner {
    /// Runs `tests` (by default the rule set's own) in `evaluator`.
    /// - Parameters:
    ///   - filter: when given, only tests whose name or file contains it run.
    ///   - budget: wall-clock time for the whole run; the test running when it ends finishes, the rest do not run.
    /// - Returns: every test's result.
    public static func run(
        _ tests: [RuleTestDefinition]? = nil, in evaluator: RuleEvaluator, filter: String? = nil,
        budget: Duration = .seconds(2)
    ) -> RuleTestReport {
        run(
            tests ?? evaluator.ruleSet.tests, answers: EvaluatorAnswers(evaluator: evaluator), filter: filter,
            budget: budget
        ) { test, deadline in
            evaluator.runFunctionTest(test, deadline: deadline)
        }
    }

    /// Runs tests against a serving daemon's answers: declarative tests ask `remote`; function tests run in
    /// `evaluator` (the Lua state of the files that declare them) with their flag(), route() and config() questions
    /// sent to `remote` (the helpers and `flag_value` still compute in `evaluator`).
    public static func run(
        _ tests: [RuleTestDefinition]? = nil, in evaluator: RuleEvaluator, remote: some RuleTestRemoteAnswers,
        filter: String? = nil, budget: Duration = .seconds(2)
    ) -> RuleTestReport {
        run(tests ?? evaluator.ruleSet.tests, answers: remote, filter: filter, budget: budget) { test, deadline in
            evaluator.runFunctionTest(test, deadline: deadline, remote: remote)
        }
    }

    private static func run(
        _ tests: [RuleTestDefinition], answers: some RuleTestAnswers, filter: String?, budget: Duration,
        function: (RuleTestDefinition, ContinuousClock.Instant) -> RuleTestResult
    ) -> RuleTestReport {
        let selected = tests.filter { test in
            guard let filter, !filter.isEmpty else { return true }
            return test.name.contains(filter) || test.location.file.contains(filter)
        }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: budget)
        var results: [RuleTestResult] = []
        for test in selected {
            if clock.now >= deadline { break }
            if test.isFunction {
                results.append(function(test, deadline))
                continue
            }
            var run = TestRun(answers: answers, deadline: deadline)
            results.append(RuleTestResult(test: test, failure: run.failure(of: test.definition)))
        }
        let stoppedAt = results.count < selected.count ? selected[results.count].location : nil
        return RuleTestReport(
            results: results, notRun: selected.count - results.count, stoppedAt: stoppedAt, budget: budget)
    }

    static func describe(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let milliseconds = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(milliseconds) ms"
    }
}

/// A flag's answer as a rule test sees it: what a client gets.
public struct RuleTestFlagAnswer: Sendable, Hashable {
    public var variant: String
    public var value: JSONValue
    /// `TARGETING_MATCH`, `DEFAULT`, `STATIC`, `DISABLED` or `ERROR`.
    public var reason: String
    /// Why the rule failed (reason `ERROR`), as `CODE: message`.
    public var failure: String?

    public init(variant: String, value: JSONValue, reason: String, failure: String? = nil) {
        self.variant = variant
        self.value = value
        self.reason = reason
        self.failure = failure
    }
}

/// A routing answer as a rule test sees it.
public enum RuleTestRouteAnswer: Sendable, Hashable {
    case matched(route: String, target: String)
    case noRoute
    /// A route's `match` or `target` function failed (the route when known).
    case failed(route: String?, message: String)
}

/// Why a rule test's question got no answer (an unknown flag or config key, an unusable context).
public struct RuleTestQueryProblem: Error, Sendable, Hashable {
    public var message: String

    public init(_ message: String) { self.message = message }
}

/// Where declarative rule tests get their answers: the candidate's own evaluator, or a serving daemon.
public protocol RuleTestAnswers {
    /// The flag's answer for a context, at a pinned time (nil: the clock's).
    func flag(_ key: String, context: JSONObject, at: Double?) -> Result<RuleTestFlagAnswer, RuleTestQueryProblem>
    /// The flag's variant names, when known (nil: unknown, or no such flag).
    func variants(ofFlag key: String) -> [String]?
    func route(_ request: JSONObject, at: Double?) -> Result<RuleTestRouteAnswer, RuleTestQueryProblem>
    func config(_ key: String) -> Result<JSONValue, RuleTestQueryProblem>
}

/// A serving daemon (`rulesctl test --live`): it answers declarative tests, and function tests' flag(), route() and
/// config() questions too, as protocol lines.
public protocol RuleTestRemoteAnswers: RuleTestAnswers, AnyObject {
    /// The answer line to one protocol request (a JSON object, no newline); nil when there is none.
    func answerLine(to request: [UInt8]) -> [UInt8]?
}

/// Answers from an evaluator of the rule set under test.
struct EvaluatorAnswers: RuleTestAnswers {
    let evaluator: RuleEvaluator

    func flag(_ key: String, context: JSONObject, at: Double?) -> Result<RuleTestFlagAnswer, RuleTestQueryProblem> {
        let ruleSet = evaluator.ruleSet
        guard let index = ruleSet.flagIndex(forKey: key) else {
            return .failure(RuleTestQueryProblem("no flag '\(key)' in the rule set"))
        }
        let bytes = Array(JSONWriter.string(.object(context)).utf8)
        let decision = bytes.withUnsafeBytes {
            evaluator.evaluateFlag(at: index, context: $0, now: at ?? RuleClock.now())
        }
        // A flag without a default variant that no rule decided has no variant and no value.
        let variant =
            decision.variantIndex >= 0
            ? ruleSet.flags[index].variants[decision.variantIndex]
            : FlagVariant(name: "", value: .null, json: Array("null".utf8))
        return .success(
            RuleTestFlagAnswer(
                variant: variant.name, value: variant.value, reason: decision.reason.rawValue,
                failure: decision.failure.map(\.description)))
    }

    func variants(ofFlag key: String) -> [String]? {
        evaluator.ruleSet.flagIndex(forKey: key).map { evaluator.ruleSet.flags[$0].variants.map(\.name) }
    }

    func route(_ request: JSONObject, at: Double?) -> Result<RuleTestRouteAnswer, RuleTestQueryProblem> {
        let bytes = Array(JSONWriter.string(.object(request)).utf8)
        let decision = bytes.withUnsafeBytes { evaluator.route(request: $0, now: at ?? RuleClock.now()) }
        let routes = evaluator.ruleSet.routes
        switch decision {
        case .matched(let index, let target): return .success(.matched(route: routes[index].name, target: target))
        case .noRoute: return .success(.noRoute)
        case .failed(let index, let failure):
            return .success(.failed(route: index.map { routes[$0].name }, message: failure.description))
        }
    }

    func config(_ key: String) -> Result<JSONValue, RuleTestQueryProblem> {
        guard let entry = evaluator.ruleSet.config(key: key) else {
            return .failure(RuleTestQueryProblem("no config '\(key)' in the rule set"))
        }
        return .success(entry.value)
    }
}

/// What the sandbox reports of one function test.
struct FunctionTestOutcome {
    var passed: Bool
    var outOfBudget: Bool
    /// The failing assertion's `file:line`.
    var location: SourceLocation?
    var message: String
}

extension RuleEvaluator {
    /// Runs a function test in this evaluator's Lua state, under the evaluation instruction budget and what is left
    /// of the tests' time until `deadline`.
    func runFunctionTest(
        _ test: RuleTestDefinition, deadline: ContinuousClock.Instant, remote: (any RuleTestRemoteAnswers)? = nil
    ) -> RuleTestResult {
        guard let index = test.functionIndex else {
            return RuleTestResult(test: test, failure: "not a function test")
        }
        let left = ContinuousClock().now.duration(to: deadline)
        let (seconds, attoseconds) = left.components
        let nanoseconds = max(seconds * 1_000_000_000 + attoseconds / 1_000_000_000, 1)
        let outcome = runTest(
            at: index, now: RuleClock.now(), timeoutNanoseconds: UInt64(nanoseconds), remote: remote)
        guard !outcome.passed else { return RuleTestResult(test: test, failure: nil) }
        let message =
            outcome.outOfBudget
            ? "the test ran out of its budget (eval_instructions, or the rule tests' test_budget): \(outcome.message)"
            : outcome.message
        return RuleTestResult(test: test, failure: message, failureLocation: outcome.location)
    }
}

/// One test's evaluation: reads the definition, asks for the answers, compares.
private struct TestRun<Answers: RuleTestAnswers> {
    let answers: Answers
    let deadline: ContinuousClock.Instant

    private static var flagFields: Set<String> {
        ["flag", "context", "at", "expect", "expect_value", "expect_reason", "sample", "expect_share"]
    }
    private static var routeFields: Set<String> { ["route", "at", "expect_route", "expect_target"] }
    private static var configFields: Set<String> { ["config", "expect_value"] }

    mutating func failure(of definition: JSONValue) -> String? {
        guard let fields = definition.objectValue else {
            return "the definition must be a table of fields (flag, route or config, and what to expect)"
        }
        if fields["flag"] != nil { return unknownField(fields, Self.flagFields) ?? flagFailure(fields) }
        if fields["route"] != nil { return unknownField(fields, Self.routeFields) ?? routeFailure(fields) }
        if fields["config"] != nil { return unknownField(fields, Self.configFields) ?? configFailure(fields) }
        return "names nothing to test: give it flag = \"KEY\", route = {request} or config = \"key\""
    }

    private func unknownField(_ fields: JSONObject, _ known: Set<String>) -> String? {
        let unknown = fields.keys.filter { !known.contains($0) }.sorted()
        guard let first = unknown.first else { return nil }
        return "unknown field '\(first)' (this kind of test takes \(known.sorted().joined(separator: ", ")))"
    }

    /// The time the test pins with `at` (nil: the clock's); `.failure` when `at` is not a time.
    private func time(_ fields: JSONObject) -> Result<Double?, RuleTestQueryProblem> {
        guard let at = fields["at"] else { return .success(nil) }
        guard let seconds = at.doubleValue else { return .failure(RuleTestQueryProblem(Self.badTime)) }
        return .success(seconds)
    }

    private static var badTime: String { "'at' must be a time in seconds since the epoch" }

    private static func object(_ value: JSONValue?) -> JSONObject? {
        switch value {
        case nil: return JSONObject()
        case .object(let object): return object
        // An empty Lua table reads as an empty array.
        case .array(let elements) where elements.isEmpty: return JSONObject()
        default: return nil
        }
    }

    private func flagFailure(_ fields: JSONObject) -> String? {
        guard let key = fields["flag"]?.stringValue else { return "'flag' must be a flag key" }
        guard let context = Self.object(fields["context"]) else { return "'context' must be a table" }
        let now: Double?
        switch time(fields) {
        case .success(let time): now = time
        case .failure(let problem): return problem.message
        }
        if fields["sample"] != nil || fields["expect_share"] != nil {
            return shareFailure(fields, flag: key, context: context, now: now)
        }
        let expectsSomething = ["expect", "expect_value", "expect_reason"].contains { fields[$0] != nil }
        guard expectsSomething else { return "expects nothing: give it expect, expect_value or expect_reason" }
        let answer: RuleTestFlagAnswer
        switch answers.flag(key, context: context, at: now) {
        case .success(let flagAnswer): answer = flagAnswer
        case .failure(let problem): return problem.message
        }
        let got =
            "variant \(quoted(answer.variant)), value \(JSONWriter.string(answer.value)), reason \(answer.reason)"
            + (answer.failure.map { " (\($0))" } ?? "")
        if let expected = fields["expect"] {
            guard let name = expected.stringValue else { return "'expect' must be a variant name" }
            if name != answer.variant { return "expected variant \(quoted(name)), got \(got)" }
        }
        if let expected = fields["expect_value"], !sameValue(expected, answer.value) {
            return "expected value \(JSONWriter.string(expected)), got \(got)"
        }
        if let expected = fields["expect_reason"] {
            guard let reason = expected.stringValue else { return "'expect_reason' must be a reason name" }
            if reason != answer.reason { return "expected reason \(reason), got \(got)" }
        }
        return nil
    }

    private func shareFailure(_ fields: JSONObject, flag: String, context: JSONObject, now: Double?) -> String? {
        guard let sample = fields["sample"]?.objectValue, let field = sample["field"]?.stringValue,
            let count = sample["count"]?.intValue, count > 0, count <= 1_000_000
        else { return "'sample' must be {field = \"name\", count = 1..1000000}" }
        guard let shares = fields["expect_share"]?.objectValue, !shares.isEmpty else {
            return "a sample needs expect_share = {variant = {low, high}, ...}"
        }
        let prefix = sample["prefix"]?.stringValue ?? "\(field)-"
        let variants = answers.variants(ofFlag: flag)
        var counts: [String: Int] = [:]
        for name in variants ?? [] { counts[name] = 0 }
        let clock = ContinuousClock()
        for number in 1...count {
            if number % 256 == 0, clock.now >= deadline {
                return "ran out of the rule tests' budget after \(number - 1) of \(count) sampled contexts"
            }
            var sampled = context
            sampled[field] = .string(prefix + String(number))
            switch answers.flag(flag, context: sampled, at: now) {
            case .failure(let problem): return problem.message
            case .success(let answer):
                if let failure = answer.failure {
                    return "the rule failed for \(field) = \(quoted(prefix + String(number))): \(failure)"
                }
                counts[answer.variant, default: 0] += 1
            }
        }
        let measured = (variants ?? counts.keys.sorted()).map {
            "\($0) \(format(Double(counts[$0] ?? 0) / Double(count)))"
        }.joined(separator: ", ")
        for (name, range) in shares.sorted(by: { $0.key < $1.key }) {
            guard let bounds = range.arrayValue, bounds.count == 2, let low = bounds[0].doubleValue,
                let high = bounds[1].doubleValue
            else { return "expect_share.\(name) must be {low, high}" }
            if let variants, !variants.contains(name) {
                return "expect_share names no variant of '\(flag)': \(name)"
            }
            let share = Double(counts[name] ?? 0) / Double(count)
            if share < low || share > high {
                return "expected a share of \(name) in [\(format(low)), \(format(high))] over \(count) \(field)s, "
                    + "got \(measured)"
            }
        }
        return nil
    }

    private func routeFailure(_ fields: JSONObject) -> String? {
        guard let request = Self.object(fields["route"]) else { return "'route' must be a request table" }
        guard fields["expect_route"] != nil || fields["expect_target"] != nil else {
            return "expects nothing: give it expect_route or expect_target"
        }
        let now: Double?
        switch time(fields) {
        case .success(let time): now = time
        case .failure(let problem): return problem.message
        }
        let routeName: String?
        let target: String?
        let got: String
        switch answers.route(request, at: now) {
        case .failure(let problem): return problem.message
        case .success(.matched(let route, let matched)):
            routeName = route
            target = matched
            got = "route \(quoted(route)), target \(quoted(matched))"
        case .success(.noRoute):
            routeName = nil
            target = nil
            got = "no route"
        case .success(.failed(let route, let failure)):
            return "expected an answer, got an error" + (route.map { " in route \(quoted($0))" } ?? "")
                + ": \(failure)"
        }
        if let expected = fields["expect_route"] {
            // expect_route = false: no route may match.
            if expected == .bool(false) {
                if routeName != nil { return "expected no route, got \(got)" }
            } else if let name = expected.stringValue {
                if name != routeName { return "expected route \(quoted(name)), got \(got)" }
            } else {
                return "'expect_route' must be a route name, or false for no route"
            }
        }
        if let expected = fields["expect_target"] {
            guard let name = expected.stringValue else { return "'expect_target' must be a string" }
            if name != target { return "expected target \(quoted(name)), got \(got)" }
        }
        return nil
    }

    private func configFailure(_ fields: JSONObject) -> String? {
        guard let key = fields["config"]?.stringValue else { return "'config' must be a config key" }
        guard let expected = fields["expect_value"] else { return "expects nothing: give it expect_value" }
        switch answers.config(key) {
        case .failure(let problem): return problem.message
        case .success(let value):
            if !sameValue(expected, value) {
                return "expected value \(JSONWriter.string(expected)), got \(JSONWriter.string(value))"
            }
            return nil
        }
    }

    private func quoted(_ text: String) -> String { JSONWriter.string(.string(text)) }

    private func format(_ share: Double) -> String {
        let rounded = (share * 10000).rounded() / 10000
        return String(rounded)
    }
}

/// JSON equality where 1 and 1.0 are the same number, and an empty table is both an empty array and an empty
/// object (Lua cannot tell them apart).
func sameValue(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.integer, .number), (.number, .integer), (.number, .number): return a.doubleValue == b.doubleValue
    case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { sameValue($0, $1) }
    case (.object(let x), .object(let y)):
        return x.count == y.count && x.allSatisfy { key, value in y[key].map { sameValue(value, $0) } ?? false }
    case (.array(let x), .object(let y)), (.object(let y), .array(let x)): return x.isEmpty && y.isEmpty
    default: return a == b
    }
}
