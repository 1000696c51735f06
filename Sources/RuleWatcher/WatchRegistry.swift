import Glibc
import RuleEngine
import RuleModel

/// A directory's identity, whatever path reaches it.
struct DirectoryID: Hashable {
    var device: UInt64
    var inode: UInt64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }

    init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }
}

/// One watched directory and which of its entries matter.
struct WatchedDirectory {
    /// Canonical path the watch was added with.
    var path: String
    /// Walked like the scanner walks it: every visible name in it can be part of a rule file's path.
    var isTree: Bool = false
    /// The rules directory itself.
    var isRoot: Bool = false
    /// Depth below the root at which the scan reaches it (when `isTree`).
    var depth: Int = 0
    /// Names looked up in this directory while resolving a symlink or the root path, whatever their
    /// visibility (`..data` lives here). `true` when the entry is a symlink or directory the resolution went
    /// through: replacing it re-routes the path.
    var lookups: [String: Bool] = [:]
}

/// What adding one watch did.
enum AddWatchOutcome: Equatable {
    /// Watched, with this watch descriptor.
    case watched(Int32)
    /// Not watched, for a reason that only concerns this directory (it vanished, became a file, is not readable).
    case skipped(Int32)
    /// inotify cannot go on (`ENOSPC`: the watch limit; `ENOMEM`; a broken instance): poll instead.
    case unavailable(Int32)
}

/// Why inotify watching cannot continue.
struct WatchUnavailable: Error, Equatable {
    var reason: String
}

/// What one inotify event means for the tree.
struct EventVerdict: Equatable {
    /// The event can change the scan result: mark the tree dirty.
    var relevant = false
    /// Every watch must be set up again before signalling, for this reason.
    var rebuild: String?
    /// A directory entry appeared that may be a directory or a symlink to one: watch what it leads to.
    var appeared: (directory: String, name: String, depth: Int)?
    /// A rule file was written to and not yet closed (key: its path).
    var writeOpened: String?
    /// A rule file was closed after writing, or went away (key: its path).
    var writeClosed: String?
    /// The kernel dropped events.
    var overflow = false

    static func == (lhs: EventVerdict, rhs: EventVerdict) -> Bool {
        lhs.relevant == rhs.relevant && lhs.rebuild == rhs.rebuild && lhs.writeOpened == rhs.writeOpened
            && lhs.writeClosed == rhs.writeClosed && lhs.overflow == rhs.overflow
            && lhs.appeared?.directory == rhs.appeared?.directory && lhs.appeared?.name == rhs.appeared?.name
            && lhs.appeared?.depth == rhs.appeared?.depth
    }
}

/// The set of directories watched for one root, and the meaning of events in them.
///
/// What is watched, and why (the scan result is what `RuleTreeReader` returns, so everything it reads counts):
/// - every directory the scan walks: the root and its visible subdirectories, following directory symlinks,
///   each real directory once (loop detection by device and inode), no deeper than the scan goes;
/// - for every symlink the scan follows, the directories where its route is looked up, with interest in the
///   name looked up only: `x.lua -> ..data/x.lua` puts `..data` (in the root) and the `..2026_…` directory it
///   points to on the list, so the kubelet's `..data` rename on the root is seen although dot-names are otherwise
///   ignored, and a rule file symlinked from outside the tree is watched where it really lives;
/// - the root's parent (or, while the root is missing, the deepest existing ancestor) and the directory of every
///   symlink a symlinked root goes through, with interest in that one name, so that the root being renamed away,
///   deleted, recreated or re-pointed is seen although nothing happens inside the old root's watches.
///
/// Ancestors further up (`/`, `/tmp`) are not watched, in either kind of lookup: renaming one of them is rare and
/// left to the safety rescan, whereas their unrelated traffic would keep the queue from falling quiet (which a
/// rebuild waits for) and cost a wake-up per event.
///
/// Names starting with `.` in walked directories (editor swap and lock files, rsync temporaries, `.git`) are
/// not watched for: the scan skips them, and their churn would only cost rescans.
struct WatchRegistry {
    typealias AddWatch = (_ path: String) -> AddWatchOutcome

