import Glibc
import RuleEngine
import RuleModel
import Synchronization

/// One rule set that went live, as the history lists it.
public struct HistoryEntry: Sendable, Equatable {
    public struct File: Sendable, Equatable {
        public var path: String
        public var sha256: String
        public var bytes: Int
    }

    public var revision: RuleRevision
    /// Orders entries: higher went live later.
    public var sequence: Int64
    public var generation: UInt64
    /// Seconds since the epoch.
    public var at: Double
    public var trigger: String
    public var files: [File]
    /// Paths compared with the entry before it.
    public var added: [String]
    public var changed: [String]
    public var removed: [String]
    public var flags: Int
    public var routes: Int
    public var configs: Int

    var json: JSONValue {
        [
            "revision": .string(revision.hex), "sequence": .integer(sequence),
            "generation": .integer(Int64(generation)),
            "at": .number(at), "trigger": .string(trigger),
            "files": .array(
                files.map {
                    ["path": .string($0.path), "sha256": .string($0.sha256), "bytes": .integer(Int64($0.bytes))]
                }
            ),
            "added": .array(added.map { .string($0) }), "changed": .array(changed.map { .string($0) }),
            "removed": .array(removed.map { .string($0) }),
            "counts": [
                "files": .integer(Int64(files.count)), "flags": .integer(Int64(flags)),
                "routes": .integer(Int64(routes)), "configs": .integer(Int64(configs)),
            ],
        ]
    }

    init(
        revision: RuleRevision, sequence: Int64, generation: UInt64, at: Double, trigger: String, files: [File],
        added: [String], changed: [String], removed: [String], flags: Int, routes: Int, configs: Int
    ) {
        self.revision = revision
        self.sequence = sequence
        self.generation = generation
        self.at = at
        self.trigger = trigger
        self.files = files
        self.added = added
        self.changed = changed
        self.removed = removed
        self.flags = flags
        self.routes = routes
        self.configs = configs
    }

    init?(json: JSONValue) {
        guard let hex = json["revision"]?.stringValue, let sequence = json["sequence"]?.int64Value,
            let generation = json["generation"]?.int64Value, let at = json["at"]?.doubleValue,
            let trigger = json["trigger"]?.stringValue, let files = json["files"]?.arrayValue
        else { return nil }
        var parsed: [File] = []
        for file in files {
            guard let path = file["path"]?.stringValue, let sha = file["sha256"]?.stringValue,
                let bytes = file["bytes"]?.intValue
            else { return nil }
            parsed.append(File(path: path, sha256: sha, bytes: bytes))
        }
        func strings(_ key: String) -> [String] { json[key]?.arrayValue?.compactMap(\.stringValue) ?? [] }
        self.init(
            revision: RuleRevision(hex: hex), sequence: sequence, generation: UInt64(max(generation, 0)), at: at,
            trigger: trigger, files: parsed, added: strings("added"), changed: strings("changed"),
            removed: strings("removed"), flags: json["counts"]?["flags"]?.intValue ?? 0,
            routes: json["counts"]?["routes"]?.intValue ?? 0, configs: json["counts"]?["configs"]?.intValue ?? 0)
    }
}

/// The revision a daemon is pinned to by a rollback, and what the rules directory held then.
public struct RulePin: Sendable, Equatable {
    public var revision: RuleRevision
    /// The rules directory's revision when the pin was made: while the directory still holds it, the pin stays.
    public var directoryRevision: RuleRevision

    /// `{"revision":…,"rules_dir_revision":…,"message":"pinned to …"}`, as `status`, events and answers give it.
    var json: JSONValue {
        [
            "revision": .string(revision.hex), "by": "rollback", "rules_dir_revision": .string(directoryRevision.hex),
            "message": .string(message),
        ]
    }

    /// `pinned to REV by rollback; the rules directory holds REV2`.
    public var message: String {
        "pinned to \(revision.short) by rollback; the rules directory holds \(directoryRevision.short)"
    }
}

