import RuleEngine
import RuleModel
import RuleReplay
import Testing

/// Compiles two rule sets from inline files and replays `lines` (a capture file's text) against them, on a thread
/// with the stack the engine asks for.
private func replay(_ lines: String, old: [String: String], new: [String: String]) throws -> ReplayReport {
    let requests = try CaptureFile.parse(Array(lines.utf8))
    let result = DedicatedThread.run(name: "replay-test", stackBytes: 8 << 20) { () -> Result<ReplayReport, Error> in
        Result {
            let (_, before) = try RuleCompiler.compile(sources(old), runTests: false)
            let (_, after) = try RuleCompiler.compile(sources(new), runTests: false)
            return ReplayDiff.replay(requests, old: before, new: after, now: 1_700_000_000)
        }
    }
    return try result.get()
}

private func sources(_ files: [String: String]) -> [RuleSource] {
    files.map { RuleSource(path: $0.key, content: Array($0.value.utf8)) }
}

private func rollout(_ percent: Int) -> [String: String] {
    [
        "flags.lua": """
        flag "new-flow" {
            default = "off",
            rule = function(ctx) return split(ctx.user_id, { { "on", \(percent) }, { "off", \(100 - percent) } }) end,
        }
        flag "banner" { default = "off", rule = function(ctx) if ctx.country == "DE" then return "on" end end }
        """
    ]
}

private func users(_ count: Int, flag: String = "new-flow") -> String {
    (0..<count).map { #"{"flag":"\#(flag)","context":{"user_id":"u\#($0)"},"at":1700000000}"# }.joined(
        separator: "\n")
}

@Suite("Replaying captured requests against two rule sets")
struct ReplayDiffTests {
    @Test("the same rules change nothing")
    func identicalRules() throws {
        let report = try replay(users(200), old: rollout(20), new: rollout(20))
        #expect(report.replayed == 200)
        #expect(report.changed == 0)
        #expect(!report.hasChanges)
        #expect(report.subjects.map(\.name) == ["flag new-flow"])
        #expect(report.subjects[0].transitions.isEmpty)
    }

    @Test("a wider rollout moves about the added share from off to on, and nothing back")
    func rolloutTransitionTable() throws {
        let report = try replay(users(2000), old: rollout(20), new: rollout(50))
        let subject = try #require(report.subjects.first)
        #expect(subject.replayed == 2000)
        #expect(report.hasChanges)
        #expect(subject.transitions.count == 1)
        let transition = try #require(subject.transitions.first)
        #expect(transition.from == "off" && transition.to == "on")
        #expect(transition.count == subject.changed)
        let share = Double(subject.changed) / 2000
        #expect(share > 0.25 && share < 0.35, "changed share \(share)")
        #expect(subject.errorsIntroduced == 0)
    }

    @Test("each transition keeps up to three example contexts, the first seen")
    func examples() throws {
        let report = try replay(users(500), old: rollout(0), new: rollout(100))
        let transition = try #require(report.subjects.first?.transitions.first)
        #expect(transition.count == 500)
        #expect(transition.examples == [#"{"user_id":"u0"}"#, #"{"user_id":"u1"}"#, #"{"user_id":"u2"}"#])
    }

