import RuleEngine
import RuleModel
import Testing

/// A small rule set the tests below test: a rollout flag, a disabled flag, a time-gated flag, two routes, a config.
private let checkoutRules = """
    flag "new-checkout" {
      variants = { on = true, off = false },
      default = "off",
      rule = function(ctx)
        if ctx.country == "DE" then return "on" end
        return rollout(ctx.user_id, 20) and "on" or "off"
      end,
    }
    flag "legacy" { variants = { on = true, off = false }, default = "off", enabled = false }
    flag "sale" {
      variants = { on = true, off = false },
      default = "off",
      rule = function(ctx) if now() >= 1800000000 then return "on" end end,
    }
    route "api" { priority = 10, match = function(req) return starts_with(req.path, "/api/") end, target = "api-pool" }
    route "web" { target = "web-pool" }
    config "http.timeout_ms" (1500)
    """

/// Compiles the checkout rules plus `tests` in a file of their own, with or without the tests gating the load.
private func compileWithTests(_ tests: String, runTests: Bool = true, limits: RuleEngineLimits = RuleEngineLimits())
    throws(RuleLoadFailure) -> (ruleSet: RuleSet, evaluator: RuleEvaluator)
{
    try RuleCompiler.compile(
        sources(["flags/checkout.lua": checkoutRules, "flags/checkout_test.lua": tests]), limits: limits,
        runTests: runTests)
}

/// The diagnostics a load failed with; fails the test when it loaded.
private func failure(_ tests: String) -> [RuleDiagnostic] {
    do {
        _ = try compileWithTests(tests)
        Issue.record("the rule set loaded although a test should fail")
        return []
    } catch {
        return error.diagnostics
    }
}

@Suite("Rule tests")
struct RuleTestTests {
    @Test("passing tests of every declarative kind let the rule set load")
    func passingSuiteLoads() throws {
        let (ruleSet, _) = try compileWithTests(
            """
            test "germany gets the new checkout" { flag = "new-checkout", context = { country = "DE" }, expect = "on" }
            test "value and reason" {
              flag = "new-checkout", context = { country = "DE" }, expect_value = true, expect_reason = "TARGETING_MATCH"
            }
            test "legacy is off" { flag = "legacy", expect = "off", expect_reason = "DISABLED" }
            test "sale starts later" { flag = "sale", at = 1700000000, expect = "off", expect_reason = "DEFAULT" }
            test "sale is on" { flag = "sale", at = 1800000000, expect = "on" }
            test "api route" { route = { path = "/api/users" }, expect_route = "api", expect_target = "api-pool" }
            test "web route" { route = { path = "/" }, expect_route = "web" }
            test "timeout" { config = "http.timeout_ms", expect_value = 1500 }
            test "rollout share" {
              flag = "new-checkout", sample = { field = "user_id", count = 2000 },
              expect_share = { on = { 0.15, 0.25 } },
            }
            """)
        #expect(ruleSet.tests.count == 9)
        #expect(ruleSet.tests[0].name == "germany gets the new checkout")
        #expect(ruleSet.tests[0].location == SourceLocation(file: "flags/checkout_test.lua", line: 1))
    }

    @Test("tests are not flags: they never appear among the rule set's flags or in all-flag answers")
    func testsAreNotFlags() throws {
        let (ruleSet, evaluator) = try compileWithTests(
            #"test "new-checkout" { flag = "new-checkout", context = { country = "DE" }, expect = "on" }"#)
        #expect(ruleSet.flags.map(\.key) == ["legacy", "new-checkout", "sale"])
        let all = try evaluator.evaluateAllFlags(context: ["country": "DE"], now: pinnedNow).get()
        #expect(all.count == 3)
    }

    @Test("a failing flag test rejects the rule set at the test's file:line with what was expected and what came back")
    func failingFlagTest() {
        let diagnostics = failure(
            """
            -- the rollout must not reach Germany by default
            test "germany is off" { flag = "new-checkout", context = { country = "DE" }, expect = "off" }
            """)
        #expect(diagnostics.count == 1)
        #expect(diagnostics.first?.location == SourceLocation(file: "flags/checkout_test.lua", line: 2))
        #expect(
            diagnostics.first?.message
                == #"test 'germany is off' failed: expected variant "off", got variant "on", value true, "#
                + "reason TARGETING_MATCH")
    }

