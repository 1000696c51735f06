import CEventPoll
import Dispatch
import NIOCore
import RuleEngine
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A descriptor registered with a ``ServingEventLoop``: told, on the loop's thread, when it is ready.
public protocol EventPollSource: AnyObject {
    /// `events` is the epoll mask that came back (`RULESD_EPOLLIN`, `RULESD_EPOLLOUT`, `RULESD_EPOLLHUP`...).
    func ready(_ events: UInt32)
}

/// One worker thread: an event loop of NIO's `EventLoop` protocol that polls the query socket's connections
/// itself.
///
/// Written here rather than served by NIO's channels, for one measured reason. At one request per read
/// (8 connections, no pipelining) a NIO channel spent about 4 µs of the worker's CPU on each request beyond
/// the read, the write and the rule itself, and the daemon answered 0.54x of what a plain C epoll server
/// doing the same work did; the same request path behind a bare poll loop answered 0.9-1.0x. Everything
/// else keeps using NIO: this type conforms to `EventLoop`, so futures, promises, `NIOLoopBound`, scheduled
/// and repeated tasks, and `assumeIsolated()` work on it unchanged. The metrics HTTP listener and rulesctl
/// stay NIO channels; only the query connections (``QueryConnection``) are polled here.
///
/// Its life follows NIO's `SelectableEventLoop`: ``Lifecycle`` goes `open` → `closing` → `closed`, and only
/// forward. Work handed in while it is closing still runs (the loop drains its queue until it is empty under
/// the lock that closes it); work handed in once it is closed is refused rather than queued where nothing
/// would run it: `submit` and `scheduleTask` fail with `EventLoopError.shutdown`, `execute` drops the task. A
/// closed loop has no thread, so any thread counts as being on it (`inEventLoop`): the refusals' futures are
/// completed, and their callbacks run, on the thread that asked.
///
/// Mutable state has one owner: what only the loop's thread touches (registrations, timers, the read
/// buffer) is plain; what other threads hand in (tasks) goes through one lock, and the eventfd is written
/// only when the queue goes from empty to not empty, so a burst of tasks costs one wake-up. Two atomic flags
/// mirror what the lock guards, so that an iteration with nothing queued and no shutdown asked takes no lock:
/// a busy loop answering a request per iteration took it twice per request.
public final class ServingEventLoop: EventLoop, @unchecked Sendable {
    /// Where the loop is in its life.
    public enum Lifecycle: Sendable, Equatable {
        /// Running tasks, timers and descriptors.
        case open
        /// Shutdown was asked for (or the poll failed): the loop runs what it had already accepted, then stops.
        case closing
        /// The thread has ended; descriptors are closed.
        case closed
    }

    /// What other threads share with the loop, under one lock.
    private struct Shared {
        var lifecycle = Lifecycle.open
        var tasks: [@Sendable () -> Void] = []
        var shutdownCallbacks: [(DispatchQueue, @Sendable (Error?) -> Void)] = []
        /// Why the loop stopped on its own (the poll failed), if it did.
        var failure: Error?
    }

    public let name: String
    /// The epoll descriptor (internal for tests that break it on purpose).
    let epoll: Int32
    /// Writes to the eventfd so far: one per batch of tasks handed in from other threads.
    let wakeUps = Atomic<Int>(0)
    /// Request lines read by the connections of this loop so far (written only on the loop, read anywhere).
    let requestsAnswered = Atomic<Int>(0)
    /// The longest the loop polls before blocking, in nanoseconds (see ``SpinPolicy``); 0: it never polls.
    let spinLimit = Atomic<UInt64>(0)
    /// Waits that ended while polling, without blocking.
    let spunWaits = Atomic<Int>(0)
    private let wakeDescriptor: Int32
    private let thread: DedicatedThread.Handle
    private let shared = Mutex(Shared())
    /// `shared.lifecycle == .closed`, readable without the lock.
    private let isClosed = Atomic<Bool>(false)
    /// `!shared.tasks.isEmpty`, readable without the lock: set under the lock by whoever queues a task, cleared
    /// under it by the loop as it takes the queue. A loop that reads it clear while a task is being queued on
    /// another thread still runs that task: the queue was empty, so the task's thread writes the eventfd.
    private let tasksQueued = Atomic<Bool>(false)
    /// `shared.lifecycle != .open`, readable without the lock; set under it, never cleared.
    private let closingRequested = Atomic<Bool>(false)
    /// Iterations that took the lock to run queued tasks (for tests: an idle iteration takes none).
    let queueTakes = Atomic<Int>(0)
    private let onFailure: (@Sendable (Error) -> Void)?

