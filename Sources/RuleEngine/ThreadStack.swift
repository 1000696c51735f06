import CRuleSandbox

#if canImport(Glibc)
    import Glibc
#endif

/// The C stack that Lua evaluation runs on.
public enum ThreadStack {
    /// Lua's C recursion (and the pattern matcher's) is bounded, but needs a generous stack: at least this.
    public static let minimumBytes = 1 << 20

    /// The calling thread's stack size in bytes, or 0 when unknown.
    public static func currentBytes() -> Int { Int(rs_current_thread_stack_bytes()) }
}

/// A detached thread with an explicit stack size and a name, for the loops that block (the rules watcher,
/// the workers' event loops) and so must not run on the concurrency pool.
public enum DedicatedThread {
    fileprivate final class Body: Sendable {
        let name: String
        let run: @Sendable () -> Void

        init(name: String, run: @escaping @Sendable () -> Void) {
            self.name = name
            self.run = run
        }
    }

    /// A started thread, to tell whether code runs on it.
    public struct Handle: Sendable {
        fileprivate let thread: pthread_t

        /// Whether the caller runs on this thread.
        public var isCurrent: Bool { pthread_equal(pthread_self(), thread) != 0 }
    }

    /// Starts a detached thread named `name` (at most 15 bytes are kept) running `body` on a stack of
    /// `stackBytes`.
    /// - Returns: the thread, or nil when it could not be created.
    @discardableResult
    public static func start(name: String, stackBytes: Int, _ body: @escaping @Sendable () -> Void) -> Handle? {
        create(name: name, stackBytes: stackBytes, detached: true, body)
    }

    /// Runs `body` on a new thread named `name` with a stack of `stackBytes` and waits for its result; runs
    /// it on the calling thread when no thread can be created.
    public static func run<T>(name: String, stackBytes: Int, _ body: @escaping () -> T) -> T {
        nonisolated(unsafe) var result: T?
        nonisolated(unsafe) let work = body
        // The caller waits for the thread to end (pthread_join), so the result is never shared concurrently.
        guard let handle = create(name: name, stackBytes: stackBytes, detached: false, { result = work() }) else {
            return body()
        }
        pthread_join(handle.thread, nil)
        return result!
    }

    private static func create(
        name: String, stackBytes: Int, detached: Bool, _ body: @escaping @Sendable () -> Void
    ) -> Handle? {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, stackBytes)
        if detached { pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED)) }
        let context = Unmanaged.passRetained(Body(name: name, run: body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, &attributes, dedicatedThreadEntry, context)
        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            return nil
        }
        return Handle(thread: thread)
    }

    /// Names the calling thread for `top -H`, `ps -L` and core dumps. `pthread_setname_np` is not imported
    /// without `_GNU_SOURCE`, so the name is written where it lives; a failure only costs the name.
    fileprivate static func nameCurrentThread(_ name: String) {
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let bytes = Array(name.utf8.prefix(15))
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }
}

/// The thread's entry point: takes back the body passed to `pthread_create` and runs it.
private func dedicatedThreadEntry(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let context else { return nil }
    let body = Unmanaged<DedicatedThread.Body>.fromOpaque(context).takeRetainedValue()
    DedicatedThread.nameCurrentThread(body.name)
    body.run()
    return nil
}
