import RuleEngine
import RuleModel
import RulesTestSupport
import Testing

/// The answer rulesd would send for `key` (the `result` of a flag answer), or the error code when there is none.
private func answer(_ rules: LoadedRules, _ key: String, _ context: JSONValue) throws -> (JSONValue?, String?) {
    guard let index = rules.ruleSet.flagIndex(forKey: key) else { return (nil, "FLAG_NOT_FOUND") }
    let json = Array(JSONWriter.string(context).utf8)
    let decision = json.withUnsafeBytes { rules.evaluator.evaluateFlag(at: index, context: $0, now: pinnedNow) }
    var bytes: [UInt8] = []
    RuleAnswers.appendFlag(rules.ruleSet, flag: index, decision, to: &bytes)
    return (try JSONParser().parse(bytes), nil)
}

/// The answer without its `source`, which names the file and line the flag came from.
private func withoutSource(_ value: JSONValue?) -> JSONValue? {
    guard case .object(var object)? = value else { return value }
    _ = object.removeValue(forKey: "source")
    return .object(object)
}

private let allCases = (try? FlagdConformance.cases()) ?? []

@Suite("flagd flag files")
struct FlagdFileTests {
    @Test("cases.json holds the 40 conformance cases")
    func caseCount() throws {
        #expect(try FlagdConformance.cases().count == 40)
    }

    @Test("each flagd conformance case answers as flagd does", arguments: allCases)
    func conformance(_ item: FlagdConformance.Case) throws {
        let rules = try compile(["case.flagd.json": FlagdConformance.flagFile([item])])
        let (result, error) = try answer(rules, item.flag, item.context)
        let got = FlagdConformance.resolve(item, answer: result, errorCode: error)
        let problem = FlagdConformance.mismatch(item, got, metadata: result?["metadata"])
        #expect(problem == nil, "\(problem ?? "")")
    }

    @Test("rulesctl import's Lua answers each conformance case exactly as the flag file does", arguments: allCases)
    func importedRulesAnswerTheSame(_ item: FlagdConformance.Case) throws {
        let file = FlagdConformance.flagFile([item])
        let lua = try FlagdTranslator.translate(Array(file.utf8), layout: .readable)
        let fromJSON = try compile(["case.flagd.json": file])
        let fromLua = try compile(["case.lua": lua])
        let (a, errorA) = try answer(fromJSON, item.flag, item.context)
        let (b, errorB) = try answer(fromLua, item.flag, item.context)
        #expect(errorA == errorB)
        #expect(withoutSource(a) == withoutSource(b))
    }

    @Test(
        "every flag file of flagd's test bed loads, and its import answers the same",
        arguments: FlagdConformance.testbedFiles)
    func testbedFile(_ path: String) throws {
        let bytes = try #require(FlagdConformance.readFile(FlagdConformance.fixtures + "/testbed-flags/" + path))
        let fromJSON = try compile(["x.flagd.json": String(decoding: bytes, as: UTF8.self)])
        let fromLua = try compile(["x.lua": try FlagdTranslator.translate(bytes, layout: .readable)])
        #expect(!fromJSON.ruleSet.flags.isEmpty)
        let contexts: [JSONValue] = [
            [:], ["targetingKey": "jon@company.com", "email": "ballmer@macrosoft.com", "version": "2.1.0"],
            ["targetingKey": "user1", "user": ["name": "jack"], "id": "abcxyz", "color": "red", "tier": "premium"],
        ]
        for context in contexts {
            // Every flag at once, as the `flags` operation answers: flags without a default variant included.
            let json = Array(JSONWriter.string(context).utf8)
            let decisions = try json.withUnsafeBytes {
                try fromJSON.evaluator.evaluateAllFlags(context: $0, now: pinnedNow).get()
            }
            var all: [UInt8] = []
            RuleAnswers.appendFlags(fromJSON.ruleSet, decisions, to: &all)
            let parsed = try JSONParser().parse(all)
            #expect(parsed["flags"]?.objectValue?.count == fromJSON.ruleSet.flags.count)
        }
        for flag in fromJSON.ruleSet.flags {
            for context in contexts {
                let (a, _) = try answer(fromJSON, flag.key, context)
                let (b, _) = try answer(fromLua, flag.key, context)
                #expect(withoutSource(a) == withoutSource(b), "\(flag.key) for \(context)")
                #expect(a?["error_code"] != "RESOURCE_LIMIT", "\(flag.key): \(a.map { JSONWriter.string($0) } ?? "")")
            }
        }
    }

