import RuleEngine
import RuleModel
import Testing

/// One flagd conformance vector: the flag, the context, and what flagd answers.
struct FlagdVector: Sendable, CustomTestStringConvertible {
    var id: Int
    var flag: String
    var context: JSONValue
    var variant: String
    var reason: EvaluationReason

    var testDescription: String { "case \(id): \(flag) \(context)" }
}

/// flagd-testbed's cases for string, semver and "v2" fractional evaluation (ids as in shared/flagd/cases.json).
let flagdVectors: [FlagdVector] = [
    FlagdVector(
        id: 19, flag: "starts-ends-flag", context: ["id": "abcxyz"], variant: "prefix", reason: .targetingMatch),
    FlagdVector(
        id: 20, flag: "starts-ends-flag", context: ["id": "uvwxyz"], variant: "postfix", reason: .targetingMatch),
    FlagdVector(
        id: 22, flag: "equal-greater-lesser-version-flag", context: ["version": "2.0.0-alpha"], variant: "lesser",
        reason: .targetingMatch),
    FlagdVector(
        id: 23, flag: "major-minor-version-flag", context: ["version": "3.0.1"], variant: "minor",
        reason: .targetingMatch),
    FlagdVector(
        id: 24, flag: "major-minor-version-flag", context: ["version": "3.1.0"], variant: "major",
        reason: .targetingMatch),
    FlagdVector(
        id: 25, flag: "semver-partial-version-flag", context: ["version": 1], variant: "match",
        reason: .targetingMatch),
    FlagdVector(
        id: 26, flag: "semver-invalid-version-flag", context: ["version": "not-a-version"], variant: "fallback",
        reason: .defaultValue),
    FlagdVector(
        id: 27, flag: "fractional-single-entry-flag", context: ["targetingKey": "some-targeting-key"],
        variant: "single", reason: .targetingMatch),
    FlagdVector(
        id: 28, flag: "fractional-negative-weight-flag", context: ["targetingKey": "any-user"], variant: "two",
        reason: .targetingMatch),
    FlagdVector(
        id: 29, flag: "fractional-null-bucket-key-flag", context: [:], variant: "fallback", reason: .defaultValue),
    FlagdVector(
        id: 30, flag: "fractional-nested-weight-flag", context: ["targetingKey": "jon@company.com", "tier": "basic"],
        variant: "blue", reason: .targetingMatch),
    FlagdVector(
        id: 31, flag: "fractional-flag", context: ["user": ["name": "jack"]], variant: "hearts",
        reason: .targetingMatch),
    FlagdVector(
        id: 31, flag: "fractional-flag-explicit", context: ["user": ["name": "jack"]], variant: "hearts",
        reason: .targetingMatch),
    FlagdVector(
        id: 32, flag: "fractional-flag-A-shared-seed", context: ["user": ["name": "nine"]], variant: "clubs",
        reason: .targetingMatch),
    FlagdVector(
        id: 33, flag: "fractional-flag-shorthand", context: ["targetingKey": "jon@company.com"], variant: "heads",
        reason: .targetingMatch),
    FlagdVector(
        id: 34, flag: "fractional-hash-edge-flag", context: ["targetingKey": "6LvT0"], variant: "upper",
        reason: .targetingMatch),
    FlagdVector(
        id: 35, flag: "fractional-hash-edge-flag", context: ["targetingKey": "SI7p-"], variant: "lower",
        reason: .targetingMatch),
    FlagdVector(
        id: 40, flag: "fractional-flag-shorthand", context: ["targetingKey": 12345], variant: "draw",
        reason: .defaultValue),
]

@Suite("flagd conformance")
struct FlagdConformanceTests {
    let rules: LoadedRules

    init() throws {
        let text = try #require(readBytes(fixturesDirectory + "/flagd/conformance.lua"))
        let (ruleSet, evaluator) = try RuleCompiler.compile([RuleSource(path: "flagd/conformance.lua", content: text)])
        rules = LoadedRules(ruleSet: ruleSet, evaluator: evaluator)
    }

    @Test("each flagd vector gives flagd's variant and reason", arguments: flagdVectors)
    func vector(_ vector: FlagdVector) throws {
        let answer = try rules.flag(vector.flag, vector.context)
        #expect(answer.variant == vector.variant, "\(answer)")
        #expect(answer.value == .string(vector.variant))
        #expect(answer.reason == vector.reason)
    }
}

