import Foundation
import RuleModel
import RulesTestSupport
import Testing

/// What the daemon serves: beta for pro users.
private let servedBeta = """
    flag "beta" {
      variants = { on = true, off = false },
      default = "off",
      rule = function(ctx) if ctx.plan == "pro" then return "on" end end,
    }
    route "api" { match = function(req) return req.path == "/api" end, target = "api-pool" }
    config "http.timeout_ms" (1500)
    """

/// A directory whose own rules say beta is off for everyone and has no route or config: its tests pass only against
/// the daemon's answers.
private let liveTested = [
    "flags/beta.lua": #"flag "beta" {}"# + "\n",
    "flags/beta_test.lua": """
    test "pro users get beta" { flag = "beta", context = { plan = "pro" }, expect = "on" }
    test "everyone gets beta" { flag = "beta", expect = "on" }
    test "beta as a function" (function()
      expect(flag("beta", { plan = "pro" }).variant).to_be("on")
      expect(route({ path = "/api" })).to_equal({ name = "api", target = "api-pool" })
      expect(route({ path = "/nowhere" })).to_be_nil()
      expect(config("http.timeout_ms")).to_be(1500)
    end)
    test "api goes to the pool" { route = { path = "/api" }, expect_target = "api-pool" }
    test "timeout" { config = "http.timeout_ms", expect_value = 1500 }
    """,
]

@Suite("rulesctl test --live runs a directory's tests against the serving daemon")
struct RulesCtlLiveTestTests {
    @Test("the daemon's answers decide, for function tests' questions too; same output and exit status")
    func liveAgainstDaemon() throws {
        let daemon = try DaemonHarness(rules: ["beta.lua": servedBeta])
        try daemon.start(arguments: ["--watch", "off"])
        let tests = try TemporaryRules(liveTested)
        defer { tests.remove() }
        // Offline, the directory's own rules answer: beta is off, so the beta tests fail.
        let offline = try RulesctlProcess.run(["test", tests.path])
        #expect(offline.status == 1)
        #expect(offline.standardOutput.hasSuffix("0 passed, 5 failed\n"))
        let live = try RulesctlProcess.run(["test", "--live", "--socket", daemon.socketPath, tests.path])
        #expect(live.status == 1)
        #expect(
            live.standardOutput == """
                flags/beta_test.lua:2: test 'everyone gets beta' failed: expected variant "on", \
                got variant "off", value false, reason DEFAULT
                4 passed, 1 failed

                """)
        let json = try RulesctlProcess.run(["test", "--live", "--socket", daemon.socketPath, tests.path, "--json"])
        let report = try json.json()
        #expect(report["passed"] == 4)
        #expect(report["failed"] == 1)
        let passing = try RulesctlProcess.run([
            "test", "--live", "--socket", daemon.socketPath, tests.path, "--filter", "pro users",
        ])
        #expect(passing.status == 0)
        #expect(passing.standardOutput == "1 passed, 0 failed\n")
    }

    @Test("without a directory, --live runs the tests of the directory the daemon serves")
    func liveDaemonDirectory() throws {
        let daemon = try DaemonHarness(rules: [
            "beta.lua": servedBeta,
            "beta_test.lua": #"test "pro" { flag = "beta", context = { plan = "pro" }, expect = "on" }"# + "\n",
        ])
        try daemon.start(arguments: ["--watch", "off"])
        let live = try RulesctlProcess.run(["test", "--live", "--socket", daemon.socketPath])
        #expect(live.status == 0)
        #expect(live.standardOutput == "1 passed, 0 failed\n")
    }

    @Test("a live function test fails at its assertion's file:line with the daemon's answer")
    func liveFunctionTestFailure() throws {
        let daemon = try DaemonHarness(rules: ["beta.lua": servedBeta])
        try daemon.start(arguments: ["--watch", "off"])
        let tests = try TemporaryRules([
            "t_test.lua": """
            test "free users get beta" (function()
              expect(flag("beta", { plan = "free" }).reason).to_be("DEFAULT")
              expect(flag("beta", { plan = "free" }).variant).to_be("on")
            end)

            """
        ])
        defer { tests.remove() }
        let live = try RulesctlProcess.run(["test", "--live", "--socket", daemon.socketPath, tests.path])
        #expect(live.status == 1)
        #expect(
            live.standardOutput == """
                t_test.lua:3: test 'free users get beta' failed: expect(...).to_be: expected "on", got "off"
                0 passed, 1 failed

                """)
        let json = try RulesctlProcess.run(["test", "--live", "--socket", daemon.socketPath, tests.path, "--json"])
        let result = try json.json()["results"]?[0]
        #expect(result?["line"] == 1)
        #expect(result?["failure_file"] == "t_test.lua")
        #expect(result?["failure_line"] == 3)
    }

    @Test("--live exits 3 when the daemon cannot be reached")
    func liveUnreachable() throws {
        let tests = try TemporaryRules(liveTested)
        defer { tests.remove() }
        let run = try RulesctlProcess.run(["test", "--live", "--socket", tests.path + "/no.sock", tests.path])
        #expect(run.status == 3)
        #expect(run.standardError.contains("cannot reach rulesd"))
    }

    @Test("a reload whose function test fails is refused at the assertion's file:line, and the serving rules stay")
    func failingFunctionTestRefusesReload() throws {
        let daemon = try DaemonHarness(rules: [
            "beta.lua": servedBeta,
            "beta_test.lua": """
            test "pro users get beta" (function()
              local answer = flag("beta", { plan = "pro" })
              expect(answer.variant).to_be("on")
            end)

            """,
        ])
        try daemon.start(arguments: ["--watch", "off"])
        try daemon.writeRule("beta.lua", servedBeta.replacingOccurrences(of: #""pro""#, with: #""team""#))
        let failed = try daemon.request(#"{"op":"reload"}"#)
        #expect(failed["error"]?["code"] == "RELOAD_FAILED")
        #expect(failed["error"]?["problems"]?[0]?["file"] == "beta_test.lua")
        #expect(failed["error"]?["problems"]?[0]?["line"] == 3)
        #expect(
            failed["error"]?["problems"]?[0]?["message"]
                == #"test 'pro users get beta' failed: expect(...).to_be: expected "on", got "off""#)
        let still = try daemon.request(#"{"op":"flag","flag":"beta","context":{"plan":"pro"}}"#)
        #expect(still["result"]?["variant"] == "on")
        #expect(still["generation"] == 1)
    }
}