    @Test("the scanner reads *.flagd.json files as rule files beside .lua files; other JSON is a data file")
    func scannerReadsFlagFiles() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("a.lua", "")
        try dir.writeFile("flags/ui.flagd.json", "{}")
        try dir.writeFile("data.json", "{}")
        try dir.writeFile("ui.flagd.json.bak", "{}")
        try dir.writeFile(".ui.flagd.json.swp", "{}")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["a.lua", "data.json", "flags/ui.flagd.json"])
        #expect(RuleTreeReader.isRuleFileName("x.flagd.json"))
        #expect(!RuleTreeReader.isRuleFileName("x.json"))
        #expect(RuleDataSet.isDataFilePath("data.json"))
        #expect(!RuleDataSet.isDataFilePath("flags/ui.flagd.json"))
    }

    @Test("a flag's source is the line of its key in the JSON file")
    func sourceLines() throws {
        let rules = try compile([
            "f.flagd.json": """
            {
              "flags": {
                "first": { "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on" },

                "second": {
                  "state": "ENABLED",
                  "variants": { "on": true, "off": false },
                  "defaultVariant": "off"
                }
              }
            }
            """
        ])
        let lines = rules.ruleSet.flags.map { "\($0.key)=\($0.location)" }
        #expect(lines == ["first=f.flagd.json:3", "second=f.flagd.json:5"])
    }

    @Test("a malformed flag file refuses the rule set at the line of the problem")
    func malformedFileIsRefused() throws {
        let badState = loadFailure([
            "bad.flagd.json": """
            {
              "flags": {
                "ok": { "state": "ENABLED", "variants": { "on": true }, "defaultVariant": "on" },
                "broken": { "state": "ON", "variants": { "on": true }, "defaultVariant": "on" }
              }
            }
            """
        ])
        #expect(hasDiagnostic(badState, file: "bad.flagd.json", line: 4, containing: "flag 'broken': 'state' must be"))
        let badJSON = loadFailure(["bad.flagd.json": "{\n  \"flags\": {\n    \"x\": { ,\n  }\n}\n"])
        #expect(hasDiagnostic(badJSON, file: "bad.flagd.json", line: 3, containing: "not valid JSON"))
        let unknownDefault = loadFailure([
            "bad.flagd.json":
                "{\"flags\": {\n\"x\": {\"state\": \"ENABLED\", \"variants\": {\"on\": 1}, \"defaultVariant\": \"of\"}}}"
        ])
        #expect(hasDiagnostic(unknownDefault, file: "bad.flagd.json", line: 2, containing: "default 'of' is not"))
    }

    @Test("targeting nested too deeply for Lua fails that flag alone, with PARSE_ERROR")
    func deepTargeting() throws {
        func nested(_ levels: Int) -> String {
            var targeting = #""on""#
            for level in 0..<levels { targeting = #"{"if": [{"==": [{"var": "x"}, \#(level)]}, "on", \#(targeting)]}"# }
            return targeting
        }
        let rules = try compile([
            "deep.flagd.json": """
            {"flags": {
              "deep": {"state": "ENABLED", "variants": {"on": 1, "off": 0}, "defaultVariant": "off",
                "targeting": \(nested(100))},
              "fine": {"state": "ENABLED", "variants": {"on": 1, "off": 0}, "defaultVariant": "off",
                "targeting": \(nested(40))}
            }}
            """
        ])
        let deep = try rules.flag("deep", ["x": 3])
        #expect(deep.code == .parseError)
        #expect(deep.message == "invalid targeting: targeting nested deeper than 48 levels")
        #expect(try rules.flag("fine", ["x": 3]).variant == "on")
    }

    @Test("a flag file's flags share one namespace with Lua flags")
    func duplicatesAcrossKindsAreRefused() throws {
        let failure = loadFailure([
            "a.lua": "flag \"x\" { default = \"off\" }",
            "b.flagd.json":
                #"{"flags": {"x": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}}"#,
        ])
        #expect(failure?.diagnostics.contains { $0.message.contains("'x'") } == true)
    }

    @Test("fractional v2 is split with flagd's seed; v3 hashes the CBOR encoding of the bucketing value")
    func fractionalAlgorithms() throws {
        let targeting = #"{"fractional": [{"var": "user"}, ["a", 50], ["b", 50]]}"#
        func file(_ v3: Bool) -> String {
            """
            {\(v3 ? #""$rulesd": {"fractional": "v3"},"# : "")
             "flags": {"f": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
               "targeting": \(targeting)}}}
            """
        }
        let lua = try compile([
            "s.lua": """
            flag "g" {
              variants = { a = "a", b = "b" }, default = "a",
              rule = function(ctx) return split(ctx.user, { { "a", 50 }, { "b", 50 } }, "") end,
            }
            """
        ])
        let v2 = try compile(["f.flagd.json": file(false)])
        let v3 = try compile(["f.flagd.json": file(true)])
        var differs = false
        for number in 0..<64 {
            let context: JSONValue = ["user": .string("user-\(number)")]
            #expect(try v2.flag("f", context).variant == lua.flag("g", context).variant)
            if try v3.flag("f", context).variant != v2.flag("f", context).variant { differs = true }
        }
        #expect(differs)
    }
}

