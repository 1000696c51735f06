import CFileSystemInfo
import Glibc
import RuleModel

/// The rule files found under a rules directory at one moment.
public struct RuleTreeSnapshot: Sendable, Hashable {
    /// Every rule file, sorted by relative path (bytewise).
    public var sources: [RuleSource]
    /// Files or directories that exist but could not be read, or were refused; a snapshot with problems must not
    /// go live.
    public var problems: [RuleDiagnostic]
    /// Whether the scan was abandoned on request (its content is then incomplete).
    public var isCancelled: Bool

    public init(sources: [RuleSource], problems: [RuleDiagnostic] = [], isCancelled: Bool = false) {
        self.sources = sources.sorted { Array($0.path.utf8).lexicographicallyPrecedes(Array($1.path.utf8)) }
        self.problems = problems
        self.isCancelled = isCancelled
    }
}

/// Reads a rules directory the way rulesd loads it.
///
/// Rule files are regular files (after following symlinks) whose names end in `.lua`, anywhere below the
/// root; any path component starting with `.` is skipped. That one rule covers Kubernetes' `..data` and
/// `..2026_…` directories, editor swap, lock and backup files (`.x.lua.swp`, `.#x.lua`), and rsync's
/// temporaries (`.x.lua.AbC123`); `x.lua~`, `4913` and `sedXXXXXX` are not `.lua` files. Directory
/// symlinks are followed, with loop detection. Data files (`.txt`, `.json`) are read by the same rule, with a
/// size cap of their own: they are part of the rule set's content (and revision) whether a rule uses them or
/// not.
///
/// The walk is bounded, because a symlink inside the rules directory can point anywhere (`/`, `/sys`): by depth,
/// by the directory entries it examines, by rule files and their bytes, and by time; it never enters kernel
/// file systems such as `/proc` and `/sys`, whose files are not rules and some of which never end. Whatever it
/// refuses is reported with its path, and a name that is not valid UTF-8 is reported rather than dropped.
public struct RuleTreeReader: Sendable {
    /// Largest file accepted.
    public var maxFileBytes: Int
    /// Largest data file (`.txt`, `.json`) accepted.
    public var maxDataBytes: Int
    /// Deepest directory nesting followed.
    public var maxDepth: Int = 32
    /// Most rule files accepted.
    public var maxFiles: Int = 100_000
    /// Most bytes of rule files in total.
    public var maxTotalBytes: Int = 512 << 20
    /// Most directory entries examined (rule files or not), so that a tree full of other files ends quickly.
    public var maxEntries: Int = 1_000_000
    /// Longest a scan may take.
    public var maxDuration: Duration = .seconds(60)

    public init(
        maxFileBytes: Int = RuleEngineLimits().maxFileBytes, maxDataBytes: Int = RuleEngineLimits().maxDataBytes
    ) {
        self.maxFileBytes = maxFileBytes
        self.maxDataBytes = maxDataBytes
    }

    /// Reads every rule file under `root`.
    /// - Parameters:
    ///   - root: the rules directory.
    ///   - cancellation: abandons the scan between two directory entries when requested.
    /// - Returns: the files found, plus a problem when the root is missing, something could not be read, or a
    ///   bound was reached.
    public func read(root: String, cancellation: RuleLoadCancellation? = nil) -> RuleTreeSnapshot {
        var walk = Walk(reader: self, cancellation: cancellation)
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
        return RuleTreeSnapshot(sources: walk.sources, problems: walk.problems, isCancelled: walk.cancelled)
    }

    fileprivate func problem(_ file: String, _ message: String) -> RuleDiagnostic {
        RuleDiagnostic(location: SourceLocation(file: file, line: 0), message: message)
    }

    /// Whether a directory entry's name can be part of a rule file's path.
    public static func isVisible(_ name: String) -> Bool { !name.hasPrefix(".") }

    /// Whether a file name names a rule file (before checking that it is a regular file).
    public static func isRuleFileName(_ name: String) -> Bool { isVisible(name) && hasRuleFileSuffix(name) }

    /// Whether a name ends like a rule file: `.lua`, or `.flagd.json` for a flagd flag file.
    public static func hasRuleFileSuffix(_ name: String) -> Bool {
        name.hasSuffix(".lua") || name.hasSuffix(FlagdTranslator.fileSuffix)
    }

