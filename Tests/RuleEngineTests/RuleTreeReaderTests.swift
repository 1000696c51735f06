import RuleEngine
import RuleModel
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Reading a rules directory")
struct RuleTreeReaderTests {
    @Test("every .lua file below the root is read, recursively, sorted by relative path")
    func recursive() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("b.lua", "-- b")
        try dir.writeFile("a/z.lua", "-- az")
        try dir.writeFile("a/deeper/y.lua", "-- ady")
        try dir.writeFile("a.lua", "-- a")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.problems.isEmpty)
        #expect(snapshot.sources.map(\.path) == ["a.lua", "a/deeper/y.lua", "a/z.lua", "b.lua"])
        #expect(snapshot.sources.first?.content == Array("-- a".utf8))
    }

    @Test("names starting with a dot are skipped at any depth: hidden files, editor files, ..data")
    func dotComponentsSkipped() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("kept.lua", "")
        try dir.writeFile(".hidden.lua", "")
        try dir.writeFile(".x.lua.swp", "")
        try dir.writeFile(".#x.lua", "")
        try dir.writeFile(".x.lua.AbC123", "")
        try dir.writeFile(".git/config.lua", "")
        try dir.writeFile("..2026_01_01/flags.lua", "")
        try dir.makeSymlink("..data", to: "..2026_01_01")
        try dir.writeFile("team/.cache/x.lua", "")
        try dir.writeFile("team/ok.lua", "")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["kept.lua", "team/ok.lua"])
        #expect(snapshot.problems.isEmpty)
    }

    @Test("files that are not .lua are ignored: backups, vim's 4913 probe, sed temporaries")
    func nonRuleFilesIgnored() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("x.lua", "")
        try dir.writeFile("x.lua~", "")
        try dir.writeFile("4913", "")
        try dir.writeFile("sedAb12Cd", "")
        try dir.writeFile("notes.md", "")
        try dir.writeFile("x.lua.bak", "")
        try dir.writeFile("x.LUA", "")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["x.lua"])
        #expect(snapshot.problems.isEmpty)
    }

    @Test("symlinked files and directories are followed")
    func symlinksFollowed() throws {
        let dir = try TemporaryDirectory()
        let elsewhere = try TemporaryDirectory()
        try elsewhere.writeFile("shared/common.lua", "-- common")
        try elsewhere.writeFile("single.lua", "-- single")
        try dir.makeSymlink("linked", to: elsewhere.path + "/shared")
        try dir.makeSymlink("one.lua", to: elsewhere.path + "/single.lua")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["linked/common.lua", "one.lua"])
        #expect(snapshot.sources.last?.content == Array("-- single".utf8))
    }

    @Test("a directory symlink loop is detected and reported, not followed forever")
    func symlinkLoop() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("sub/x.lua", "")
        try dir.makeSymlink("sub/again", to: "..")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["sub/x.lua"])
        #expect(snapshot.problems.contains { $0.location.file == "sub/again" && $0.message.contains("loop") })
    }

    @Test("a file symlink pointing to itself is reported as unreadable")
    func selfLink() throws {
        let dir = try TemporaryDirectory()
        try dir.makeSymlink("self.lua", to: "self.lua")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.isEmpty)
        #expect(snapshot.problems.contains { $0.location.file == "self.lua" && $0.message.contains("cannot read") })
    }

    @Test("a dangling symlink (an editor's lock file) is not a rule file and not a problem")
    func danglingLink() throws {
        let dir = try TemporaryDirectory()
        try dir.makeSymlink("gone.lua", to: "nowhere/at/all")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.isEmpty)
        #expect(snapshot.problems.isEmpty)
    }

    @Test("a rule file that cannot be read is reported, so the snapshot must not go live")
    func unreadableFile() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("fine.lua", "")
        if geteuid() == 0 {
            // Permissions do not stop root; /proc/self/mem is a regular file whose first page cannot be read.
            try dir.makeSymlink("broken.lua", to: "/proc/self/mem")
        } else {
            try dir.writeFile("broken.lua", "")
            #expect(chmod(dir.path + "/broken.lua", 0) == 0)
        }
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["fine.lua"])
        #expect(snapshot.problems.contains { $0.location.file == "broken.lua" && $0.message.contains("cannot read") })
    }

    @Test("a file larger than the limit is reported")
    func oversized() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("big.lua", String(repeating: "-", count: 5000))
        let snapshot = RuleTreeReader(maxFileBytes: 1000).read(root: dir.path)
        #expect(snapshot.sources.isEmpty)
        #expect(snapshot.problems.contains { $0.location.file == "big.lua" && $0.message.contains("larger than 1000") })
    }

    @Test("a missing root, or a root that is a file, is reported")
    func badRoot() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("file.lua", "")
        #expect(RuleTreeReader().read(root: dir.path + "/missing").problems.count == 1)
        #expect(
            RuleTreeReader().read(root: dir.path + "/file.lua").problems.first?.message.contains("not a directory")
                == true)
    }

    @Test("directories nested deeper than the limit are reported")
    func tooDeep() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("a/b/c/d/x.lua", "")
        var reader = RuleTreeReader()
        reader.maxDepth = 2
        let snapshot = reader.read(root: dir.path)
        #expect(snapshot.sources.isEmpty)
        #expect(snapshot.problems.contains { $0.message.contains("deeper than 2") })
    }

    @Test("a directory read from disk compiles into the same rule set as the same files given inline")
    func readThenCompile() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("flags/a.lua", #"flag "a" { rule = function(ctx) return ctx.on and "on" or nil end }"#)
        try dir.writeFile("config.lua", #"config "k" (1)"#)
        let snapshot = RuleTreeReader().read(root: dir.path)
        let (fromDisk, evaluator) = try RuleCompiler.compile(snapshot.sources)
        let inline = try compile([
            "flags/a.lua": #"flag "a" { rule = function(ctx) return ctx.on and "on" or nil end }"#,
            "config.lua": #"config "k" (1)"#,
        ])
        #expect(fromDisk.revision == inline.ruleSet.revision)
        #expect(fromDisk.flags == inline.ruleSet.flags)
        #expect(evaluator.evaluateFlag(key: "a", context: ["on": true], now: pinnedNow)?.reason == .targetingMatch)
    }
}

