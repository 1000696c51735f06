import RuleEngine
import RuleModel
import Testing

@Suite("Routes")
struct RouteTests {
    @Test("the first route whose match accepts the request names its target")
    func matchingRoute() throws {
        let rules = try compile([
            "routes.lua": """
            route "api-v2" {
              priority = 10,
              match = function(req) return starts_with(req.path, "/api/v2/") end,
              target = "users-v2",
            }
            route "fallback" { priority = 0, target = "users-v1" }
            """
        ])
        #expect(try rules.route(["path": "/api/v2/users"]) == RouteAnswer(name: "api-v2", target: "users-v2"))
        #expect(try rules.route(["path": "/api/v1/users"]) == RouteAnswer(name: "fallback", target: "users-v1"))
    }

    @Test("no matching route answers none")
    func noRoute() throws {
        let rules = try compile([
            "routes.lua": #"route "only" { match = function(req) return req.admin == true end, target = "admin" }"#
        ])
        #expect(try rules.route(["admin": false]) == nil)
        #expect(try rules.route([:]) == nil)
    }

    @Test("a higher priority wins over file order")
    func priorityWins() throws {
        let rules = try compile([
            "a.lua": #"route "low" { priority = 1, target = "low" }"#,
            "b.lua": #"route "high" { priority = 100, target = "high" }"#,
        ])
        #expect(rules.ruleSet.routes.map(\.name) == ["high", "low"])
        #expect(try rules.route([:])?.name == "high")
    }

    @Test("equal priorities are tried by relative file path, then by order in the file")
    func tieBreaks() throws {
        let rules = try compile([
            "b.lua": """
            route "b-first" { target = "b1" }
            route "b-second" { target = "b2" }
            """,
            "a/z.lua": #"route "a-dir" { target = "az" }"#,
            "a.lua": """
            route "a-second-in-file" { priority = 0, match = function() return false end, target = "x" }
            route "a-third" { target = "a3" }
            """,
        ])
        #expect(rules.ruleSet.routes.map(\.name) == ["a-second-in-file", "a-third", "a-dir", "b-first", "b-second"])
        #expect(try rules.route([:])?.name == "a-third")
    }

    @Test("negative priorities sort below the default of zero")
    func negativePriority() throws {
        let rules = try compile([
            "a.lua": #"route "last" { priority = -5, target = "last" }  route "normal" { target = "normal" }"#
        ])
        #expect(rules.ruleSet.routes.map(\.priority) == [0, -5])
    }

    @Test("a target function computes the target from the request")
    func targetFunction() throws {
        let rules = try compile([
            "r.lua": #"route "shard" { target = function(req) return "shard-" .. (req.user_id % 4) end }"#
        ])
        #expect(try rules.route(["user_id": 10])?.target == "shard-2")
        #expect(rules.ruleSet.routes[0].staticTarget == nil)
    }

    @Test("a target function returning a non-string is a TYPE_MISMATCH naming the route")
    func targetTypeMismatch() throws {
        let rules = try compile(["r.lua": #"route "bad" { target = function(req) return 42 end }"#])
        #expect(throws: RuleFailure.self) { try rules.route([:]) }
        guard case .failed(let index, let failure) = rules.evaluator.route(request: [:], now: pinnedNow) else {
            Issue.record("the route did not fail")
            return
        }
        #expect(index == 0)
        #expect(failure.code == .typeMismatch)
        #expect(failure.message.contains("bad"))
    }

    @Test("a match function that raises fails the routing with GENERAL and the failing route")
    func matchError() throws {
        let rules = try compile([
            "r.lua": """
            route "ok" { priority = 5, match = function() return false end, target = "a" }
            route "broken" { match = function(req) return req.missing.field end, target = "b" }
            """
        ])
        guard case .failed(let index, let failure) = rules.evaluator.route(request: [:], now: pinnedNow) else {
            Issue.record("the route did not fail")
            return
        }
        #expect(index == 1)
        #expect(failure.code == .general)
        #expect(failure.message.hasPrefix("r.lua:2:"))
    }

    @Test("a route's definition is kept: priority, static target, whether it has a match, file:line")
    func routeDefinition() throws {
        let rules = try compile([
            "dir/r.lua": "\n"
                + #"route "r" { description = "d", priority = 7, match = function() return true end, target = "t" }"#
        ])
        let route = try #require(rules.ruleSet.routes.first)
        #expect(route.priority == 7)
        #expect(route.staticTarget == "t")
        #expect(route.hasMatch)
        #expect(route.description == "d")
        #expect(route.location.description == "dir/r.lua:2")
    }

    @Test("the request is the same read-only table for every route tried")
    func requestReadOnly() throws {
        let rules = try compile([
            "r.lua": """
            route "writer" { priority = 2, match = function(req) req.path = "/hijacked" return false end, target = "w" }
            route "reader" { priority = 1, match = function(req) return req.path == "/hijacked" end, target = "r" }
            """
        ])
        guard case .failed(_, let failure) = rules.evaluator.route(request: ["path": "/a"], now: pinnedNow) else {
            Issue.record("writing to the request was allowed")
            return
        }
        #expect(failure.message.contains("read-only"))
    }

    @Test("one routing decision has one budget, however many routes it tries")
    func routingBudget() throws {
        let rules = try compile(
            [
                "r.lua": """
                for i = 1, 50 do
                  route ("r" .. i) {
                    match = function() local n = 0 for j = 1, 10000 do n = n + j end return false end,
                    target = "t",
                  }
                end
                """
            ], limits: hostileLimits(instructions: 100_000))
        guard case .failed(_, let failure) = rules.evaluator.route(request: [:], now: pinnedNow) else {
            Issue.record("fifty expensive routes ran within one evaluation's budget")
            return
        }
        #expect(failure.code == .resourceLimit)
    }

    @Test("an invalid request is INVALID_CONTEXT")
    func invalidRequest() throws {
        let rules = try compile(["r.lua": #"route "r" { target = "t" }"#])
        let decision = Array("[]".utf8).withUnsafeBytes { rules.evaluator.route(request: $0, now: pinnedNow) }
        guard case .failed(_, let failure) = decision else {
            Issue.record("an array was accepted as a request")
            return
        }
        #expect(failure.code == .invalidContext)
    }
}
