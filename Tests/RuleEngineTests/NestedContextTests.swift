import RuleEngine
import RuleModel
import Testing

/// Nested objects of a context are read-only views whose proxies a state reuses from one evaluation to the next:
/// each evaluation must see only its own objects, distinct from one another.
@Suite("Nested context objects")
struct NestedContextTests {
    static let rules = """
        flag "nested" {
          variants = { none = "", a = "a", b = "b", both = "both", same = "same" }, default = "none",
          rule = function(ctx)
            if ctx.a and ctx.b then
              if ctx.a == ctx.b then return "same" end
              return "both"
            end
            if ctx.a and ctx.a.x == 1 and ctx.a.y == nil then return "a" end
            if ctx.b and ctx.b.y == 2 and ctx.b.x == nil then return "b" end
          end,
        }
        flag "deep" {
          variants = { none = 0, found = 1 }, default = "none",
          rule = function(ctx)
            local o = ctx
            for _, name in ipairs({ "l1", "l2", "l3" }) do
              o = o[name]
              if o == nil then return nil end
            end
            if o.v == ctx.want then return "found" end
          end,
        }
        """

    @Test("each evaluation sees its own nested objects, never the previous one's")
    func ownObjects() throws {
        let rules = try compile(["flags.lua": Self.rules])
        #expect(try rules.flag("nested", ["a": ["x": 1]]).variant == "a")
        #expect(try rules.flag("nested", ["b": ["y": 2]]).variant == "b")
        #expect(try rules.flag("nested", ["a": ["x": 1, "y": 3]]).variant == "none")
        #expect(try rules.flag("nested", [:]).variant == "none")
        #expect(try rules.flag("nested", ["a": [:], "b": [:]]).variant == "both")
        #expect(try rules.flag("deep", ["l1": ["l2": ["l3": ["v": "x"]]], "want": "x"]).variant == "found")
        #expect(try rules.flag("deep", ["l1": ["l2": ["l3": ["v": "y"]]], "want": "x"]).variant == "none")
        #expect(try rules.flag("deep", ["l1": ["l2": [:]], "want": "x"]).variant == "none")
    }

    @Test("more nested objects than the pool holds are read-only views too")
    func beyondThePool() throws {
        let rules = try compile([
            "flags.lua": """
            flag "many" {
              variants = { ok = true, bad = false }, default = "bad",
              rule = function(ctx)
                for i = 1, #ctx.list do
                  if ctx.list[i].n ~= i then return "bad" end
                  if not pcall(function() ctx.list[i].n = 0 end) == false then return "bad" end
                end
                return "ok"
              end,
            }
            """
        ])
        let list = JSONValue.array((1...150).map { ["n": .number(Double($0))] })
        #expect(try rules.flag("many", ["list": list]).variant == "ok")
        #expect(try rules.flag("many", ["list": .array(Array(list.arrayValue!.prefix(3)))]).variant == "ok")
    }

    @Test("a function test keeps the tables its queries returned while it asks more")
    func functionTestKeepsItsTables() throws {
        let (_, evaluator) = try RuleCompiler.compile(
            sources([
                "rules.lua": """
                config "obj" { k = { v = 1 } }
                route "r" { match = function(req) return req.h.x == "1" end, target = "t" }
                flag "f" { rule = function(ctx) if ctx.o.p == 2 then return "on" end end }
                test "kept" (function()
                  local obj = config("obj")
                  expect(route({ h = { x = "1" } })).to_equal({ name = "r", target = "t" })
                  expect(flag("f", { o = { p = 2 } }).variant).to_equal("on")
                  expect(obj.k.v).to_equal(1)
                end)
                """
            ]))
        let report = RuleTestRunner.run(in: evaluator)
        #expect(report.results.count == 1)
        #expect(report.allPassed, "\(report.results.compactMap(\.failure))")
    }
}
