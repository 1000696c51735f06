// Linux only, like the watcher these edits exercise.
import Glibc
import RuleModel

/// A system call that failed while performing an edit.
public struct FileSystemEditError: Error, CustomStringConvertible {
    /// The call, e.g. `rename`.
    public var operation: String
    /// The path it was given.
    public var path: String
    /// errno.
    public var code: Int32

    /// Creates an error for `operation` on `path` with `code`.
    public init(operation: String, path: String, code: Int32) {
        self.operation = operation
        self.path = path
        self.code = code
    }

    /// `rename /x/y: No such file or directory`.
    public var description: String { "\(operation) \(path): \(String(cString: strerror(code)))" }
}

/// The ways real tools change rule files, replayed with the same system calls in the same order, without the
/// tools themselves.
///
/// The cases save one file the way an editor or command does (`save(_:to:in:)`); the static functions replay
/// sequences that touch a whole tree (a `git checkout`, a `tar x`, a kubelet ConfigMap update, a directory or a
/// root replaced). Each sequence leaves the same intermediate states and junk names as the real tool: that is
/// what a watcher has to cope with.
public enum FileSystemEdit: String, CaseIterable, Sendable, CustomStringConvertible {
    /// vim/neovim default (`backupcopy=auto`, `writebackup`): swap file `.x.lua.swp`, probe file `4913`
    /// created and deleted, `x.lua` renamed to `x.lua~`, a new `x.lua` created and written, its mode set, the
    /// backup and the swap file deleted. New inode; `x.lua` is missing for a moment.
    case vimRenameOnSave
    /// vim with `backupcopy=yes`: the backup `x.lua~` is a copy, `x.lua` is truncated and rewritten in place.
    /// Same inode; `x.lua` is empty for a moment.
    case vimBackupCopy
    /// emacs, first save of a session: a dangling lock symlink `.#x.lua`, an auto-save file `#x.lua#`, the
    /// original renamed to the kept backup `x.lua~`, a new `x.lua` written, auto-save and lock removed.
    case emacsFirstSave
    /// emacs, later saves: the lock symlink, then `x.lua` truncated and rewritten in place.
    case emacsLaterSave
    /// nano (and `>` redirection): `open(O_TRUNC)`, one write, close.
    case nanoInPlace
    /// VS Code default save: `open(O_TRUNC)`, the content written in two chunks, close.
    case vsCodeInPlace
    /// `sed -i`: a temporary `sedXXXXXX` in the same directory, written, its mode set, renamed over `x.lua`.
    case sedInPlace
    /// `cp new x.lua` onto an existing file: `open(O_TRUNC)` of the existing inode, written, closed.
    case copyOver
    /// `mv /elsewhere/x.lua x.lua`: written outside the tree, then renamed in; the tree sees only `IN_MOVED_TO`.
    case moveInFromOutside
    /// `rsync -a`: a hidden temporary `.x.lua.Ab12Cd`, written, its times set, renamed over `x.lua`.
    case rsyncTempRename
    /// `tar x` of one member over an existing file: `O_EXCL` create fails, the file is unlinked, created,
    /// written, closed, and its modification time set from the archive.
    case tarExtract

    /// The case name.
    public var description: String { rawValue }

