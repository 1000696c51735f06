import Foundation
import RuleModel
import Testing

@testable import RuleEngine

/// Match functions that only test the request's fields are compiled at load; routing must pick exactly the route
/// that calling every match function in priority order picks.
@Suite("Compiled routing")
struct CompiledRoutingTests {
    @Test("the common match shapes are compiled, and anything else keeps calling its function")
    func shapes() throws {
        let rules = try compile([
            "routes.lua": """
            local WRITE = { POST = true }
            local function helper(req) return req.path == "/x" end
            route "method-and-prefix" {
              priority = 20,
              match = function(req) return req.method == "GET" and starts_with(req.path, "/svc/") end,
              target = "a",
            }
            route "alternatives" {
              priority = 19,
              match = function(req)
                return req.method == "GET" and (req.path == "/healthz" or req.path == "/readyz")
              end,
              target = "b",
            }
            route "alias-and-suffix" {
              priority = 18,
              match = function(r)
                local path = r["path"]
                return starts_with(path, "/static/") or ends_with(path, ".css") or not r.method
              end,
              target = "c",
            }
            route "constants" { priority = 17, match = function() return false end, target = "d" }
            route "nil-and-booleans" {
              priority = 16,
              match = function(req) return req.admin == true and req.user ~= nil and req.guest ~= false end,
              target = "e",
            }
            route "upvalue" { priority = 9, match = function(req) return WRITE[req.method] == true end, target = "f" }
            route "other-global" {
              priority = 8,
              match = function(req) return tostring(req.method) == "PUT" end,
              target = "g",
            }
            route "number" { priority = 7, match = function(req) return req.n == 1 end, target = "h" }
            route "named-function" { priority = 6, match = helper, target = "i" }
            route "two-on-a-line" { priority = 5, match = function(req) return req.a == "x" end, target = function(req) return "j" end }
            route "split-header" {
              priority = 4,
              match = function
              (req) return req.path == "/y" end,
              target = "k",
            }
            """
        ])
        let compiled = rules.ruleSet.routes.indices.filter { rules.evaluator.routeMatchIsCompiled(at: $0) }
            .map { rules.ruleSet.routes[$0].name }
        #expect(compiled == ["method-and-prefix", "alternatives", "alias-and-suffix", "constants", "nil-and-booleans"])
    }

    @Test(
        "comments, long strings and line endings do not confuse which text is the function",
        arguments: ["\n", "\r\n", "\r"])
    func trickySourceText(lineEnding: String) throws {
        let text = """
            local s = [==[
            route "fake" { match = function(req) return true end, target = "fake" }
            ]==]
            local t = "a \\z
                  function(req) return true end"
            route "a" { priority = 3, --[[ function(req) return true end ]] match = function(req) return req.p == "a" end, target = "a" }
            route "b" {
              priority = 2,
              match = function(req) return req.p == 'b' --[=[ or true ]=] end, -- function(req) return true end
              target = "b",
            }
            route "c" { priority = 1, match = function(req) return req.p == "c" end, target = "c" }
            """.replacingOccurrences(of: "\n", with: lineEnding)
        let rules = try compile(["routes.lua": text])
        #expect(rules.ruleSet.routes.indices.allSatisfy { rules.evaluator.routeMatchIsCompiled(at: $0) })
        for p in ["a", "b", "c", "d"] {
            let request = Array(#"{"p":"\#(p)"}"#.utf8)
            request.withUnsafeBytes { bytes in
                let decision = rules.evaluator.route(request: bytes, now: pinnedNow)
                #expect(decision == rules.evaluator.routeCallingEveryMatch(request: bytes, now: pinnedNow))
                if p == "d" { #expect(decision == .noRoute) } else { #expect(decision != .noRoute) }
            }
        }
    }

    @Test("compiled matches share the decision's budget: a great many of them run out of it")
    func budget() throws {
        let routes = (0..<1_100).map {
            #"route "r\#($0)" { match = function(req) return req.p == "r\#($0)" end, target = "t" }"#
        }
        let rules = try compile(
            ["routes.lua": routes.joined(separator: "\n")], limits: hostileLimits(instructions: 1000))
        #expect(rules.evaluator.routeMatchIsCompiled(at: 1_099))
        #expect(try rules.route(["p": "r5"])?.name == "r5")
        #expect(throws: RuleFailure.self) { try rules.route(["p": "none"]) }
        do {
            _ = try rules.route(["p": "none"])
        } catch {
            #expect(error.code == .resourceLimit)
        }
    }

    @Test("a file that redefines starts_with keeps its own function")
    func redefinedHelper() throws {
        let rules = try compile([
            "routes.lua": """
            starts_with = function(s, prefix) return true end
            route "everything" { match = function(req) return starts_with(req.path, "/only/") end, target = "t" }
            """
        ])
        #expect(!rules.evaluator.routeMatchIsCompiled(at: 0))
        #expect(try rules.route(["path": "/elsewhere"])?.name == "everything")
    }

    @Test("a local helper named starts_with is not taken for the sandbox's")
    func localHelper() throws {
        let rules = try compile([
            "routes.lua": """
            local function starts_with(s, prefix) return s == prefix end
            route "exact" { match = function(req) return starts_with(req.path, "/a") end, target = "t" }
            """
        ])
        #expect(!rules.evaluator.routeMatchIsCompiled(at: 0))
        #expect(try rules.route(["path": "/abc"]) == nil)
        #expect(try rules.route(["path": "/a"])?.name == "exact")
    }

    @Test("randomized route sets route every request as calling each match function does")
    func randomizedRouteSets() throws {
        var random = TestRandom(seed: 0x5EED)
        var compiledCount = 0
        var routeCount = 0
        for _ in 0..<40 {
            let routes = (0..<Int(random.next() % 12 + 1)).map { index in
                RandomRoute.make(index: index, random: &random)
            }
            let rules = try compile(["routes.lua": routes.joined(separator: "\n")])
            routeCount += rules.ruleSet.routes.count
            compiledCount += rules.ruleSet.routes.indices.filter { rules.evaluator.routeMatchIsCompiled(at: $0) }.count
            for _ in 0..<60 {
                let request = Array(RandomRoute.request(random: &random).utf8)
                request.withUnsafeBytes { bytes in
                    let compiled = rules.evaluator.route(request: bytes, now: pinnedNow)
                    let reference = rules.evaluator.routeCallingEveryMatch(request: bytes, now: pinnedNow)
                    #expect(
                        compiled == reference,
                        "\(String(decoding: request, as: UTF8.self)) against\n\(routes.joined(separator: "\n"))")
                }
            }
        }
        // Most generated matches have a compilable shape; the rest exercise the fallback beside them.
        #expect(compiledCount > routeCount / 2)
        #expect(compiledCount < routeCount)
    }

    @Test("the example rules route as before, with their field tests compiled")
    func exampleRules() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "../../config/rules.d/routes.lua")
        let text = try String(contentsOf: url, encoding: .utf8)
        let rules = try compile(["routes.lua": text])
        let compiled = rules.ruleSet.routes.indices.filter { rules.evaluator.routeMatchIsCompiled(at: $0) }
            .map { rules.ruleSet.routes[$0].name }
        #expect(compiled == ["health", "admin-denied", "users", "orders-read", "static"])
        let methods = ["GET", "POST", "DELETE"]
        let paths = [
            "/healthz", "/readyz", "/admin/users", "/api/users/42", "/api/orders/7", "/static/app.js", "/x.css",
            "/home", "",
        ]
        for method in methods {
            for path in paths {
                for ip in ["10.20.3.4", "203.0.113.9"] {
                    let request = Array(
                        #"{"method":"\#(method)","path":"\#(path)","client_ip":"\#(ip)","headers":{"x-user-id":"u-42","x-region":"us","x-api-version":"2"}}"#
                            .utf8)
                    request.withUnsafeBytes { bytes in
                        #expect(
                            rules.evaluator.route(request: bytes, now: pinnedNow)
                                == rules.evaluator.routeCallingEveryMatch(request: bytes, now: pinnedNow))
                    }
                }
            }
        }
    }
}

