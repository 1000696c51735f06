import RuleModel

/// A rule test as declared with `test "name" { ... }` in a rule file: data only, run against the rule set.
public struct RuleTestDefinition: Sendable, Hashable {
    public var name: String
    public var location: SourceLocation
    /// The definition table, as JSON.
    public var definition: JSONValue

    public init(name: String, location: SourceLocation, definition: JSONValue) {
        self.name = name
        self.location = location
        self.definition = definition
    }
}

/// The outcome of one rule test.
public struct RuleTestResult: Sendable, Hashable {
    public var test: RuleTestDefinition
    /// What was expected and what came back; nil when the test passed.
    public var failure: String?

    public var passed: Bool { failure == nil }

    /// The diagnostic a failing test reports at its `file:line`.
    public var diagnostic: RuleDiagnostic? {
        failure.map { RuleDiagnostic(location: test.location, message: "test '\(test.name)' failed: \($0)") }
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
        let selected = (tests ?? evaluator.ruleSet.tests).filter { test in
            guard let filter, !filter.isEmpty else { return true }
            return test.name.contains(filter) || test.location.file.contains(filter)
        }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: budget)
        var results: [RuleTestResult] = []
        for test in selected {
            if clock.now >= deadline { break }
            var run = TestRun(evaluator: evaluator, deadline: deadline)
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

/// One test's evaluation: reads the definition, asks the evaluator, compares.
private struct TestRun {
    let evaluator: RuleEvaluator
    let deadline: ContinuousClock.Instant

    private static let flagFields: Set<String> = [
        "flag", "context", "at", "expect", "expect_value", "expect_reason", "sample", "expect_share",
    ]
    private static let routeFields: Set<String> = ["route", "at", "expect_route", "expect_target"]
    private static let configFields: Set<String> = ["config", "expect_value"]

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

    /// The time the test pins with `at`, else the clock's; nil when `at` is not a time.
    private func time(_ fields: JSONObject) -> Double? {
        guard let at = fields["at"] else { return RuleClock.now() }
        return at.doubleValue
    }

    private static let badTime = "'at' must be a time in seconds since the epoch"

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
        let ruleSet = evaluator.ruleSet
        guard let index = ruleSet.flagIndex(forKey: key) else { return "no flag '\(key)' in the rule set" }
        guard let context = Self.object(fields["context"]) else { return "'context' must be a table" }
        guard let now = time(fields) else { return Self.badTime }
        if fields["sample"] != nil || fields["expect_share"] != nil {
            return shareFailure(fields, flag: index, context: context, now: now)
        }
        let expectsSomething = ["expect", "expect_value", "expect_reason"].contains { fields[$0] != nil }
        guard expectsSomething else { return "expects nothing: give it expect, expect_value or expect_reason" }
        let bytes = Array(JSONWriter.string(.object(context)).utf8)
        let decision = bytes.withUnsafeBytes { evaluator.evaluateFlag(at: index, context: $0, now: now) }
        let flag = ruleSet.flags[index]
        let variant =
            decision.variantIndex >= 0
            ? flag.variants[decision.variantIndex] : FlagVariant(name: "", value: .null, json: Array("null".utf8))
        let got =
            "variant \(quoted(variant.name)), value \(JSONWriter.string(variant.value)), reason \(decision.reason.rawValue)"
            + (decision.failure.map { " (\($0))" } ?? "")
        if let expected = fields["expect"] {
            guard let name = expected.stringValue else { return "'expect' must be a variant name" }
            if name != variant.name { return "expected variant \(quoted(name)), got \(got)" }
        }
        if let expected = fields["expect_value"], !sameValue(expected, variant.value) {
            return "expected value \(JSONWriter.string(expected)), got \(got)"
        }
        if let expected = fields["expect_reason"] {
            guard let reason = expected.stringValue else { return "'expect_reason' must be a reason name" }
            if reason != decision.reason.rawValue { return "expected reason \(reason), got \(got)" }
        }
        return nil
    }

    private func shareFailure(_ fields: JSONObject, flag: Int, context: JSONObject, now: Double) -> String? {
        guard let sample = fields["sample"]?.objectValue, let field = sample["field"]?.stringValue,
            let count = sample["count"]?.intValue, count > 0, count <= 1_000_000
        else { return "'sample' must be {field = \"name\", count = 1..1000000}" }
        guard let shares = fields["expect_share"]?.objectValue, !shares.isEmpty else {
            return "a sample needs expect_share = {variant = {low, high}, ...}"
        }
        let prefix = sample["prefix"]?.stringValue ?? "\(field)-"
        let flagDefinition = evaluator.ruleSet.flags[flag]
        var counts = [Int](repeating: 0, count: flagDefinition.variants.count)
        let clock = ContinuousClock()
        for number in 1...count {
            if number % 256 == 0, clock.now >= deadline {
                return "ran out of the rule tests' budget after \(number - 1) of \(count) sampled contexts"
            }
            var sampled = context
            sampled[field] = .string(prefix + String(number))
            let bytes = Array(JSONWriter.string(.object(sampled)).utf8)
            let decision = bytes.withUnsafeBytes { evaluator.evaluateFlag(at: flag, context: $0, now: now) }
            if let failure = decision.failure {
                return "the rule failed for \(field) = \(quoted(prefix + String(number))): \(failure)"
            }
            if decision.variantIndex >= 0 { counts[decision.variantIndex] += 1 }
        }
        let measured = flagDefinition.variants.indices.map {
            "\(flagDefinition.variants[$0].name) \(format(Double(counts[$0]) / Double(count)))"
        }.joined(separator: ", ")
        for (name, range) in shares.sorted(by: { $0.key < $1.key }) {
            guard let bounds = range.arrayValue, bounds.count == 2, let low = bounds[0].doubleValue,
                let high = bounds[1].doubleValue
            else { return "expect_share.\(name) must be {low, high}" }
            guard let variant = flagDefinition.variants.firstIndex(where: { $0.name == name }) else {
                return "expect_share names no variant of '\(flagDefinition.key)': \(name)"
            }
            let share = Double(counts[variant]) / Double(count)
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
        guard let now = time(fields) else { return Self.badTime }
        let bytes = Array(JSONWriter.string(.object(request)).utf8)
        let decision = bytes.withUnsafeBytes { evaluator.route(request: $0, now: now) }
        let routes = evaluator.ruleSet.routes
        let routeName: String?
        let target: String?
        let got: String
        switch decision {
        case .matched(let index, let matched):
            routeName = routes[index].name
            target = matched
            got = "route \(quoted(routes[index].name)), target \(quoted(matched))"
        case .noRoute:
            routeName = nil
            target = nil
            got = "no route"
        case .failed(let index, let failure):
            return "expected an answer, got an error" + (index.map { " in route \(quoted(routes[$0].name))" } ?? "")
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
        guard let entry = evaluator.ruleSet.config(key: key) else { return "no config '\(key)' in the rule set" }
        if !sameValue(expected, entry.value) {
            return "expected value \(JSONWriter.string(expected)), got \(JSONWriter.string(entry.value))"
        }
        return nil
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