    /// Saves `content` into `relativePath` under `root` the way this tool does. Missing parent directories are
    /// created first (as `git` or `tar` would have left them).
    /// - Parameters:
    ///   - content: the new bytes, as text.
    ///   - relativePath: `/`-separated path below `root`.
    ///   - root: the rules directory.
    public func save(_ content: String, to relativePath: String, in root: String) throws(FileSystemEditError) {
        let path = Self.join(root, relativePath)
        let directory = Self.directoryName(of: path)
        let name = Self.baseName(of: path)
        try Self.makeDirectories(directory)
        let bytes = Array(content.utf8)
        let exists = Self.exists(path)
        switch self {
        case .vimRenameOnSave:
            let swap = Self.join(directory, ".\(name).swp")
            try Self.writeFile(swap, Array("b0VIM 9.0".utf8), flags: O_CREAT | O_EXCL)
            try Self.writeFile(swap, Array("vim swap update".utf8), flags: O_TRUNC)
            // The probe vim uses to learn whether it may create files here and give them away.
            let probe = Self.join(directory, "4913")
            try Self.writeFile(probe, [], flags: O_CREAT | O_EXCL | O_NOFOLLOW)
            try Self.unlink(probe)
            let backup = path + "~"
            if exists { try Self.rename(path, backup) }
            try Self.writeFile(path, bytes, flags: O_CREAT | O_TRUNC, sync: true)
            try Self.chmod(path, 0o644)
            if exists { try Self.unlink(backup) }
            try Self.unlink(swap)
        case .vimBackupCopy:
            let swap = Self.join(directory, ".\(name).swp")
            try Self.writeFile(swap, Array("b0VIM 9.0".utf8), flags: O_CREAT | O_EXCL)
            let backup = path + "~"
            if exists { try Self.writeFile(backup, try Self.readFile(path), flags: O_CREAT | O_TRUNC) }
            let fd = try Self.open(path, O_WRONLY | O_CREAT)
            defer { Glibc.close(fd) }
            guard ftruncate(fd, 0) == 0 else {
                throw FileSystemEditError(operation: "ftruncate", path: path, code: errno)
            }
            try Self.writeAll(fd, bytes, path: path)
            fsync(fd)
            if exists { try Self.unlink(backup) }
            try Self.unlink(swap)
        case .emacsFirstSave:
            let lock = Self.join(directory, ".#\(name)")
            try Self.symlink("user@host.4242:1767225600", at: lock)
            let autosave = Self.join(directory, "#\(name)#")
            try Self.writeFile(autosave, bytes, flags: O_CREAT | O_TRUNC)
            if exists { try Self.rename(path, path + "~") }
            try Self.writeFile(path, bytes, flags: O_CREAT | O_EXCL)
            try Self.chmod(path, 0o644)
            try Self.unlink(autosave)
            try Self.unlink(lock)
        case .emacsLaterSave:
            let lock = Self.join(directory, ".#\(name)")
            try Self.symlink("user@host.4242:1767225600", at: lock)
            try Self.writeFile(path, bytes, flags: O_CREAT | O_TRUNC)
            try Self.unlink(lock)
        case .nanoInPlace:
            try Self.writeFile(path, bytes, flags: O_CREAT | O_TRUNC)
        case .vsCodeInPlace:
            let fd = try Self.open(path, O_WRONLY | O_CREAT | O_TRUNC)
            defer { Glibc.close(fd) }
            let half = bytes.count / 2
            try Self.writeAll(fd, Array(bytes[..<half]), path: path)
            try Self.writeAll(fd, Array(bytes[half...]), path: path)
        case .sedInPlace:
            let temporary = Self.join(directory, "sed" + Self.randomSuffix(6))
            try Self.writeFile(temporary, bytes, flags: O_CREAT | O_EXCL)
            try Self.chmod(temporary, 0o644)
            try Self.rename(temporary, path)
        case .copyOver:
            try Self.writeFile(path, bytes, flags: O_CREAT | O_TRUNC)
        case .moveInFromOutside:
            let staging = try Self.makeStagingDirectory(beside: root)
            defer { try? Self.removeTree(staging) }
            let outside = Self.join(staging, name)
            try Self.writeFile(outside, bytes, flags: O_CREAT | O_EXCL)
            try Self.rename(outside, path)
        case .rsyncTempRename:
            let temporary = Self.join(directory, ".\(name).\(Self.randomSuffix(6))")
            try Self.writeFile(temporary, bytes, flags: O_CREAT | O_EXCL)
            try Self.setModificationTime(temporary, seconds: 1_767_225_600)
            try Self.rename(temporary, path)
        case .tarExtract:
            try Self.extractMember(path, bytes, modificationTime: 1_767_225_600)
        }
    }
}

// MARK: - Whole-tree sequences

extension FileSystemEdit {
    /// Creates `files` (relative path to content) under `root`, creating directories as needed: plain setup, one
    /// `open(O_CREAT|O_TRUNC)`, write and close per file.
    public static func writeFiles(_ files: [String: String], in root: String) throws(FileSystemEditError) {
        try makeDirectories(root)
        for (relative, content) in files.sorted(by: { $0.key < $1.key }) {
            let path = join(root, relative)
            try makeDirectories(directoryName(of: path))
            try writeFile(path, Array(content.utf8), flags: O_CREAT | O_TRUNC)
        }
    }

