import RuleEngine
import RuleModel
import Testing

@Suite("Contexts and requests")
struct ContextTests {
    /// A rule that logs what it sees of `expression`, evaluated for a context given as JSON text.
    func observe(_ expression: String, json: String) throws -> (FlagAnswer, String?) {
        let rules = try compile(["c.lua": "flag \"x\" { rule = function(ctx) log(tostring(\(expression))) end }"])
        let answer = try rules.flag("x", rawContext: Array(json.utf8))
        return (answer, rules.logs().first)
    }

    @Test("integers stay integers and decimals stay floats")
    func numberTypes() throws {
        #expect(try observe("math.type(ctx.n)", json: #"{"n": 5}"#).1 == "integer")
        #expect(try observe("math.type(ctx.n)", json: #"{"n": 5.0}"#).1 == "float")
        #expect(try observe("math.type(ctx.n)", json: #"{"n": 5e0}"#).1 == "float")
        #expect(try observe("ctx.n == math.mininteger", json: #"{"n": -9223372036854775808}"#).1 == "true")
        #expect(try observe("ctx.n // 2", json: #"{"n": 9223372036854775807}"#).1 == "4611686018427387903")
    }

    @Test("integers read exactly on both sides of the 18 digits read without strtoll")
    func integerDigits() throws {
        for text in [
            "0", "-0", "7", "-7", "123456789012345678", "-123456789012345678", "999999999999999999",
            "-999999999999999999", "1234567890123456789", "-1234567890123456789", "9223372036854775807",
        ] {
            let expected = text == "-0" ? "0" : text
            #expect(
                try observe("math.type(ctx.n) .. ' ' .. ctx.n", json: #"{"n":\#(text)}"#).1 == "integer \(expected)")
            #expect(try observe("ctx.list[2]", json: #"{"list":[1,\#(text)]}"#).1 == expected)
        }
    }

    @Test("integers beyond 64 bits become floats instead of wrapping around")
    func hugeIntegers() throws {
        let (_, seen) = try observe(
            "math.type(ctx.n) .. ' ' .. tostring(ctx.n > 1e19)", json: #"{"n": 12345678901234567890}"#)
        #expect(seen == "float true")
        let (_, negative) = try observe("ctx.n < -1e30", json: #"{"n": -1234567890123456789012345678901234567890}"#)
        #expect(negative == "true")
    }

    @Test("numbers too large for a double are an INVALID_CONTEXT error")
    func outOfRange() throws {
        let (answer, _) = try observe("ctx.n", json: #"{"n": 1e400}"#)
        #expect(answer.code == .invalidContext)
        #expect(answer.message?.contains("out of range") == true)
    }

    @Test("NaN and Infinity are not JSON and are refused")
    func nanRefused() throws {
        for json in [#"{"n": NaN}"#, #"{"n": Infinity}"#, #"{"n": -Infinity}"#] {
            let (answer, _) = try observe("ctx.n", json: json)
            #expect(answer.code == .invalidContext, "\(json)")
        }
    }

    @Test("null members are absent, in objects and arrays alike")
    func nullIsAbsent() throws {
        #expect(try observe("ctx.gone == nil and next(ctx) == 'kept'", json: #"{"gone": null, "kept": 1}"#).1 == "true")
        #expect(
            try observe("ctx.a[1] .. ' ' .. tostring(ctx.a[2]) .. ' ' .. ctx.a[3]", json: #"{"a": [1, null, 3]}"#).1
                == "1 nil 3")
    }

    @Test("nested objects and arrays become tables, readable with pairs, ipairs and #")
    func nestedTables() throws {
        let json = #"{"user": {"name": "ann", "roles": ["a", "b", "c"]}}"#
        #expect(try observe("#ctx.user.roles .. ctx.user.roles[3]", json: json).1 == "3c")
        let count = "(function() local n = 0 for _ in pairs(ctx.user) do n = n + 1 end return n end)()"
        #expect(try observe(count, json: json).1 == "2")
        let joined = "(function() local s = '' for _, r in ipairs(ctx.user.roles) do s = s .. r end return s end)()"
        #expect(try observe(joined, json: json).1 == "abc")
    }

    @Test("the context is read-only at every depth, and its metatable is hidden")
    func readOnly() throws {
        let rules = try compile([
            "c.lua": """
            flag "top" { rule = function(ctx) ctx.x = 1 end }
            flag "nested" { rule = function(ctx) ctx.user.name = "eve" end }
            flag "raw" { rule = function(ctx) rawset(ctx.user, "name", "eve") end }
            flag "meta" { rule = function(ctx)
              return getmetatable(ctx) == false and getmetatable(ctx.user) == false and "on" or "off"
            end }
            flag "setmeta" { rule = function(ctx) setmetatable(ctx, nil) end }
            """
        ])
        let context: JSONValue = ["user": ["name": "ann"]]
        for key in ["top", "nested", "raw", "setmeta"] {
            #expect(try rules.flag(key, context).code == .general, "\(key)")
        }
        #expect(try rules.flag("meta", context).variant == "on")
    }

    @Test("an empty context (no bytes) is an empty table")
    func emptyContext() throws {
        #expect(try observe("next(ctx) == nil", json: "").1 == "true")
        #expect(try observe("next(ctx) == nil", json: "  {}  ").1 == "true")
    }

    @Test(
        "a context that is not a JSON object is INVALID_CONTEXT",
        arguments: [
            "[1, 2]", "\"text\"", "42", "null", "{", "{\"a\": 1} trailing", "{\"a\": 1, \"a\": 2}", "{'a': 1}",
            "{\"a\": \"\\x\"}",
        ])
    func notAnObject(_ json: String) throws {
        let (answer, _) = try observe("ctx", json: json)
        #expect(answer.reason == .error)
        #expect(answer.code == .invalidContext)
    }

    @Test("a context nested deeper than the limit is INVALID_CONTEXT")
    func tooDeep() throws {
        var limits = RuleEngineLimits()
        limits.maxContextDepth = 8
        let rules = try compileWithCanary(#"flag "hostile" { rule = function(ctx) return "on" end }"#, limits: limits)
        let ok = String(repeating: "[", count: 7) + String(repeating: "]", count: 7)
        #expect(try rules.flag("hostile", rawContext: Array("{\"a\":\(ok)}".utf8)).variant == "on")
        let deep = String(repeating: "[", count: 8) + String(repeating: "]", count: 8)
        let answer = try rules.flag("hostile", rawContext: Array("{\"a\":\(deep)}".utf8))
        #expect(answer.code == .invalidContext)
        #expect(answer.message?.contains("nested deeper than 8 levels") == true)
        try expectCanaryAnswers(rules)
    }

    @Test("a context a million levels deep is refused without exhausting the C stack")
    func absurdlyDeep() throws {
        let rules = try compileWithCanary(#"flag "hostile" { rule = function(ctx) return "on" end }"#)
        let deep = "{\"a\":" + String(repeating: "[", count: 1_000_000) + String(repeating: "]", count: 1_000_000) + "}"
        #expect(try rules.flag("hostile", rawContext: Array(deep.utf8)).code == .invalidContext)
        try expectCanaryAnswers(rules)
    }

    @Test("a context with more values than the limit is INVALID_CONTEXT")
    func tooManyValues() throws {
        var limits = RuleEngineLimits()
        limits.maxContextValues = 100
        let rules = try compileWithCanary(#"flag "hostile" { rule = function(ctx) return "on" end }"#, limits: limits)
        let small = "{\"a\":[" + Array(repeating: "1", count: 90).joined(separator: ",") + "]}"
        #expect(try rules.flag("hostile", rawContext: Array(small.utf8)).variant == "on")
        let big = "{\"a\":[" + Array(repeating: "1", count: 200).joined(separator: ",") + "]}"
        #expect(try rules.flag("hostile", rawContext: Array(big.utf8)).code == .invalidContext)
        try expectCanaryAnswers(rules)
    }

    @Test("a context of exactly the limit's number of values is accepted; one more is INVALID_CONTEXT")
    func valuesAtTheLimit() throws {
        var limits = RuleEngineLimits()
        limits.maxContextValues = 100
        let rules = try compileWithCanary(
            #"flag "hostile" { rule = function(ctx) return ctx.k99 == 99 and "on" or "off" end }"#, limits: limits)
        func context(members: Int) -> [UInt8] {
            Array(("{" + (0..<members).map { "\"k\($0)\":\($0)" }.joined(separator: ",") + "}").utf8)
        }
        #expect(try rules.flag("hostile", rawContext: context(members: 100)).variant == "on")
        let answer = try rules.flag("hostile", rawContext: context(members: 101))
        #expect(answer.code == .invalidContext)
        #expect(answer.message?.contains("more than 100 values") == true)
        // String members the last context set are kept as they are, and still counted.
        func strings(members: Int) -> [UInt8] {
            Array(("{" + (0..<members).map { "\"k\($0)\":\"v\($0)\"" }.joined(separator: ",") + "}").utf8)
        }
        for _ in 0..<3 { #expect(try rules.flag("hostile", rawContext: strings(members: 100)).variant == "off") }
        let kept = try rules.flag("hostile", rawContext: strings(members: 101))
        #expect(kept.message?.contains("more than 100 values (at byte 1188)") == true, "\(kept.message ?? "")")
        try expectCanaryAnswers(rules)
    }

    @Test("a context of 10,000 members passes the default limits")
    func tenThousandMembersByDefault() throws {
        let rules = try compileWithCanary(#"flag "hostile" { rule = function(ctx) return "on" end }"#)
        let members = (0..<10_000).map { "\"k\($0)\":true" }.joined(separator: ",")
        #expect(try rules.flag("hostile", rawContext: Array("{\(members)}".utf8)).variant == "on")
        try expectCanaryAnswers(rules)
    }

    @Test("an oversized context under the default limits is refused, not converted")
    func oversizedDefault() throws {
        let rules = try compileWithCanary(#"flag "hostile" { rule = function(ctx) return "on" end }"#)
        let big = "{\"a\":[" + Array(repeating: "0", count: 50_000).joined(separator: ",") + "]}"
        #expect(try rules.flag("hostile", rawContext: Array(big.utf8)).code == .invalidContext)
        try expectCanaryAnswers(rules)
    }

    @Test(
        "invalid UTF-8 in a context string or key is INVALID_CONTEXT",
        arguments: [
            [0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82],
        ] as [[UInt8]])
    func invalidUTF8(_ bad: [UInt8]) throws {
        let rules = try compileWithCanary(#"flag "hostile" { rule = function(ctx) return "on" end }"#)
        let inValue = Array(#"{"user": "a"#.utf8) + bad + Array(#""}"#.utf8)
        #expect(try rules.flag("hostile", rawContext: inValue).code == .invalidContext)
        let inKey = Array(#"{"a"#.utf8) + bad + Array(#"": 1}"#.utf8)
        #expect(try rules.flag("hostile", rawContext: inKey).code == .invalidContext)
        try expectCanaryAnswers(rules)
    }

    @Test("escaped strings decode, including surrogate pairs; lone surrogates are refused")
    func escapes() throws {
        #expect(try observe("ctx.s", json: #"{"s": "a\u00e9\ud83d\ude00\n"}"#).1 == "aé😀\\n")
        #expect(try observe("ctx.s", json: #"{"s": "\ud800"}"#).0.code == .invalidContext)
    }

    @Test("context strings may hold NUL bytes without being cut short")
    func nulBytes() throws {
        #expect(try observe("#ctx.s", json: #"{"s": "a\u0000b"}"#).1 == "3")
    }

    @Test("a request for routing has the same limits as a context")
    func requestLimits() throws {
        var limits = RuleEngineLimits()
        limits.maxContextDepth = 4
        let rules = try compile(["r.lua": #"route "r" { target = "t" }"#], limits: limits)
        let deep = Array(#"{"a":[[[[[1]]]]]}"#.utf8)
        guard
            case .failed(_, let failure) = deep.withUnsafeBytes({ rules.evaluator.route(request: $0, now: pinnedNow) })
        else {
            Issue.record("a too-deep request was accepted")
            return
        }
        #expect(failure.code == .invalidContext)
    }
}
