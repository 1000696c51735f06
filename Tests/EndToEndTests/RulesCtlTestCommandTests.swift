import Foundation
import RuleModel
import Testing

/// A flag, and tests of it: two that pass, one that fails.
private let testedRules = [
    "flags/beta.lua": """
    flag "beta" {
      variants = { on = true, off = false },
      default = "off",
      rule = function(ctx) if ctx.plan == "pro" then return "on" end end,
    }
    """,
    "flags/beta_test.lua": """
    test "pro users get beta" { flag = "beta", context = { plan = "pro" }, expect = "on" }
    test "free users do not" { flag = "beta", context = { plan = "free" }, expect = "off" }
    test "everyone gets beta" { flag = "beta", expect = "on" }
    """,
]

@Suite("rulesctl test and check run rule tests")
struct RulesCtlTestCommandTests {
    @Test("test prints every failure with file:line, expected and got, then N passed, N failed, and exits 1")
    func failuresAndSummary() throws {
        let rules = try TemporaryRules(testedRules)
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["test", rules.path])
        #expect(run.status == 1)
        #expect(
            run.standardOutput == """
                flags/beta_test.lua:3: test 'everyone gets beta' failed: expected variant "on", \
                got variant "off", value false, reason DEFAULT
                2 passed, 1 failed

                """)
    }

    @Test("test --filter runs only the matching tests, and exits 0 when they pass")
    func filter() throws {
        let rules = try TemporaryRules(testedRules)
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["test", rules.path, "--filter", "users"])
        #expect(run.status == 0)
        #expect(run.standardOutput == "2 passed, 0 failed\n")
    }

    @Test("test --json gives counts and one result per test")
    func json() throws {
        let rules = try TemporaryRules(testedRules)
        defer { rules.remove() }
        let run = try RulesctlProcess.run(["test", rules.path, "--json"])
        #expect(run.status == 1)
        let report = try run.json()
        #expect(report["passed"] == 2)
        #expect(report["failed"] == 1)
        #expect(report["results"]?[2]?["line"] == 3)
        #expect(report["results"]?[2]?["passed"] == false)
        #expect(report["results"]?[2]?["message"]?.stringValue?.hasPrefix(#"expected variant "on""#) == true)
    }

    @Test("test --junit writes one testcase per test and a failure element for the failing one")
    func junit() throws {
        let rules = try TemporaryRules(testedRules)
        defer { rules.remove() }
        let report = rules.url.appendingPathComponent("report.xml")
        let run = try RulesctlProcess.run(["test", rules.path, "--junit", report.path])
        #expect(run.status == 1)
        let xml = try String(contentsOf: report, encoding: .utf8)
        #expect(xml.contains(#"tests="3" failures="1" skipped="0""#))
        #expect(xml.components(separatedBy: "<testcase ").count == 4)
        #expect(
            xml.contains(
                #"name="everyone gets beta" file="flags/beta_test.lua" line="3">"# + "\n"
                    + #"    <failure message="expected variant &quot;on&quot;, got variant &quot;off&quot;"#))
    }

    @Test("check fails on a failing rule test like on a syntax error; --no-tests skips the tests")
    func checkRunsTests() throws {
        let rules = try TemporaryRules(testedRules)
        defer { rules.remove() }
        let checked = try RulesctlProcess.run(["check", rules.path])
        #expect(checked.status == 1)
        #expect(checked.standardError.hasPrefix("flags/beta_test.lua:3: test 'everyone gets beta' failed: "))
        let skipped = try RulesctlProcess.run(["check", "--no-tests", rules.path])
        #expect(skipped.status == 0)
        #expect(skipped.standardOutput.contains("total: 2 files, 1 flag, 0 routes, 0 configs"))
    }
}