    /// `git checkout` of a branch: every changed path is unlinked and then created anew (never rewritten in
    /// place), deleted paths are unlinked and their emptied directories removed, new directories are created on
    /// the way. Files are processed in path order, in bursts of `burstSize` with a pause between bursts, as git's
    /// parallel checkout and a busy disk produce them.
    /// - Parameters:
    ///   - changes: relative path to new content, or nil to delete the path.
    ///   - root: the work tree.
    ///   - burstSize: files per burst.
    ///   - pause: time between bursts.
    public static func gitCheckout(
        _ changes: [String: String?], in root: String, burstSize: Int = 64, pause: Duration = .milliseconds(5)
    ) throws(FileSystemEditError) {
        let ordered = changes.sorted { $0.key < $1.key }
        for (index, change) in ordered.enumerated() {
            if index > 0 && index % max(burstSize, 1) == 0 { sleep(pause) }
            let path = join(root, change.key)
            if exists(path) { try unlink(path) }
            if let content = change.value {
                try makeDirectories(directoryName(of: path))
                try writeFile(path, Array(content.utf8), flags: O_CREAT | O_EXCL)
            } else {
                // git removes directories it emptied, up to the work tree.
                var directory = directoryName(of: path)
                while directory != root && directory.hasPrefix(root) && rmdir(directory) == 0 {
                    directory = directoryName(of: directory)
                }
            }
        }
    }

    /// `rsync -a` of a tree onto the rules directory: file by file (in path order), each written to a hidden
    /// temporary beside it and renamed into place, so the tree mixes old and new files until the last rename.
    public static func rsync(_ files: [String: String], in root: String) throws(FileSystemEditError) {
        for (relative, content) in files.sorted(by: { $0.key < $1.key }) {
            try FileSystemEdit.rsyncTempRename.save(content, to: relative, in: root)
        }
    }

    /// `tar x` of an archive over the tree: each member is created after unlinking what was there, its time set,
    /// and finally the directories' times are set (events on the directories themselves, the root included).
    public static func tarExtract(_ files: [String: String], in root: String) throws(FileSystemEditError) {
        let time = 1_767_225_600
        var directories: Set<String> = [root]
        for (relative, content) in files.sorted(by: { $0.key < $1.key }) {
            let path = join(root, relative)
            var directory = directoryName(of: path)
            try makeDirectories(directory)
            while directory.hasPrefix(root) && directory != root {
                directories.insert(directory)
                directory = directoryName(of: directory)
            }
            try extractMember(path, Array(content.utf8), modificationTime: time)
        }
        for directory in directories.sorted(by: >) {
            try setModificationTime(directory, seconds: time)
        }
    }

    /// The paths of a ConfigMap volume made by ``makeConfigMapVolume(at:files:)``.
    public struct ConfigMapVolume: Sendable {
        /// The mount point (the rules directory).
        public var root: String
        /// The current `..<timestamp>` directory holding the real files.
        public var dataDirectory: String
    }

    /// Lays out a Kubernetes ConfigMap volume as the kubelet does: the files in a `..<timestamp>` directory,
    /// `..data` a symlink to it, and each key visible at the top as a symlink `key -> ..data/key`.
    /// - Parameters:
    ///   - root: the mount point; created if missing.
    ///   - files: key (a plain file name) to content.
    @discardableResult
    public static func makeConfigMapVolume(at root: String, files: [String: String]) throws(FileSystemEditError)
        -> ConfigMapVolume
    {
        try makeDirectories(root)
        let data = try writeConfigMapData(files, in: root)
        try symlink(baseName(of: data), at: join(root, "..data"))
        for key in files.keys.sorted() {
            try symlink("..data/\(key)", at: join(root, key))
        }
        return ConfigMapVolume(root: root, dataDirectory: data)
    }

    /// The kubelet's atomic update of a ConfigMap volume: a new `..<timestamp>` directory is written, a symlink
    /// `..data_tmp` to it is renamed over `..data` (the one atomic step), visible symlinks are added for new keys
    /// and removed for dropped ones, and the old timestamp directory is deleted.
    /// - Returns: the new timestamp directory.
    @discardableResult
    public static func configMapSwap(volume root: String, files: [String: String]) throws(FileSystemEditError)
        -> String
    {
        let dataLink = join(root, "..data")
        let old = readLink(dataLink)
        let data = try writeConfigMapData(files, in: root)
        let temporary = join(root, "..data_tmp")
        try symlink(baseName(of: data), at: temporary)
        try rename(temporary, dataLink)
        var visible: Set<String> = []
        for name in directoryNames(root) where !name.hasPrefix(".") {
            visible.insert(name)
        }
        for key in files.keys.sorted() where !visible.contains(key) {
            try symlink("..data/\(key)", at: join(root, key))
        }
        for name in visible.sorted() where files[name] == nil {
            var st = stat()
            if lstat(join(root, name), &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
                try unlink(join(root, name))
            }
        }
        if let old, old.hasPrefix("..") {
            try removeTree(join(root, old))
        }
        return data
    }