    /// Deepest directory nesting followed, as the scanner's.
    var maxDepth = RuleTreeReader().maxDepth
    private(set) var directories: [Int32: WatchedDirectory] = [:]
    private var descriptorByID: [DirectoryID: Int32] = [:]
    private var walked: Set<DirectoryID> = []
    /// Canonical path of the root when it exists.
    private(set) var rootPath: String?
    private let addWatch: AddWatch

    init(addWatch: @escaping AddWatch) {
        self.addWatch = addWatch
    }

    var count: Int { directories.count }

    /// Watches everything that can change the scan of `root` (see the type's documentation).
    /// - Returns: whether the root exists as a directory.
    mutating func register(root: String) throws(WatchUnavailable) -> Bool {
        let resolution = PathResolver.resolve(root, base: PathResolver.currentDirectory())
        for lookup in PathResolver.essentialLookups(resolution.lookups) {
            // Every component of the root path re-routes the root when replaced, the last one included.
            var lookup = lookup
            lookup.isIntermediate = true
            try register(lookup: lookup)
        }
        guard let resolved = resolution.resolved else { return false }
        var st = stat()
        guard stat(resolved, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return false }
        rootPath = resolved
        guard let descriptor = try watch(directory: resolved, id: DirectoryID(st)) else { return false }
        directories[descriptor]?.isRoot = true
        try walk(directory: resolved, id: DirectoryID(st), depth: 0)
        return true
    }

