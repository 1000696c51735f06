import Foundation
import RuleEngine
import RuleModel
import Testing

@testable import RulesDaemon

@Suite("The last known good copy and the stored file contents")
struct LastKnownGoodStoreTests {
    private func scratch() throws -> String {
        let path = NSTemporaryDirectory() + "rulesd-lkg-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private func sources(_ files: [String: String]) -> [RuleSource] {
        files.sorted { $0.key < $1.key }.map { RuleSource(path: $0.key, content: Array($0.value.utf8)) }
    }

    @discardableResult
    private func save(_ store: LastKnownGoodStore, _ files: [String: String]) throws -> RuleRevision {
        let set = sources(files)
        let revision = RuleRevision(sources: set)
        try store.save(set, revision: revision)
        return revision
    }

    @discardableResult
    private func record(_ store: RuleHistoryStore, _ files: [String: String], generation: UInt64) throws
        -> RuleRevision
    {
        let set = sources(files)
        let revision = RuleRevision(sources: set)
        try store.record(
            set, revision: revision, generation: generation, at: Double(generation), trigger: "watcher",
            flags: files.count, routes: 0, configs: 0)
        return revision
    }

    private func objects(_ directory: String) -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: directory + "/history/objects")) ?? [])
    }

    private func load(_ store: LastKnownGoodStore) -> LastKnownGoodStore.SavedCopy {
        store.load(maxFileBytes: 1 << 20)
    }

    /// The files of an intact copy, as path => content; nil when the copy is missing or corrupt.
    private func intactFiles(_ copy: LastKnownGoodStore.SavedCopy) -> [String: String]? {
        guard case .intact(let sources, _) = copy else { return nil }
        return Dictionary(uniqueKeysWithValues: sources.map { ($0.path, String(decoding: $0.content, as: UTF8.self)) })
    }

    private func corruptReason(_ copy: LastKnownGoodStore.SavedCopy) -> String? {
        guard case .corrupt(let reason) = copy else { return nil }
        return reason
    }

    @Test("a saved copy loads from a new store over the same directory, in the order it was saved")
    func restartFromSavedCopy() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let set = [RuleSource(path: "z.lua", content: Array("Z".utf8)), RuleSource(path: "a/b.lua", content: [])]
        let revision = RuleRevision(sources: set)
        try LastKnownGoodStore(stateDirectory: directory).save(set, revision: revision)
        let reopened = LastKnownGoodStore(stateDirectory: directory)
        #expect(reopened.currentName() == revision.hex)
        guard case .intact(let loaded, let loadedRevision) = load(reopened) else {
            Issue.record("the saved copy did not load")
            return
        }
        #expect(loadedRevision == revision)
        #expect(loaded.map(\.path) == ["z.lua", "a/b.lua"])
        #expect(loaded.map(\.content) == set.map(\.content))
    }

    @Test("a save writes only the contents not stored yet, shared with the history")
    func writesOnlyNewContent() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = LastKnownGoodStore(stateDirectory: directory)
        let history = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        var files: [String: String] = [:]
        for index in 0..<50 { files["d\(index % 5)/f\(index).lua"] = "flag \"f\(index)\" {}\n" }
        try save(copy, files)
        try record(history, files, generation: 1)
        #expect(objects(directory).count == 50)
        files["d0/f0.lua"] = "flag \"f0\" { default = \"x\" }\n"
        try save(copy, files)
        try record(history, files, generation: 2)
        #expect(objects(directory).count == 51)
        // The copy is a manifest naming the stored contents, not a copy of the files.
        let lastGood = Set(try FileManager.default.contentsOfDirectory(atPath: directory + "/last-good"))
        #expect(lastGood == ["\(RuleRevision(sources: sources(files)).hex).json", "current"])
        #expect(intactFiles(load(copy)) == files)
    }

    @Test("a save cut short by a crash leaves the previous copy loading, and the next save completes")
    func interruptedSave() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = LastKnownGoodStore(stateDirectory: directory)
        let good = ["a.lua": "A1", "b.lua": "B"]
        try save(copy, good)
        // What a crash in the middle of saving the next rule set leaves: an object and a manifest written
        // half under their temporary names.
        let next = ["a.lua": "A2 with more text", "b.lua": "B"]
        let nextRevision = RuleRevision(sources: sources(next))
        let digest = RuleRevision.digest(of: Array("A2 with more text".utf8))
        let objectsDirectory = directory + "/history/objects/"
        try Data("A2 wi".utf8).write(to: URL(fileURLWithPath: objectsDirectory + digest + ".tmp-99999"))
        try Data(#"{"revision":"\#(nextRevision.hex)","fi"#.utf8).write(
            to: URL(fileURLWithPath: directory + "/last-good/\(nextRevision.hex).json.tmp-99999"))
        #expect(intactFiles(load(LastKnownGoodStore(stateDirectory: directory))) == good)

        // The half-written object is never taken for the stored content: the next save writes it whole.
        try save(copy, next)
        #expect(intactFiles(load(LastKnownGoodStore(stateDirectory: directory))) == next)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory + "/last-good")
        #expect(!leftovers.contains { $0.contains(".tmp-") })
        // The history's garbage collection removes what interrupted writes left among the objects.
        try record(RuleHistoryStore(stateDirectory: directory, capacity: 20), next, generation: 1)
        #expect(!objects(directory).contains { $0.contains(".tmp-") })
        #expect(objects(directory).contains(digest))
    }

    @Test("a manifest that is cut short or names another revision is refused as corrupt")
    func tornManifest() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = LastKnownGoodStore(stateDirectory: directory)
        let revision = try save(copy, ["a.lua": "A"])
        let manifest = directory + "/last-good/\(revision.hex).json"
        let whole = try Data(contentsOf: URL(fileURLWithPath: manifest))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: manifest))
        #expect(corruptReason(load(copy))?.contains("cannot be read") == true)

        let other = RuleRevision(sources: sources(["a.lua": "other"]))
        try Data(String(decoding: whole, as: UTF8.self).replacingOccurrences(of: revision.hex, with: other.hex).utf8)
            .write(to: URL(fileURLWithPath: manifest))
        #expect(corruptReason(load(copy))?.contains("names another revision") == true)
    }

    @Test("a stored content that was damaged or lost makes the copy corrupt, never loaded")
    func damagedObject() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = LastKnownGoodStore(stateDirectory: directory)
        try save(copy, ["a.lua": "A", "b.lua": "B"])
        let object = directory + "/history/objects/" + RuleRevision.digest(of: Array("A".utf8))
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: object))
        #expect(corruptReason(load(copy))?.contains("do not match the revision they were saved under") == true)
        try FileManager.default.removeItem(atPath: object)
        #expect(corruptReason(load(copy))?.contains("is missing") == true)
    }

    @Test("a copy in the older layout (a directory of files) loads, and the next save replaces it")
    func olderLayout() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let old = ["a.lua": "A", "team/b.lua": "B"]
        let oldRevision = RuleRevision(sources: sources(old))
        let copyDirectory = directory + "/last-good/" + oldRevision.hex
        try FileManager.default.createDirectory(
            atPath: copyDirectory + "/team", withIntermediateDirectories: true)
        for (path, content) in old {
            try Data(content.utf8).write(to: URL(fileURLWithPath: copyDirectory + "/" + path))
        }
        try Data((oldRevision.hex + "\n").utf8).write(to: URL(fileURLWithPath: copyDirectory + "/REVISION"))
        try FileManager.default.createSymbolicLink(
            atPath: directory + "/last-good/current", withDestinationPath: oldRevision.hex)

        let copy = LastKnownGoodStore(stateDirectory: directory)
        #expect(copy.currentName() == oldRevision.hex)
        #expect(intactFiles(load(copy)) == old)

        let new = ["a.lua": "A2", "team/b.lua": "B"]
        let newRevision = try save(copy, new)
        #expect(intactFiles(load(LastKnownGoodStore(stateDirectory: directory))) == new)
        let lastGood = Set(try FileManager.default.contentsOfDirectory(atPath: directory + "/last-good"))
        #expect(lastGood == ["\(newRevision.hex).json", "current"])
    }

    @Test("contents used by neither the history nor the saved copy are removed; those the copy uses stay")
    func garbageCollection() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = LastKnownGoodStore(stateDirectory: directory)
        let history = RuleHistoryStore(stateDirectory: directory, capacity: 1)
        let digest = { (text: String) in RuleRevision.digest(of: Array(text.utf8)) }
        try save(copy, ["a.lua": "one"])
        try record(history, ["a.lua": "one"], generation: 1)
        // The copy stays at "one" (say its save failed): the history no longer holds it, the copy still needs it.
        try record(history, ["a.lua": "two"], generation: 2)
        #expect(objects(directory) == [digest("one"), digest("two")])
        #expect(intactFiles(load(copy)) == ["a.lua": "one"])

        try save(copy, ["a.lua": "two"])
        try record(history, ["a.lua": "three"], generation: 3)
        #expect(objects(directory) == [digest("two"), digest("three")])
        try save(copy, ["a.lua": "three"])
        try record(history, ["a.lua": "three"], generation: 4)
        #expect(objects(directory) == [digest("three")])
    }

    @Test("a rollback's revision comes back from the history after the copy moved on")
    func historyRevisionAfterCopyMoved() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = LastKnownGoodStore(stateDirectory: directory)
        let history = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        let first = ["a.lua": "A", "b.lua": "B"]
        let firstRevision = try save(copy, first)
        try record(history, first, generation: 1)
        for generation in 2...4 {
            let files = ["a.lua": "A\(generation)", "b.lua": "B"]
            try save(copy, files)
            try record(history, files, generation: UInt64(generation))
        }
        let reopened = RuleHistoryStore(stateDirectory: directory, capacity: 20)
        let entry = try reopened.entry(named: firstRevision.hex)
        let restored = try reopened.sources(of: entry)
        #expect(RuleRevision(sources: restored) == firstRevision)
        #expect(reopened.entries().count == 4)
    }
}
