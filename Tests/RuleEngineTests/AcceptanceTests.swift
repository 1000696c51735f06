import RuleEngine
import RuleModel
import Testing

/// The first line of a fixture says what must happen to it: `-- expect: CODE` for a rule that loads and must fail
/// its evaluation with CODE, or `-- expect-load: LINE: text` for a file that must be refused at load.
private func expectation(of source: RuleSource) -> String {
    let firstLine = String(decoding: source.content.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    return firstLine
}

private func fixtureSnapshot(_ folder: String) -> RuleTreeSnapshot {
    RuleTreeReader().read(root: fixturesDirectory + "/" + folder)
}

private let hostileFixtureNames = fixtureSnapshot("hostile").sources.map(\.path)
private let refusedFixtureNames = fixtureSnapshot("refused").sources.map(\.path)

@Suite("Acceptance: hostile rule files under the default limits")
struct AcceptanceTests {
    /// Every hostile fixture and the canary, loaded into one rule set: one Lua state that they all share.
    let rules: LoadedRules
    let hostile: RuleTreeSnapshot

    init() throws {
        hostile = fixtureSnapshot("hostile")
        try #require(hostile.problems.isEmpty)
        let sources = hostile.sources + [RuleSource(path: "canary.lua", content: Array(canaryFile.utf8))]
        let (ruleSet, evaluator) = try RuleCompiler.compile(sources)
        rules = LoadedRules(ruleSet: ruleSet, evaluator: evaluator)
    }

    @Test("the hostile corpus is not empty")
    func corpusPresent() {
        #expect(hostileFixtureNames.count >= 10)
        #expect(refusedFixtureNames.count >= 6)
    }

    @Test(
        "each hostile rule fails its evaluation with its expected code while the canary keeps answering",
        arguments: hostileFixtureNames)
    func hostileRuleFails(_ path: String) throws {
        let source = try #require(hostile.sources.first { $0.path == path })
        let header = expectation(of: source)
        let code = try #require(RuleErrorCode(rawValue: String(header.dropFirst("-- expect: ".count))), "\(header)")
        let key = "hostile." + path.dropLast(".lua".count)
        for user in ["alice", "bob"] {
            let answer = try rules.flag(key, ["user": .string(user)])
            #expect(answer.reason == .error, "\(answer)")
            #expect(answer.code == code, "\(answer.message ?? "")")
            try expectCanaryAnswers(rules)
        }
    }

    @Test("evaluating every flag at once isolates each hostile rule's failure")
    func allFlagsAtOnce() throws {
        let decisions = try rules.evaluator.evaluateAllFlags(context: ["user": "canary"], now: pinnedNow).get()
        for (index, flag) in rules.ruleSet.flags.enumerated() {
            if flag.key == "canary" {
                #expect(decisions[index].reason == .targetingMatch)
            } else {
                #expect(decisions[index].reason == .error, "\(flag.key)")
            }
        }
    }

    @Test("each refused file is refused at load with its expected line and message", arguments: refusedFixtureNames)
    func refusedFile(_ path: String) throws {
        let snapshot = fixtureSnapshot("refused")
        let source = try #require(snapshot.sources.first { $0.path == path })
        let header = String(expectation(of: source).dropFirst("-- expect-load: ".count))
        let parts = header.split(separator: ":", maxSplits: 1)
        let line = try #require(Int(parts[0]))
        let text = parts[1].trimmingPrefix(" ")
        do {
            _ = try RuleCompiler.compile([source, RuleSource(path: "canary.lua", content: Array(canaryFile.utf8))])
            Issue.record("\(path) loaded")
        } catch {
            #expect(hasDiagnostic(error, file: path, line: line, containing: String(text)), "\(error)")
        }
    }
}
