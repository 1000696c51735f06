import RuleModel
import Testing

@testable import RuleEngine

/// Contexts are checked whole but converted member by member on first read; whatever rules can observe must be what
/// the whole conversion gives: values, absent and null members, nested objects, pairs and next, rawget and #, the
/// read-only refusal, and every error of a context that is not valid or too large.
@Suite("Contexts converted on first read")
struct LazyContextTests {
    /// Rules that read contexts every way they can, and report what they saw: a flag through its log lines, a route
    /// through its target.
    static let rules = """
        local function describe(v, depth)
          if type(v) ~= "table" then return type(v) .. ":" .. tostring(v) end
          if depth > 4 then return "..." end
          local parts = {}
          for k, x in pairs(v) do parts[#parts + 1] = tostring(k) .. "=" .. describe(x, depth + 1) end
          return "{" .. table.concat(parts, ",") .. "|" .. #v .. "}"
        end

        local function look(ctx)
          local mode = ctx.mode
          local seen = { describe(ctx.a, 0), describe(ctx.b, 0), describe(ctx.missing, 0), describe(ctx["é"], 0) }
          if type(ctx.o) == "table" then
            seen[#seen + 1] = describe(ctx.o.x, 0)
            seen[#seen + 1] = tostring(ctx.o == ctx.o)
            seen[#seen + 1] = describe(rawget(ctx.o, "y"), 0)
          end
          if mode == 1 then
            seen[#seen + 1] = describe(ctx, 0)
          elseif mode == 2 then
            local k, v = next(ctx)
            seen[#seen + 1] = tostring(k) .. "=" .. describe(v, 0)
            seen[#seen + 1] = tostring(next(ctx, k))
          elseif mode == 3 then
            seen[#seen + 1] = describe(rawget(ctx, "a"), 0) .. "#" .. #ctx
          elseif mode == 4 then
            local ok, err = pcall(function() ctx.a = 1 end)
            seen[#seen + 1] = tostring(ok) .. tostring(err)
            seen[#seen + 1] = tostring(getmetatable(ctx))
          end
          seen[#seen + 1] = describe(ctx.a, 0)
          seen[#seen + 1] = describe(ctx, 0)
          return table.concat(seen, ";")
        end

        flag "probe" {
          rule = function(ctx)
            local text = look(ctx)
            for i = 1, #text, 400 do log(text:sub(i, i + 399)) end
            return #text % 2 == 0 and "on" or "off"
          end,
        }
        flag "reads-one" { rule = function(ctx) if ctx.a == 1 then return "on" end end }
        route "probe" { match = function(req) return req.route == true end, target = function(req) return look(req):sub(1, 1000) end }
        route "compiled" { match = function(req) return req.a == "x" or starts_with(req.b, "y") end, target = "compiled" }
        """

    struct Observation: Equatable {
        var flags: [FlagDecision]
        var logs: [String]
        var all: String
        var route: RouteDecision
    }

    static func observe(_ rules: LoadedRules, _ context: [UInt8]) -> Observation {
        let evaluator = rules.evaluator
        return context.withUnsafeBytes { bytes in
            let flags = rules.ruleSet.flags.indices.map {
                evaluator.evaluateFlag(at: $0, context: bytes, now: pinnedNow)
            }
            let logs = evaluator.takeLogs().map(\.text)
            let all: String
            switch evaluator.evaluateAllFlags(context: bytes, now: pinnedNow) {
            case .success(let decisions): all = "\(decisions)"
            case .failure(let failure): all = "\(failure)"
            }
            _ = evaluator.takeLogs()
            return Observation(
                flags: flags, logs: logs, all: all, route: evaluator.route(request: bytes, now: pinnedNow))
        }
    }