@Suite("Revision")
struct RevisionTests {
    let files = ["a.lua": #"flag "a" {}"#, "dir/b.lua": #"config "b" (2)"#]

    @Test("the same files give the same revision, whatever their order")
    func stable() throws {
        let one = RuleRevision(sources: sources(files))
        let two = RuleRevision(sources: sources(files).reversed())
        #expect(one == two)
        #expect(try compile(files).ruleSet.revision == one)
    }

    @Test("the revision is SHA-256 hex, and its short form is the first 16 digits")
    func format() {
        let revision = RuleRevision(sources: sources(files))
        #expect(revision.hex.count == 64)
        #expect(revision.hex.allSatisfy { "0123456789abcdef".contains($0) })
        #expect(revision.short == String(revision.hex.prefix(16)))
        #expect(revision.description == revision.short)
    }

    @Test("changing any byte of any file changes the revision")
    func anyByte() {
        let base = RuleRevision(sources: sources(files))
        let original = Array(files["a.lua"]!.utf8)
        for index in original.indices {
            var changed = original
            changed[index] ^= 0x01
            let variant = [RuleSource(path: "a.lua", content: changed)] + sources(["dir/b.lua": files["dir/b.lua"]!])
            #expect(RuleRevision(sources: variant) != base, "byte \(index)")
        }
    }

    @Test("renaming, adding or removing a file changes the revision")
    func structure() {
        let base = RuleRevision(sources: sources(files))
        #expect(RuleRevision(sources: sources(["b.lua": files["a.lua"]!, "dir/b.lua": files["dir/b.lua"]!])) != base)
        #expect(RuleRevision(sources: sources(files.merging(["empty.lua": ""]) { $1 })) != base)
        #expect(RuleRevision(sources: sources(["a.lua": files["a.lua"]!])) != base)
    }

    @Test("moving bytes between a path and its content does not collide")
    func noAmbiguity() {
        let one = RuleRevision(sources: [RuleSource(path: "ab", content: Array("c".utf8))])
        let two = RuleRevision(sources: [RuleSource(path: "a", content: Array("bc".utf8))])
        let three = RuleRevision(sources: [
            RuleSource(path: "a", content: Array("b".utf8)), RuleSource(path: "c", content: []),
        ])
        #expect(Set([one, two, three]).count == 3)
    }

    @Test("an empty rule set has the SHA-256 of nothing")
    func empty() {
        #expect(RuleRevision(sources: []).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test("each file's digest is listed with its size")
    func fileDigests() throws {
        let rules = try compile(["x.lua": ""])
        #expect(rules.ruleSet.files.first?.bytes == 0)
        #expect(rules.ruleSet.files.first?.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }
}

@Suite("Bounds of the rule tree scan")
struct RuleTreeBoundsTests {
    @Test("a symlink to /sys is refused with its path instead of walking the kernel's tree")
    func specialFileSystemRefused() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("a.lua", "")
        try #require(symlink("/sys", dir.path + "/sys") == 0)
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.problems.count == 1)
        #expect(snapshot.problems.first?.location.file == "sys")
        #expect(snapshot.problems.first?.message.contains("sysfs") == true)
    }

    @Test("a symlink to / stops at the entry bound with one message naming where it stopped")
    func entryBound() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("a.lua", "")
        try #require(symlink("/", dir.path + "/root") == 0)
        var reader = RuleTreeReader()
        reader.maxEntries = 2_000
        let snapshot = reader.read(root: dir.path)
        let bound = snapshot.problems.filter { $0.message.contains("more than 2000 directory entries") }
        #expect(bound.count == 1)
        #expect(bound.first?.location.file.hasPrefix("root/") == true)
    }