    @Test("expect_value and expect_reason failures say what came back")
    func valueAndReasonFailures() {
        let value = failure(#"test "v" { flag = "legacy", expect_value = true }"#)
        #expect(value.first?.message.contains("expected value true, got variant \"off\", value false") == true)
        let reason = failure(#"test "r" { flag = "legacy", expect_reason = "DEFAULT" }"#)
        #expect(reason.first?.message.contains("expected reason DEFAULT, got") == true)
        #expect(reason.first?.message.contains("reason DISABLED") == true)
    }

    @Test("route and config tests compare the route name, the target and the value")
    func routeAndConfigFailures() {
        let route = failure(#"test "r" { route = { path = "/api/x" }, expect_route = "web" }"#)
        #expect(route.first?.message == #"test 'r' failed: expected route "web", got route "api", target "api-pool""#)
        let target = failure(#"test "t" { route = { path = "/" }, expect_target = "api-pool" }"#)
        #expect(target.first?.message.contains(#"expected target "api-pool", got route "web""#) == true)
        let config = failure(#"test "c" { config = "http.timeout_ms", expect_value = 2000 }"#)
        #expect(config.first?.message == "test 'c' failed: expected value 2000, got 1500")
    }

    @Test("a share test fails when the rollout's share is outside the expected range, giving the measured shares")
    func shareFailure() {
        let diagnostics = failure(
            """
            test "half" {
              flag = "new-checkout", sample = { field = "user_id", count = 1000 }, expect_share = { on = { 0.45, 0.55 } },
            }
            """)
        #expect(diagnostics.count == 1)
        let message = diagnostics.first?.message ?? ""
        #expect(message.hasPrefix("test 'half' failed: expected a share of on in [0.45, 0.55] over 1000 user_ids, got"))
    }

    @Test("every failing test is reported, each at its own line")
    func everyFailureReported() {
        let diagnostics = failure(
            """
            test "a" { flag = "legacy", expect = "on" }
            test "b" { flag = "legacy", expect = "off" }
            test "c" { flag = "missing", expect = "on" }
            """)
        #expect(diagnostics.map(\.location.line) == [1, 3])
        #expect(diagnostics.last?.message == "test 'c' failed: no flag 'missing' in the rule set")
    }

    @Test("a malformed test fails with a message that names the problem")
    func malformedTests() {
        #expect(failure(#"test "x" { flag = "legacy" }"#).first?.message.contains("expects nothing") == true)
        #expect(
            failure(#"test "x" { flag = "legacy", expct = "on" }"#).first?.message.contains("unknown field 'expct'")
                == true)
        #expect(failure(#"test "x" { expect = "on" }"#).first?.message.contains("names nothing to test") == true)
    }

    @Test("a test declared without a table fails the load at its line")
    func testWithoutTable() {
        let diagnostics = failure("\n" + #"test "x" ("on")"#)
        #expect(diagnostics.first?.location == SourceLocation(file: "flags/checkout_test.lua", line: 2))
        #expect(diagnostics.first?.message.contains("test 'x' needs a definition table") == true)
    }

    @Test("runTests: false loads a rule set whose tests fail, and the runner then reports them")
    func skippedThenRun() throws {
        let (ruleSet, evaluator) = try compileWithTests(
            """
            test "wrong" { flag = "legacy", expect = "on" }
            test "right" { flag = "legacy", expect = "off" }
            """, runTests: false)
        #expect(ruleSet.tests.count == 2)
        let report = RuleTestRunner.run(in: evaluator)
        #expect(report.passedCount == 1)
        #expect(report.failedCount == 1)
        let filtered = RuleTestRunner.run(in: evaluator, filter: "righ")
        #expect(filtered.results.map(\.test.name) == ["right"])
        #expect(filtered.allPassed)
    }

    @Test("a suite over its budget fails the load with a message that says so")
    func overBudget() {
        var limits = RuleEngineLimits()
        // No budget at all: the first test's sample stops at once, whatever the machine's speed.
        limits.testBudget = .zero
        do {
            _ = try compileWithTests(
                """
                test "a" { flag = "legacy", expect = "off" }
                test "b" { flag = "legacy", expect = "off" }
                """, limits: limits)
            Issue.record("the rule set loaded although its tests had no budget")
        } catch {
            #expect(error.cause == .resourceLimit)
            #expect(error.diagnostics.count == 1)
            #expect(
                error.diagnostics.first?.message.contains("rule tests exceeded their budget of 0 s (test_budget)")
                    == true)
            #expect(error.diagnostics.first?.message.contains("2 tests did not run") == true)
        }
    }
}