    /// Whether a file name names a file the scan reads (a rule file or a data file), before checking that it is
    /// a regular file.
    public static func isScannedFileName(_ name: String) -> Bool {
        isVisible(name) && (hasRuleFileSuffix(name) || RuleDataSet.isDataFilePath(name))
    }

    /// A path for messages: valid UTF-8 as is, every other byte as `\xNN`.
    public static func escapedPath(_ bytes: [UInt8]) -> String {
        var result = ""
        var index = 0
        while index < bytes.count {
            let length = validSequenceLength(bytes, at: index)
            if length > 0 {
                result += String(decoding: bytes[index..<index + length], as: UTF8.self)
                index += length
            } else {
                let hex = Array("0123456789abcdef")
                result += "\\x" + String(hex[Int(bytes[index] >> 4)]) + String(hex[Int(bytes[index] & 15)])
                index += 1
            }
        }
        return result
    }

    /// The length of the valid UTF-8 sequence at `index`, or 0 when the byte there does not start one.
    private static func validSequenceLength(_ bytes: [UInt8], at index: Int) -> Int {
        let lead = bytes[index]
        if lead < 0x80 { return 1 }
        let length: Int
        if lead >= 0xC2 && lead <= 0xDF {
            length = 2
        } else if lead >= 0xE0 && lead <= 0xEF {
            length = 3
        } else if lead >= 0xF0 && lead <= 0xF4 {
            length = 4
        } else {
            return 0
        }
        guard index + length <= bytes.count else { return 0 }
        let slice = Array(bytes[index..<index + length])
        // Let the standard library judge overlong forms and surrogates.
        var decoder = UTF8()
        var iterator = slice.makeIterator()
        if case .scalarValue = decoder.decode(&iterator), iterator.next() == nil { return length }
        return 0
    }

    /// Kernel file systems that hold no rules and whose trees can be huge or endless.
    static let refusedFileSystems: [Int: String] = [
        0x9fa0: "proc", 0x6265_6572: "sysfs", 0x1cd1: "devpts", 0x6462_6720: "debugfs", 0x7472_6163: "tracefs",
        0x7363_6673: "securityfs", 0x27e0eb: "cgroup", 0x6367_7270: "cgroup2", 0xcafe_4a11: "bpf",
        0x6165_676c: "pstore", 0x6265_6570: "configfs", 0x6573_5543: "fusectl", 0x1980_0202: "mqueue",
        0x4249_4e4d: "binfmt_misc", 0xf97c_ff8c: "selinuxfs", 0x6e73_6673: "nsfs",
    ]
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
    let cancellation: RuleLoadCancellation?
    let deadline: Double
    var sources: [RuleSource] = []
    var problems: [RuleDiagnostic] = []
    var entries = 0
    var totalBytes = 0
    /// Set when a bound was reached or the scan was cancelled: the walk unwinds without reading more.
    var stopped = false
    var cancelled = false
    /// One read buffer for the whole walk: allocating (and zeroing) it per file cost more than reading a small file.
    var chunk = [UInt8](repeating: 0, count: 64 << 10)

    init(reader: RuleTreeReader, cancellation: RuleLoadCancellation?) {
        self.reader = reader
        self.cancellation = cancellation
        let (seconds, attoseconds) = reader.maxDuration.components
        deadline = monotonicSeconds() + Double(seconds) + Double(attoseconds) / 1e18
    }

    /// Ends the walk with one problem saying which bound was reached.
    mutating func stop(_ relative: String, _ message: String) {
        problems.append(reader.problem(relative, message))
        stopped = true
    }

    /// Checks the bounds that apply to every entry; false when the walk must end.
    mutating func mayContinue(at relative: String) -> Bool {
        if stopped { return false }
        if let cancellation, cancellation.isCancelled {
            cancelled = true
            stop(relative, "scan cancelled")
            return false
        }
        entries += 1
        if entries > reader.maxEntries {
            stop(
                relative,
                "scan stopped: more than \(reader.maxEntries) directory entries under the rules directory "
                    + "(does a symlink point outside it?)")
            return false
        }
        // The clock is read once per 256 entries: cheap next to the stat calls in between.
        if entries & 255 == 0 && monotonicSeconds() > deadline {
            stop(relative, "scan stopped: it took longer than \(reader.maxDuration) (does a symlink point outside it?)")
            return false
        }
        return true
    }

