import RuleEngine
import RuleModel
import Testing

/// Rules the function tests below query: a rollout flag, a disabled flag, a failing flag, two routes, two configs.
private let rules = """
    flag "new-checkout" {
      variants = { on = true, off = false },
      default = "off",
      rule = function(ctx)
        if ctx.country == "DE" then return "on" end
        return rollout(ctx.user_id, 20) and "on" or "off"
      end,
    }
    flag "legacy" { variants = { on = true, off = false }, default = "off", enabled = false }
    flag "broken" { rule = function(ctx) error("no way") end }
    flag "sale" { rule = function(ctx) if now() >= 1800000000 then return "on" end end }
    flag "theme" { variants = { dark = { bg = "#000", sizes = { 1, 2 } }, light = { bg = "#fff" } }, default = "light" }
    route "api" { priority = 10, match = function(req) return starts_with(req.path, "/api/") end, target = "api-pool" }
    route "web" { match = function(req) return req.path == "/" end, target = function(req) return "web-" .. req.host end }
    config "http.timeout_ms" (1500)
    config "http.retry" { attempts = 3, backoff = { 0.1, 0.5 } }
    """

private func compile(_ tests: String, runTests: Bool = true, limits: RuleEngineLimits = RuleEngineLimits())
    throws(RuleLoadFailure) -> (ruleSet: RuleSet, evaluator: RuleEvaluator)
{
    try RuleCompiler.compile(
        sources(["flags/checkout.lua": rules, "flags/checkout_test.lua": tests]), limits: limits, runTests: runTests)
}

/// The one result of running `tests` (one function test) without letting it gate the load.
private func onlyResult(_ tests: String) throws -> RuleTestResult {
    let (_, evaluator) = try compile(tests, runTests: false)
    let report = RuleTestRunner.run(in: evaluator)
    try #require(report.results.count == 1)
    return report.results[0]
}

@Suite("Function rule tests")
struct FunctionTestTests {
    @Test("a passing function test queries flags, routes and configs and lets the rule set load")
    func passingFunctionTest() throws {
        let (ruleSet, _) = try compile(
            """
            test "checkout and routing agree" (function()
              local de = flag("new-checkout", { country = "DE" })
              expect(de.variant).to_be("on")
              expect(de.value).to_be(true)
              expect(de.reason).to_be("TARGETING_MATCH")
              expect(flag("legacy").reason).to_be("DISABLED")
              expect(flag("broken").reason).to_be("ERROR")
              expect(flag("broken").error).to_contain("no way")
              expect(flag("sale", {}, 1800000000).variant).to_be("on")
              expect(flag("sale", {}, 1700000000).reason).to_be("DEFAULT")
              expect(flag("theme").value).to_equal({ bg = "#fff" })
              expect(route({ path = "/api/users" })).to_equal({ name = "api", target = "api-pool" })
              expect(route({ path = "/", host = "eu" }).target).to_be("web-eu")
              expect(route({ path = "/nowhere" })).to_be_nil()
              expect(config("http.timeout_ms")).to_be(1500)
              expect(config("http.retry")).to_equal({ attempts = 3, backoff = { 0.1, 0.5 } })
              expect(config("http.retry").backoff).to_contain(0.5)
              expect(config("http.retry").backoff[1]).to_be_close_to(0.1, 1e-12)
              expect(config("http.timeout_ms")).to_be_between(1000, 2000)
              expect(config("http.timeout_ms")).to_be_greater_than(1000)
              expect(config("http.timeout_ms")).to_be_less_than(2000)
              expect(de.error).to_be_nil()
              expect(de.variant).not_to_be("off")
              expect(de.variant).to_be_truthy()
              expect(flag("legacy").value).to_be_falsy()
              expect("checkout").to_contain("out")
              expect({ 1, 2 }).not_to_equal({ 2, 1 })
              local on = 0
              for i = 1, 200 do
                if flag("new-checkout", { user_id = "u-" .. i }).variant == "on" then on = on + 1 end
              end
              expect(on / 200).to_be_between(0.1, 0.3)
            end)
            """)
        #expect(ruleSet.tests.count == 1)
        #expect(ruleSet.tests.first?.isFunction == true)
        #expect(ruleSet.tests.first?.location == SourceLocation(file: "flags/checkout_test.lua", line: 1))
    }

