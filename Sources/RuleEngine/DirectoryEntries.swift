import CFileSystemInfo
import Glibc

/// Directory reading over `opendir`/`readdir`, shared by the rule scanner, the watcher and the daemon's saved
/// copy. Written here because the server targets do not link Foundation, and swift-system has no directory
/// iteration.
public enum DirectoryEntries {
    /// The names in the directory at `path`, except `.` and `..`, in the order the file system returns them, as
    /// the bytes the file system stores (names need not be UTF-8); nil when the directory cannot be opened, with
    /// `errno` saying why.
    public static func rawNames(of path: String) -> [[UInt8]]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var names: [[UInt8]] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if name != [0x2E] && name != [0x2E, 0x2E] { names.append(name) }
        }
        return names
    }

    /// The names in the directory at `path`, as ``rawNames(of:)``, decoded as UTF-8 (invalid bytes become
    /// U+FFFD); for callers that only compare names or build paths from valid ones.
    public static func names(of path: String) -> [String]? {
        rawNames(of: path)?.map { String(decoding: $0, as: UTF8.self) }
    }

    /// `rm -rf path`, best effort: symbolic links are removed, never followed; what cannot be removed stays.
    public static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in names(of: path) ?? [] { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

extension DirectoryEntries {
    /// Makes everything written to the file system holding `path` durable, with one `syncfs(2)`.
    /// - Returns: whether it succeeded (`errno` says why not).
    public static func syncFileSystem(containing path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return rulesd_sync_file_system(fd) == 0
    }
}