    /// `rm -rf directory; mkdir directory` and the files written again (relative to `directory`).
    public static func deleteAndRecreateDirectory(_ directory: String, files: [String: String])
        throws(FileSystemEditError)
    {
        try removeTree(directory)
        try makeDirectories(directory)
        try writeFiles(files, in: directory)
    }

    /// A deploy by rename: the new tree is built beside the root, the root is renamed away, the new tree renamed
    /// into its place, and the old tree deleted.
    public static func replaceRootByRename(_ root: String, files: [String: String]) throws(FileSystemEditError) {
        let staged = root + ".new-" + randomSuffix(6)
        try writeFiles(files, in: staged)
        let retired = root + ".old-" + randomSuffix(6)
        try rename(root, retired)
        try rename(staged, root)
        try removeTree(retired)
    }

    /// Re-points a symlink atomically, as `ln -s target tmp && mv -T tmp link` (Capistrano's `current`, a
    /// symlinked `/etc/rules`): the link never disappears.
    public static func repointSymlink(_ link: String, to target: String) throws(FileSystemEditError) {
        let temporary = link + ".tmp-" + randomSuffix(6)
        try symlink(target, at: temporary)
        try rename(temporary, link)
    }

    /// A writer that keeps the file open: truncates it, writes `chunks` one at a time with `interval` between
    /// them, and only then closes it.
    public static func slowWrite(_ path: String, chunks: [String], interval: Duration) async throws {
        let fd = try open(path, O_WRONLY | O_CREAT | O_TRUNC)
        defer { Glibc.close(fd) }
        for (index, chunk) in chunks.enumerated() {
            if index > 0 { try await Task.sleep(for: interval) }
            try writeAll(fd, Array(chunk.utf8), path: path)
        }
    }

    /// A write cut short (a full disk, a killed writer): the file is truncated and only the first
    /// `keepingBytes` bytes of `content` are written before it is closed.
    public static func truncatedWrite(_ path: String, content: String, keepingBytes: Int)
        throws(FileSystemEditError)
    {
        let bytes = Array(content.utf8.prefix(max(0, keepingBytes)))
        try writeFile(path, bytes, flags: O_CREAT | O_TRUNC)
    }

    /// `touch`: the times set to now, the content untouched.
    public static func touch(_ path: String) throws(FileSystemEditError) {
        guard utimensat(AT_FDCWD, path, nil, 0) == 0 else {
            throw FileSystemEditError(operation: "utimensat", path: path, code: errno)
        }
    }

    /// `chmod mode path`.
    public static func chmod(_ path: String, _ mode: mode_t) throws(FileSystemEditError) {
        guard Glibc.chmod(path, mode) == 0 else {
            throw FileSystemEditError(operation: "chmod", path: path, code: errno)
        }
    }

    /// `rm -rf path` (symlinks are removed, never followed). A missing path is not an error.
    public static func removeTree(_ path: String) throws(FileSystemEditError) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw FileSystemEditError(operation: "lstat", path: path, code: errno)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in directoryNames(path) {
                try removeTree(join(path, name))
            }
            guard rmdir(path) == 0 || errno == ENOENT else {
                throw FileSystemEditError(operation: "rmdir", path: path, code: errno)
            }
        } else {
            guard Glibc.unlink(path) == 0 || errno == ENOENT else {
                throw FileSystemEditError(operation: "unlink", path: path, code: errno)
            }
        }
    }

    /// `mkdir -p path`.
    public static func makeDirectories(_ path: String) throws(FileSystemEditError) {
        var st = stat()
        if stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { return }
        let parent = directoryName(of: path)
        if parent != path { try makeDirectories(parent) }
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw FileSystemEditError(operation: "mkdir", path: path, code: errno)
        }
    }

    /// `mktemp -d` beside `path` (same file system, outside the tree): `<parent>/.<name>.staging-XXXXXX`.
    public static func makeStagingDirectory(beside path: String) throws(FileSystemEditError) -> String {
        let template = join(directoryName(of: path), ".\(baseName(of: path)).staging-XXXXXX")
        var bytes = Array(template.utf8CString)
        guard let result = bytes.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw FileSystemEditError(operation: "mkdtemp", path: template, code: errno)
        }
        return String(cString: result)
    }
}