    @Test("a scan stops at the time bound")
    func timeBound() throws {
        let dir = try TemporaryDirectory()
        for index in 0..<600 { try dir.writeFile("f\(index).lua", "") }
        var reader = RuleTreeReader()
        reader.maxDuration = .zero
        let snapshot = reader.read(root: dir.path)
        #expect(snapshot.problems.count == 1)
        #expect(snapshot.problems.first?.message.contains("took longer than") == true)
    }

    @Test("a cancelled scan ends at once and says so")
    func cancelledScan() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("a.lua", "")
        let cancellation = RuleLoadCancellation()
        cancellation.cancel()
        let snapshot = RuleTreeReader().read(root: dir.path, cancellation: cancellation)
        #expect(snapshot.isCancelled)
        #expect(snapshot.sources.isEmpty)
    }

    @Test("rule files beyond the file limit give one clear message")
    func fileLimitMessage() throws {
        let dir = try TemporaryDirectory()
        for index in 0..<5 { try dir.writeFile("d\(index)/f.lua", "") }
        var reader = RuleTreeReader()
        reader.maxFiles = 2
        let snapshot = reader.read(root: dir.path)
        #expect(snapshot.problems.map(\.message) == ["more than 2 rule files: the limit of one rule set"])
    }

    @Test("rule files larger than the total byte bound are refused")
    func totalBytes() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("a.lua", String(repeating: "-", count: 600))
        try dir.writeFile("b.lua", String(repeating: "-", count: 600))
        var reader = RuleTreeReader()
        reader.maxTotalBytes = 1_000
        let snapshot = reader.read(root: dir.path)
        #expect(snapshot.problems.first?.message.contains("larger than 1000 bytes in total") == true)
    }

    @Test("a rule file or directory whose name is not UTF-8 refuses the set, named in escaped form")
    func invalidNames() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("ok.lua", "")
        try dir.writeFile("x.lua", "")
        // "café.lua" in Latin-1: the é is the single byte 0xE9.
        let bad = Array((dir.path + "/caf").utf8) + [0xE9] + Array(".lua".utf8) + [0]
        let renamed = bad.withUnsafeBufferPointer { badPath in
            badPath.withMemoryRebound(to: CChar.self) { rename(dir.path + "/x.lua", $0.baseAddress!) }
        }
        try #require(renamed == 0)
        try dir.writeFile("sub/inner.lua", "")
        let badDirectory = Array((dir.path + "/d").utf8) + [0xFF] + [0]
        let moved = badDirectory.withUnsafeBufferPointer { badPath in
            badPath.withMemoryRebound(to: CChar.self) { rename(dir.path + "/sub", $0.baseAddress!) }
        }
        try #require(moved == 0)
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["ok.lua"])
        #expect(snapshot.problems.map(\.location.file).sorted() == ["caf\\xe9.lua", "d\\xff"])
        #expect(snapshot.problems.allSatisfy { $0.message.contains("not valid UTF-8") })
    }

    @Test("a non-UTF-8 name that is no rule file is left alone")
    func invalidNameOfOtherFile() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("ok.lua", "")
        let bad = Array((dir.path + "/notes").utf8) + [0xFF] + Array(".md".utf8) + [0]
        let fd = bad.withUnsafeBufferPointer { path in
            path.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_WRONLY | O_CREAT, 0o644) }
        }
        try #require(fd >= 0)
        close(fd)
        #expect(RuleTreeReader().read(root: dir.path).problems.isEmpty)
    }
}

@Suite("Reading data files from a rules directory")
struct RuleTreeReaderDataFileTests {
    @Test(".txt and .json files are read with the rule files; other files are not")
    func dataFilesAreRead() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("a.lua", "")
        try dir.writeFile("beta.txt", "alice\n")
        try dir.writeFile("lists/vip.json", "[]")
        try dir.writeFile("README.md", "")
        try dir.writeFile(".beta.txt.swp", "")
        let snapshot = RuleTreeReader().read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["a.lua", "beta.txt", "lists/vip.json"])
        #expect(snapshot.problems.isEmpty)
    }

    @Test("a data file has a size cap of its own")
    func dataFileCap() throws {
        let dir = try TemporaryDirectory()
        try dir.writeFile("big.lua", String(repeating: "-", count: 2000))
        try dir.writeFile("big.txt", String(repeating: "x", count: 2000))
        let snapshot = RuleTreeReader(maxFileBytes: 4000, maxDataBytes: 1000).read(root: dir.path)
        #expect(snapshot.sources.map(\.path) == ["big.lua"])
        #expect(snapshot.problems.map(\.location.file) == ["big.txt"])
    }
}
