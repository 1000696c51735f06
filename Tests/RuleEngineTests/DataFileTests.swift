import RuleEngine
import RuleModel
import Testing

@Suite("Data files")
struct DataFileTests {
    private let betaRule = """
        local beta = data "beta-users"
        flag "beta" { rule = function(ctx) return beta:has(ctx.user_id) and "on" or "off" end }
        """

    @Test("a .txt list is a set: comments, blank lines and surrounding whitespace are not entries")
    func textListIsASet() throws {
        let rules = try compile([
            "beta.lua": betaRule,
            "beta-users.txt": "# beta testers\n  alice \n\nbob\r\n#carol\n",
        ])
        #expect(try rules.flag("beta", ["user_id": "alice"]).variant == "on")
        #expect(try rules.flag("beta", ["user_id": "bob"]).variant == "on")
        #expect(try rules.flag("beta", ["user_id": "carol"]).variant == "off")
        #expect(try rules.flag("beta", ["user_id": "#carol"]).variant == "off")
        #expect(try rules.flag("beta", [:]).variant == "off")
        let set = try #require(rules.ruleSet.dataSets.first)
        #expect(set.name == "beta-users" && set.path == "beta-users.txt" && set.entries == 2 && !set.isMap)
        #expect(set.bytes > 0)
    }

    @Test("integers are looked up in decimal, as tostring spells them")
    func integersLookedUpInDecimal() throws {
        let rules = try compile(["beta.lua": betaRule, "beta-users.txt": "42\n"])
        #expect(try rules.flag("beta", ["user_id": 42]).variant == "on")
        #expect(try rules.flag("beta", ["user_id": 43]).variant == "off")
    }