/// A small deterministic generator (SplitMix64), so every run tries the same route sets.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func pick<T>(_ items: [T]) -> T { items[Int(next() % UInt64(items.count))] }
}

/// Random routes whose match functions mix the compilable shapes with some that are not.
enum RandomRoute {
    static let fields = ["method", "path", "flag", "missing"]
    static let literals = ["GET", "POST", "/a", "/a/b", "/b", "", "b"]

    static func field(_ param: String, _ random: inout TestRandom) -> String {
        let name = random.pick(fields)
        return random.next() % 4 == 0 ? "\(param)[\"\(name)\"]" : "\(param).\(name)"
    }

    static func atom(_ param: String, _ random: inout TestRandom) -> String {
        let field = field(param, &random)
        let literal = "\"\(random.pick(literals))\""
        switch random.next() % 12 {
        case 0: return "\(field) == \(literal)"
        case 1: return "\(literal) == \(field)"
        case 2: return "\(field) ~= \(literal)"
        case 3: return "starts_with(\(field), \(literal))"
        case 4: return "ends_with(\(field), \(literal))"
        case 5: return field
        case 6: return "\(field) == \(random.pick(["nil", "true", "false"]))"
        case 7: return "\(field) ~= \(random.pick(["nil", "true", "false"]))"
        case 8: return random.pick(["true", "false", "nil", "\"x\" == \"x\"", "\"x\" ~= \"y\""])
        case 9: return "tostring(\(field)) == \(literal)"  // calls into Lua
        case 10: return "(\(field) or \"\") == \(literal)"  // calls into Lua
        default: return "\(field) == \(literal)"
        }
    }

    static func expression(_ param: String, depth: Int, _ random: inout TestRandom) -> String {
        if depth > 2 || random.next() % 3 == 0 { return atom(param, &random) }
        let left = expression(param, depth: depth + 1, &random)
        let right = expression(param, depth: depth + 1, &random)
        switch random.next() % 4 {
        case 0: return "\(left) and \(right)"
        case 1: return "\(left) or \(right)"
        case 2: return "not (\(left))"
        default: return "(\(left)) and not \(right)"
        }
    }

    static func make(index: Int, random: inout TestRandom) -> String {
        let param = random.pick(["req", "r"])
        let priority = Int(random.next() % 5)
        let body = expression(param, depth: 0, &random)
        let match: String
        switch random.next() % 5 {
        case 0: match = "function(\(param))\n    return \(body)\n  end"
        case 1:
            match =
                "function(\(param))\n    local p = \(param).path\n    return starts_with(p, \"/a\") or \(body)\n  end"
        default: match = "function(\(param)) return \(body) end"
        }
        return """
            route "r\(index)" {
              priority = \(priority),
              match = \(match),
              target = "t\(index)",
            }
            """
    }

    static func request(random: inout TestRandom) -> String {
        var members: [String] = []
        for name in fields where random.next() % 5 != 0 {
            let value: String
            switch random.next() % 6 {
            case 0: value = "null"
            case 1: value = random.pick(["true", "false"])
            case 2: value = random.pick(["1", "2.5"])
            case 3: value = "{\"k\":1}"
            default: value = "\"\(random.pick(literals + ["/a/bc", "/ab", "xb", "GETX"]))\""
            }
            members.append("\"\(name)\":\(value)")
        }
        return "{" + members.joined(separator: ",") + "}"
    }
}
