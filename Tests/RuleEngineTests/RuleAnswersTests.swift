import RuleEngine
import RuleModel
import Testing

@Suite("Answers in JSON")
struct RuleAnswersTests {
    let rules: LoadedRules

    init() throws {
        rules = try compile([
            "f.lua": """
            flag "beta" {
              variants = { on = { limit = 10, label = "Beta \\"β\\"" }, off = { limit = 1 } }, default = "off",
              rule = function(ctx) if ctx.beta then return "on" end end,
            }
            flag "broken" { rule = function(ctx) error("bad \\"quote\\"\\n", 0) end }
            route "api" { match = function(req) return req.api end, target = "api-v2" }
            config "db.pool" { size = 10 }
            config "db.name" ("main")
            """
        ])
    }

    func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try JSONParser().parse(bytes)
    }

    /// The flag answer for `key`, as RuleAnswers writes it.
    func flagAnswer(_ key: String, _ context: JSONValue = [:]) throws -> JSONValue {
        let index = try #require(rules.ruleSet.flagIndex(forKey: key))
        let decision = try #require(rules.evaluator.evaluateFlag(key: key, context: context, now: pinnedNow))
        var out: [UInt8] = []
        RuleAnswers.appendFlag(rules.ruleSet, flag: index, decision, to: &out)
        return try parse(out)
    }

    @Test("a flag answer has key, value, variant, reason and source")
    func flagAnswer() throws {
        #expect(
            try flagAnswer("beta", ["beta": true]) == [
                "key": "beta", "value": ["label": "Beta \"β\"", "limit": 10], "variant": "on",
                "reason": "TARGETING_MATCH", "source": "f.lua:1",
            ])
    }

    @Test("a failed flag answer adds error_code and an escaped error_message, and serves the default value")
    func failedFlagAnswer() throws {
        let answer = try flagAnswer("broken")
        #expect(answer["value"] == false)
        #expect(answer["variant"] == "off")
        #expect(answer["reason"] == "ERROR")
        #expect(answer["error_code"] == "GENERAL")
        #expect(answer["error_message"] == #"bad "quote"\n"#)
    }

    @Test("the flags answer maps each key, in sorted order, to value, variant and reason")
    func flagsAnswer() throws {
        let decisions = try rules.evaluator.evaluateAllFlags(context: ["beta": true], now: pinnedNow).get()
        var out: [UInt8] = []
        RuleAnswers.appendFlags(rules.ruleSet, decisions, to: &out)
        let text = String(decoding: out, as: UTF8.self)
        #expect(text.hasPrefix(#"{"flags":{"beta":{"value":"#))
        let answer = try parse(out)
        #expect(answer["flags"]?["beta"]?["variant"] == "on")
        #expect(answer["flags"]?["beta"]?["source"] == nil)
        #expect(answer["flags"]?["broken"]?["error_code"] == "GENERAL")
        #expect(answer["flags"]?.objectValue?.keys == ["beta", "broken"])
    }

    @Test("a route answer has route, target and source")
    func routeAnswer() throws {
        var out: [UInt8] = []
        RuleAnswers.appendRoute(rules.ruleSet.routes[0], target: "api-v2", to: &out)
        #expect(try parse(out) == ["route": "api", "target": "api-v2", "source": "f.lua:6"])
    }

    @Test("a config answer has key and value; configs answer keys to values")
    func configAnswers() throws {
        var one: [UInt8] = []
        RuleAnswers.appendConfig(try #require(rules.ruleSet.config(key: "db.pool")), to: &one)
        #expect(try parse(one) == ["key": "db.pool", "value": ["size": 10]])
        var many: [UInt8] = []
        RuleAnswers.appendConfigs(rules.ruleSet.configs(prefix: "db."), to: &many)
        #expect(String(decoding: many, as: UTF8.self) == #"{"values":{"db.name":"main","db.pool":{"size":10}}}"#)
    }

    @Test("an error answer has code, message and any extra fields")
    func errorAnswer() throws {
        var out: [UInt8] = []
        RuleAnswers.appendError(code: "X", message: "m \"q\"", extra: [("route", "r")], to: &out)
        #expect(try parse(out) == ["code": "X", "message": "m \"q\"", "route": "r"])
    }

    @Test("not-found and no-route errors have stable codes")
    func notFound() {
        #expect(RuleAnswers.flagNotFound("f").code == "FLAG_NOT_FOUND")
        #expect(RuleAnswers.flagNotFound("f").message.contains("'f'"))
        #expect(RuleAnswers.configNotFound("c").code == "CONFIG_NOT_FOUND")
        #expect(RuleAnswers.configPrefixNotFound("db.").code == "CONFIG_NOT_FOUND")
        #expect(RuleAnswers.configPrefixNotFound("db.").message.contains("'db.'"))
        #expect(RuleAnswers.noRoute.code == "NO_ROUTE")
    }

    @Test("a route failure is RULE_ERROR carrying the rule's code, the route and its source")
    func routeFailure() throws {
        let failure = RuleFailure(code: .resourceLimit, message: "resource limit: time limit exceeded")
        let error = RuleAnswers.routeFailure(rules.ruleSet.routes[0], failure)
        #expect(error.code == "RULE_ERROR")
        #expect(error.message == "route 'api': resource limit: time limit exceeded")
        var out: [UInt8] = []
        RuleAnswers.appendError(code: error.code, message: error.message, extra: error.extra, to: &out)
        let answer = try parse(out)
        #expect(answer["rule_error_code"] == "RESOURCE_LIMIT")
        #expect(answer["route"] == "api")
        #expect(answer["source"] == "f.lua:6")
        let anonymous = RuleAnswers.routeFailure(nil, failure)
        #expect(anonymous.extra.map(\.0) == ["rule_error_code"])
    }
}