// MARK: - System calls

extension FileSystemEdit {
    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    static func directoryName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let parent = String(path[..<slash])
        return parent.isEmpty ? "/" : parent
    }

    static func baseName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    static func open(_ path: String, _ flags: Int32) throws(FileSystemEditError) -> Int32 {
        let fd = Glibc.open(path, flags | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileSystemEditError(operation: "open", path: path, code: errno) }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(FileSystemEditError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw FileSystemEditError(operation: "write", path: path, code: errno)
            }
            offset += written
        }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8], flags: Int32, sync: Bool = false)
        throws(FileSystemEditError)
    {
        let fd = try open(path, O_WRONLY | flags)
        defer { Glibc.close(fd) }
        try writeAll(fd, bytes, path: path)
        if sync { fsync(fd) }
    }

    static func readFile(_ path: String) throws(FileSystemEditError) -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { Glibc.close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw FileSystemEditError(operation: "read", path: path, code: errno)
            }
            if count == 0 { return result }
            result.append(contentsOf: chunk[0..<count])
        }
    }

    static func rename(_ from: String, _ to: String) throws(FileSystemEditError) {
        guard Glibc.rename(from, to) == 0 else {
            throw FileSystemEditError(operation: "rename", path: from, code: errno)
        }
    }

    static func unlink(_ path: String) throws(FileSystemEditError) {
        guard Glibc.unlink(path) == 0 else { throw FileSystemEditError(operation: "unlink", path: path, code: errno) }
    }

    static func symlink(_ target: String, at path: String) throws(FileSystemEditError) {
        guard Glibc.symlink(target, path) == 0 else {
            throw FileSystemEditError(operation: "symlink", path: path, code: errno)
        }
    }

    static func setModificationTime(_ path: String, seconds: Int) throws(FileSystemEditError) {
        var times = [
            timespec(tv_sec: seconds, tv_nsec: 0),
            timespec(tv_sec: seconds, tv_nsec: 0),
        ]
        guard utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw FileSystemEditError(operation: "utimensat", path: path, code: errno)
        }
    }

    /// One `tar x` member over whatever is there.
    static func extractMember(_ path: String, _ bytes: [UInt8], modificationTime: Int) throws(FileSystemEditError) {
        do {
            try writeFile(path, bytes, flags: O_CREAT | O_EXCL)
        } catch let error where error.code == EEXIST {
            try unlink(path)
            try writeFile(path, bytes, flags: O_CREAT | O_EXCL)
        }
        try setModificationTime(path, seconds: modificationTime)
    }

    static func writeConfigMapData(_ files: [String: String], in root: String) throws(FileSystemEditError) -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var calendar = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &calendar)
        let stamp =
            "..\(calendar.tm_year + 1900)_\(pad(calendar.tm_mon + 1))_\(pad(calendar.tm_mday))_"
            + "\(pad(calendar.tm_hour))_\(pad(calendar.tm_min))_\(pad(calendar.tm_sec)).\(randomDigits(9))"
        let data = join(root, stamp)
        guard mkdir(data, 0o755) == 0 else { throw FileSystemEditError(operation: "mkdir", path: data, code: errno) }
        for (key, content) in files.sorted(by: { $0.key < $1.key }) {
            try writeFile(join(data, key), Array(content.utf8), flags: O_CREAT | O_EXCL)
            try chmod(join(data, key), 0o644)
        }
        return data
    }

    static func randomSuffix(_ count: Int) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<count).map { _ in alphabet.randomElement()! })
    }

    static func randomDigits(_ count: Int) -> String {
        String((0..<count).map { _ in Character(String(Int.random(in: 0...9))) })
    }

    static func pad(_ value: Int32) -> String {
        value < 10 ? "0\(value)" : "\(value)"
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 4097)
        let count = buffer.withUnsafeMutableBytes { raw in
            readlink(path, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count - 1)
        }
        guard count >= 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }

    static func sleep(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR {
            request = remaining
        }
    }
}

/// The names in a directory except `.` and `..`; empty when it cannot be read.
private func directoryNames(_ path: String) -> [String] {
    guard let dir = opendir(path) else { return [] }
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
