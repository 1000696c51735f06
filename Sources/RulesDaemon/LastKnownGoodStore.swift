import Glibc
import RuleEngine
import RuleModel

/// Keeps a copy of the last rule set that loaded, so that a restart while the rules directory is broken
/// still serves good rules.
///
/// Layout under the state directory: `last-good/<revision>/` holds the files and a `REVISION` file;
/// `last-good/current` is a symlink to it, replaced by `rename(2)`, so a crash at any moment leaves either
/// the old or the new copy complete. Files and directories are fsync'ed before the switch.
struct LastKnownGoodStore: Sendable {
    let stateDirectory: String

    var root: String { stateDirectory + "/last-good" }

    /// Saves `sources` as the last known good rule set (does nothing if that revision is already current).
    func save(_ sources: [RuleSource], revision: RuleRevision) throws(LastKnownGoodError) {
        try makeDirectories(root)
        let name = revision.hex
        let current = root + "/current"
        if readLink(current) == name { return }
        let final = root + "/" + name
        let staging = root + "/.staging-\(name.prefix(16))-\(getpid())"
        DirectoryEntries.removeTree(staging)
        try makeDirectories(staging)
        for source in sources {
            let path = staging + "/" + source.path
            if let slash = path.lastIndex(of: "/") { try makeDirectories(String(path[..<slash])) }
            try writeFile(path, source.content)
        }
        try writeFile(staging + "/REVISION", Array((revision.hex + "\n").utf8))
        try syncDirectory(staging)
        DirectoryEntries.removeTree(final)
        guard rename(staging, final) == 0 else { throw error("cannot move \(staging) to \(final)") }
        let link = root + "/.current-\(getpid())"
        unlink(link)
        guard symlink(name, link) == 0 else { throw error("cannot create \(link)") }
        guard rename(link, current) == 0 else { throw error("cannot replace \(current)") }
        try syncDirectory(root)
        // Older copies are no longer needed once `current` points at the new one.
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
    func currentName() -> String? { readLink(root + "/current") }

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

    private func writeFile(_ path: String, _ bytes: [UInt8]) throws(LastKnownGoodError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw error("cannot write \(path)") }
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw error("cannot write \(path)")
            }
            offset += n
        }
        guard fsync(fd) == 0 else { throw error("cannot sync \(path)") }
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