    @Test("transitions are counted separately and listed most frequent first")
    func severalTransitions() throws {
        let old: [String: String] = [
            "f.lua":
                #"flag "tier" { variants = { a = 1, b = 2, c = 3 }, default = "a", rule = function(ctx) return ctx.t end }"#
        ]
        let new: [String: String] = [
            "f.lua": #"""
            flag "tier" {
                variants = { a = 1, b = 2, c = 3 }, default = "a",
                rule = function(ctx) if ctx.t == "a" then return "b" end if ctx.t == "b" then return "c" end return ctx.t end,
            }
            """#
        ]
        let lines = [
            #"{"flag":"tier","context":{"t":"a","n":1}}"#, #"{"flag":"tier","context":{"t":"b","n":2}}"#,
            #"{"flag":"tier","context":{"t":"b","n":3}}"#, #"{"flag":"tier","context":{"t":"c","n":4}}"#,
        ].joined(separator: "\n")
        let report = try replay(lines, old: old, new: new)
        let subject = try #require(report.subjects.first)
        #expect(subject.replayed == 4)
        #expect(subject.changed == 3)
        #expect(subject.transitions.map { "\($0.from)>\($0.to):\($0.count)" } == ["b>c:2", "a>b:1"])
        #expect(report.text.contains("b → c  2"))
    }

    @Test("a value changed under the same variant name is a change, shown with the values")
    func valueChange() throws {
        let old = ["f.lua": #"flag "limit" { variants = { low = 10, high = 100 }, default = "low" }"#]
        let new = ["f.lua": #"flag "limit" { variants = { low = 20, high = 100 }, default = "low" }"#]
        let report = try replay(#"{"flag":"limit","context":{}}"#, old: old, new: new)
        let transition = try #require(report.subjects.first?.transitions.first)
        #expect(transition.from == "low 10" && transition.to == "low 20")
    }

    @Test("a rule that now fails, and a flag that is gone, count as errors introduced")
    func errorsIntroduced() throws {
        let old = [
            "f.lua": """
            flag "a" { default = "off", rule = function(ctx) return "on" end }
            flag "b" { default = "off" }
            """
        ]
        let new = ["f.lua": #"flag "a" { default = "off", rule = function(ctx) return ctx.missing.field end }"#]
        let lines = [#"{"flag":"a","context":{}}"#, #"{"flag":"b","context":{}}"#].joined(separator: "\n")
        let report = try replay(lines, old: old, new: new)
        #expect(report.errorsIntroduced == 2)
        #expect(report.subjects.map(\.errorsIntroduced) == [1, 1])
        #expect(report.subjects[0].transitions.first?.from == "on")
        #expect(report.subjects[0].transitions.first?.to.hasPrefix("ERROR") == true)
        #expect(report.subjects[1].transitions.first?.to == "FLAG_NOT_FOUND")
        #expect(report.json["errors_introduced"] == .integer(2))
    }

    @Test("routes are replayed too: route and target changes, and NO_ROUTE")
    func routes() throws {
        let old = [
            "r.lua": """
            route "api" { priority = 10, match = function(req) return req.path == "/api" end, target = "backend-a" }
            """
        ]
        let new = [
            "r.lua": """
            route "api" { priority = 10, match = function(req) return req.path == "/api" end, target = "backend-b" }
            """
        ]
        let lines = [#"{"route":{"path":"/api"}}"#, #"{"route":{"path":"/other"}}"#].joined(separator: "\n")
        let report = try replay(lines, old: old, new: new)
        let subject = try #require(report.subjects.first)
        #expect(subject.name == "routes")
        #expect(subject.replayed == 2)
        #expect(subject.changed == 1)
        #expect(subject.transitions.first?.from == "api (backend-a)")
        #expect(subject.transitions.first?.to == "api (backend-b)")
    }

    @Test("the captured time is what now() returns on both sides")
    func capturedTime() throws {
        let rules = [
            "f.lua":
                #"flag "late" { default = "off", rule = function(ctx) if now() > 1800000000 then return "on" end end }"#
        ]
        let changed = [
            "f.lua":
                #"flag "late" { default = "off", rule = function(ctx) if now() > 1600000000 then return "on" end end }"#
        ]
        let report = try replay(#"{"flag":"late","context":{},"at":1700000000}"#, old: rules, new: changed)
        #expect(report.subjects.first?.transitions.first.map { "\($0.from)>\($0.to)" } == "off>on")
    }

    @Test("a malformed line is reported with its number")
    func malformedLine() {
        let lines = #"{"flag":"a","context":{}}"# + "\n\n" + #"{"context":{}}"#
        #expect(throws: CaptureFileError(line: 3, message: "a line needs 'flag' (with 'context') or 'route'")) {
            try CaptureFile.parse(Array(lines.utf8))
        }
    }

    @Test("the text report groups thousands and ends with the totals")
    func textReport() throws {
        let report = try replay(users(1500), old: rollout(0), new: rollout(100))
        #expect(report.text.contains("flag new-flow: 1,500 replayed, 1,500 changed (100.0%)"))
        #expect(report.text.contains("off → on  1,500"))
        #expect(report.text.hasSuffix("1,500 replayed, 1,500 changed, 0 errors introduced\n"))
    }
}