@Suite("Flags without a default, with metadata, or invalid")
struct FlagDeclarationExtensionTests {
    @Test("default = false answers without a value or variant, for the caller's own default")
    func noDefault() throws {
        let rules = try compile([
            "f.lua": """
            flag "x" { variants = { on = true, off = false }, default = false,
              rule = function(ctx) if ctx.on then return "on" end end }
            flag "y" { variants = { on = true, off = false }, default = false, enabled = false }
            flag "z" { variants = { on = true }, default = false,
              rule = function(ctx) local v = flag_value("x", ctx) return v == nil and "on" or nil end }
            """
        ])
        let (miss, _) = try answer(rules, "x", [:])
        #expect(
            miss.map { JSONWriter.string($0) } == #"{"key":"x","value":null,"reason":"DEFAULT","source":"f.lua:1"}"#)
        let (hit, _) = try answer(rules, "x", ["on": true])
        #expect(hit?["variant"] == "on")
        let (disabled, _) = try answer(rules, "y", [:])
        #expect(disabled?["reason"] == "DISABLED")
        #expect(disabled?["variant"] == nil)
        let (prerequisite, _) = try answer(rules, "z", [:])
        #expect(prerequisite?["variant"] == "on")
    }

    @Test("metadata is carried in the flag's answers")
    func metadata() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { default = "on", metadata = { team = "growth", version = 2 } }"#
        ])
        let (result, _) = try answer(rules, "x", [:])
        #expect(result?["metadata"] == ["team": "growth", "version": 2])
    }

    @Test("invalid = message fails every evaluation with PARSE_ERROR and serves the default")
    func invalid() throws {
        let rules = try compile([
            "f.lua": #"flag "x" { variants = { a = 1, b = 2 }, default = "b", invalid = "unknown operator" }"#
        ])
        let answer = try rules.flag("x")
        #expect(answer.reason == .error)
        #expect(answer.code == .parseError)
        #expect(answer.message == "unknown operator")
        #expect(answer.value == 2)
    }
}

/// One JSONLogic expression, a context, and what JSONLogic (as flagd evaluates it) makes of them.
struct JSONLogicVector: Sendable, CustomTestStringConvertible {
    var logic: String
    var context: String
    var result: String
    var testDescription: String { "\(logic) over \(context) is \(result)" }
}

