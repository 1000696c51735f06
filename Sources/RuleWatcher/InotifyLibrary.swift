import CInotifyTools
import Glibc
import RuleEngine
import RuleModel
import Synchronization

/// The one inotify instance libinotifytools keeps per process, and who may use it.
///
/// The library's state is process-global (one descriptor, three trees, a static read buffer) and none of its
/// calls may overlap, so at most one watcher thread holds it at a time; a second watcher in the same process
/// polls instead (watchers made together by `RuleDirectoryWatcher.sharingInotify` share one thread, and so the
/// instance). Only the holder's thread calls into the library.
enum InotifyLibrary {
    private struct Lease {
        var holder: UInt64?
        /// `next_event` hands out events from a static buffer that `cleanup()` does not clear: when the last
        /// holder let go without having drained it, the next instance would receive the old instance's events,
        /// under watch descriptors it reuses.
        var bufferMayHoldStaleEvents = false
        var nextHolder: UInt64 = 0
        /// A low descriptor (on `/dev/null`) kept free for the next `inotify_init`; see `initialize()`.
        var reserve: Int32?
    }

    private static let lease = Mutex(Lease())

    /// The events every watched directory reports. `IN_OPEN`, `IN_ACCESS` and `IN_CLOSE_NOWRITE` are left out:
    /// the consumer's own rescans would feed back. `IN_ONLYDIR` and `IN_DONT_FOLLOW` make the kernel watch
    /// exactly the directory inode that was examined (every path passed is canonical, so a path that has become
    /// a symlink or a file since is refused rather than silently followed); `IN_EXCL_UNLINK` drops events of
    /// files already unlinked but still open.
    static let directoryMask: Int32 =
        IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK | IN_DONT_FOLLOW

    /// A process-unique holder identity.
    static func newHolderID() -> UInt64 {
        lease.withLock {
            $0.nextHolder += 1
            return $0.nextHolder
        }
    }

    /// Takes the library if nobody holds it.
    /// - Returns: nil when another watcher holds it; otherwise whether its read buffer may hold stale events.
    static func acquire(_ holder: UInt64) -> Bool? {
        let stale = lease.withLock { lease -> Bool? in
            if let current = lease.holder, current != holder { return nil }
            lease.holder = holder
            return lease.bufferMayHoldStaleEvents
        }
        if stale != nil { reserveLowDescriptor() }
        return stale
    }

    /// Gives the library back (after `inotifytools_cleanup()`).
    /// - Parameter drained: whether the last `next_event` call returned no event, which empties its buffer.
    static func release(_ holder: UInt64, drained: Bool) {
        lease.withLock { lease in
            guard lease.holder == holder else { return }
            lease.holder = nil
            lease.bufferMayHoldStaleEvents = !drained
        }
    }

    /// Records that the buffer is clean or dirty while the lease is held (a rebuild cut short by the 5 s limit
    /// leaves it dirty).
    static func noteBuffer(_ holder: UInt64, drained: Bool) {
        lease.withLock { lease in
            guard lease.holder == holder else { return }
            lease.bufferMayHoldStaleEvents = !drained
        }
    }

    /// One event copied out of the library's static buffer.
    struct Event {
        var descriptor: Int32
        var mask: UInt32
        var name: String
    }

    /// The result of one blocking read.
    enum Read {
        case event(Event)
        /// A second passed with no event, or the wait was interrupted (`ReadInterrupter`): either way the library
        /// only waits once its buffer is empty, so its buffer and the kernel queue are both empty.
        case timeout
        case failure(Int32)
    }