@Suite("Helpers")
struct HelperTests {
    /// Evaluates `expression` inside a rule (with ctx bound) and returns what the rule logged for it.
    func evaluate(_ expression: String, context: JSONValue = [:], key: String = "probe") throws -> String {
        let rules = try compile([
            "h.lua": """
            flag "\(key)" {
              rule = function(ctx)
                log(tostring(\(expression)))
              end,
            }
            """
        ])
        let answer = try rules.flag(key, context)
        #expect(answer.reason == .defaultValue, "\(answer.message ?? "")")
        return rules.logs().first ?? "(nothing logged)"
    }

    /// Evaluates `expression` inside a rule and returns the failure message.
    func failure(_ expression: String) throws -> String {
        let rules = try compile(["h.lua": "flag \"probe\" { rule = function(ctx) local _ = \(expression) end }"])
        let answer = try rules.flag("probe")
        #expect(answer.code == .general)
        return answer.message ?? ""
    }

    @Test("split picks the same bucket for the same unit, and the flag key is the default seed")
    func splitIsStable() throws {
        let buckets = #"{ { "a", 50 }, { "b", 50 } }"#
        #expect(try evaluate("split('unit-7', \(buckets)) == split('unit-7', \(buckets))") == "true")
        #expect(
            try evaluate("split('unit-7', \(buckets)) == split('unit-7', \(buckets), 'probe')", key: "probe") == "true")
    }

    @Test("split spreads units over buckets in proportion to their weights")
    func splitProportions() throws {
        let rules = try compile([
            "h.lua": """
            flag "p" {
              rule = function(ctx)
                local counts = { a = 0, b = 0, c = 0 }
                for i = 1, 2000 do
                  local v = split("user-" .. i, { { "a", 10 }, { "b", 30 }, { "c", 60 } }, "seed")
                  counts[v] = counts[v] + 1
                end
                log(counts.a .. " " .. counts.b .. " " .. counts.c)
              end,
            }
            """
        ])
        _ = try rules.flag("p")
        let counts = try #require(rules.logs().first).split(separator: " ").compactMap { Int($0) }
        #expect(counts.count == 3)
        #expect((120...280).contains(counts[0]))
        #expect((480...720).contains(counts[1]))
        #expect((1050...1350).contains(counts[2]))
    }

    @Test("split returns nil for a missing or non-string unit, and errors on a malformed bucket list")
    func splitEdges() throws {
        #expect(try evaluate("split(ctx.missing, { { 'a', 1 } })") == "nil")
        #expect(try evaluate("split(42, { { 'a', 1 } })") == "nil")
        #expect(try evaluate("split('u', { { 'a', 0 } })") == "nil")
        #expect(try failure("split('u', { { 'a', 1.5 } })").contains("weight must be an integer"))
        #expect(try failure("split('u', { 'a' })").contains("must be a table"))
        #expect(try failure("split('u', { { 'a', 1 } }, 7)").contains("seed must be a string"))
    }

    @Test("rollout(unit, percent) agrees with split over {true, p} and {false, 100 - p}")
    func rolloutMatchesSplit() throws {
        let rules = try compile([
            "h.lua": """
            flag "r" {
              rule = function(ctx)
                local disagreements, on = 0, 0
                for i = 1, 500 do
                  local unit = "u" .. i
                  local a = rollout(unit, 30)
                  local b = split(unit, { { true, 30 }, { false, 70 } })
                  if a ~= b then disagreements = disagreements + 1 end
                  if a then on = on + 1 end
                end
                log(disagreements .. " " .. on)
              end,
            }
            """
        ])
        _ = try rules.flag("r")
        let parts = try #require(rules.logs().first).split(separator: " ").compactMap { Int($0) }
        #expect(parts.first == 0)
        #expect((100...200).contains(parts.last ?? -1))
    }

    @Test("rollout at 0 and 100 percent is never and always, and nil for a missing unit")
    func rolloutEdges() throws {
        #expect(try evaluate("rollout('x', 0)") == "false")
        #expect(try evaluate("rollout('x', 100)") == "true")
        #expect(try evaluate("rollout(ctx.nobody, 50)") == "nil")
        #expect(try failure("rollout('x', 0/0)").contains("NaN"))
    }

    @Test("semver.compare orders versions by SemVer precedence")
    func semverCompare() throws {
        #expect(try evaluate("semver.compare('1.2.3', '1.2.4')") == "-1")
        #expect(try evaluate("semver.compare('1.10.0', '1.9.9')") == "1")
        #expect(try evaluate("semver.compare('2.0.0-alpha', '2.0.0')") == "-1")
        #expect(try evaluate("semver.compare('1.0.0-alpha.10', '1.0.0-alpha.9')") == "1")
        #expect(try evaluate("semver.compare('1.0.0+build.5', '1.0.0')") == "0")
        #expect(try evaluate("semver.compare('v1.2', '1.2.0')") == "0")
        #expect(try evaluate("semver.compare('01.2.3', '1.2.3')") == "nil")
    }

    @Test("semver.match supports = != < <= > >= ^ ~")
    func semverOperators() throws {
        let cases: [(String, String)] = [
            ("semver.match('1.2.3', '=', '1.2.3')", "true"), ("semver.match('1.2.3', '!=', '1.2.3')", "false"),
            ("semver.match('1.2.3', '<', '1.3.0')", "true"), ("semver.match('1.3.0', '<=', '1.3.0')", "true"),
            ("semver.match('2.0.0', '>', '1.99.99')", "true"), ("semver.match('1.0.0', '>=', '1.0.1')", "false"),
            ("semver.match('1.9.0', '^', '1.0.0')", "true"), ("semver.match('2.0.0', '^', '1.0.0')", "false"),
            ("semver.match('1.2.9', '~', '1.2.0')", "true"), ("semver.match('1.3.0', '~', '1.2.0')", "false"),
            ("semver.match('garbage', '=', '1.0.0')", "false"),
        ]
        for (expression, expected) in cases {
            #expect(try evaluate(expression) == expected, "\(expression)")
        }
        #expect(try failure("semver.match('1.0.0', '=>', '1.0.0')").contains("unknown operator"))
        #expect(try failure("semver.match('1.0.0', '=', 'x.y')").contains("invalid reference version"))
    }

    @Test("ip.in_cidr checks IPv4 and IPv6 addresses against CIDRs and lists of them")
    func ipInCidr() throws {
        let cases: [(String, String)] = [
            ("ip.in_cidr('10.1.2.3', '10.0.0.0/8')", "true"), ("ip.in_cidr('11.1.2.3', '10.0.0.0/8')", "false"),
            ("ip.in_cidr('192.168.1.77', '192.168.1.64/26')", "true"),
            ("ip.in_cidr('192.168.1.128', '192.168.1.64/26')", "false"),
            ("ip.in_cidr('2001:db8::1', '2001:db8::/32')", "true"),
            ("ip.in_cidr('2001:db9::1', '2001:db8::/32')", "false"),
            ("ip.in_cidr('::ffff:10.0.0.1', '10.0.0.0/8')", "true"),
            ("ip.in_cidr('10.0.0.1', '::/0')", "false"),
            ("ip.in_cidr('172.16.0.1', { '10.0.0.0/8', '172.16.0.0/12' })", "true"),
            ("ip.in_cidr('not an address', '10.0.0.0/8')", "false"), ("ip.in_cidr(nil, '10.0.0.0/8')", "false"),
        ]
        for (expression, expected) in cases {
            #expect(try evaluate(expression) == expected, "\(expression)")
        }
        #expect(try failure("ip.in_cidr('10.0.0.1', '10.0.0.0/33')").contains("invalid prefix length"))
        #expect(try failure("ip.in_cidr('10.0.0.1', 'nonsense')").contains("invalid address"))
    }

    @Test("starts_with and ends_with test affixes, and answer false for non-strings")
    func affixes() throws {
        #expect(try evaluate("starts_with('checkout-v2', 'checkout')") == "true")
        #expect(try evaluate("starts_with('check', 'checkout')") == "false")
        #expect(try evaluate("ends_with('a.example.com', '.example.com')") == "true")
        #expect(try evaluate("ends_with('example.org', '.com')") == "false")
        #expect(try evaluate("starts_with(123, '1')") == "false")
        #expect(try evaluate("ends_with('anything', '')") == "true")
        #expect(try failure("starts_with('x', 5)").contains("prefix must be a string"))
    }

    @Test("helper tables cannot be changed by rules")
    func helpersFrozen() throws {
        #expect(try failure("(function() semver.compare = nil end)()").contains("read-only"))
        #expect(try failure("(function() ip.extra = 1 end)()").contains("read-only"))
    }
}
