import Foundation
import RuleModel
import RulesTestSupport
import Testing

@Suite("rulesctl init")
struct RulesCtlInitTests {
    @Test("init creates a rules directory that passes check and test, with a .luarc.json naming the annotations")
    func initCreatesWorkingDirectory() throws {
        let parent = try TemporaryRules([:])
        defer { parent.remove() }
        let directory = parent.path + "/new/rules.d"
        let created = try RulesctlProcess.run(["init", directory])
        #expect(created.status == 0)
        #expect(created.standardOutput.contains("created \(directory)/example_test.lua"))
        let checked = try RulesctlProcess.run(["check", directory])
        #expect(checked.status == 0)
        let tested = try RulesctlProcess.run(["test", directory])
        #expect(tested.status == 0)
        #expect(tested.standardOutput == "3 passed, 0 failed\n")
        // A source build finds the checkout's annotation file.
        let luarc = try JSONParser().parse(Array(Data(contentsOf: URL(fileURLWithPath: directory + "/.luarc.json"))))
        let library = try #require(luarc["workspace.library"]?[0]?.stringValue)
        #expect(library.hasSuffix("/rulesd.lua"))
        #expect(FileManager.default.fileExists(atPath: library))
        #expect(luarc["runtime.version"] == "Lua 5.4")
    }

    @Test("init refuses a directory that is not empty unless --force, and --annotations names the file")
    func initRefusesNonEmpty() throws {
        let rules = try TemporaryRules(["mine.lua": #"flag "mine" {}"# + "\n"])
        defer { rules.remove() }
        let refused = try RulesctlProcess.run(["init", rules.path])
        #expect(refused.status == 1)
        #expect(refused.standardError.contains("is not empty"))
        #expect(!FileManager.default.fileExists(atPath: rules.path + "/example.lua"))
        let forced = try RulesctlProcess.run(["init", "--force", "--annotations", "/opt/rulesd.lua", rules.path])
        #expect(forced.status == 0)
        let luarc = try JSONParser().parse(Array(Data(contentsOf: URL(fileURLWithPath: rules.path + "/.luarc.json"))))
        #expect(luarc["workspace.library"]?[0] == "/opt/rulesd.lua")
        #expect(try RulesctlProcess.run(["test", rules.path]).status == 0)
        #expect(FileManager.default.fileExists(atPath: rules.path + "/mine.lua"))
    }
}