    mutating func visit(directory path: String, relative: String, depth: Int, ancestors: Set<DirectoryID>) {
        if let kind = RuleTreeReader.refusedFileSystems[Int(rulesd_file_system_type(path))] {
            problems.append(reader.problem(relative, "refused: a \(kind) file system holds no rule files"))
            return
        }
        guard var names = DirectoryEntries.rawNames(of: path) else {
            // A directory that vanished mid-scan is simply gone; anything else is reported.
            if errno != ENOENT && errno != ENOTDIR {
                problems.append(reader.problem(relative, "cannot open directory: \(String(cString: strerror(errno)))"))
            }
            return
        }
        names.removeAll { $0.first == UInt8(ascii: ".") }
        names.sort { $0.lexicographicallyPrecedes($1) }
        let prefix = path.hasSuffix("/") ? path : path + "/"
        for raw in names {
            guard let name = String(validating: raw, as: UTF8.self) else {
                refuseInvalidName(raw, directory: prefix, relative: relative)
                continue
            }
            let full = prefix + name
            let rel = relative.isEmpty ? name : relative + "/" + name
            guard mayContinue(at: rel) else { return }
            var st = stat()
            if stat(full, &st) != 0 {
                let err = errno
                // ENOENT: vanished, or a dangling symlink (an editor's lock file): not a rule file.
                if err != ENOENT && (RuleTreeReader.isScannedFileName(name) || err == ELOOP) {
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
                    if stopped { return }
                }
            case S_IFREG where RuleTreeReader.isScannedFileName(name):
                if sources.count >= reader.maxFiles {
                    stop(rel, "more than \(reader.maxFiles) rule files: the limit of one rule set")
                    return
                }
                if totalBytes + Int(st.st_size) > reader.maxTotalBytes {
                    stop(rel, "rule files larger than \(reader.maxTotalBytes) bytes in total")
                    return
                }
                let isData = RuleDataSet.isDataFilePath(name)
                readFile(full, relative: rel, maxBytes: isData ? reader.maxDataBytes : reader.maxFileBytes)
            default:
                continue
            }
        }
    }

    /// A name that is not UTF-8 cannot be a rule file's path (paths are text in answers, logs and the revision),
    /// so a directory or rule file named so is reported, escaped, instead of being skipped in silence.
    mutating func refuseInvalidName(_ raw: [UInt8], directory: String, relative: String) {
        let cPath = Array(directory.utf8) + raw + [0]
        var st = stat()
        let exists = cPath.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { stat($0.baseAddress!, &st) == 0 }
        }
        guard exists else { return }
        let isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
        let isRuleFile =
            (st.st_mode & S_IFMT) == S_IFREG
            && (raw.count >= 4 && raw.suffix(4).elementsEqual(".lua".utf8)
                || raw.count >= 11 && raw.suffix(11).elementsEqual(FlagdTranslator.fileSuffix.utf8))
        guard isDirectory || isRuleFile else { return }
        let path = (relative.isEmpty ? "" : relative + "/") + RuleTreeReader.escapedPath(raw)
        let what = isDirectory ? "directory" : "rule file"
        problems.append(reader.problem(path, "the \(what) name is not valid UTF-8; rename it"))
    }

    mutating func readFile(_ path: String, relative: String, maxBytes: Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno != ENOENT {
                problems.append(reader.problem(relative, "cannot read: \(String(cString: strerror(errno)))"))
            }
            return
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        // Sized from the start: grown by appending, the buffer held the rule set's text with up to twice the
        // room for as long as the rule set served.
        var st = stat()
        if fstat(fd, &st) == 0, st.st_size > 0 { bytes.reserveCapacity(min(Int(st.st_size), maxBytes) + 1) }
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                problems.append(reader.problem(relative, "cannot read: \(String(cString: strerror(errno)))"))
                return
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > maxBytes {
                problems.append(reader.problem(relative, "file is larger than \(maxBytes) bytes"))
                return
            }
        }
        totalBytes += bytes.count
        sources.append(RuleSource(path: relative, content: bytes))
    }
}

private func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
