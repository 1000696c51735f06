import Glibc
import RuleEngine
import RuleModel

/// Keeps a copy of the last rule set that loaded, so that a restart while the rules directory is broken
/// still serves good rules.
///
/// Layout under the state directory: `last-good/<revision>.json` is a manifest (the revision, then each file's
/// path, size and content digest, in the order the rules directory was read); the contents are objects of the
/// store the history uses (``RuleObjectStore``, `history/objects/`), so a reload writes only the files whose
/// content is new, and a manifest. `last-good/current` is a symlink to the manifest, replaced by `rename(2)`
/// once the objects and the manifest are durable, so a crash at any moment leaves either the old or the new
/// copy complete.
///
/// Older versions kept a full copy, `last-good/<revision>/` with a `REVISION` file, `current` linking to the
/// directory: such a copy still loads, and is removed once a manifest replaces it.
struct LastKnownGoodStore: Sendable {
    let stateDirectory: String

    var root: String { stateDirectory + "/last-good" }
    private var objects: RuleObjectStore {
        RuleObjectStore(directory: RuleHistoryStore.objectsDirectory(under: stateDirectory))
    }

    private static let manifestSuffix = ".json"

    /// Saves `sources` as the last known good rule set (does nothing if that revision is already current).
    func save(_ sources: [RuleSource], revision: RuleRevision) throws(LastKnownGoodError) {
        try makeDirectories(root)
        let name = revision.hex + Self.manifestSuffix
        let current = root + "/current"
        if readLink(current) == name { return }
        let files: [HistoryEntry.File]
        do throws(HistoryError) {
            files = try objects.store(sources)
            let manifest: JSONValue = [
                "revision": .string(revision.hex),
                "files": .array(
                    files.map {
                        ["path": .string($0.path), "sha256": .string($0.sha256), "bytes": .integer(Int64($0.bytes))]
                    }),
            ]
            try StateFiles.writeAtomically(root + "/" + name, Array((JSONWriter.string(manifest) + "\n").utf8))
        } catch {
            throw LastKnownGoodError(message: error.message)
        }
        let link = root + "/.current-\(getpid())"
        unlink(link)
        guard symlink(name, link) == 0 else { throw error("cannot create \(link)") }
        guard rename(link, current) == 0 else { throw error("cannot replace \(current)") }
        try syncDirectory(root)
        // Older manifests (and copies in the older layout) are no longer needed once `current` names the new one.
        for entryName in DirectoryEntries.names(of: root) ?? [] where entryName != "current" && entryName != name {
            DirectoryEntries.removeTree(root + "/" + entryName)
        }
    }

    /// What the state directory holds.
    enum SavedCopy: Sendable {
        /// No copy was ever saved (or the state directory is missing).
        case none
        /// A copy exists but cannot be used: `reason` says what is wrong with it.
        case corrupt(reason: String)
        case intact(sources: [RuleSource], revision: RuleRevision)
    }

    /// The name (revision) `current` points at, when there is one.
    func currentName() -> String? {
        guard let target = readLink(root + "/current") else { return nil }
        return target.hasSuffix(Self.manifestSuffix) ? String(target.dropLast(Self.manifestSuffix.count)) : target
    }

    /// The digests of the objects the current copy uses: empty when there is no copy or it is in the older
    /// layout (which holds its own files); nil when its manifest cannot be read.
    func objectDigests() -> Set<String>? {
        guard let target = readLink(root + "/current"), target.hasSuffix(Self.manifestSuffix) else { return [] }
        guard case .success(let manifest) = readManifest(target) else { return nil }
        return Set(manifest.files.map(\.sha256))
    }