let jsonLogicVectors: [JSONLogicVector] = [
    .init(logic: #"{"==": [1, "1"]}"#, context: "{}", result: "true"),
    .init(logic: #"{"===": [1, "1"]}"#, context: "{}", result: "false"),
    .init(logic: #"{"!=": [{"var": "a"}, 2]}"#, context: #"{"a": 2}"#, result: "false"),
    .init(logic: #"{"<": [1, {"var": "n"}, 3]}"#, context: #"{"n": 2}"#, result: "true"),
    .init(logic: #"{"<": [1, {"var": "n"}, 3]}"#, context: #"{"n": 3}"#, result: "false"),
    .init(logic: #"{">=": [{"var": "n"}, 10]}"#, context: #"{"n": 10}"#, result: "true"),
    .init(logic: #"{"and": [true, {"var": "s"}]}"#, context: #"{"s": "x"}"#, result: "x"),
    .init(logic: #"{"or": [0, "", {"var": "s"}]}"#, context: #"{"s": "y"}"#, result: "y"),
    .init(logic: #"{"!": [[]]}"#, context: "{}", result: "true"),
    .init(logic: #"{"!!": ["0"]}"#, context: "{}", result: "true"),
    .init(logic: #"{"in": [{"var": "c"}, ["DE", "FR"]]}"#, context: #"{"c": "FR"}"#, result: "true"),
    .init(logic: #"{"in": ["Spring", "Springfield"]}"#, context: "{}", result: "true"),
    .init(logic: #"{"cat": ["v", 1, "-", 2.5]}"#, context: "{}", result: "v1-2.5"),
    .init(logic: #"{"substr": ["jsonlogic", -5, 3]}"#, context: "{}", result: "log"),
    .init(logic: #"{"+": [1, "2", 3]}"#, context: "{}", result: "6"),
    .init(logic: #"{"-": [{"var": "n"}]}"#, context: #"{"n": 4}"#, result: "-4"),
    .init(logic: #"{"/": [7, 2]}"#, context: "{}", result: "3.5"),
    .init(logic: #"{"%": [7, 2]}"#, context: "{}", result: "1"),
    .init(logic: #"{"max": [1, 9, 3]}"#, context: "{}", result: "9"),
    .init(logic: #"{"var": ["user.plan", "free"]}"#, context: #"{"user": {}}"#, result: "free"),
    .init(logic: #"{"var": "items.1"}"#, context: #"{"items": ["a", "b"]}"#, result: "b"),
    .init(logic: #"{"cat": {"missing": ["a", "b"]}}"#, context: #"{"a": 1}"#, result: "b"),
    .init(logic: #"{"cat": ["[", {"missing_some": [1, ["a", "b"]]}, "]"]}"#, context: #"{"a": 1}"#, result: "[]"),
    .init(logic: #"{"cat": {"merge": [["a"], "b", ["c"]]}}"#, context: "{}", result: "a,b,c"),
    .init(
        logic: #"{"cat": {"map": [{"var": "xs"}, {"*": [{"var": ""}, 2]}]}}"#, context: #"{"xs": [1, 2]}"#,
        result: "2,4"),
    .init(
        logic: #"{"cat": {"filter": [{"var": "xs"}, {">": [{"var": ""}, 1]}]}}"#, context: #"{"xs": [1, 2, 3]}"#,
        result: "2,3"),
    .init(
        logic: #"{"reduce": [{"var": "xs"}, {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}"#,
        context: #"{"xs": [1, 2, 3]}"#, result: "6"),
    .init(logic: #"{"all": [{"var": "xs"}, {">": [{"var": ""}, 0]}]}"#, context: #"{"xs": [1, 2]}"#, result: "true"),
    .init(
        logic: #"{"none": [{"var": "xs"}, {">": [{"var": ""}, 5]}]}"#, context: #"{"xs": [1, 2]}"#,
        result: "true"),
    .init(logic: #"{"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}"#, context: #"{"v": "1.10.0"}"#, result: "true"),
    .init(
        logic: #"{"ends_with": [{"var": "e"}, "@example.com"]}"#, context: #"{"e": "a@example.com"}"#,
        result: "true"),
    .init(logic: #"{"var": "$flagd.flagKey"}"#, context: "{}", result: "probe"),
    .init(logic: #"{"var": "$flagd.timestamp"}"#, context: "{}", result: "1700000000"),
]

@Suite("JSONLogic in flagd flag files")
struct JSONLogicTests {
    @Test("each operator answers as JSONLogic does", arguments: jsonLogicVectors)
    func vector(_ vector: JSONLogicVector) throws {
        // The result names the variant: a flag whose variants are every expected result.
        let file = """
            {"flags": {"probe": {"state": "ENABLED", "variants": {"\(vector.result)": 1, "other": 0},
              "defaultVariant": "other", "targeting": {"cat": [\(vector.logic)]}}}}
            """
        let rules = try compile(["p.flagd.json": file])
        let context = try JSONParser().parse(vector.context)
        let answer = try rules.flag("probe", context)
        #expect(answer.variant == vector.result, "\(answer)")
    }
}