    @Test("a failed assertion rejects the load at the assertion's own file:line, with what was expected and got")
    func failedAssertionLocation() {
        do {
            _ = try compile(
                """
                test "germany" (function()
                  local answer = flag("new-checkout", { country = "DE" })
                  expect(answer.variant).to_be("on")
                  expect(answer.value).to_be(false)
                end)
                """)
            Issue.record("the rule set loaded although a function test fails")
        } catch {
            #expect(error.cause == .content)
            #expect(error.diagnostics.count == 1)
            #expect(error.diagnostics.first?.location == SourceLocation(file: "flags/checkout_test.lua", line: 4))
            #expect(
                error.diagnostics.first?.message
                    == "test 'germany' failed: expect(...).to_be: expected false, got true")
        }
    }

    @Test("each matcher's failure says what it expected and what came back")
    func matcherMessages() throws {
        let cases: [(String, String)] = [
            (
                #"expect(config("http.retry")).to_equal({ attempts = 4 })"#,
                #"to_equal: expected {"attempts":4}, got {"attempts":3,"backoff":[0.1,0.5]}"#
            ),
            (#"expect(flag("legacy").variant).not_to_be("off")"#, #"not_to_be: expected not "off", got "off""#),
            (#"expect(nil).to_be_truthy()"#, "to_be_truthy: expected a truthy value (not nil or false), got nil"),
            (#"expect(0).to_be_falsy()"#, "to_be_falsy: expected nil or false, got 0"),
            (#"expect(route({ path = "/x" })).not_to_be_nil()"#, "not_to_be_nil: expected not nil, got nil"),
            (#"expect(0.5).to_be_close_to(0.4, 0.01)"#, "to_be_close_to: expected 0.4 within 0.01, got 0.5"),
            (
                #"expect(config("http.timeout_ms")).to_be_between(1, 2)"#,
                "to_be_between: expected a number in [1, 2], got 1500"
            ),
            (#"expect({ "a", "b" }).to_contain("c")"#, #"to_contain: expected a value containing "c", got ["a","b"]"#),
        ]
        for (assertion, message) in cases {
            let result = try onlyResult("test \"m\" (function()\n  \(assertion)\nend)")
            #expect(result.failure == "expect(...).\(message)", "\(assertion)")
            #expect(result.failureLocation == SourceLocation(file: "flags/checkout_test.lua", line: 2))
        }
    }

    @Test("an error raised in a test, or a query of an unknown flag, fails it at that line, said once")
    func errorsInTests() throws {
        let raised = try onlyResult("test \"e\" (function()\n\n  error(\"boom\")\nend)")
        #expect(raised.failure == "boom")
        #expect(raised.failureLocation?.line == 3)
        let unknown = try onlyResult("test \"u\" (function()\n  flag(\"nope\")\nend)")
        #expect(unknown.failure == "flag(): no flag 'nope' in the rule set")
        #expect(unknown.failureLocation?.line == 2)
        let missingConfig = try onlyResult("test \"c\" (function() config(\"nope\") end)")
        #expect(missingConfig.failure == "config(): no config 'nope' in the rule set")
    }

    @Test("a test function cannot change the rule set: answers and values are read-only, declarations refused")
    func cannotMutateRules() throws {
        let value = try onlyResult(#"test "v" (function() flag("theme", {}).value.bg = "red" end)"#)
        #expect(value.failure?.contains("attempt to modify a read-only table") == true)
        let configValue = try onlyResult(#"test "c" (function() config("http.retry").attempts = 9 end)"#)
        #expect(configValue.failure?.contains("attempt to modify a read-only table") == true)
        let declaration = try onlyResult(#"test "d" (function() route "evil" { target = "x" } end)"#)
        #expect(declaration.failure != nil)
        // Like a rule function, a test function may keep no state between runs: the load refuses it.
        do {
            _ = try compile(#"test "g" (function() new_global = 1 end)"#, runTests: false)
            Issue.record("a test function that assigns a global loaded")
        } catch {
            #expect(error.diagnostics.first?.message.contains("assigns to the global 'new_global'") == true)
        }
    }

    @Test("test helpers are not visible to rules while they answer queries")
    func helpersInvisibleToQueries() throws {
        let (_, evaluator) = try compile(
            """
            flag "asserts" { rule = function(ctx) expect(1).to_be(1) return "on" end }
            flag "queries" { rule = function(ctx) return flag("legacy", ctx).variant end }
            test "t" (function() expect(flag("asserts").reason).to_be("ERROR") end)
            """)
        let asserts = try #require(evaluator.evaluateFlag(key: "asserts"))
        #expect(asserts.reason == .error)
        #expect(asserts.failure?.message.contains("only available while a function test runs") == true)
        let queries = try #require(evaluator.evaluateFlag(key: "queries"))
        #expect(queries.reason == .error)
    }

    @Test("a test in an endless loop stops at the evaluation budget and fails, saying so")
    func endlessTest() throws {
        let result = try onlyResult(#"test "loop" (function() while true do end end)"#)
        #expect(result.failure?.hasPrefix("the test ran out of its budget") == true)
        #expect(result.failureLocation?.file == "flags/checkout_test.lua")
    }

    @Test("function tests are counted with the declarative ones, and a remote source answers both kinds")
    func countedAndRemote() throws {
        let (_, evaluator) = try compile(
            """
            test "declarative" { flag = "legacy", expect = "on" }
            test "function passes" (function()
              expect(flag("legacy", { plan = "pro" }, 1800000000).variant).to_be("on")
              expect(route({ path = "/" })).to_be_nil()
            end)
            test "function fails" (function() config("http.timeout_ms") end)
            """, runTests: false)
        let offline = RuleTestRunner.run(in: evaluator)
        #expect(offline.passedCount == 1)
        #expect(offline.failedCount == 2)
        let remote = CannedRemote()
        let report = RuleTestRunner.run(in: evaluator, remote: remote)
        #expect(report.results.map(\.passed) == [true, true, false])
        #expect(report.results[2].failure == "config(): no config 'http.timeout_ms' in the rule set")
        #expect(report.results[2].failureLocation?.line == 6)
        #expect(
            remote.requests == [
                #"{"op":"flag","flag":"legacy","context":{}}"#,
                #"{"op":"flag","flag":"legacy","context":{"plan":"pro"},"at":1800000000}"#,
                #"{"op":"route","request":{"path":"/"}}"#,
                #"{"op":"config","key":"http.timeout_ms"}"#,
            ])
    }
}

/// A remote source that says every flag is "on", that no route matches and that no config exists, and keeps the
/// requests it was sent.
private final class CannedRemote: RuleTestRemoteAnswers {
    var requests: [String] = []

    func answerLine(to request: [UInt8]) -> [UInt8]? {
        let text = String(decoding: request, as: UTF8.self)
        requests.append(text)
        if text.contains(#""op":"flag""#) {
            return Array(#"{"ok":true,"result":{"key":"legacy","variant":"on","value":true,"reason":"STATIC"}}"#.utf8)
        }
        if text.contains(#""op":"route""#) {
            return Array(#"{"ok":false,"error":{"code":"NO_ROUTE","message":"no"}}"#.utf8)
        }
        return Array(#"{"ok":false,"error":{"code":"CONFIG_NOT_FOUND","message":"no"}}"#.utf8)
    }

    func flag(_ key: String, context: JSONObject, at: Double?) -> Result<RuleTestFlagAnswer, RuleTestQueryProblem> {
        requests.append(
            JSONWriter.string(
                .object(JSONObject([("op", "flag"), ("flag", .string(key)), ("context", .object(context))]))))
        return .success(RuleTestFlagAnswer(variant: "on", value: .bool(true), reason: "STATIC"))
    }
    func variants(ofFlag key: String) -> [String]? { nil }
    func route(_ request: JSONObject, at: Double?) -> Result<RuleTestRouteAnswer, RuleTestQueryProblem> {
        .success(.noRoute)
    }
    func config(_ key: String) -> Result<JSONValue, RuleTestQueryProblem> { .failure(RuleTestQueryProblem("none")) }
}