    /// Blocks up to one second (the library's `select` timeout is in whole seconds; 0 would mean forever).
    static func nextEvent() -> Read {
        guard let raw = inotifytools_next_event(1) else {
            let code = inotifytools_error()
            return code == 0 || code == EINTR ? .timeout : .failure(code)
        }
        let event = raw.pointee
        var name = ""
        if event.len > 0 {
            // The name is a flexible array member that Swift does not import: it follows the fixed header,
            // NUL-padded to `len` bytes.
            let bytes = UnsafeRawBufferPointer(
                start: UnsafeRawPointer(raw) + MemoryLayout<inotify_event>.size, count: Int(event.len))
            name = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        return .event(Event(descriptor: event.wd, mask: event.mask, name: name))
    }

    /// Why a library instance could not be started.
    enum StartFailure: Error {
        /// `inotify_init` failed with this errno (`EMFILE`: the per-user instance limit).
        case system(Int32)
        /// The instance's descriptor is out of `select()`'s reach.
        case descriptorTooHigh
    }

    /// `select()`'s limit: the library's `next_event` puts its descriptor in an `fd_set`, and glibc's checked
    /// `FD_SET` aborts the process for a descriptor at or above it.
    static let selectLimit: Int32 = 1024

    /// `inotify_init()` through the library, on a descriptor `select()` can handle.
    ///
    /// The library calls `inotify_init()` itself and never tells which descriptor it got; a busy daemon may hold
    /// more than 1,024 sockets by the time a rebuild starts a new instance. So a low descriptor is kept in
    /// reserve from the first start on and closed just before each `inotify_init()`, which takes the lowest free
    /// number. When the reserve is what the instance got, it also receives `FD_CLOEXEC` (the library does not
    /// ask for it, and child processes should not inherit it). When the number cannot be known and some inotify
    /// descriptor is out of reach, the instance is refused rather than risking the abort.
    static func initialize() -> StartFailure? {
        let reserved = lease.withLock { lease -> Int32? in
            defer { lease.reserve = nil }
            return lease.reserve
        }
        if let reserved { close(reserved) }
        guard inotifytools_initialize() == 1 else {
            let code = inotifytools_error()
            reserveLowDescriptor()
            return .system(code == 0 ? EINVAL : code)
        }
        if let reserved, isInotifyDescriptor(reserved) {
            _ = fcntl(reserved, F_SETFD, FD_CLOEXEC)
            return nil
        }
        if inotifyDescriptors().contains(where: { $0 >= selectLimit }) {
            cleanup()
            return .descriptorTooHigh
        }
        return nil
    }

    /// Closes the instance (every watch with it) and puts a low descriptor back in reserve.
    static func cleanup() {
        inotifytools_cleanup()
        reserveLowDescriptor()
    }

    private static func reserveLowDescriptor() {
        lease.withLock { lease in
            guard lease.reserve == nil else { return }
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            if fd >= 0 && fd < selectLimit {
                lease.reserve = fd
            } else if fd >= 0 {
                close(fd)
            }
        }
    }

    private static func isInotifyDescriptor(_ fd: Int32) -> Bool {
        readLink("/proc/self/fd/\(fd)") == "anon_inode:inotify"
    }

    private static func inotifyDescriptors() -> [Int32] {
        (DirectoryEntries.names(of: "/proc/self/fd") ?? []).compactMap(Int32.init).filter(isInotifyDescriptor)
    }

    private static func readLink(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { raw in
            readlink(path, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count - 1)
        }
        guard count >= 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }

    /// Watches one directory (never recursively: the library's walk neither follows symlinks nor survives
    /// entries vanishing under it).
    static func addWatch(_ path: String) -> AddWatchOutcome {
        guard inotifytools_watch_file(path, directoryMask) == 1 else {
            let code = inotifytools_error()
            switch code {
            case ENOSPC, ENOMEM, EBADF, EINVAL, EMFILE:
                return .unavailable(code)
            default:
                return .skipped(code)
            }
        }
        // The library files a directory under its path with a trailing `/`. Within one instance a path is never
        // watched again after its directory went away (that starts a new instance), so the lookup cannot return a
        // dead descriptor; roots sharing the instance may watch the same live directory, which has one descriptor.
        var descriptor = inotifytools_wd_from_filename(path.hasSuffix("/") ? path : path + "/")
        if descriptor < 0 { descriptor = inotifytools_wd_from_filename(path) }
        return descriptor < 0 ? .skipped(ENOENT) : .watched(descriptor)
    }
}
