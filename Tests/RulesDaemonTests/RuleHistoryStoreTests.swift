import Foundation
import RuleEngine
import RuleModel
import Testing

@testable import RulesDaemon

@Suite("Rule history in the state directory")
struct RuleHistoryStoreTests {
    private func scratch() throws -> String {
        let path = NSTemporaryDirectory() + "rulesd-history-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private func sources(_ files: [String: String]) -> [RuleSource] {
        files.sorted { $0.key < $1.key }.map { RuleSource(path: $0.key, content: Array($0.value.utf8)) }
    }

    @discardableResult
    private func record(_ store: RuleHistoryStore, _ files: [String: String], generation: UInt64) throws
        -> HistoryEntry
    {
        let set = sources(files)
        return try store.record(
            set, revision: RuleRevision(sources: set), generation: generation, at: Double(generation),
            trigger: "watcher", flags: files.count, routes: 0, configs: 0)
    }

    @Test("entries list newest first with the files added, changed and removed since the one before")
    func entriesAndChanges() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        try record(store, ["a.lua": "A", "b.lua": "B"], generation: 1)
        try record(store, ["a.lua": "A2", "c.lua": "C"], generation: 2)
        let entries = store.entries()
        #expect(entries.map(\.generation) == [2, 1])
        #expect(entries[0].added == ["c.lua"])
        #expect(entries[0].changed == ["a.lua"])
        #expect(entries[0].removed == ["b.lua"])
        #expect(entries[1].added.isEmpty)
    }

    @Test("each file's bytes are stored once, whatever number of revisions hold them")
    func contentAddressed() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        try record(store, ["a.lua": "shared", "b.lua": "one"], generation: 1)
        try record(store, ["a.lua": "shared", "b.lua": "two"], generation: 2)
        let objects = try FileManager.default.contentsOfDirectory(atPath: directory + "/history/objects")
        #expect(objects.count == 3)
    }

    @Test("stored sources come back exactly, from a new store over the same directory")
    func sourcesSurviveRestart() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try record(
            RuleHistoryStore(stateDirectory: directory, capacity: 20), ["x/a.lua": "A", "b.lua": "B"],
            generation: 1)
        let reopened = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        let entry = try reopened.entry(named: String(first.revision.hex.prefix(8)))
        let restored = try reopened.sources(of: entry)
        #expect(RuleRevision(sources: restored) == first.revision)
    }

    @Test("the history is pruned to its capacity, with the objects only pruned entries used")
    func pruning() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = RuleHistoryStore(stateDirectory: directory, capacity: 2)
        for generation in 1...4 { try record(store, ["a.lua": "v\(generation)"], generation: UInt64(generation)) }
        #expect(store.entries().map(\.generation) == [4, 3])
        let objects = try FileManager.default.contentsOfDirectory(atPath: directory + "/history/objects")
        #expect(objects.count == 2)
    }

    @Test("a revision that goes live again moves to the top instead of being stored twice")
    func repeatedRevision() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        let first = try record(store, ["a.lua": "A"], generation: 1)
        try record(store, ["a.lua": "B"], generation: 2)
        try record(store, ["a.lua": "A"], generation: 3)
        let entries = store.entries()
        #expect(entries.map(\.revision) == [first.revision, entries[1].revision])
        #expect(entries.count == 2)
        #expect(entries[0].changed == ["a.lua"])
    }

    @Test("a damaged stored file is reported, never returned")
    func damagedObject() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        let entry = try record(store, ["a.lua": "A"], generation: 1)
        try Data("tampered".utf8).write(
            to: URL(fileURLWithPath: directory + "/history/objects/" + entry.files[0].sha256))
        #expect(throws: HistoryError.self) { try store.sources(of: entry) }
    }

    @Test("the pin is kept across stores and removed by saving none")
    func pin() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        #expect(store.loadPin() == nil)
        let pin = RulePin(revision: RuleRevision(hex: "ab12"), directoryRevision: RuleRevision(hex: "cd34"))
        try store.savePin(pin)
        #expect(RuleHistoryStore(stateDirectory: directory, capacity: 20).loadPin() == pin)
        try store.savePin(nil)
        #expect(store.loadPin() == nil)
    }

    @Test("unknown and ambiguous revision names are refused")
    func naming() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        try record(store, ["a.lua": "A"], generation: 1)
        #expect(throws: HistoryError.self) { try store.entry(named: "zz") }
        #expect(throws: HistoryError.self) { try store.entry(named: "0000000000") }
    }
}
