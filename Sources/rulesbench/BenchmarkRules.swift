import RuleModel

/// The rule set the benchmarks use: the same decisions as the C ceiling's representative rules, written
/// against rulesd's rule API (targeting, percentage rollouts with the native hash, semver checks), plus a
/// routing table of 50 routes and some config values.
enum BenchmarkRules {
    static let flags = """
        local CHECKOUT_COUNTRIES = { DE = true, FR = true, NL = true }
        local TEAM_PLANS = { team = true, enterprise = true }
        local BETA_USERS = { ["u-0000001"] = true, ["u-0000042"] = true, ["u-0012345"] = true }
        local EU = { AT = true, BE = true, DE = true, ES = true, FR = true, IT = true, NL = true, PL = true, SE = true }

        flag "new-checkout" {
          description = "targeting plus a sticky 30% rollout",
          rule = function(ctx)
            if CHECKOUT_COUNTRIES[ctx.country] and ctx.plan ~= "free" then
              return rollout(ctx.user, 30) and "on" or "off"
            end
            return "off"
          end,
        }
        flag "dark-mode" { default = "on" }
        flag "team-sharing" {
          rule = function(ctx) if TEAM_PLANS[ctx.plan] then return "on" end return "off" end,
        }
        flag "beta-search" {
          rule = function(ctx)
            if BETA_USERS[ctx.user] or ctx.plan == "enterprise" then return "on" end
          end,
        }
        flag "pricing-v2" {
          rule = function(ctx)
            if semver.match(ctx.version, ">=", "2.4.0") and rollout(ctx.user, 50) then return "on" end
          end,
        }
        flag "eu-consent-banner" { rule = function(ctx) if EU[ctx.country] then return "on" end end }
        flag "recommendations" {
          variants = { a = "model-a", b = "model-b", c = "model-c" }, default = "a",
          rule = function(ctx) return split(ctx.user, { { "b", 10 }, { "c", 10 }, { "a", 80 } }) end,
        }
        """

    static var routes: String {
        var text = ""
        for index in 0..<49 {
            text += """
                route "r\(index)" {
                  priority = \(100 - index),
                  match = function(req) return req.method == "GET" and starts_with(req.path, "/svc\(index)/") end,
                  target = "backend-\(index)",
                }

                """
        }
        text += """
            route "default" {
              match = function(req) return true end,
              target = function(req) return split(req.user, { { "web-a", 70 }, { "web-b", 30 } }) end,
            }
            """
        return text
    }

    static let configs = """
        config "http.timeout_ms" (1500)
        config "db.pool" { size = 10, idle_s = 30 }
        """

    static var sources: [RuleSource] {
        [
            RuleSource(path: "flags.lua", content: Array(flags.utf8)),
            RuleSource(path: "routes.lua", content: Array(routes.utf8)),
            RuleSource(path: "config.lua", content: Array(configs.utf8)),
        ]
    }

    /// Contexts that pass new-checkout's targeting, so its rollout hash runs on every call (like the C
    /// ceiling's `flag1` requests).
    static func contexts(count: Int) -> [[UInt8]] {
        var random = SplitMix(seed: 42)
        let countries = ["DE", "FR", "NL"]
        let plans = ["pro", "team", "enterprise"]
        let versions = ["2.3.1", "2.4.0", "3.0.0", "1.9.9"]
        return (0..<count).map { _ in
            let user = String(random.next() % 10_000_000)
            let padded = String(repeating: "0", count: 7 - user.count) + user
            let text =
                #"{"user":"u-\#(padded)","country":"\#(countries[Int(random.next() % 3)])","#
                + #""plan":"\#(plans[Int(random.next() % 3)])","version":"\#(versions[Int(random.next() % 4)])"}"#
            return Array(text.utf8)
        }
    }

    /// Requests that fall through most of the 50 routes, so routing does real work.
    static func routeRequests(count: Int) -> [[UInt8]] {
        var random = SplitMix(seed: 7)
        return (0..<count).map { _ in
            let service = Int(random.next() % 60)
            let text =
                #"{"method":"GET","path":"/svc\#(service)/items/\#(random.next() % 1000)","user":"u-\#(random.next() % 100000)","#
                + #""headers":{"accept":"application/json"}}"#
            return Array(text.utf8)
        }
    }
}

/// A small deterministic generator, so benchmark inputs are the same on every run.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
