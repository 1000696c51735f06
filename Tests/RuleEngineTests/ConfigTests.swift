import RuleEngine
import RuleModel
import Testing

@Suite("Config values")
struct ConfigTests {
    let rules: LoadedRules

    init() throws {
        rules = try compile([
            "config/http.lua": """
            config "http.timeout_ms" (1500)
            config "http.retries" (3)
            config "http.base_url" ("https://example.test")
            """,
            "config/db.lua": """
            config "db.pool" { size = 10, idle_s = 30 }
            config "db.replicas" { "r1", "r2" }
            config "db.ratio" (0.75)
            config "db.enabled" (true)
            config "dbx" ({})
            """,
        ])
    }

    @Test("config(key) returns a scalar value exactly as declared")
    func scalar() throws {
        #expect(rules.ruleSet.config(key: "http.timeout_ms")?.value == .integer(1500))
        #expect(rules.ruleSet.config(key: "http.base_url")?.value == "https://example.test")
        #expect(rules.ruleSet.config(key: "db.ratio")?.value == .number(0.75))
        #expect(rules.ruleSet.config(key: "db.enabled")?.value == true)
    }

    @Test("config(key) returns table values shaped like JSON objects and arrays")
    func tables() throws {
        #expect(rules.ruleSet.config(key: "db.pool")?.value == ["idle_s": 30, "size": 10])
        #expect(rules.ruleSet.config(key: "db.replicas")?.value == ["r1", "r2"])
        #expect(rules.ruleSet.config(key: "dbx")?.value == .object(JSONObject()))
    }

    @Test("config values are kept as canonical JSON")
    func canonicalJSON() throws {
        let entry = try #require(rules.ruleSet.config(key: "db.pool"))
        #expect(String(decoding: entry.json, as: UTF8.self) == #"{"idle_s":30,"size":10}"#)
    }

    @Test("a config value's source is its file and line")
    func location() throws {
        #expect(rules.ruleSet.config(key: "db.replicas")?.location.description == "config/db.lua:2")
    }

    @Test("an unknown config key has no value")
    func unknownKey() {
        #expect(rules.ruleSet.config(key: "http") == nil)
        #expect(rules.ruleSet.config(key: "nope") == nil)
    }

    @Test("configs(prefix:) returns every key starting with the prefix, sorted by key")
    func prefix() {
        #expect(
            rules.ruleSet.configs(prefix: "http.").map(\.key) == ["http.base_url", "http.retries", "http.timeout_ms"])
        #expect(
            rules.ruleSet.configs(prefix: "db").map(\.key) == [
                "db.enabled", "db.pool", "db.ratio", "db.replicas", "dbx",
            ])
        #expect(rules.ruleSet.configs(prefix: "db.").count == 4)
    }

    @Test("configs(prefix:) with an empty prefix returns everything, and with no match nothing")
    func prefixEdges() {
        #expect(rules.ruleSet.configs(prefix: "").count == 8)
        #expect(rules.ruleSet.configs(prefix: "zzz").isEmpty)
        #expect(rules.ruleSet.configs(prefix: "http.timeout_ms.more").isEmpty)
        #expect(rules.ruleSet.configs(prefix: "http.timeout_ms").map(\.key) == ["http.timeout_ms"])
    }

    @Test("configs(prefix:) compares bytes, so non-ASCII keys group correctly")
    func prefixBytes() throws {
        let rules = try compile([
            "c.lua": """
            config "é.a" (1)
            config "e.b" (2)
            config "é.c" (3)
            config "f" (4)
            """
        ])
        #expect(rules.ruleSet.configs(prefix: "é.").map(\.key) == ["é.a", "é.c"])
        #expect(rules.ruleSet.configs(prefix: "e").map(\.key) == ["e.b"])
    }

    @Test("huge integers and the integer extremes survive as exact integers")
    func integerExtremes() throws {
        let rules = try compile([
            "c.lua": """
            config "max" (math.maxinteger)
            config "min" (math.mininteger)
            config "float" (2^63)
            """
        ])
        #expect(rules.ruleSet.config(key: "max")?.value == .integer(Int64.max))
        #expect(rules.ruleSet.config(key: "min")?.value == .integer(Int64.min))
        #expect(rules.ruleSet.config(key: "float")?.value == .number(9_223_372_036_854_775_808.0))
    }

    @Test("declaring a config value while a rule is evaluated is refused")
    func configIsLoadTimeOnly() throws {
        let rules = try compile([
            "c.lua": #"flag "x" { rule = function() config "late" (1) end }"#
        ])
        let answer = try rules.flag("x")
        #expect(answer.code == .general)
        #expect(answer.message?.contains("only allowed while a rule file loads") == true)
    }
}
