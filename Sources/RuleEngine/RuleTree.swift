import RuleModel

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The rule files found under a rules directory at one moment.
public struct RuleTreeSnapshot: Sendable, Hashable {
    /// Every rule file, sorted by relative path (bytewise).
    public var sources: [RuleSource]
    /// Files or directories that exist but could not be read; a snapshot with problems must not go live.
    public var problems: [RuleDiagnostic]

    public init(sources: [RuleSource], problems: [RuleDiagnostic] = []) {
        self.sources = sources.sorted { Array($0.path.utf8).lexicographicallyPrecedes(Array($1.path.utf8)) }
        self.problems = problems
    }
}

/// Reads a rules directory the way rulesd loads it.
///
/// Rule files are regular files (after following symlinks) whose names end in `.lua`, anywhere below the
/// root; any path component starting with `.` is skipped. That one rule covers Kubernetes' `..data` and
/// `..2026_…` directories, editor swap, lock and backup files (`.x.lua.swp`, `.#x.lua`), and rsync's
/// temporaries (`.x.lua.AbC123`); `x.lua~`, `4913` and `sedXXXXXX` are not `.lua` files. Directory
/// symlinks are followed, with loop detection.
public struct RuleTreeReader: Sendable {
    /// Largest file accepted.
    public var maxFileBytes: Int
    /// Deepest directory nesting followed.
    public var maxDepth: Int = 32
    /// Most rule files accepted.
    public var maxFiles: Int = 100_000

    public init(maxFileBytes: Int = RuleEngineLimits().maxFileBytes) {
        self.maxFileBytes = maxFileBytes
    }

    /// Reads every rule file under `root`.
    /// - Returns: the files found, plus a problem when the root is missing or something could not be read.
    public func read(root: String) -> RuleTreeSnapshot {
        var walk = Walk(reader: self)
        var st = stat()
        guard stat(root, &st) == 0 else {
            let reason = String(cString: strerror(errno))
            walk.problems.append(problem("", "cannot open the rules directory \(root): \(reason)"))
            return RuleTreeSnapshot(sources: [], problems: walk.problems)
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            walk.problems.append(problem("", "the rules path \(root) is not a directory"))
            return RuleTreeSnapshot(sources: [], problems: walk.problems)
        }
        walk.visit(directory: root, relative: "", depth: 0, ancestors: [DirectoryID(st)])
        return RuleTreeSnapshot(sources: walk.sources, problems: walk.problems)
    }

    fileprivate func problem(_ file: String, _ message: String) -> RuleDiagnostic {
        RuleDiagnostic(location: SourceLocation(file: file, line: 0), message: message)
    }

    /// Whether a directory entry's name can be part of a rule file's path.
    public static func isVisible(_ name: String) -> Bool { !name.hasPrefix(".") }

    /// Whether a file name names a rule file (before checking that it is a regular file).
    public static func isRuleFileName(_ name: String) -> Bool { isVisible(name) && name.hasSuffix(".lua") }
}

private struct DirectoryID: Hashable {
    var device: UInt64
    var inode: UInt64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

private struct Walk {
    let reader: RuleTreeReader
    var sources: [RuleSource] = []
    var problems: [RuleDiagnostic] = []

    init(reader: RuleTreeReader) {
        self.reader = reader
    }

    mutating func visit(directory path: String, relative: String, depth: Int, ancestors: Set<DirectoryID>) {
        guard var names = DirectoryEntries.names(of: path) else {
            // A directory that vanished mid-scan is simply gone; anything else is reported.
            if errno != ENOENT && errno != ENOTDIR {
                problems.append(reader.problem(relative, "cannot open directory: \(String(cString: strerror(errno)))"))
            }
            return
        }
        names.removeAll { !RuleTreeReader.isVisible($0) }
        names.sort { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        for name in names {
            let full = path.hasSuffix("/") ? path + name : path + "/" + name
            let rel = relative.isEmpty ? name : relative + "/" + name
            var st = stat()
            if stat(full, &st) != 0 {
                let err = errno
                // ENOENT: vanished, or a dangling symlink (an editor's lock file): not a rule file.
                if err != ENOENT && (name.hasSuffix(".lua") || err == ELOOP) {
                    problems.append(reader.problem(rel, "cannot read: \(String(cString: strerror(err)))"))
                }
                continue
            }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                let id = DirectoryID(st)
                if ancestors.contains(id) {
                    problems.append(reader.problem(rel, "directory symlink loop"))
                } else if depth + 1 > reader.maxDepth {
                    problems.append(reader.problem(rel, "directories nested deeper than \(reader.maxDepth) levels"))
                } else {
                    visit(directory: full, relative: rel, depth: depth + 1, ancestors: ancestors.union([id]))
                }
            case S_IFREG where name.hasSuffix(".lua"):
                if sources.count >= reader.maxFiles {
                    problems.append(reader.problem(rel, "more than \(reader.maxFiles) rule files"))
                    return
                }
                readFile(full, relative: rel)
            default:
                continue
            }
        }
    }

    mutating func readFile(_ path: String, relative: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno != ENOENT {
                problems.append(reader.problem(relative, "cannot read: \(String(cString: strerror(errno)))"))
            }
            return
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                problems.append(reader.problem(relative, "cannot read: \(String(cString: strerror(errno)))"))
                return
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > reader.maxFileBytes {
                problems.append(reader.problem(relative, "file is larger than \(reader.maxFileBytes) bytes"))
                return
            }
        }
        sources.append(RuleSource(path: relative, content: bytes))
    }
}