/// The last rule sets that went live, kept in the state directory across restarts.
///
/// Layout under the state directory: `history/objects/<sha256>` holds each file's bytes once, whatever number of
/// revisions contain it (the last known good copy uses the same objects, see ``RuleObjectStore``);
/// `history/revisions/<revision>.json` is one small manifest per revision (generation, time, trigger, files, what
/// changed since the entry before); `history/pin` names the revision a rollback pinned. Every file is written to
/// a temporary name, synced and renamed, so a crash leaves whole files only. A revision that goes live again
/// moves to the top rather than being stored twice.
struct RuleHistoryStore: Sendable {
    let stateDirectory: String
    /// Entries kept; older ones, and the objects only they used, are removed.
    let capacity: Int
    /// The entries as this store last read or wrote them: recording one does not parse every manifest again
    /// (with 10,000 files, 20 manifests are 20 MB of JSON).
    private let cache = EntryCache()

    init(stateDirectory: String, capacity: Int) {
        self.stateDirectory = stateDirectory
        self.capacity = capacity
    }

    var root: String { stateDirectory + "/history" }
    private var objects: RuleObjectStore { RuleObjectStore(directory: Self.objectsDirectory(under: stateDirectory)) }
    private var revisions: String { root + "/revisions" }

    /// Where the file contents of the history and of the last known good copy are stored.
    static func objectsDirectory(under stateDirectory: String) -> String { stateDirectory + "/history/objects" }

    /// Records `sources` as the newest entry and prunes the history to its capacity.
    @discardableResult
    func record(
        _ sources: [RuleSource], revision: RuleRevision, generation: UInt64, at: Double, trigger: String,
        flags: Int, routes: Int, configs: Int
    ) throws(HistoryError) -> HistoryEntry {
        try StateFiles.makeDirectories(revisions)
        let existing = entries()
        let previous = existing.first { $0.revision != revision }
        let files = try objects.store(sources)
        let before = Dictionary(
            (previous?.files ?? []).map { ($0.path, $0.sha256) }, uniquingKeysWith: { first, _ in first })
        let paths = Set(files.map(\.path))
        let entry = HistoryEntry(
            revision: revision, sequence: (existing.first?.sequence ?? 0) + 1, generation: generation, at: at,
            trigger: trigger, files: files,
            added: previous == nil ? [] : files.filter { before[$0.path] == nil }.map(\.path),
            changed: files.filter { before[$0.path] != nil && before[$0.path] != $0.sha256 }.map(\.path),
            removed: (previous?.files ?? []).map(\.path).filter { !paths.contains($0) }, flags: flags,
            routes: routes, configs: configs)
        do throws(HistoryError) {
            try StateFiles.writeAtomically(
                revisions + "/" + revision.hex + ".json", Array((JSONWriter.string(entry.json) + "\n").utf8))
            try StateFiles.syncDirectory(revisions)
        } catch {
            cache.forget()
            throw error
        }
        cache.set(prune(keeping: [entry] + existing.filter { $0.revision != revision }))
        return entry
    }

    /// Every entry, newest first. Unreadable manifests are skipped.
    func entries() -> [HistoryEntry] {
        if let cached = cache.entries { return cached }
        let read = readEntries()
        cache.set(read)
        return read
    }

    private func readEntries() -> [HistoryEntry] {
        var result: [HistoryEntry] = []
        for name in DirectoryEntries.names(of: revisions) ?? [] where name.hasSuffix(".json") {
            guard let bytes = StateFiles.read(revisions + "/" + name),
                let json = try? JSONParser().parse(bytes), let entry = HistoryEntry(json: json)
            else { continue }
            result.append(entry)
        }
        return result.sorted { $0.sequence > $1.sequence }
    }

    /// The entry whose revision is `name` or starts with it (at least 4 hex digits, unambiguous).
    func entry(named name: String) throws(HistoryError) -> HistoryEntry {
        let wanted = name.lowercased()
        guard wanted.count >= 4, wanted.allSatisfy(\.isHexDigit) else {
            throw HistoryError("'\(name)' is not a revision: give at least 4 of its hex digits")
        }
        let matches = entries().filter { $0.revision.hex.hasPrefix(wanted) }
        guard let first = matches.first else { throw HistoryError("revision \(name) is not in the history") }
        guard matches.count == 1 else { throw HistoryError("revision \(name) is ambiguous: give more digits") }
        return first
    }

    /// The stored files of `entry`, checked against its revision.
    func sources(of entry: HistoryEntry) throws(HistoryError) -> [RuleSource] {
        var sources: [RuleSource] = []
        for file in entry.files {
            guard let bytes = objects.read(file.sha256) else {
                throw HistoryError("the stored copy of \(file.path) in revision \(entry.revision.short) is missing")
            }
            sources.append(RuleSource(path: file.path, content: bytes))
        }
        guard RuleRevision(sources: sources) == entry.revision else {
            throw HistoryError(
                "the stored files of revision \(entry.revision.short) do not match it: they were damaged")
        }
        return sources
    }