    /// The same context observed through the whole conversion and the lazy one.
    static func expectSame(
        _ context: [UInt8], whole: LoadedRules, lazy: LoadedRules,
        sourceLocation: Testing.SourceLocation = #_sourceLocation
    ) {
        let expected = observe(whole, context)
        let actual = observe(lazy, context)
        #expect(
            actual == expected, "context \(String(decoding: context, as: UTF8.self))", sourceLocation: sourceLocation)
    }

    static func pair(limits: RuleEngineLimits = RuleEngineLimits()) throws -> (whole: LoadedRules, lazy: LoadedRules) {
        let whole = try compile(["probe.lua": rules], limits: limits)
        whole.evaluator.setContextConversion(.whole)
        let lazy = try compile(["probe.lua": rules], limits: limits)
        lazy.evaluator.setContextConversion(.lazy)
        return (whole, lazy)
    }

    @Test("a member is converted on its first read and is the same value on every read")
    func readsAndIdentity() throws {
        let (whole, lazy) = try Self.pair()
        let context = Array(#"{"a":"x","b":[1,2,{"c":null}],"o":{"x":{"deep":true},"y":2.5},"missing":null}"#.utf8)
        Self.expectSame(context, whole: whole, lazy: lazy)
        let observed = Self.observe(lazy, context)
        #expect(observed.logs.joined().contains("true"))
        if case .matched(_, let target) = observed.route {
            #expect(target == "compiled")
        } else {
            Issue.record("no route")
        }
    }

    @Test("pairs, next, rawget and # see every member, read or not", arguments: [1, 2, 3, 4])
    func walks(mode: Int) throws {
        let (whole, lazy) = try Self.pair()
        let context = Array(
            #"{"mode":\#(mode),"z":1,"a":"x","\u00e9":"e","k\"q":[true,false],"o":{"x":1},"n":null,"route":true}"#.utf8
        )
        Self.expectSame(context, whole: whole, lazy: lazy)
        if case .matched(_, let target) = Self.observe(lazy, context).route {
            #expect(target.contains("z=number:1"))
        } else {
            Issue.record("the probe route did not match")
        }
    }

    @Test("invalid contexts fail with the same error, whichever member holds the problem")
    func errors() throws {
        let (whole, lazy) = try Self.pair()
        let contexts = [
            #"{"a":1,"a":2}"#, #"{"a":1,"\u0061":2}"#, #"{"o":{"x":1,"x":2},"a":1}"#, #"{"a":1,"b":"\x"}"#,
            #"{"a":1,"b":1e999}"#, #"{"a":1,"b":[1,]}"#, #"{"a":1,"b":{"c"}}"#, #"{"a":1} x"#, #"[1]"#,
            #"{"a":"\ud800"}"#,
            #"{"a":1,"b":"unterminated"#, "{\"a\":\"\u{01}\"}", #"{"a":1,}"#, #"{"a":tru}"#, "   ", "",
            #"{"a":1,"b":-}"#, #"{"a":123456789012345678901234567890}"#, #"{"a":"\"#,
        ]
        for text in contexts { Self.expectSame(Array(text.utf8), whole: whole, lazy: lazy) }
        Self.expectSame([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D], whole: whole, lazy: lazy)
    }

    @Test("the depth and value limits fail lazily read contexts with the same errors")
    func limits() throws {
        var limits = RuleEngineLimits()
        limits.maxContextDepth = 3
        limits.maxContextValues = 6
        let (whole, lazy) = try Self.pair(limits: limits)
        let contexts = [
            #"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}"#, #"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7}"#,
            #"{"o":{"x":{"y":1}}}"#, #"{"o":{"x":{"y":{}}}}"#, #"{"a":[[[]]]}"#, #"{"a":[1,2,3],"b":[4,5]}"#,
        ]
        for text in contexts { Self.expectSame(Array(text.utf8), whole: whole, lazy: lazy) }
    }

    @Test("randomized contexts answer alike converted whole and on first read")
    func randomized() throws {
        var limits = RuleEngineLimits()
        limits.maxContextDepth = 5
        limits.maxContextValues = 40
        let (whole, lazy) = try Self.pair(limits: limits)
        var random = TestRandom(seed: 0x1A2F)
        for _ in 0..<1_500 {
            var text = RandomContext.object(&random, depth: 0)
            if random.next() % 5 == 0 { RandomContext.mutate(&text, &random) }
            Self.expectSame(text, whole: whole, lazy: lazy)
        }
    }

    @Test("the default converts small contexts whole and large ones lazily, with the same answers")
    func bySize() throws {
        let (whole, _) = try Self.pair()
        let bySize = try compile(["probe.lua": Self.rules])
        var random = TestRandom(seed: 0xB1)
        for fields in [1, 4, 16, 64] {
            let members = (0..<fields).map { #""f\#($0)":"v\#(random.next() % 100)""# }
            let text = "{\"mode\":\(random.next() % 5),\"a\":1," + members.joined(separator: ",") + "}"
            Self.expectSame(Array(text.utf8), whole: whole, lazy: bySize)
        }
    }
}

/// Random JSON objects with the keys the probe rules read, escapes, nulls, nesting, odd numbers and duplicates.
enum RandomContext {
    static let keys = [
        "a", "b", "o", "x", "y", "missing", "mode", "route", "\\u0061", "\\u00e9", "é", "k\\\"q", "long-key-name",
    ]

    static func value(_ random: inout TestRandom, depth: Int) -> [UInt8] {
        switch random.next() % 12 {
        case 0: return Array("null".utf8)
        case 1: return Array((random.next() % 2 == 0 ? "true" : "false").utf8)
        case 2: return Array(String(Int64(bitPattern: random.next()) >> Int(random.next() % 64)).utf8)
        case 3: return Array(random.pick(["1.5", "-0", "2e3", "1E-7", "0.1", "123456789012345678901", "1e400"]).utf8)
        case 4: return Array(String(random.next() % 5).utf8)
        case 5, 6: return object(&random, depth: depth + 1)
        case 7:
            let items = (0..<Int(random.next() % 4)).map { _ in value(&random, depth: depth + 1) }
            return Array("[".utf8) + Array(items.joined(separator: Array(",".utf8))) + Array("]".utf8)
        default:
            return Array(
                random.pick([#""x""#, #""y-z""#, #""\n\t\"""#, #""\u00e9\ud83d\ude00""#, #""""#, #""é""#]).utf8)
        }
    }

    static func object(_ random: inout TestRandom, depth: Int) -> [UInt8] {
        if depth > 6 { return Array("{}".utf8) }
        let count = Int(random.next() % (depth == 0 ? 9 : 4))
        var members: [[UInt8]] = []
        for _ in 0..<count {
            let key = random.pick(keys)
            let member = depth == 0 && key == "mode" ? String(random.next() % 5) : nil
            let text = member.map { Array($0.utf8) } ?? value(&random, depth: depth)
            members.append(Array("\"\(key)\":".utf8) + text)
        }
        return Array("{".utf8) + Array(members.joined(separator: Array(",".utf8))) + Array("}".utf8)
    }

    /// Breaks the text at a random place: a byte changed, dropped or cut off.
    static func mutate(_ text: inout [UInt8], _ random: inout TestRandom) {
        guard !text.isEmpty else { return }
        let at = Int(random.next() % UInt64(text.count))
        switch random.next() % 3 {
        case 0: text[at] = random.pick(Array("{}[]\",:\\ 0a".utf8) + [0x01, 0xFF])
        case 1: text.remove(at: at)
        default: text.removeSubrange(at...)
        }
    }
}