    /// Watches what a new entry of a walked directory leads to (a directory, or a symlink's route and target).
    mutating func registerEntry(in directory: String, name: String, depth: Int) throws(WatchUnavailable) {
        let full = PathResolver.join(directory, name)
        var st = stat()
        guard lstat(full, &st) == 0 else { return }
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            try walk(directory: full, id: DirectoryID(st), depth: depth + 1)
        case S_IFLNK:
            let resolution = PathResolver.resolve(name, base: directory)
            // The first lookup is the symlink's own entry, already covered by the walked directory.
            for lookup in PathResolver.essentialLookups(Array(resolution.lookups.dropFirst())) {
                try register(lookup: lookup)
            }
            guard let target = resolution.resolved, stat(target, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                return
            }
            try walk(directory: target, id: DirectoryID(st), depth: depth + 1)
        default:
            return
        }
    }

    private mutating func walk(directory path: String, id: DirectoryID, depth: Int) throws(WatchUnavailable) {
        guard depth <= maxDepth, !walked.contains(id) else { return }
        // Watch before listing: an entry created after the watch is reported, one created before is listed.
        guard let descriptor = try watch(directory: path, id: id) else { return }
        walked.insert(id)
        if directories[descriptor]!.isTree {
            directories[descriptor]!.depth = min(directories[descriptor]!.depth, depth)
        } else {
            directories[descriptor]!.isTree = true
            directories[descriptor]!.depth = depth
        }
        for name in Self.visibleEntries(of: path) {
            try registerEntry(in: path, name: name, depth: depth)
        }
    }

    private mutating func register(lookup: PathLookup) throws(WatchUnavailable) {
        var st = stat()
        guard stat(lookup.directory, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return }
        guard let descriptor = try watch(directory: lookup.directory, id: DirectoryID(st)) else { return }
        let known = directories[descriptor]!.lookups[lookup.name] ?? false
        directories[descriptor]!.lookups[lookup.name] = known || lookup.isIntermediate
    }

    /// Adds the watch unless this directory (by identity, whatever the path) already has one.
    private mutating func watch(directory path: String, id: DirectoryID) throws(WatchUnavailable) -> Int32? {
        if let known = descriptorByID[id] { return known }
        switch addWatch(path) {
        case .watched(let descriptor):
            descriptorByID[id] = descriptor
            if directories[descriptor] == nil {
                directories[descriptor] = WatchedDirectory(path: path)
            }
            return descriptor
        case .skipped:
            return nil
        case .unavailable(let code):
            let reason =
                code == ENOSPC
                ? "inotify watch limit reached (\(Self.limitDescription()))"
                : "cannot add an inotify watch on \(path): \(String(cString: strerror(code)))"
            throw WatchUnavailable(reason: reason)
        }
    }

    /// The watch limit in force for this process's user namespace (`/proc/sys/user` holds the namespace's own
    /// limits; in the initial namespace they are the same as `fs.inotify.*`).
    static func limitDescription() -> String {
        let value =
            readSmallFile("/proc/sys/user/max_inotify_watches")
            ?? readSmallFile("/proc/sys/fs/inotify/max_user_watches") ?? "?"
        return "max_inotify_watches=\(value)"
    }

    static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self).trimmingTrailingNewlines()
    }

    /// Names in a directory that the scanner would consider (not `.`-prefixed), unsorted.
    static func visibleEntries(of path: String) -> [String] {
        (DirectoryEntries.names(of: path) ?? []).filter(RuleTreeReader.isVisible)
    }

    // MARK: - Events

    /// What an event means, decided from what is watched (never from the library's path bookkeeping).
    func verdict(descriptor: Int32, mask: UInt32, name: String) -> EventVerdict {
        var verdict = EventVerdict()
        if mask & UInt32(IN_Q_OVERFLOW) != 0 {
            verdict.relevant = true
            verdict.overflow = true
            verdict.rebuild = "the inotify event queue overflowed"
            return verdict
        }
        guard let directory = directories[descriptor] else {
            // Not one of ours: an event of a watch already given up. Count it, so nothing is lost.
            verdict.relevant = mask & UInt32(IN_IGNORED) == 0
            return verdict
        }
        if mask & UInt32(IN_UNMOUNT) != 0 {
            verdict.relevant = true
            verdict.rebuild = "the file system under \(directory.path) was unmounted"
            return verdict
        }
        if mask & UInt32(IN_IGNORED) != 0 {
            verdict.relevant = true
            verdict.rebuild = "the watch on \(directory.path) was dropped"
            return verdict
        }
        if name.isEmpty {
            verdict.relevant = true
            if mask & UInt32(IN_DELETE_SELF) != 0 {
                verdict.rebuild = "\(directory.path) was deleted"
            } else if mask & UInt32(IN_MOVE_SELF) != 0 {
                verdict.rebuild = "\(directory.path) was moved"
            } else if directory.isRoot {
                verdict.rebuild = "the rules directory itself changed"
            }
            return verdict
        }
        let structural = UInt32(IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)
        let appeared = mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0
        let isDirectory = mask & UInt32(IN_ISDIR) != 0
        let full = PathResolver.join(directory.path, name)
        if let intermediate = directory.lookups[name] {
            verdict.relevant = true
            if mask & structural != 0 {
                if intermediate || (appeared && Self.leadsElsewhere(full)) {
                    verdict.rebuild = "\(full) changed"
                }
            }
            trackWrites(&verdict, mask: mask, path: full)
            return verdict
        }
        guard directory.isTree, RuleTreeReader.isVisible(name) else { return verdict }
        let contentBits = UInt32(IN_MODIFY | IN_CLOSE_WRITE)
        let contentOnly = mask & contentBits != 0 && mask & ~(contentBits | UInt32(IN_ISDIR)) == 0
        if contentOnly && !isDirectory && !RuleTreeReader.hasRuleFileSuffix(name) {
            // Writes to a file the scanner ignores (`x.lua~`, vim's `4913`) cannot change the scan.
            return verdict
        }
        verdict.relevant = true
        if appeared {
            verdict.appeared = (directory.path, name, directory.depth)
        }
        if RuleTreeReader.hasRuleFileSuffix(name) && !isDirectory {
            trackWrites(&verdict, mask: mask, path: full)
        }
        return verdict
    }

    private func trackWrites(_ verdict: inout EventVerdict, mask: UInt32, path: String) {
        if mask & UInt32(IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM) != 0 {
            verdict.writeClosed = path
        } else if mask & UInt32(IN_MODIFY) != 0 {
            verdict.writeOpened = path
        }
    }

    /// Whether a path is now a symlink or a directory (so its replacement can re-route a lookup).
    private static func leadsElsewhere(_ path: String) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { return false }
        let type = st.st_mode & S_IFMT
        return type == S_IFLNK || type == S_IFDIR
    }
}

extension String {
    fileprivate func trimmingTrailingNewlines() -> String {
        var result = self
        while result.hasSuffix("\n") { result.removeLast() }
        return result
    }
}