    // MARK: - the pin

    /// The pin a rollback left, if any.
    func loadPin() -> RulePin? {
        guard let bytes = StateFiles.read(root + "/pin"), let json = try? JSONParser().parse(bytes),
            let revision = json["revision"]?.stringValue, let directory = json["rules_dir_revision"]?.stringValue
        else { return nil }
        return RulePin(revision: RuleRevision(hex: revision), directoryRevision: RuleRevision(hex: directory))
    }

    func savePin(_ pin: RulePin?) throws(HistoryError) {
        guard let pin else {
            if unlink(root + "/pin") != 0 && errno != ENOENT { throw HistoryError.system("cannot remove \(root)/pin") }
            try StateFiles.syncDirectory(root)
            return
        }
        try StateFiles.makeDirectories(root)
        let json: JSONValue = [
            "revision": .string(pin.revision.hex), "rules_dir_revision": .string(pin.directoryRevision.hex),
        ]
        try StateFiles.writeAtomically(root + "/pin", Array((JSONWriter.string(json) + "\n").utf8))
        try StateFiles.syncDirectory(root)
    }

    /// Removes the entries beyond the capacity, then every object that neither a kept entry nor the last known
    /// good copy uses.
    /// - Returns: the kept entries.
    private func prune(keeping entries: [HistoryEntry]) -> [HistoryEntry] {
        let kept = Array(entries.prefix(max(capacity, 1)))
        for entry in entries.dropFirst(kept.count) {
            unlink(revisions + "/" + entry.revision.hex + ".json")
        }
        var used = Set(kept.flatMap { $0.files.map(\.sha256) })
        // The copy is almost always the newest entry: its manifest is read only when it is not in the history.
        let lastKnownGood = LastKnownGoodStore(stateDirectory: stateDirectory)
        if let saved = lastKnownGood.currentName(), !kept.contains(where: { $0.revision.hex == saved }) {
            // A copy whose manifest cannot be read: collect nothing rather than what it might need.
            guard let digests = lastKnownGood.objectDigests() else { return kept }
            used.formUnion(digests)
        }
        objects.collectGarbage(keeping: used)
        return kept
    }
}

/// The history's entries in memory, shared by every copy of one ``RuleHistoryStore``.
private final class EntryCache: Sendable {
    private let stored = Mutex<[HistoryEntry]?>(nil)

    var entries: [HistoryEntry]? { stored.withLock { $0 } }
    func set(_ entries: [HistoryEntry]) { stored.withLock { $0 = entries } }
    /// After a write that may have half happened: the next read goes to the disk.
    func forget() { stored.withLock { $0 = nil } }
}

struct HistoryError: Error, Sendable, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }

    static func system(_ message: String) -> HistoryError {
        HistoryError("\(message): \(String(cString: strerror(errno)))")
    }
}

/// Whole-file reads and crash-safe writes in the state directory.
enum StateFiles {
    static func makeDirectories(_ path: String) throws(HistoryError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o750) != 0 && errno != EEXIST { throw .system("cannot create \(prefix)") }
        }
    }

    /// Writes `bytes` to a temporary name beside `path`, syncs it and renames it over `path`.
    static func writeAtomically(_ path: String, _ bytes: [UInt8]) throws(HistoryError) {
        let temporary = path + ".tmp-\(getpid())"
        do throws(HistoryError) {
            try write(temporary, bytes, sync: true)
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let failure = HistoryError.system("cannot store \(path)")
            unlink(temporary)
            throw failure
        }
    }

    /// Writes `bytes` to `path` (created or truncated), and syncs it when `sync` is set.
    static func write(_ path: String, _ bytes: [UInt8], sync: Bool) throws(HistoryError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw .system("cannot write \(path)") }
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .system("cannot write \(path)")
            }
            offset += n
        }
        if sync, fsync(fd) != 0 { throw .system("cannot sync \(path)") }
    }

    static func syncDirectory(_ path: String) throws(HistoryError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .system("cannot open \(path)") }
        defer { close(fd) }
        _ = fsync(fd)
    }

    static func read(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { return result }
            result.append(contentsOf: chunk[0..<n])
        }
    }
}