    /// The last known good rule files, checked against the revision they were saved under.
    func load(maxFileBytes: Int, maxDataBytes: Int = RuleEngineLimits().maxDataBytes) -> SavedCopy {
        let current = root + "/current"
        guard let name = readLink(current) else {
            var st = stat()
            if lstat(current, &st) == 0 { return .corrupt(reason: "\(current) is not a symbolic link") }
            return .none
        }
        guard !name.contains("/"), !name.isEmpty else {
            return .corrupt(reason: "\(current) points outside \(root) (to \(name))")
        }
        if name.hasSuffix(Self.manifestSuffix) {
            return loadManifest(name, maxFileBytes: maxFileBytes, maxDataBytes: maxDataBytes)
        }
        let directory = root + "/" + name
        var st = stat()
        guard stat(directory, &st) == 0 else {
            return .corrupt(reason: "\(current) points at \(name), which is missing")
        }
        let snapshot = RuleTreeReader(maxFileBytes: maxFileBytes, maxDataBytes: maxDataBytes).read(root: directory)
        if let first = snapshot.problems.first {
            return .corrupt(reason: "the copy in \(directory) cannot be read: \(first)")
        }
        let revision = RuleRevision(sources: snapshot.sources)
        // The directory is named after the revision; a mismatch means the copy was damaged.
        guard revision.hex == name else {
            return .corrupt(
                reason: "the files in \(directory) do not match the revision they were saved under "
                    + "(their revision is \(revision.short)): a file was changed, added or lost")
        }
        return .intact(sources: snapshot.sources, revision: revision)
    }

    private struct Manifest {
        var revision: String
        var files: [HistoryEntry.File]
    }

    private func readManifest(_ name: String) -> Result<Manifest, LastKnownGoodError> {
        let path = root + "/" + name
        guard let bytes = StateFiles.read(path) else {
            return .failure(LastKnownGoodError(message: "\(root)/current points at \(name), which is missing"))
        }
        guard let json = try? JSONParser().parse(bytes), let revision = json["revision"]?.stringValue,
            let entries = json["files"]?.arrayValue
        else { return .failure(LastKnownGoodError(message: "the manifest \(path) cannot be read")) }
        var files: [HistoryEntry.File] = []
        files.reserveCapacity(entries.count)
        for entry in entries {
            guard let file = entry["path"]?.stringValue, let digest = entry["sha256"]?.stringValue,
                let size = entry["bytes"]?.intValue
            else { return .failure(LastKnownGoodError(message: "the manifest \(path) cannot be read")) }
            files.append(HistoryEntry.File(path: file, sha256: digest, bytes: size))
        }
        return .success(Manifest(revision: revision, files: files))
    }

    private func loadManifest(_ name: String, maxFileBytes: Int, maxDataBytes: Int) -> SavedCopy {
        let manifest: Manifest
        switch readManifest(name) {
        case .success(let read): manifest = read
        case .failure(let problem): return .corrupt(reason: problem.message)
        }
        let saved = String(name.dropLast(Self.manifestSuffix.count))
        guard manifest.revision == saved else {
            return .corrupt(reason: "the manifest \(root)/\(name) names another revision (\(manifest.revision))")
        }
        var sources: [RuleSource] = []
        sources.reserveCapacity(manifest.files.count)
        for file in manifest.files {
            let limit = RuleDataSet.isDataFilePath(file.path) ? maxDataBytes : maxFileBytes
            guard file.bytes <= limit else {
                return .corrupt(reason: "the saved \(file.path) is larger than the limit (\(limit) bytes)")
            }
            guard let content = objects.read(file.sha256) else {
                return .corrupt(reason: "the saved content of \(file.path) (\(file.sha256)) is missing")
            }
            sources.append(RuleSource(path: file.path, content: content))
        }
        let revision = RuleRevision(sources: sources)
        // The manifest is named after the revision; a mismatch means a stored file was damaged.
        guard revision.hex == saved else {
            return .corrupt(
                reason: "the files of \(root)/\(name) do not match the revision they were saved under "
                    + "(their revision is \(revision.short)): a stored file was changed or lost")
        }
        return .intact(sources: sources, revision: revision)
    }

    private func error(_ message: String) -> LastKnownGoodError {
        LastKnownGoodError(message: "\(message): \(String(cString: strerror(errno)))")
    }

    private func makeDirectories(_ path: String) throws(LastKnownGoodError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o750) != 0 && errno != EEXIST { throw error("cannot create \(prefix)") }
        }
    }

    private func syncDirectory(_ path: String) throws(LastKnownGoodError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw error("cannot open \(path)") }
        defer { close(fd) }
        _ = fsync(fd)
    }

    private func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

struct LastKnownGoodError: Error, Sendable, CustomStringConvertible {
    var message: String
    var description: String { message }
}
