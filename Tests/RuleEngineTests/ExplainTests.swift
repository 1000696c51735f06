import RuleEngine
import RuleModel
import Testing

/// The steps of a trace with their kind and where they ran, for compact comparisons.
private func lines(_ steps: [JSONValue]) -> [String] {
    steps.compactMap { step in
        guard let line = step["line"]?.stringValue else { return nil }
        let count = step["count"]?.intValue ?? 1
        return count == 1 ? line : "\(line) x\(count)"
    }
}

private func calls(_ steps: [JSONValue], named name: String) -> [JSONValue] {
    steps.filter { $0["call"]?.stringValue == name }
}

private func explain(
    _ rules: LoadedRules, _ key: String, _ context: JSONValue = [:], limit: Int = RuleTrace.defaultLimit
) throws -> (FlagDecision, RuleTrace) {
    try #require(rules.evaluator.explainFlag(key: key, context: context, now: pinnedNow, limit: limit))
}

@Suite("Explain")
struct ExplainTests {
    @Test("the trace lists the rule's lines in the order they ran")
    func linesInOrder() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx)
                local plan = ctx.plan
                if plan == "pro" then
                  return "on"
                end
                return "off"
              end,
            }
            """
        ])
        let (pro, proTrace) = try explain(rules, "f", ["plan": "pro"])
        #expect(pro.reason == .targetingMatch)
        #expect(lines(proTrace.steps) == ["f.lua:4", "f.lua:5", "f.lua:6"])
        let (_, freeTrace) = try explain(rules, "f", ["plan": "free"])
        #expect(lines(freeTrace.steps) == ["f.lua:4", "f.lua:5", "f.lua:8"])
        #expect(!freeTrace.truncated)
    }

    @Test("a loop's lines are listed once, with the number of times each ran")
    func loopsFold() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx)
                local n = 0
                for i = 1, 10 do
                  n = n + i
                end
                if n == 55 then return "on" end
              end,
            }
            """
        ])
        let (decision, trace) = try explain(rules, "f")
        #expect(decision.reason == .targetingMatch)
        // Line 5 runs once to enter the loop and once per jump back; line 6 runs once per iteration.
        #expect(lines(trace.steps) == ["f.lua:4", "f.lua:5 x11", "f.lua:6 x10", "f.lua:8"])
        #expect(trace.steps.count == 4)
    }

    @Test("a loop whose helper calls differ on every iteration still counts its lines once, the calls in order")
    func loopsWithDifferingCalls() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx)
                local n = 0
                for i = 1, 100 do n = n + (starts_with(tostring(i), "1") and 1 or 0) end
                if n == 12 then return "on" end
              end,
            }
            """
        ])
        let (decision, trace) = try explain(rules, "f")
        #expect(decision.reason == .targetingMatch)
        #expect(lines(trace.steps) == ["f.lua:4", "f.lua:5 x100", "f.lua:6"])
        let arguments = calls(trace.steps, named: "starts_with").compactMap { $0["args"]?[0]?.stringValue }
        #expect(arguments == (1...100).map(String.init))
    }

    @Test("split and rollout record the unit, the bucket value and the chosen bucket or threshold")
    func splitAndRollout() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx)
                local early = rollout(ctx.user_id, 30, "exp")
                return split(ctx.user_id, { { "on", 20 }, { "off", 80 } })
              end,
            }
            """
        ])
        let (decision, trace) = try explain(rules, "f", ["user_id": "u-42"])
        let split = try #require(calls(trace.steps, named: "split").first)
        #expect(split["at"] == "f.lua:5")
        #expect(split["args"]?[0] == "u-42")
        #expect(split["args"]?[1] == [["on", 20], ["off", 80]])
        #expect(split["total"] == 100)
        let bucket = try #require(split["bucket"]?.int64Value)
        let chosen = try #require(split["chosen"]?.int64Value)
        let range = try #require(split["range"]?.arrayValue).compactMap(\.int64Value)
        #expect(range.count == 2 && range[0] <= bucket && bucket < range[1])
        #expect(chosen == (bucket < 20 ? 1 : 2))
        #expect(split["result"] == (bucket < 20 ? "on" : "off"))
        #expect(rules.ruleSet.flags[0].variants[decision.variantIndex].name == split["result"]?.stringValue)

        let rollout = try #require(calls(trace.steps, named: "rollout").first)
        #expect(rollout["args"] == ["u-42", 30, "exp"])
        #expect(rollout["threshold"] == 30000)
        #expect(rollout["total"] == 100000)
        let point = try #require(rollout["bucket"]?.int64Value)
        #expect(rollout["result"] == .bool(point < 30000))
    }

    @Test("semver, ip.in_cidr, starts_with and ends_with record their arguments and results")
    func otherHelpers() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx)
                local a = semver.match(ctx.version, ">=", "2.1.0")
                local b = semver.compare(ctx.version, "3.0.0")
                local c = ip.in_cidr(ctx.ip, "10.0.0.0/8")
                local d = starts_with(ctx.path, "/api/")
                local e = ends_with(ctx.email, "@example.com")
                return "on"
              end,
            }
            """
        ])
        let (_, trace) = try explain(
            rules, "f", ["version": "2.3.1", "ip": "10.1.2.3", "path": "/web/x", "email": "a@example.com"])
        #expect(calls(trace.steps, named: "semver.match").first?["args"] == ["2.3.1", ">=", "2.1.0"])
        #expect(calls(trace.steps, named: "semver.match").first?["result"] == true)
        #expect(calls(trace.steps, named: "semver.compare").first?["result"] == -1)
        #expect(calls(trace.steps, named: "ip.in_cidr").first?["args"] == ["10.1.2.3", "10.0.0.0/8"])
        #expect(calls(trace.steps, named: "ip.in_cidr").first?["result"] == true)
        #expect(calls(trace.steps, named: "starts_with").first?["result"] == false)
        #expect(calls(trace.steps, named: "ends_with").first?["result"] == true)
        #expect(calls(trace.steps, named: "ends_with").first?["at"] == "f.lua:8")
    }

    @Test("the context fields read are listed once each, and absent ones say so")
    func fieldsRead() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx)
                if ctx.userid == nil and ctx.user.plan == "pro" and ctx.user.plan then
                  return "on"
                end
              end,
            }
            """
        ])
        let (_, trace) = try explain(rules, "f", ["user_id": "u-1", "user": ["plan": "pro"]])
        let fields = trace.fields
        #expect(fields.map { $0["path"]?.stringValue ?? "" } == ["userid", "user", "user.plan"])
        #expect(fields[0]["present"] == false)
        #expect(fields[0]["at"] == "f.lua:4")
        #expect(fields[1]["present"] == true)
        #expect(fields[2]["value"] == "pro")
        #expect(fields[2]["reads"] == 2)
    }

    @Test("flag_value shows the prerequisite's own trace nested under it")
    func nestedPrerequisite() throws {
        let rules = try compile([
            "f.lua": """
            flag "base" {
              default = "off",
              rule = function(ctx)
                if ctx.beta then return "on" end
              end,
            }
            flag "top" {
              default = "off",
              rule = function(ctx)
                local base = flag_value("base", ctx)
                return base
              end,
            }
            """
        ])
        let (decision, trace) = try explain(rules, "top", ["beta": true])
        #expect(decision.reason == .targetingMatch)
        let prerequisite = try #require(trace.steps.first { $0["flag"] != nil })
        #expect(prerequisite["flag"] == "base")
        #expect(prerequisite["at"] == "f.lua:10")
        #expect(prerequisite["variant"] == "on")
        #expect(prerequisite["reason"] == "TARGETING_MATCH")
        #expect(lines(prerequisite["steps"]?.arrayValue ?? []) == ["f.lua:4"])
        #expect(lines(trace.steps) == ["f.lua:10", "f.lua:11"])
    }

    @Test("explaining a route lists every route tried in priority order, up to the winner")
    func routesTried() throws {
        let rules = try compile([
            "routes.lua": """
            route "admin" {
              priority = 30,
              match = function(req) return req.admin == true end,
              target = "admin",
            }
            route "api" {
              priority = 20,
              match = function(req) return starts_with(req.path, "/api/") end,
              target = "api",
            }
            route "fallback" { priority = 0, target = "web" }
            route "never" { priority = -1, target = "never" }
            """
        ])
        let (decision, trace) = rules.evaluator.explainRoute(request: ["path": "/api/x"], now: pinnedNow)
        #expect(decision == .matched(routeIndex: 1, target: "api"))
        #expect(trace.steps.compactMap { $0["route"]?.stringValue } == ["admin", "api"])
        #expect(trace.steps[0]["matched"] == false)
        #expect(trace.steps[0]["source"] == "routes.lua:1")
        #expect(lines(trace.steps[0]["steps"]?.arrayValue ?? []) == ["routes.lua:3"])
        #expect(trace.steps[1]["matched"] == true)
        #expect(calls(trace.steps[1]["steps"]?.arrayValue ?? [], named: "starts_with").first?["result"] == true)
        #expect(trace.fields.map { $0["path"]?.stringValue ?? "" } == ["admin", "path"])
        #expect(trace.fields[0]["present"] == false)

        let (none, noneTrace) = rules.evaluator.explainRoute(request: ["admin": false, "path": "/"], now: pinnedNow)
        #expect(none == .matched(routeIndex: 2, target: "web"))
        #expect(noneTrace.steps.compactMap { $0["route"]?.stringValue } == ["admin", "api", "fallback"])
    }

    @Test("a trace stops at its cap and says it was cut")
    func cap() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx)
                local n = 0
                for i = 1, 50 do
                  n = n + (starts_with("u-" .. i, "u-1") and 1 or 0)
                end
                return "on"
              end,
            }
            """
        ])
        let (decision, trace) = try explain(rules, "f", limit: 20)
        #expect(decision.reason == .targetingMatch)
        #expect(trace.truncated)
        #expect(trace.json["limit"] == 20)
        let (_, full) = try explain(rules, "f")
        #expect(!full.truncated)
    }

    @Test("a rule that fails or runs away is explained up to where it stopped, and keeps its budget")
    func failingRules() throws {
        let rules = try compile(
            [
                "f.lua": """
                flag "fails" {
                  default = "off",
                  rule = function(ctx)
                    local plan = ctx.plan
                    error("no plan")
                  end,
                }
                flag "spins" {
                  default = "off",
                  rule = function(ctx)
                    while true do end
                  end,
                }
                """
            ], limits: hostileLimits())
        let (failed, failedTrace) = try explain(rules, "fails")
        #expect(failed.reason == .error)
        #expect(lines(failedTrace.steps) == ["f.lua:4", "f.lua:5"])
        #expect(failedTrace.fields.first?["present"] == false)
        let (spun, spunTrace) = try explain(rules, "spins")
        #expect(spun.failure?.code == .resourceLimit)
        #expect(spunTrace.steps.count <= 2)
        let again = try #require(rules.evaluator.evaluateFlag(key: "spins", now: pinnedNow))
        #expect(again.failure?.code == .resourceLimit)
    }

    @Test("after an explain, plain evaluations run with no line hook and answer the same")
    func noHookLeft() throws {
        let rules = try compile([
            "f.lua": """
            flag "f" {
              default = "off",
              rule = function(ctx) return split(ctx.user_id, { { "on", 50 }, { "off", 50 } }) end,
            }
            """
        ])
        let lineMask: Int32 = 1 << 2  // LUA_MASKLINE
        let (explained, _) = try explain(rules, "f", ["user_id": "u-7"])
        #expect(rules.evaluator.hookMask & lineMask == 0)
        let plain = try #require(rules.evaluator.evaluateFlag(key: "f", context: ["user_id": "u-7"], now: pinnedNow))
        #expect(plain == explained)
        #expect(rules.evaluator.hookMask & lineMask == 0)
    }
}
