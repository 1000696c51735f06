#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Directory reading over `opendir`/`readdir`, shared by the rule scanner, the watcher, the daemon's saved copy and
/// the tests. Written here because the server targets do not link Foundation, and swift-system has no directory
/// iteration.
public enum DirectoryEntries {
    /// The names in the directory at `path`, except `.` and `..`, in the order the file system returns them; nil
    /// when the directory cannot be opened, with `errno` saying why.
    public static func names(of path: String) -> [String]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
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
