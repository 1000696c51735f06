import Glibc

/// One name looked up in one directory while resolving a path.
struct PathLookup: Hashable {
    /// Canonical path of the directory searched (no symlinks, no `.`/`..`, no trailing `/`; `/` for the root).
    var directory: String
    /// The name looked up in it.
    var name: String
    /// Whether the name was a symlink or a directory that resolution went through, as opposed to the last
    /// component. Replacing an intermediate entry re-routes the whole path; replacing the last one only changes
    /// which file the path names.
    var isIntermediate: Bool
    /// Whether the entry was a symlink (which can be re-pointed without anything happening in the directories it
    /// led to).
    var isSymlink = false
}

/// The outcome of resolving a path component by component, the way the kernel does.
struct PathResolution {
    /// Every (directory, name) lookup made, in order. A rename, creation or deletion of any of these entries can
    /// change what the path names, so these are the entries worth watching.
    var lookups: [PathLookup] = []
    /// The canonical path the whole path resolved to, or nil when a component is missing or unusable.
    var resolved: String?
    /// errno of the failed step when `resolved` is nil.
    var failure: Int32 = 0
}

enum PathResolver {
    /// Largest number of symlinks followed, as the kernel's `MAXSYMLINKS`.
    static let maxSymlinks = 40

    /// Resolves `path` like `realpath(3)`, recording each directory lookup made on the way.
    ///
    /// Relative paths start at `base`, which must be canonical.
    static func resolve(_ path: String, base: String) -> PathResolution {
        var result = PathResolution()
        var current = path.hasPrefix("/") ? "/" : base
        var pending = components(path)
        var symlinks = 0
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == "." { continue }
            if name == ".." {
                current = parent(of: current)
                continue
            }
            let candidate = join(current, name)
            var st = stat()
            guard lstat(candidate, &st) == 0 else {
                result.lookups.append(PathLookup(directory: current, name: name, isIntermediate: !pending.isEmpty))
                result.failure = errno
                return result
            }
            let isLink = (st.st_mode & S_IFMT) == S_IFLNK
            let isLast = pending.isEmpty
            result.lookups.append(
                PathLookup(directory: current, name: name, isIntermediate: isLink || !isLast, isSymlink: isLink))
            if isLink {
                symlinks += 1
                guard symlinks <= maxSymlinks, let target = readLink(candidate) else {
                    result.failure = symlinks > maxSymlinks ? ELOOP : errno
                    return result
                }
                if target.hasPrefix("/") { current = "/" }
                pending = components(target) + pending
                continue
            }
            if !isLast && (st.st_mode & S_IFMT) != S_IFDIR {
                result.failure = ENOTDIR
                return result
            }
            current = candidate
        }
        result.resolved = current
        return result
    }

    /// The lookups worth a watch: the last one, every symlink, and any lookup outside the last lookup's directory
    /// and its ancestors. Lookups in those ancestors (`/`, `/tmp`, `/etc` on the way down) are left out: a rename
    /// there is rare and the safety rescan catches it, while their unrelated traffic would keep the event queue
    /// from ever falling quiet, and a rebuild waits for that.
    static func essentialLookups(_ lookups: [PathLookup]) -> [PathLookup] {
        guard let last = lookups.last else { return [] }
        return lookups.enumerated().filter { index, lookup in
            index == lookups.count - 1 || lookup.isSymlink || !isAncestor(lookup.directory, of: last.directory)
        }.map(\.element)
    }

    /// Whether `directory` is `path` or one of its ancestors (both canonical).
    static func isAncestor(_ directory: String, of path: String) -> Bool {
        directory == "/" || path == directory || path.hasPrefix(directory + "/")
    }

    /// The current directory, canonical; `/` when it cannot be determined.
    static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func components(_ path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    static func parent(of canonical: String) -> String {
        guard let slash = canonical.lastIndex(of: "/"), canonical != "/" else { return "/" }
        let parent = String(canonical[..<slash])
        return parent.isEmpty ? "/" : parent
    }

    static func lastComponent(of path: String) -> String {
        components(path).last ?? "/"
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBytes { raw in
            readlink(path, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count - 1)
        }
        guard count >= 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }
}
