import Atomics
import CEventPoll
import Dispatch
import NIOCore
import RuleEngine
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A descriptor registered with a ``ServingEventLoop``: told, on the loop's thread, when it is ready.
protocol EventPollSource: AnyObject {
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
/// Mutable state has one owner: what only the loop's thread touches (registrations, timers, the read
/// buffer) is plain; what other threads hand in (tasks) goes through a lock and an eventfd.
final class ServingEventLoop: EventLoop, @unchecked Sendable {
    let name: String
    private let epoll: Int32
    private let wakeDescriptor: Int32
    private let ownerThread = ManagedAtomic<UInt>(0)
    private let queued = Mutex<[@Sendable () -> Void]>([])
    private let stopRequested = ManagedAtomic<Bool>(false)
    private let stopped = Mutex<(done: Bool, callbacks: [(DispatchQueue, @Sendable (Error?) -> Void)])>(
        (false, []))

    // Owned by the loop's thread.
    private var sources: [EventPollSource?] = []
    private var timers = TimerHeap()
    private var nextTimerSequence: UInt64 = 0
    /// Reused by every connection of this loop for its reads.
    var readBuffer = ByteBufferAllocator().buffer(capacity: 64 << 10)

    private static let wakeToken = UInt64.max

    /// Starts the loop's thread, with a stack of `stackBytes` (Lua's C calls need room).
    init(name: String, stackBytes: Int = 8 << 20) throws {
        self.name = name
        epoll = rulesd_epoll_create()
        guard epoll >= 0 else { throw StartupError("epoll_create1: \(String(cString: strerror(errno)))") }
        wakeDescriptor = rulesd_eventfd()
        guard wakeDescriptor >= 0 else {
            Glibc.close(epoll)
            throw StartupError("eventfd: \(String(cString: strerror(errno)))")
        }
        _ = rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_ADD, wakeDescriptor, RULESD_EPOLLIN, Self.wakeToken)
        let started = Mutex(false)
        let launched = DedicatedThread.start(name: name, stackBytes: stackBytes) { [self] in
            ownerThread.store(UInt(pthread_self()), ordering: .sequentiallyConsistent)
            started.withLock { $0 = true }
            run()
        }
        guard launched else {
            Glibc.close(wakeDescriptor)
            Glibc.close(epoll)
            throw StartupError("cannot start the worker thread \(name)")
        }
        while !started.withLock({ $0 }) { sched_yield() }
    }

    // MARK: - EventLoop

    var inEventLoop: Bool { ownerThread.load(ordering: .relaxed) == UInt(pthread_self()) }

    func execute(_ task: @escaping @Sendable () -> Void) {
        queued.withLock { $0.append(task) }
        if !inEventLoop { wake() }
    }

    @discardableResult
    func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
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
        if inEventLoop { schedule() } else { execute(schedule) }
        return Scheduled(promise: promise) { [self] in
            let cancel: @Sendable () -> Void = { [self] in
                if timers.remove(timer) { promise.fail(EventLoopError.cancelled) }
            }
            if inEventLoop { cancel() } else { execute(cancel) }
        }
    }

    @discardableResult
    func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    func preconditionInEventLoop(file: StaticString, line: UInt) {
        precondition(inEventLoop, "not on the event loop \(name)", file: file, line: line)
    }

    func preconditionNotInEventLoop(file: StaticString, line: UInt) {
        precondition(!inEventLoop, "on the event loop \(name)", file: file, line: line)
    }

    func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        let alreadyDone = stopped.withLock { state -> Bool in
            if state.done { return true }
            state.callbacks.append((queue, callback))
            return false
        }
        if alreadyDone {
            queue.run { callback(nil) }
            return
        }
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        wake()
    }

    // MARK: - descriptors (on the loop's thread)

    /// Starts polling `descriptor` for `interest` (an epoll mask) on behalf of `source`.
    func register(_ descriptor: Int32, interest: UInt32, source: EventPollSource) -> Bool {
        guard rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_ADD, descriptor, interest, UInt64(descriptor)) == 0 else {
            return false
        }
        let index = Int(descriptor)
        if index >= sources.count { sources.append(contentsOf: repeatElement(nil, count: index + 1 - sources.count)) }
        sources[index] = source
        return true
    }

    func modify(_ descriptor: Int32, interest: UInt32) {
        _ = rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_MOD, descriptor, interest, UInt64(descriptor))
    }

    /// Stops polling `descriptor`; call before closing it.
    func deregister(_ descriptor: Int32) {
        _ = rulesd_epoll_control(epoll, RULESD_EPOLL_CTL_DEL, descriptor, 0, 0)
        let index = Int(descriptor)
        if index < sources.count { sources[index] = nil }
    }

    // MARK: - the loop

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeDescriptor, &one, 8)
    }

    private func run() {
        var tokens = [UInt64](repeating: 0, count: 64)
        var masks = [UInt32](repeating: 0, count: 64)
        while true {
            runQueuedTasks()
            let now = NIODeadline.now()
            runDueTimers(now: now)
            if stopRequested.load(ordering: .sequentiallyConsistent) { break }
            let timeout: Int32 = queued.withLock { $0.isEmpty } ? timers.millisecondsUntilNext(now: now) : 0
            let count = tokens.withUnsafeMutableBufferPointer { tokens in
                masks.withUnsafeMutableBufferPointer { masks in
                    rulesd_epoll_wait(epoll, tokens.baseAddress, masks.baseAddress, 64, timeout)
                }
            }
            if count < 0 { continue }  // EINTR
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
        // Whatever was handed in before the stop still runs; timers that will never fire fail their promises.
        runQueuedTasks()
        while let timer = timers.popFirst() { timer.abandon() }
        Glibc.close(wakeDescriptor)
        Glibc.close(epoll)
        let callbacks = stopped.withLock { state -> [(DispatchQueue, @Sendable (Error?) -> Void)] in
            state.done = true
            defer { state.callbacks = [] }
            return state.callbacks
        }
        for (queue, callback) in callbacks { queue.run { callback(nil) } }
    }

    private func runQueuedTasks() {
        let tasks = queued.withLock { queue -> [@Sendable () -> Void] in
            if queue.isEmpty { return [] }
            defer { queue.removeAll(keepingCapacity: true) }
            return queue
        }
        for task in tasks { task() }
    }

    private func runDueTimers(now: NIODeadline) {
        while let timer = timers.first, timer.deadline <= now {
            _ = timers.popFirst()
            timer.run()
        }
    }
}

extension DispatchQueue {
    fileprivate func run(_ body: @escaping @Sendable () -> Void) { async(execute: body) }
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