    // Owned by the loop's thread.
    private var sources: [EventPollSource?] = []
    private var timers = TimerHeap()
    private var nextTimerSequence: UInt64 = 0
    /// Reused by every connection of this loop for its reads.
    var readBuffer = ByteBufferAllocator().buffer(capacity: 64 << 10)
    /// Descriptors registered, the loop's own eventfd not counted.
    private(set) var registeredCount = 0
    private var loadWindow: LoadWindow?
    private var spin = SpinPolicy()

    private static let wakeToken = UInt64.max

    /// Starts the loop's thread, with a stack of `stackBytes` (Lua's C calls need room).
    /// - Parameters:
    ///   - name: the thread's name (`top -H`, core dumps).
    ///   - stackBytes: the thread's stack size.
    ///   - onFailure: called (on the loop's thread, once) when the loop has to stop because polling failed
    ///     for a reason other than a signal; the loop is closed by then.
    public init(name: String, stackBytes: Int = 8 << 20, onFailure: (@Sendable (Error) -> Void)? = nil) throws {
        self.name = name
        self.onFailure = onFailure
        epoll = rulesd_epoll_create()
        guard epoll >= 0 else { throw StartupError("epoll_create1: \(String(cString: strerror(errno)))") }
        wakeDescriptor = rulesd_eventfd()
        guard wakeDescriptor >= 0 else {
            Glibc.close(epoll)
            throw StartupError("eventfd: \(String(cString: strerror(errno)))")
        }
        _ = rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_ADD, wakeDescriptor, RULESD_EPOLLIN, Self.wakeToken)
        // The thread's identity comes back from pthread_create itself, so nothing waits for the thread to run:
        // tasks handed in before it starts are queued and run first thing.
        let body = LoopBody()
        guard let handle = DedicatedThread.start(name: name, stackBytes: stackBytes, body.run) else {
            Glibc.close(wakeDescriptor)
            Glibc.close(epoll)
            throw StartupError("cannot start the worker thread \(name)")
        }
        thread = handle
        body.hand(self)
    }

    /// Hands the thread its loop once the loop is fully initialised: the thread blocks on a semaphore until
    /// `init` has stored it (no spinning), while `init` itself never waits for the thread.
    private final class LoopBody: Sendable {
        private let stored = DispatchSemaphore(value: 0)
        private let loop = Mutex<ServingEventLoop?>(nil)

        func hand(_ target: ServingEventLoop) {
            loop.withLock { $0 = target }
            stored.signal()
        }

        func run() {
            stored.wait()
            let target = loop.withLock { value in
                defer { value = nil }
                return value
            }
            target?.run()
        }
    }

    /// Where the loop is in its life.
    public var lifecycle: Lifecycle { shared.withLock { $0.lifecycle } }

    // MARK: - EventLoop

    public var inEventLoop: Bool { thread.isCurrent || isClosed.load(ordering: .acquiring) }

    /// Runs `task` on the loop. Once the loop is closing the task is dropped: use ``submit(_:)`` to learn
    /// about it.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        _ = enqueue(task)
    }

    /// Queues `task`; false when the loop no longer accepts work.
    private func enqueue(_ task: @escaping @Sendable () -> Void) -> Bool {
        let onLoop = thread.isCurrent
        return shared.withLock { shared -> Bool in
            guard shared.lifecycle != .closed else { return false }
            shared.tasks.append(task)
            tasksQueued.store(true, ordering: .releasing)
            // One wake-up per batch: later tasks find the queue non-empty and the eventfd already written. The
            // write happens under the lock, so it can never meet an eventfd that the closing loop has closed
            // (that happens under the same lock); a closing loop no longer waits, so it needs no wake-up.
            if shared.tasks.count == 1 && shared.lifecycle == .open && !onLoop { wake() }
            return true
        }
    }

    public func submit<T>(_ task: @escaping @Sendable () throws -> T) -> EventLoopFuture<T> {
        let promise = makePromise(of: T.self)
        let accepted = enqueue {
            do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
        }
        if !accepted { refuse(promise) }
        return promise.futureResult
    }

    @discardableResult
    public func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        let timer = LoopTimer(
            deadline: deadline,
            run: {
                do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
            },
            abandon: { promise.fail(EventLoopError.shutdown) })
        let schedule: @Sendable () -> Void = { [self] in
            timer.sequence = nextTimerSequence
            nextTimerSequence &+= 1
            timers.insert(timer)
        }
        if thread.isCurrent {
            schedule()
        } else if !enqueue(schedule) {
            refuse(promise)
        }
        return Scheduled(promise: promise) { [self] in
            let cancel: @Sendable () -> Void = { [self] in
                if timers.remove(timer) { promise.fail(EventLoopError.cancelled) }
            }
            if thread.isCurrent { cancel() } else { execute(cancel) }
        }
    }

    /// Fails the promise of work the closed loop refused; being closed, the loop lets the caller's thread
    /// complete it (see ``inEventLoop``).
    private func refuse<T>(_ promise: EventLoopPromise<T>) {
        promise.fail(EventLoopError.shutdown)
    }

    @discardableResult
    public func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    public func preconditionInEventLoop(file: StaticString, line: UInt) {
        precondition(inEventLoop, "not on the event loop \(name)", file: file, line: line)
    }

    public func preconditionNotInEventLoop(file: StaticString, line: UInt) {
        precondition(!inEventLoop, "on the event loop \(name)", file: file, line: line)
    }

    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        let onLoop = thread.isCurrent
        let (alreadyClosed, failure) = shared.withLock { shared -> (Bool, Error?) in
            switch shared.lifecycle {
            case .closed:
                return (true, shared.failure)
            case .open:
                shared.lifecycle = .closing
                closingRequested.store(true, ordering: .releasing)
                shared.shutdownCallbacks.append((queue, callback))
                if !onLoop { wake() }
                return (false, nil)
            case .closing:
                shared.shutdownCallbacks.append((queue, callback))
                return (false, nil)
            }
        }
        if alreadyClosed { queue.async { callback(failure) } }
    }

    // MARK: - descriptors (on the loop's thread)

    /// Starts polling `descriptor` for `interest` (an epoll mask) on behalf of `source`.
    public func register(_ descriptor: Int32, interest: UInt32, source: EventPollSource) -> Bool {
        guard rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_ADD, descriptor, interest, UInt64(descriptor)) == 0 else {
            return false
        }
        let index = Int(descriptor)
        if index >= sources.count { sources.append(contentsOf: repeatElement(nil, count: index + 1 - sources.count)) }
        if sources[index] == nil { registeredCount += 1 }
        sources[index] = source
        return true
    }

    public func modify(_ descriptor: Int32, interest: UInt32) {
        _ = rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_MOD, descriptor, interest, UInt64(descriptor))
    }

    /// Stops polling `descriptor`; call before closing it.
    public func deregister(_ descriptor: Int32) {
        _ = rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_DEL, descriptor, 0, 0)
        let index = Int(descriptor)
        if index < sources.count, sources[index] != nil {
            sources[index] = nil
            registeredCount -= 1
        }
    }

    /// Counts `count` request lines read on this loop; on the loop (its one writer, so no atomic add is needed).
    @inline(__always)
    func countRequests(_ count: Int) {
        requestsAnswered.store(requestsAnswered.load(ordering: .relaxed) &+ count, ordering: .relaxed)
    }

    /// Queues `task` unless the loop is closed; false when it was refused.
    func executeIfOpen(_ task: @escaping @Sendable () -> Void) -> Bool {
        enqueue(task)
    }

    /// The sources registered now, in descriptor order.
    func registeredSources() -> [EventPollSource] { sources.compactMap { $0 } }

    /// Tells `observer`, on the loop, how busy the loop was over each stretch of at least `window`: the
    /// measurement costs one clock reading per blocking wait, and a thread CPU clock reading per window.
    /// A loop that blocks reports nothing until it wakes up again (then one long, mostly idle window).
    public func observeLoad(every window: TimeAmount, _ observer: @escaping (LoopLoad) -> Void) {
        preconditionInEventLoop()
        loadWindow = LoadWindow(
            length: UInt64(max(1, window.nanoseconds)), observer: observer, start: NIODeadline.now().uptimeNanoseconds,
            cpuStart: Self.threadCPUNanoseconds())
    }

    static func threadCPUNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    /// Closes the load window if it has run its length; true when it did (and told its observer).
    private func endLoadWindow(now: UInt64) -> Bool {
        guard var window = loadWindow, now &- window.start >= window.length else { return false }
        let cpu = Self.threadCPUNanoseconds()
        // The CPU clock is read just after the wall clock, so its span can pass the window's by those few
        // nanoseconds: it is counted within the window.
        let load = LoopLoad(
            wallNanoseconds: now &- window.start, blockedNanoseconds: window.blocked,
            cpuNanoseconds: min(cpu &- window.cpuStart, now &- window.start))
        window.start = now
        window.cpuStart = cpu
        window.blocked = 0
        loadWindow = window
        window.observer(load)
        return true
    }

    // MARK: - the loop

    private func wake() {
        wakeUps.add(1, ordering: .relaxed)
        var one: UInt64 = 1
        _ = Glibc.write(wakeDescriptor, &one, 8)
    }

    private func run() {
        var tokens = [UInt64](repeating: 0, count: 64)
        var masks = [UInt32](repeating: 0, count: 64)
        var failure: Error?
        while true {
            // Tasks queued from this thread (by a task, a timer or a descriptor's handler) set the flag without a
            // wake-up; tasks from elsewhere set it, and wrote the eventfd if the queue was empty.
            if tasksQueued.load(ordering: .acquiring) { runQueuedTasks() }
            let now = NIODeadline.now()
            // The reading also starts the wait, unless timers or a load report ran since: one clock reading
            // fewer per iteration, and the wait still measured from the moment the loop had nothing to do.
            var idleSince: UInt64? = now.uptimeNanoseconds
            if runDueTimers(now: now) { idleSince = nil }
            if loadWindow != nil, endLoadWindow(now: now.uptimeNanoseconds) { idleSince = nil }
            if closingRequested.load(ordering: .acquiring) { break }
            let timeout: Int32 = tasksQueued.load(ordering: .acquiring) ? 0 : timers.millisecondsUntilNext(now: now)
            let count = tokens.withUnsafeMutableBufferPointer { tokens in
                masks.withUnsafeMutableBufferPointer { masks in
                    wait(tokens: tokens.baseAddress!, masks: masks.baseAddress!, timeout: timeout, since: idleSince)
                }
            }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                // EBADF, EFAULT, EINVAL: the loop's own descriptors are broken and nothing it polls can be
                // served any more. Stop rather than spin, and say why.
                failure = ServingLoopFailure(loop: name, call: "epoll_wait", errno: code)
                shared.withLock { shared in
                    shared.lifecycle = .closing
                    shared.failure = failure
                }
                closingRequested.store(true, ordering: .releasing)
                break
            }
            for index in 0..<Int(count) {
                let token = tokens[index]
                if token == Self.wakeToken {
                    var value: UInt64 = 0
                    _ = Glibc.read(wakeDescriptor, &value, 8)
                } else if Int(token) < sources.count, let source = sources[Int(token)] {
                    source.ready(masks[index])
                }
            }
        }
        // What was accepted before the stop still runs, including what arrives while it runs: the queue is
        // found empty and the loop marked closed under the same lock, so no task is accepted and then lost.
        while true {
            runQueuedTasks()
            let closedNow = shared.withLock { shared -> Bool in
                guard shared.tasks.isEmpty else { return false }
                shared.lifecycle = .closed
                Glibc.close(wakeDescriptor)
                return true
            }
            if closedNow { break }
        }
        while let timer = timers.popFirst() { timer.abandon() }
        let callbacks = shared.withLock { shared -> [(DispatchQueue, @Sendable (Error?) -> Void)] in
            defer { shared.shutdownCallbacks = [] }
            return shared.shutdownCallbacks
        }
        isClosed.store(true, ordering: .releasing)
        Glibc.close(epoll)
        let reason = failure
        for (queue, callback) in callbacks { queue.async { callback(reason) } }
        if let reason { onFailure?(reason) }
    }

    /// Waits for events; with nothing to do (`timeout` not 0), polls first when ``SpinPolicy`` says it pays.
    /// The time until the next event counts as blocked in the load window, polling included.
    /// - Parameter since: a clock reading taken just before, when nothing ran since; nil to read the clock.
    private func wait(
        tokens: UnsafeMutablePointer<UInt64>, masks: UnsafeMutablePointer<UInt32>, timeout: Int32, since: UInt64?
    ) -> Int32 {
        if timeout == 0 { return rulesd_epoll_wait(epoll, tokens, masks, 64, 0) }
        let start = since ?? NIODeadline.now().uptimeNanoseconds
        var count: Int32 = 0
        let budget = spin.budget(limit: spinLimit.load(ordering: .relaxed))
        if budget > 0 {
            while true {
                count = rulesd_epoll_wait(epoll, tokens, masks, 64, 0)
                if count != 0 {
                    if count > 0 { spunWaits.add(1, ordering: .relaxed) }
                    break
                }
                if NIODeadline.now().uptimeNanoseconds &- start >= budget { break }
                // Gives the core to anything else runnable on it (a client sharing the core, for one).
                sched_yield()
            }
        }
        if count == 0 { count = rulesd_epoll_wait(epoll, tokens, masks, 64, timeout) }
        let waited = NIODeadline.now().uptimeNanoseconds &- start
        if count > 0 { spin.record(wait: waited) }
        loadWindow?.blocked &+= waited
        return count
    }

    /// Runs the tasks queued so far (those queued meanwhile wait for the next call).
    private func runQueuedTasks() {
        queueTakes.store(queueTakes.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        let tasks = shared.withLock { shared -> [@Sendable () -> Void] in
            tasksQueued.store(false, ordering: .relaxed)
            if shared.tasks.isEmpty { return [] }
            defer { shared.tasks.removeAll(keepingCapacity: true) }
            return shared.tasks
        }
        for task in tasks { task() }
    }

    /// Runs the timers due by `now`; true when any ran.
    private func runDueTimers(now: NIODeadline) -> Bool {
        var ran = false
        while let timer = timers.first, timer.deadline <= now {
            _ = timers.popFirst()
            timer.run()
            ran = true
        }
        return ran
    }
}

