import Glibc
import RuleEngine
import RuleModel

/// Rule files stored by content, once, for the history and the last known good copy alike.
///
/// `<directory>/<sha256>` holds one file's bytes. An object takes its final name only once its bytes are durable:
/// new objects are written under temporary names, made durable together, then renamed, and the directory is
/// synced. So a name that exists always holds the whole content (a crash leaves at most temporary files, which
/// ``collectGarbage(keeping:)`` removes), and a reload that changes one file of 10,000 writes one object.
struct RuleObjectStore: Sendable {
    let directory: String

    /// Above this many new objects, one syncfs(2) replaces an fsync per object: each fsync commits the file
    /// system's journal, so 10,000 of them took seconds where one syncfs takes a commit.
    static let fileSystemSyncThreshold = 64

    /// Stores the contents of `sources` that are not stored yet.
    /// - Returns: each source's path, content digest and size, in the order given.
    func store(_ sources: [RuleSource]) throws(HistoryError) -> [HistoryEntry.File] {
        try StateFiles.makeDirectories(directory)
        var files: [HistoryEntry.File] = []
        files.reserveCapacity(sources.count)
        // One listing rather than a stat per file: with 10,000 files, a few getdents calls instead of 10,000.
        var present = Set(DirectoryEntries.names(of: directory) ?? [])
        var missing: [(digest: String, content: [UInt8])] = []
        for source in sources {
            let digest = RuleRevision.digest(of: source.content)
            files.append(HistoryEntry.File(path: source.path, sha256: digest, bytes: source.content.count))
            if present.insert(digest).inserted { missing.append((digest, source.content)) }
        }
        guard !missing.isEmpty else { return files }
        let syncEach = missing.count <= Self.fileSystemSyncThreshold
        let suffix = ".tmp-\(getpid())"
        var written: [String] = []
        do throws(HistoryError) {
            for object in missing {
                let temporary = directory + "/" + object.digest + suffix
                written.append(temporary)
                try StateFiles.write(temporary, object.content, sync: syncEach)
            }
            if !syncEach, !DirectoryEntries.syncFileSystem(containing: directory) {
                throw HistoryError.system("cannot sync the file system holding \(directory)")
            }
            for (object, temporary) in zip(missing, written) {
                guard rename(temporary, directory + "/" + object.digest) == 0 else {
                    throw HistoryError.system("cannot store \(directory)/\(object.digest)")
                }
            }
        } catch {
            for temporary in written { unlink(temporary) }
            throw error
        }
        try StateFiles.syncDirectory(directory)
        return files
    }

    /// The bytes stored under `digest`; nil when there are none.
    func read(_ digest: String) -> [UInt8]? {
        guard Self.isDigest(digest) else { return nil }
        return StateFiles.read(directory + "/" + digest)
    }

    /// Removes every object not in `used`, and what interrupted writes left.
    /// - Returns: how many files were removed.
    @discardableResult
    func collectGarbage(keeping used: Set<String>) -> Int {
        var removed = 0
        for name in DirectoryEntries.names(of: directory) ?? [] where !used.contains(name) {
            if unlink(directory + "/" + name) == 0 { removed += 1 }
        }
        return removed
    }

    /// Whether `name` can be an object's name: 64 lowercase hex digits, nothing that leads out of the directory.
    static func isDigest(_ name: String) -> Bool {
        name.utf8.count == 64 && name.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}
