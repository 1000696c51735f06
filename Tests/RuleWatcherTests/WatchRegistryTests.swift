import Glibc
import RuleEngine
import RulesTestSupport
import Testing

@testable import RuleWatcher

/// Records the directories a registry asks to watch, standing in for libinotifytools.
final class FakeWatches {
    private(set) var paths: [String] = []
    var limit = Int.max

    func add(_ path: String) -> AddWatchOutcome {
        guard paths.count < limit else { return .unavailable(ENOSPC) }
        paths.append(path)
        return .watched(Int32(paths.count))
    }

    func descriptor(of path: String) -> Int32? {
        paths.firstIndex(of: path).map { Int32($0 + 1) }
    }
}

/// What gets watched, and what events mean, decided without the kernel.
@Suite("Choosing what to watch")
struct WatchRegistryTests {
    let created = UInt32(IN_CREATE)
    let movedTo = UInt32(IN_MOVED_TO)

    func registry(_ root: String, _ fake: FakeWatches) throws -> WatchRegistry {
        var registry = WatchRegistry(addWatch: fake.add)
        #expect(try registry.register(root: root))
        return registry
    }

    func canonical(_ path: String) -> String {
        PathResolver.resolve(path, base: "/").resolved ?? path
    }

    @Test("Visible directories are watched, hidden ones are not")
    func hiddenDirectoriesAreNotWalked() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(
            ["a.lua": "", "team/b.lua": "", "team/deep/c.lua": "", ".git/objects/x": "", "team/.cache/y.lua": ""],
            in: root)
        let fake = FakeWatches()
        _ = try registry(root, fake)

        #expect(fake.paths.contains(root))
        #expect(fake.paths.contains(root + "/team/deep"))
        #expect(!fake.paths.contains { $0.contains("/.git") || $0.contains("/.cache") })
    }

    @Test("The root's parent is watched for the root's name only")
    func parentWatchedForRootName() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(["a.lua": ""], in: root)
        let fake = FakeWatches()
        let registry = try registry(root, fake)
        let parent = try #require(fake.descriptor(of: canonical(dir.path)))

        #expect(registry.verdict(descriptor: parent, mask: created, name: "unrelated").relevant == false)
        let renamed = registry.verdict(descriptor: parent, mask: movedTo, name: "rules")
        #expect(renamed.relevant)
        #expect(renamed.rebuild != nil)
    }

    @Test("A ConfigMap volume's ..data and its timestamp directory are watched; its rename asks for a rebuild")
    func configMapDataIsWatched() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("config"))
        let volume = try FileSystemEdit.makeConfigMapVolume(at: root, files: ["a.lua": "x"])
        let fake = FakeWatches()
        let registry = try registry(root, fake)
        let rootDescriptor = try #require(fake.descriptor(of: root))

        #expect(fake.paths.contains(volume.dataDirectory))
        #expect(registry.verdict(descriptor: rootDescriptor, mask: movedTo, name: "..data").rebuild != nil)
        // The kubelet's next timestamp directory appearing is not yet a change.
        let newData = registry.verdict(descriptor: rootDescriptor, mask: created | UInt32(IN_ISDIR), name: "..2099_x")
        #expect(newData.relevant == false)
    }

    @Test("A directory reached twice through symlinks (a loop) is watched once")
    func symlinkLoopWatchedOnce() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(["team/a.lua": ""], in: root)
        #expect(symlink("..", root + "/team/up") == 0)
        #expect(symlink("team", root + "/alias") == 0)
        let fake = FakeWatches()
        _ = try registry(root, fake)

        #expect(Set(fake.paths).count == fake.paths.count)
        #expect(fake.paths.filter { $0 == root + "/team" }.count == 1)
    }

    @Test("Running out of watches makes the registry give up with the limit in the reason")
    func watchLimitIsReported() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(["a/x.lua": "", "b/y.lua": ""], in: root)
        let fake = FakeWatches()
        fake.limit = 3
        var registry = WatchRegistry(addWatch: fake.add)
        #expect(throws: WatchUnavailable.self) { try registry.register(root: root) }
    }

    @Test("Writes to files the scanner ignores are not relevant; writes to rule files are tracked until closed")
    func writeVerdicts() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(["a.lua": ""], in: root)
        let fake = FakeWatches()
        let registry = try registry(root, fake)
        let descriptor = try #require(fake.descriptor(of: root))

        #expect(registry.verdict(descriptor: descriptor, mask: UInt32(IN_MODIFY), name: "a.lua~").relevant == false)
        #expect(registry.verdict(descriptor: descriptor, mask: UInt32(IN_MODIFY), name: ".a.lua.swp").relevant == false)
        let modified = registry.verdict(descriptor: descriptor, mask: UInt32(IN_MODIFY), name: "a.lua")
        #expect(modified.relevant && modified.writeOpened == root + "/a.lua")
        let closed = registry.verdict(descriptor: descriptor, mask: UInt32(IN_CLOSE_WRITE), name: "a.lua")
        #expect(closed.relevant && closed.writeClosed == root + "/a.lua")
    }

    @Test("Writes to data files (.txt, .json) are relevant and tracked until closed, like rule files")
    func dataFileWriteVerdicts() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(["a.lua": "", "beta.txt": "", "vip.json": "[]"], in: root)
        let fake = FakeWatches()
        let registry = try registry(root, fake)
        let descriptor = try #require(fake.descriptor(of: root))

        let modified = registry.verdict(descriptor: descriptor, mask: UInt32(IN_MODIFY), name: "beta.txt")
        #expect(modified.relevant && modified.writeOpened == root + "/beta.txt")
        let closed = registry.verdict(descriptor: descriptor, mask: UInt32(IN_CLOSE_WRITE), name: "vip.json")
        #expect(closed.relevant && closed.writeClosed == root + "/vip.json")
        #expect(registry.verdict(descriptor: descriptor, mask: UInt32(IN_MODIFY), name: "notes.md").relevant == false)
    }

    @Test("A watched directory deleted or moved, the root itself changed, or an overflow asks for a rebuild")
    func rebuildVerdicts() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(["sub/a.lua": ""], in: root)
        let fake = FakeWatches()
        let registry = try registry(root, fake)
        let sub = try #require(fake.descriptor(of: root + "/sub"))
        let rootDescriptor = try #require(fake.descriptor(of: root))

        #expect(registry.verdict(descriptor: sub, mask: UInt32(IN_DELETE_SELF), name: "").rebuild != nil)
        #expect(registry.verdict(descriptor: sub, mask: UInt32(IN_MOVE_SELF), name: "").rebuild != nil)
        #expect(registry.verdict(descriptor: sub, mask: UInt32(IN_ATTRIB), name: "").rebuild == nil)
        #expect(registry.verdict(descriptor: rootDescriptor, mask: UInt32(IN_ATTRIB), name: "").rebuild != nil)
        let overflow = registry.verdict(descriptor: -1, mask: UInt32(IN_Q_OVERFLOW), name: "")
        #expect(overflow.overflow && overflow.rebuild != nil)
    }

    @Test("A new visible entry is handed back to be walked")
    func newEntriesAreWalked() throws {
        let dir = TemporaryDirectory()
        let root = canonical(dir.join("rules"))
        try FileSystemEdit.writeFiles(["a.lua": ""], in: root)
        let fake = FakeWatches()
        var registry = try registry(root, fake)
        let descriptor = try #require(fake.descriptor(of: root))

        try FileSystemEdit.writeFiles(["new/deeper/b.lua": ""], in: root)
        let verdict = registry.verdict(descriptor: descriptor, mask: created | UInt32(IN_ISDIR), name: "new")
        let appeared = try #require(verdict.appeared)
        try registry.registerEntry(in: appeared.directory, name: appeared.name, depth: appeared.depth)

        #expect(fake.paths.contains(root + "/new/deeper"))
    }
}