/// How busy a loop was over one window of its load observation (see ``ServingEventLoop/observeLoad(every:_:)``).
public struct LoopLoad: Sendable, Equatable {
    /// The window's length.
    public var wallNanoseconds: UInt64
    /// Time spent blocked waiting for something to do.
    public var blockedNanoseconds: UInt64
    /// CPU time the loop's thread used: less than the time not blocked when the thread waited for a core.
    public var cpuNanoseconds: UInt64

    public init(wallNanoseconds: UInt64, blockedNanoseconds: UInt64, cpuNanoseconds: UInt64) {
        self.wallNanoseconds = wallNanoseconds
        self.blockedNanoseconds = blockedNanoseconds
        self.cpuNanoseconds = cpuNanoseconds
    }

    /// The share of the window the thread ran on a core, 0...1.
    public var cpuShare: Double { min(1, Double(cpuNanoseconds) / Double(max(1, wallNanoseconds))) }

    /// The share of the window the loop was not blocked (it ran, or waited for a core to run on), 0...1.
    public var busyShare: Double {
        Double(wallNanoseconds &- min(blockedNanoseconds, wallNanoseconds)) / Double(max(1, wallNanoseconds))
    }
}

private struct LoadWindow {
    let length: UInt64
    let observer: (LoopLoad) -> Void
    var start: UInt64
    var cpuStart: UInt64
    var blocked: UInt64 = 0
}

