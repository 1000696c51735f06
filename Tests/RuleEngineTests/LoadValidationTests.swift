import RuleEngine
import RuleModel
import Testing

@Suite("Whole-rule-set validation")
struct LoadValidationTests {
    @Test("a key declared in two files refuses the whole set, naming both places")
    func duplicateAcrossFiles() {
        let failure = loadFailure([
            "a.lua": #"flag "dup" {}"#,
            "b.lua": "\n\n" + #"flag "dup" {}"#,
        ])
        #expect(
            hasDiagnostic(
                failure, file: "b.lua", line: 3, containing: "duplicate flag 'dup' (first declared at a.lua:1)"))
    }

    @Test("duplicate routes and duplicate config keys are refused too")
    func duplicateRoutesAndConfigs() {
        let failure = loadFailure([
            "a.lua": """
            route "r" { target = "a" }
            config "c" (1)
            route "r" { target = "b" }
            config "c" (2)
            """
        ])
        #expect(hasDiagnostic(failure, file: "a.lua", line: 3, containing: "duplicate route 'r'"))
        #expect(hasDiagnostic(failure, file: "a.lua", line: 4, containing: "duplicate config 'c'"))
    }

    @Test("a flag, a route and a config may share a name: they are different kinds")
    func kindsAreSeparate() throws {
        let rules = try compile(["a.lua": #"flag "same" {} route "same" { target = "t" } config "same" (1)"#])
        #expect(rules.ruleSet.flags.count == 1 && rules.ruleSet.routes.count == 1 && rules.ruleSet.configs.count == 1)
    }

    @Test("an unknown field in a flag is refused with file:line and the fields a flag has")
    func unknownFlagField() {
        let failure = loadFailure(["f.lua": "\n" + #"flag "x" { colour = "red" }"#])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 2, containing: "unknown field 'colour'"))
    }

    @Test("an unknown field in a route is refused")
    func unknownRouteField() {
        let failure = loadFailure(["r.lua": #"route "r" { target = "t", weight = 3 }"#])
        #expect(hasDiagnostic(failure, file: "r.lua", line: 1, containing: "unknown field 'weight'"))
    }

    @Test("a default that is not one of the variants is refused")
    func defaultNotAVariant() {
        let failure = loadFailure(["f.lua": #"flag "x" { variants = { a = 1, b = 2 }, default = "c" }"#])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "default 'c' is not one of its variants"))
    }

    @Test("custom variants without a default are refused")
    func customVariantsNeedDefault() {
        let failure = loadFailure(["f.lua": #"flag "x" { variants = { a = 1 } }"#])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "'default' is required"))
    }

    @Test("a default without custom variants must name on or off")
    func defaultOfDefaultSet() throws {
        let rules = try compile(["f.lua": #"flag "x" { default = "on" }"#])
        #expect(try rules.flag("x").value == true)
        let failure = loadFailure(["f.lua": #"flag "x" { default = "maybe" }"#])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "default 'maybe'"))
    }

    @Test("empty variants are refused")
    func emptyVariants() {
        let failure = loadFailure(["f.lua": #"flag "x" { variants = {}, default = "a" }"#])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "variants must not be empty"))
    }

    @Test("a rule that is not a function is refused")
    func ruleNotAFunction() {
        let failure = loadFailure(["f.lua": #"flag "x" { rule = "return 'on'" }"#])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "'rule' must be a function, not a string"))
    }

    @Test("a match that is not a function is refused")
    func matchNotAFunction() {
        let failure = loadFailure(["r.lua": #"route "r" { match = true, target = "t" }"#])
        #expect(hasDiagnostic(failure, file: "r.lua", line: 1, containing: "'match' must be a function"))
    }

    @Test("a route without a target is refused")
    func routeNeedsTarget() {
        let failure = loadFailure(["r.lua": #"route "r" { match = function() return true end }"#])
        #expect(hasDiagnostic(failure, file: "r.lua", line: 1, containing: "'target' is required"))
    }

    @Test("a non-integer priority is refused")
    func fractionalPriority() {
        let failure = loadFailure(["r.lua": #"route "r" { priority = 1.5, target = "t" }"#])
        #expect(hasDiagnostic(failure, file: "r.lua", line: 1, containing: "priority must be an integer"))
    }

    @Test("a variant value that is a function cannot become JSON and is refused")
    func functionVariant() {
        let failure = loadFailure(["f.lua": #"flag "x" { variants = { a = function() end }, default = "a" }"#])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "variant 'a' is a function"))
    }

    @Test("a cyclic variant value is refused with file:line")
    func cyclicVariant() {
        let failure = loadFailure([
            "f.lua": """
            local loop = {}
            loop.again = loop
            flag "x" { variants = { a = loop }, default = "a" }
            """
        ])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 3, containing: "variant 'a' contains a cycle"))
    }

    @Test("a NaN or infinite variant value is refused")
    func nanVariant() {
        let failure = loadFailure([
            "f.lua": """
            flag "nan" { variants = { a = 0/0 }, default = "a" }
            flag "inf" { variants = { a = { limit = math.huge } }, default = "a" }
            """
        ])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 1, containing: "NaN or infinite"))
        #expect(hasDiagnostic(failure, file: "f.lua", line: 2, containing: "NaN or infinite"))
    }

    @Test("a variant value nested too deeply is refused")
    func deepVariant() {
        let failure = loadFailure([
            "f.lua": """
            local deep = {}
            local cur = deep
            for i = 1, 200 do cur.next = {} cur = cur.next end
            flag "x" { variants = { a = deep }, default = "a" }
            """
        ])
        #expect(hasDiagnostic(failure, file: "f.lua", line: 4, containing: "nested deeper"))
    }

    @Test("cyclic, deep, NaN and infinite config values are refused with file:line")
    func badConfigValues() {
        let failure = loadFailure([
            "c.lua": """
            local loop = {} loop[1] = loop
            config "cyclic" (loop)
            config "nan" (0/0)
            config "inf" ({ -math.huge })
            local deep = {} local cur = deep
            for i = 1, 200 do cur[1] = {} cur = cur[1] end
            config "deep" (deep)
            """
        ])
        #expect(hasDiagnostic(failure, file: "c.lua", line: 2, containing: "cycle"))
        #expect(hasDiagnostic(failure, file: "c.lua", line: 3, containing: "NaN or infinite"))
        #expect(hasDiagnostic(failure, file: "c.lua", line: 4, containing: "NaN or infinite"))
        #expect(hasDiagnostic(failure, file: "c.lua", line: 7, containing: "nested deeper"))
    }

    @Test("tables that are neither arrays nor objects are refused as values")
    func nonJSONTables() {
        let failure = loadFailure([
            "c.lua": """
            config "mixed" ({ 1, x = 2 })
            config "holes" ({ [1] = 1, [3] = 3 })
            config "keys" ({ [true] = 1 })
            config "bytes" ("\\255")
            """
        ])
        #expect(hasDiagnostic(failure, file: "c.lua", line: 1, containing: "mixes array and object keys"))
        #expect(hasDiagnostic(failure, file: "c.lua", line: 2, containing: "array with holes"))
        #expect(hasDiagnostic(failure, file: "c.lua", line: 3, containing: "key of type boolean"))
        #expect(hasDiagnostic(failure, file: "c.lua", line: 4, containing: "not valid UTF-8"))
    }

    @Test("hundreds of invalid values are each reported, with the right key and type")
    func manyInvalidValues() {
        let failure = loadFailure([
            "many.lua": """
            for n = 1, 200 do
              local deep = {} local cur = deep
              for i = 1, 100 do cur.x = {} cur = cur.x end
              config ("deep" .. n) (deep)
              config ("keyed" .. n) ({ [n] = 1, [n + 0.5] = 2 })
            end
            """
        ])
        #expect(failure?.diagnostics.count == 400)
        #expect(hasDiagnostic(failure, file: "many.lua", line: 4, containing: "config 'deep200': value nested deeper"))
        #expect(
            hasDiagnostic(failure, file: "many.lua", line: 5, containing: "'keyed7': value has a key of type number"))
    }

    @Test("one bad file refuses the whole candidate: all or nothing")
    func allOrNothing() {
        let failure = loadFailure([
            "good.lua": #"flag "good" {} route "r" { target = "t" } config "c" (1)"#,
            "bad.lua": #"flag "bad" { variants = { a = 1 }, default = "z" }"#,
        ])
        #expect(failure?.diagnostics.count == 1)
        #expect(failure?.diagnostics.first?.location.file == "bad.lua")
    }

    @Test("every problem of the candidate is reported, in file and line order")
    func everyProblemReported() {
        let failure = loadFailure([
            "b.lua": #"flag "y" { rule = 1 }"#,
            "a.lua": "flag \"x\" { oops = 1 }\n\nroute \"r\" { target = 5 }",
        ])
        let places = failure?.diagnostics.map(\.location.description) ?? []
        #expect(places == ["a.lua:1", "a.lua:3", "b.lua:1"])
    }

    @Test("a syntax error is reported at its file and line")
    func syntaxError() {
        let failure = loadFailure(["s.lua": "flag \"x\" {}\nlocal = 3\n"])
        #expect(hasDiagnostic(failure, file: "s.lua", line: 2, containing: "expected near '='"))
    }

    @Test("a chunk that raises while loading is reported with its message")
    func chunkError() {
        let failure = loadFailure(["s.lua": "\nerror('refusing to load')\n"])
        #expect(hasDiagnostic(failure, file: "s.lua", line: 2, containing: "refusing to load"))
    }

    @Test("a chunk that raises a table while loading still yields a message")
    func chunkErrorTable() {
        let failure = loadFailure(["s.lua": "error({ code = 7 })"])
        #expect(hasDiagnostic(failure, file: "s.lua", line: 0, containing: "table"))
    }

    @Test("a declaration without its definition is refused")
    func declarationWithoutDefinition() {
        let failure = loadFailure(["s.lua": "local pending = flag \"half\"\n"])
        #expect(hasDiagnostic(failure, file: "s.lua", line: 1, containing: "declared without a definition"))
    }

    @Test("a config declared without a value is refused with a hint in config syntax")
    func configWithoutValue() {
        let failure = loadFailure(["c.lua": "local pending = config \"timeout\"\n"])
        #expect(
            hasDiagnostic(failure, file: "c.lua", line: 1, containing: #"(write config "timeout" (value))"#),
            "\(failure?.description ?? "")")
    }

    @Test("flag names must be non-empty, short and free of spaces")
    func badKeys() {
        #expect(hasDiagnostic(loadFailure(["k.lua": #"flag "" {}"#]), file: "k.lua", line: 1, containing: "empty"))
        #expect(
            hasDiagnostic(loadFailure(["k.lua": #"flag "a b" {}"#]), file: "k.lua", line: 1, containing: "spaces"))
        #expect(
            hasDiagnostic(
                loadFailure(["k.lua": "flag (string.rep('k', 300)) {}"]), file: "k.lua", line: 1,
                containing: "longer than"))
    }

    @Test("a file larger than the limit is refused before it is parsed")
    func oversizedFile() {
        var limits = RuleEngineLimits()
        limits.maxFileBytes = 1024
        let failure = loadFailure(["big.lua": "-- " + String(repeating: "x", count: 2000)], limits: limits)
        #expect(hasDiagnostic(failure, file: "big.lua", line: 0, containing: "larger than 1024 bytes"))
    }

    @Test("an empty rule directory is a valid, empty rule set")
    func emptySet() throws {
        let rules = try compile([:])
        #expect(rules.ruleSet.flags.isEmpty && rules.ruleSet.routes.isEmpty && rules.ruleSet.configs.isEmpty)
    }

    @Test("a second evaluator of a rule set loads it identically")
    func secondEvaluator() throws {
        let rules = try compile(["a.lua": #"flag "x" {} route "r" { target = "t" } config "c" (1)"#])
        let second = try RuleCompiler.makeEvaluator(for: rules.ruleSet)
        #expect(second.ruleSet === rules.ruleSet)
        #expect(second.evaluateFlag(key: "x", context: [:], now: pinnedNow)?.reason == .staticValue)
    }
}