@Suite("Resolving paths lookup by lookup")
struct PathResolverTests {
    @Test("Every directory searched on the way through symlinks is recorded")
    func lookupsThroughSymlinks() throws {
        let dir = TemporaryDirectory()
        let base = PathResolver.resolve(dir.path, base: "/").resolved!
        try FileSystemEdit.writeFiles(["real/x.lua": ""], in: base)
        #expect(symlink("real", base + "/data") == 0)
        #expect(symlink("data/x.lua", base + "/x.lua") == 0)

        let resolution = PathResolver.resolve("x.lua", base: base)

        #expect(resolution.resolved == base + "/real/x.lua")
        #expect(
            resolution.lookups.map { "\($0.directory)|\($0.name)|\($0.isIntermediate)" } == [
                "\(base)|x.lua|true", "\(base)|data|true", "\(base)|real|true", "\(base)/real|x.lua|false",
            ])
    }
}

@Suite("Fingerprinting a tree for polling")
struct TreeFingerprintTests {
    @Test("Rewriting a rule file with content of the same size changes the fingerprint")
    func sameSizeRewrite() throws {
        let dir = TemporaryDirectory()
        try FileSystemEdit.writeFiles(["a.lua": "aaaa"], in: dir.path)
        let before = TreeFingerprint.take(root: dir.path)
        try FileSystemEdit.nanoInPlace.save("bbbb", to: "a.lua", in: dir.path)

        #expect(TreeFingerprint.take(root: dir.path) != before)
    }

    @Test("Rewriting a data file with content of the same size changes the fingerprint")
    func dataFileRewrite() throws {
        let dir = TemporaryDirectory()
        try FileSystemEdit.writeFiles(["a.lua": "", "beta.txt": "alice"], in: dir.path)
        let before = TreeFingerprint.take(root: dir.path)
        try FileSystemEdit.nanoInPlace.save("bobby", to: "beta.txt", in: dir.path)

        #expect(TreeFingerprint.take(root: dir.path) != before)
    }

    @Test("Hidden files and non-rule files do not change the fingerprint")
    func hiddenFilesIgnored() throws {
        let dir = TemporaryDirectory()
        try FileSystemEdit.writeFiles(["a.lua": "aaaa"], in: dir.path)
        let before = TreeFingerprint.take(root: dir.path)
        try FileSystemEdit.writeFiles([".a.lua.swp": "x", "notes.md": "y", ".git/HEAD": "z"], in: dir.path)

        #expect(TreeFingerprint.take(root: dir.path) == before)
    }
}