/// A serving loop stopped because a system call it cannot do without failed.
public struct ServingLoopFailure: Error, Sendable, CustomStringConvertible {
    public var loop: String
    public var call: String
    public var errno: Int32
    public var description: String { "\(loop): \(call) failed: \(String(cString: strerror(errno)))" }
}

/// A task waiting for its deadline on a ``ServingEventLoop``.
final class LoopTimer: @unchecked Sendable {
    let deadline: NIODeadline
    let run: () -> Void
    let abandon: () -> Void
    var sequence: UInt64 = 0
    /// Position in the heap; -1 when not in it.
    var heapIndex = -1

    init(deadline: NIODeadline, run: @escaping () -> Void, abandon: @escaping () -> Void) {
        self.deadline = deadline
        self.run = run
        self.abandon = abandon
    }

    func precedes(_ other: LoopTimer) -> Bool {
        deadline < other.deadline || (deadline == other.deadline && sequence < other.sequence)
    }
}

/// A binary min-heap of timers by deadline (then by scheduling order), with removal in O(log n): idle
/// timers are cancelled far more often than they fire.
struct TimerHeap {
    private var items: [LoopTimer] = []

    var isEmpty: Bool { items.isEmpty }
    var first: LoopTimer? { items.first }

    mutating func insert(_ timer: LoopTimer) {
        timer.heapIndex = items.count
        items.append(timer)
        siftUp(items.count - 1)
    }

