import Foundation
import RuleEngine
import RuleModel
import Testing

/// The LuaLS annotation file shipped for editors (share/lua-annotations/rulesd.lua).
private let annotationFile = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("share/lua-annotations/rulesd.lua")

/// Globals of stock Lua 5.4 that LuaLS knows without annotations of ours.
private let standardGlobals: Set<String> = [
    "_G", "_VERSION", "assert", "collectgarbage", "coroutine", "debug", "dofile", "error", "getmetatable", "io",
    "ipairs", "load", "loadfile", "math", "next", "os", "package", "pairs", "pcall", "print", "rawequal", "rawget",
    "rawlen", "rawset", "require", "select", "setmetatable", "string", "table", "tonumber", "tostring", "type",
    "utf8", "warn", "xpcall",
]

/// Whether the annotation text declares `name` (a function or a table).
private func declares(_ text: String, _ name: String) -> Bool {
    text.contains("\nfunction \(name)(") || text.contains("\n\(name) = {}")
}

@Suite("LuaLS annotations of the rule API")
struct AnnotationCoverageTests {
    @Test("the annotation file declares every global of the sandbox that stock Lua does not have")
    func everyGlobalAnnotated() throws {
        let text = try String(contentsOf: annotationFile, encoding: .utf8)
        #expect(text.hasPrefix("---@meta"))
        let globals = RuleSandbox.globalNames()
        // The rule API and the helpers are among them: the list is the sandbox's real environment.
        for name in ["flag", "route", "config", "test", "expect", "split", "rollout", "now", "semver", "ip"] {
            #expect(globals.contains(name), "the sandbox has no global '\(name)'")
        }
        let missing = globals.filter { !standardGlobals.contains($0) && !declares(text, $0) }
        #expect(missing.isEmpty, "not annotated: \(missing)")
    }

    @Test("the annotation file is valid Lua 5.4 (it loads as a rule file that declares nothing)")
    func annotationFileIsLua() throws {
        let text = try String(contentsOf: annotationFile, encoding: .utf8)
        let (ruleSet, _) = try RuleCompiler.compile(sources(["rulesd.lua": text]))
        #expect(ruleSet.flags.isEmpty && ruleSet.tests.isEmpty)
    }

    @Test("the annotation file declares every function of the helper tables (semver, ip)")
    func everyHelperTableFieldAnnotated() throws {
        let text = try String(contentsOf: annotationFile, encoding: .utf8)
        let tables = RuleSandbox.globalNames().filter { !standardGlobals.contains($0) }
        // A rule file can list a table's fields at load time; a config carries the list out.
        var source = ""
        for name in tables {
            source += """
                if type(\(name)) == "table" then
                  local names = {}
                  for key in pairs(\(name)) do names[#names + 1] = key end
                  config "fields.\(name)" (names)
                end

                """
        }
        let (ruleSet, _) = try RuleCompiler.compile(sources(["list.lua": source]))
        #expect(ruleSet.configs.count == 2)
        for entry in ruleSet.configs {
            let table = String(entry.key.dropFirst("fields.".count))
            for field in entry.value.arrayValue ?? [] {
                let name = "\(table).\(field.stringValue ?? "?")"
                #expect(text.contains("\nfunction \(name)("), "not annotated: \(name)")
            }
        }
    }
}