    @Test("a .json array is a set; a .json object is a map that get reads")
    func jsonSetsAndMaps() throws {
        let rules = try compile([
            "geo.lua": """
            local regions = data "lists/regions"
            local vip = data "vip"
            config "sizes" { vip = #vip, regions = regions:size(), kinds = vip:kind() .. "," .. regions:kind() }
            route "geo" { target = function(req)
              return tostring(regions:get(req.country)) .. "," .. tostring(vip:get(req.user))
            end }
            """,
            "lists/regions.json": #"{"de": "eu-central", "us": 7, "br": true}"#,
            "vip.json": #"["ann", "ben"]"#,
        ])
        #expect(try rules.route(["country": "de", "user": "ann"])?.target == "eu-central,true")
        #expect(try rules.route(["country": "us", "user": "zed"])?.target == "7,nil")
        #expect(try rules.route(["country": "br"])?.target == "true,nil")
        #expect(
            rules.ruleSet.config(key: "sizes")?.value == ["vip": 2, "regions": 3, "kinds": "set,map"])
        #expect(rules.ruleSet.dataSets.map(\.name) == ["lists/regions", "vip"])
    }

    @Test("a list entry that is not valid UTF-8 fails the load at the data file's line")
    func malformedTextNamesItsLine() {
        var files = sources(["beta.lua": betaRule])
        files.append(RuleSource(path: "beta-users.txt", content: Array("alice\n# x\nb".utf8) + [0xFF, 0x0A]))
        do {
            _ = try RuleCompiler.compile(files)
            Issue.record("a malformed data file loaded")
        } catch {
            #expect(hasDiagnostic(error, file: "beta-users.txt", line: 3, containing: "not valid UTF-8"))
            #expect(hasDiagnostic(error, file: "beta.lua", line: 1, containing: "beta-users.txt is malformed"))
        }
    }

    @Test("malformed JSON and non-string entries fail the load with file:line")
    func malformedJSONNamesItsLine() {
        let rule = #"local v = data "vip""#
        let nonString = loadFailure(["a.lua": rule, "vip.json": "[\n  \"ann\",\n  17\n]"])
        #expect(hasDiagnostic(nonString, file: "vip.json", line: 3, containing: "not a string"))
        let broken = loadFailure(["a.lua": rule, "vip.json": "{\n\"a\": 1,\n\"b\" 2\n}"])
        #expect(hasDiagnostic(broken, file: "vip.json", line: 3, containing: "expected ':'"))
        let duplicate = loadFailure(["a.lua": rule, "vip.json": "{\"a\": 1,\n\"a\": 2}"])
        #expect(hasDiagnostic(duplicate, file: "vip.json", line: 2, containing: "duplicate key"))
    }

    @Test("a name with both a .txt and a .json file, or with neither, is refused where data is called")
    func ambiguousOrMissingNames() {
        let both = loadFailure(["a.lua": "\n" + #"local v = data "vip""#, "vip.txt": "a", "vip.json": "[]"])
        #expect(hasDiagnostic(both, file: "a.lua", line: 2, containing: "both vip.txt and vip.json exist"))
        let missing = loadFailure(["a.lua": #"local v = data "nope""#])
        #expect(hasDiagnostic(missing, file: "a.lua", line: 1, containing: "no file nope.txt or nope.json"))
        let escaping = loadFailure(["a.lua": #"local v = data "../etc/passwd""#])
        #expect(hasDiagnostic(escaping, file: "a.lua", line: 1, containing: "its path below the rules directory"))
    }

    @Test("a data file no rule uses is not parsed, but it is part of the revision")
    func unusedFilesOnlyChangeTheRevision() throws {
        let rules = try compile(["a.lua": #"config "a" (1)"#, "notes.json": "not JSON at all"])
        #expect(rules.ruleSet.dataSets.isEmpty)
        let edited = try compile(["a.lua": #"config "a" (1)"#, "notes.json": "still not JSON"])
        #expect(rules.ruleSet.revision != edited.ruleSet.revision)
    }

    @Test("a data object is read-only: a rule that writes to it is refused at load")
    func writesAreRefusedAtLoad() {
        let failure = loadFailure([
            "a.lua": """
            local beta = data "beta"
            flag "f" { rule = function(ctx) beta.extra = true end }
            """,
            "beta.txt": "a",
        ])
        #expect(failure?.diagnostics.contains { $0.location == SourceLocation(file: "a.lua", line: 2) } == true)
    }

    @Test("a data object cannot be written at run time, nor its metatable reached")
    func readOnlyAtRunTime() throws {
        let rules = try compile([
            "a.lua": """
            local beta = data "beta"
            flag "f" { rule = function(ctx)
              local wrote = pcall(function(o) o.extra = true end, beta)
              local raw = pcall(rawset, beta, "extra", true)
              local foreign = pcall(beta.has, {}, "a")
              if wrote or raw or foreign or getmetatable(beta) ~= false then return "off" end
              return beta:has("a") and "on" or "off"
            end }
            """,
            "beta.txt": "a",
        ])
        #expect(try rules.flag("f").variant == "on")
    }

    @Test("data is a load-time function: calling it inside a rule fails that evaluation")
    func dataOnlyAtLoad() throws {
        let rules = try compile([
            "a.lua": #"flag "f" { rule = function(ctx) return data("beta"):has("a") and "on" or "off" end }"#,
            "beta.txt": "a",
        ])
        let answer = try rules.flag("f")
        #expect(answer.code == .general)
        #expect(answer.message?.contains("only available while a rule file loads") == true)
    }

    @Test("evaluators made for other workers share the data set built once and answer alike")
    func workersShareTheDataSet() throws {
        let rules = try compile(["beta.lua": betaRule, "beta-users.txt": "alice\n"])
        let second = try RuleCompiler.makeEvaluator(for: rules.ruleSet)
        let other = LoadedRules(ruleSet: rules.ruleSet, evaluator: second)
        #expect(try other.flag("beta", ["user_id": "alice"]).variant == "on")
        #expect(try other.flag("beta", ["user_id": "bob"]).variant == "off")
    }

    @Test("a data file over max_data_bytes is refused by name, while rule files keep their own cap")
    func dataFileSizeCap() {
        var limits = RuleEngineLimits()
        limits.maxDataBytes = 1024
        let failure = loadFailure(
            ["beta.lua": betaRule, "beta-users.txt": String(repeating: "user\n", count: 300)], limits: limits)
        #expect(hasDiagnostic(failure, file: "beta-users.txt", line: 0, containing: "max_data_bytes"))
    }
}