    mutating func popFirst() -> LoopTimer? {
        guard let top = items.first else { return nil }
        _ = remove(top)
        return top
    }

    /// Removes `timer`; false when it was not waiting (it ran, or was removed before).
    mutating func remove(_ timer: LoopTimer) -> Bool {
        let index = timer.heapIndex
        guard index >= 0, index < items.count, items[index] === timer else { return false }
        let last = items.count - 1
        if index != last {
            items.swapAt(index, last)
            items[index].heapIndex = index
        }
        items.removeLast()
        timer.heapIndex = -1
        if index < items.count {
            siftDown(index)
            siftUp(index)
        }
        return true
    }

    /// Milliseconds from `now` until the next deadline, rounded up; -1 (wait for ever) without timers.
    func millisecondsUntilNext(now: NIODeadline) -> Int32 {
        guard let next = items.first else { return -1 }
        let nanoseconds = next.deadline.uptimeNanoseconds &- now.uptimeNanoseconds
        if Int64(bitPattern: nanoseconds) <= 0 { return 0 }
        return Int32(clamping: (nanoseconds + 999_999) / 1_000_000)
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].precedes(items[parent]) else { return }
            swap(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < items.count else { return }
            var smallest = left
            if left + 1 < items.count && items[left + 1].precedes(items[left]) { smallest = left + 1 }
            guard items[smallest].precedes(items[parent]) else { return }
            swap(parent, smallest)
            parent = smallest
        }
    }

    private mutating func swap(_ a: Int, _ b: Int) {
        items.swapAt(a, b)
        items[a].heapIndex = a
        items[b].heapIndex = b
    }
}
