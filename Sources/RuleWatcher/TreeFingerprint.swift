import Glibc
import RuleEngine

/// A cheap summary of a rules tree's metadata, compared between polls.
///
/// It walks the tree with `RuleTreeReader`'s visibility rules (skip `.`-names, follow symlinks, each directory
/// once per path of ancestors, no deeper than the reader) and covers, for every `.lua` regular file reached, the
/// relative path, device, inode, mode, size, modification and status-change times, and for every directory its
/// relative path, device, inode and mode. Reading no content keeps a poll of a large tree to a few thousand
/// `stat` calls; the status-change time catches writers that restore the modification time
/// (`rsync --inplace -t`), and the inode catches renames over a file. Directory times are left out on purpose:
/// they change with every hidden swap or lock file created beside a rule, which cannot change the scan, while
/// every visible entry they could announce is listed by the walk itself.
struct TreeFingerprint: Equatable {
    /// Hash of everything listed above (Swift's hasher: stable within one process, which is all a poll needs).
    var digest: Int
    /// Files and directories covered.
    var entries: Int

    static func take(root: String, maxDepth: Int = RuleTreeReader().maxDepth) -> TreeFingerprint {
        var hasher = Hasher()
        var entries = 0
        var st = stat()
        guard stat(root, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            hasher.combine("missing")
            return TreeFingerprint(digest: hasher.finalize(), entries: 0)
        }
        combineDirectory(&hasher, "", st)
        entries += 1
        visit(root, relative: "", depth: 0, ancestors: [DirectoryID(st)], maxDepth: maxDepth, &hasher, &entries)
        return TreeFingerprint(digest: hasher.finalize(), entries: entries)
    }

    private static func visit(
        _ path: String, relative: String, depth: Int, ancestors: Set<DirectoryID>, maxDepth: Int,
        _ hasher: inout Hasher, _ entries: inout Int
    ) {
        // Sorted, so the digest does not depend on readdir order.
        let names = WatchRegistry.visibleEntries(of: path).sorted {
            Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8))
        }
        for name in names {
            let full = PathResolver.join(path, name)
            let rel = relative.isEmpty ? name : relative + "/" + name
            var st = stat()
            guard stat(full, &st) == 0 else {
                // A dangling symlink ending in .lua is no rule file; but its appearance is worth a rescan.
                if RuleTreeReader.hasRuleFileSuffix(name) { hasher.combine(rel) }
                continue
            }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                let id = DirectoryID(st)
                combineDirectory(&hasher, rel, st)
                entries += 1
                if !ancestors.contains(id) && depth + 1 <= maxDepth {
                    visit(
                        full, relative: rel, depth: depth + 1, ancestors: ancestors.union([id]), maxDepth: maxDepth,
                        &hasher, &entries)
                }
            case S_IFREG where RuleTreeReader.hasRuleFileSuffix(name):
                combine(&hasher, rel, st)
                entries += 1
            default:
                continue
            }
        }
    }

    private static func combineDirectory(_ hasher: inout Hasher, _ relative: String, _ st: stat) {
        hasher.combine(relative + "/")
        hasher.combine(UInt64(st.st_dev))
        hasher.combine(UInt64(st.st_ino))
        hasher.combine(UInt32(st.st_mode))
    }

    private static func combine(_ hasher: inout Hasher, _ relative: String, _ st: stat) {
        hasher.combine(relative)
        hasher.combine(UInt64(st.st_dev))
        hasher.combine(UInt64(st.st_ino))
        hasher.combine(Int64(st.st_size))
        hasher.combine(Int64(st.st_mtim.tv_sec))
        hasher.combine(Int64(st.st_mtim.tv_nsec))
        hasher.combine(Int64(st.st_ctim.tv_sec))
        hasher.combine(Int64(st.st_ctim.tv_nsec))
        hasher.combine(UInt32(st.st_mode))
    }
}
