import CEventPoll
import Dispatch
import NIOCore
import Synchronization
import Testing

@testable import QueryServing

#if canImport(Glibc)
    import Glibc
#endif

/// A connected pair of non-blocking Unix stream sockets; the caller closes both.
private func socketPair() -> [Int32] {
    var pair: [Int32] = [0, 0]
    #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &pair) == 0)
    return pair
}

@Suite("The workers' event loop")
struct ServingEventLoopTests {
    @Test("tasks handed in from other threads run on the loop's own thread, in order")
    func executeRunsOnTheLoop() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        #expect(!loop.inEventLoop)
        let seen = Mutex<[Int]>([])
        let onLoop = Mutex<[Bool]>([])
        for index in 0..<100 {
            loop.execute {
                seen.withLock { $0.append(index) }
                onLoop.withLock { $0.append(loop.inEventLoop) }
            }
        }
        let last = try await loop.submit { loop.inEventLoop }.get()
        #expect(last)
        #expect(seen.withLock { $0 } == Array(0..<100))
        #expect(onLoop.withLock { $0 }.allSatisfy { $0 })
        try await loop.shutdownGracefully()
    }

    @Test("scheduled tasks run at their deadlines, earliest first, and not before")
    func timersRunInDeadlineOrder() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let order = Mutex<[Int]>([])
        let start = NIODeadline.now()
        let late = loop.scheduleTask(in: .milliseconds(60)) { order.withLock { $0.append(60) } }
        let early = loop.scheduleTask(in: .milliseconds(20)) { order.withLock { $0.append(20) } }
        let middle = loop.scheduleTask(in: .milliseconds(40)) { order.withLock { $0.append(40) } }
        try await early.futureResult.get()
        #expect(NIODeadline.now() - start >= .milliseconds(20))
        try await middle.futureResult.get()
        try await late.futureResult.get()
        #expect(order.withLock { $0 } == [20, 40, 60])
        try await loop.shutdownGracefully()
    }

    @Test("a cancelled task never runs and its future fails with cancelled")
    func cancelledTimersDoNotRun() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let ran = Mutex(false)
        let scheduled = loop.scheduleTask(in: .milliseconds(30)) { ran.withLock { $0 = true } }
        scheduled.cancel()
        await #expect(throws: EventLoopError.cancelled) { try await scheduled.futureResult.get() }
        try await loop.scheduleTask(in: .milliseconds(60)) {}.futureResult.get()
        #expect(!ran.withLock { $0 })
        try await loop.shutdownGracefully()
    }

    @Test("repeated tasks and promises work on it as on any NIO event loop")
    func nioFacilities() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let count = Mutex(0)
        let promise = loop.makePromise(of: Void.self)
        let repeated = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(5)) { _ in
            if count.withLock({
                $0 += 1; return $0
            }) == 3 {
                promise.succeed(())
            }
        }
        try await promise.futureResult.get()
        repeated.cancel()
        #expect(count.withLock { $0 } >= 3)
        let value = try await loop.submit { 42 }.get()
        #expect(value == 42)
        try await loop.shutdownGracefully()
    }

    @Test("shutting down answers the callback and fails timers that will never fire")
    func shutdownFailsPendingTimers() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let pending = loop.scheduleTask(in: .seconds(3600)) {}
        let failure = Mutex<EventLoopError?>(nil)
        // Registered before the shutdown: a stopped loop runs no more tasks.
        pending.futureResult.whenFailure { error in failure.withLock { $0 = error as? EventLoopError } }
        try await loop.shutdownGracefully()
        #expect(failure.withLock { $0 } == .shutdown)
    }

    @Test("a registered descriptor is reported ready on the loop, and not after it is deregistered")
    func pollsDescriptors() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let ends = socketPair()
        defer {
            close(ends[0])
            close(ends[1])
        }
        let reader = CountingSource(descriptor: ends[0], loop: loop)
        let registered = try await loop.submit { loop.register(ends[0], interest: RULESD_EPOLLIN, source: reader) }
            .get()
        #expect(registered)
        _ = write(ends[1], "ping\n", 5)
        try await reader.firstRead.futureResult.get()
        #expect(reader.bytes.withLock { $0 } == Array("ping\n".utf8))
        try await loop.submit { loop.deregister(ends[0]) }.get()
        _ = write(ends[1], "more\n", 5)
        try await loop.scheduleTask(in: .milliseconds(50)) {}.futureResult.get()
        #expect(reader.bytes.withLock { $0 } == Array("ping\n".utf8))
        try await loop.shutdownGracefully()
    }
}

private final class CountingSource: EventPollSource, Sendable {
    let descriptor: Int32
    let bytes = Mutex<[UInt8]>([])
    let firstRead: EventLoopPromise<Void>

    init(descriptor: Int32, loop: ServingEventLoop) {
        self.descriptor = descriptor
        self.firstRead = loop.makePromise(of: Void.self)
    }

    func ready(_ events: UInt32) {
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(descriptor, &buffer, buffer.count)
        if count > 0 {
            bytes.withLock { $0.append(contentsOf: buffer[0..<count]) }
            firstRead.succeed(())
        }
    }
}

/// Signals once per read.
private final class SignallingSource: EventPollSource, Sendable {
    let descriptor: Int32
    let reads = DispatchSemaphore(value: 0)

    init(descriptor: Int32) { self.descriptor = descriptor }

    func ready(_ events: UInt32) {
        var buffer = [UInt8](repeating: 0, count: 64)
        if read(descriptor, &buffer, buffer.count) > 0 { reads.signal() }
    }
}

@Suite("The loop's timer heap")
struct TimerHeapTests {
    private func timer(_ milliseconds: Int64, _ sequence: UInt64) -> LoopTimer {
        let timer = LoopTimer(
            deadline: NIODeadline.uptimeNanoseconds(UInt64(milliseconds) * 1_000_000), run: {}, abandon: {})
        timer.sequence = sequence
        return timer
    }

    @Test("timers come out by deadline, then in the order they were scheduled, whatever was removed")
    func ordering() {
        var heap = TimerHeap()
        var generator = SystemRandomNumberGenerator()
        // Each timer with the deadline and scheduling order the test gave it: the expected order is worked out
        // from these, not from the code's own comparison.
        var timers: [(item: LoopTimer, milliseconds: Int64, sequence: Int)] = []
        for sequence in 0..<500 {
            let milliseconds = Int64.random(in: 1...50, using: &generator)
            let item = timer(milliseconds, UInt64(sequence))
            timers.append((item, milliseconds, sequence))
            heap.insert(item)
        }
        var removed = Set<ObjectIdentifier>()
        for item in timers.map(\.item).shuffled().prefix(200) {
            let first = heap.remove(item)
            let second = heap.remove(item)
            #expect(first)
            #expect(!second)
            removed.insert(ObjectIdentifier(item))
        }
        var out: [LoopTimer] = []
        while let next = heap.popFirst() { out.append(next) }
        let expected = timers.filter { !removed.contains(ObjectIdentifier($0.item)) }
            .sorted { ($0.milliseconds, $0.sequence) < ($1.milliseconds, $1.sequence) }
        #expect(out.count == 300)
        #expect(out.map { ObjectIdentifier($0) } == expected.map { ObjectIdentifier($0.item) })
        #expect(heap.isEmpty)
        #expect(heap.millisecondsUntilNext(now: .now()) == -1)
    }
}

@Suite("The workers' event loop: its lifecycle")
struct ServingEventLoopLifecycleTests {
    @Test("work handed in after shutdown is refused, never queued, and wakes nothing")
    func workAfterShutdownIsRefused() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        try await loop.shutdownGracefully()
        #expect(loop.lifecycle == .closed)
        let wakeUps = loop.wakeUps.load(ordering: .relaxed)
        let ran = Flag()
        loop.execute { ran.set() }
        _ = loop.submit { ran.set() }
        _ = loop.scheduleTask(in: .zero) { ran.set() }
        try await Task.sleep(for: .milliseconds(20))
        #expect(!ran.isSet)
        // Nothing was written to the eventfd, which the loop closed when it stopped.
        #expect(loop.wakeUps.load(ordering: .relaxed) == wakeUps)
        // The refusals are observable: the futures fail.
        await #expect(throws: EventLoopError.shutdown) { try await loop.submit { 1 }.get() }
        await #expect(throws: EventLoopError.shutdown) {
            try await loop.scheduleTask(in: .milliseconds(1)) {}.futureResult.get()
        }
        // A second shutdown answers at once.
        try await loop.shutdownGracefully()
    }

    @Test("a burst of tasks from another thread costs one wake-up, not one each")
    func wakeUpsAreCoalesced() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let gate = DispatchSemaphore(value: 0)
        let entered = DispatchSemaphore(value: 0)
        loop.execute {
            entered.signal()
            gate.wait()
        }
        entered.wait()
        let before = loop.wakeUps.load(ordering: .relaxed)
        let done = Counter()
        for _ in 0..<100 { loop.execute { done.add() } }
        let wakeUps = loop.wakeUps.load(ordering: .relaxed) - before
        #expect(wakeUps == 1)
        gate.signal()
        try await loop.submit {}.get()
        #expect(done.current == 100)
        try await loop.shutdownGracefully()
    }

    @Test("a task queued on the loop by a task runs next, without a wake-up")
    func taskQueuedOnTheLoopRuns() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        try await loop.submit {}.get()
        let before = loop.wakeUps.load(ordering: .relaxed)
        let ran = DispatchSemaphore(value: 0)
        // Nothing else happens on this loop: only the flag set by the inner task's queueing gets it run. (No
        // future is awaited meanwhile: NIO hands the callback of an awaited future to the loop as a task.)
        loop.execute { loop.execute { ran.signal() } }
        let ranInTime = try await offPool { ran.wait(timeout: .now() + 30) == .success }
        #expect(ranInTime)
        #expect(loop.wakeUps.load(ordering: .relaxed) - before <= 1)
        try await loop.shutdownGracefully()
    }

    /// Queues a task that holds `loop` busy until the returned semaphore is signalled, once it runs.
    static func holdLoop(_ loop: ServingEventLoop) async throws -> DispatchSemaphore {
        let gate = DispatchSemaphore(value: 0)
        let entered = DispatchSemaphore(value: 0)
        loop.execute {
            entered.signal()
            gate.wait()
        }
        try await offPool { entered.wait() }
        return gate
    }

    @Test("a task queued from another thread while the loop runs a task is run after it")
    func taskQueuedWhileBusyRuns() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let gate = try await Self.holdLoop(loop)
        let ran = DispatchSemaphore(value: 0)
        loop.execute { ran.signal() }
        gate.signal()
        let ranInTime = try await offPool { ran.wait(timeout: .now() + 30) == .success }
        #expect(ranInTime)
        try await loop.shutdownGracefully()
    }

    @Test("shutting down runs every task queued before, including those queued by a task that asked for it")
    func shutdownRunsQueuedTasks() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let gate = try await Self.holdLoop(loop)
        let done = Counter()
        for _ in 0..<50 { loop.execute { done.add() } }
        let stopped = DispatchSemaphore(value: 0)
        // Asked on the loop itself, which writes no eventfd: the loop must still notice it.
        loop.execute {
            loop.execute { done.add() }
            loop.shutdownGracefully(queue: .global()) { _ in stopped.signal() }
        }
        gate.signal()
        let stoppedInTime = try await offPool { stopped.wait(timeout: .now() + 30) == .success }
        #expect(stoppedInTime)
        #expect(done.current == 51)
        #expect(loop.lifecycle == .closed)
    }

    @Test("an iteration with nothing queued takes no lock")
    func idleIterationsTakeNoLock() async throws {
        let loop = try ServingEventLoop(name: "test-loop")
        let ends = socketPair()
        defer {
            close(ends[0])
            close(ends[1])
        }
        let source = SignallingSource(descriptor: ends[0])
        #expect(try await loop.submit { loop.register(ends[0], interest: RULESD_EPOLLIN, source: source) }.get())
        let before = loop.queueTakes.load(ordering: .relaxed)
        for _ in 0..<50 {
            _ = write(ends[1], "x", 1)
            let readInTime = try await offPool { source.reads.wait(timeout: .now() + 30) == .success }
            #expect(readInTime)
        }
        // 50 iterations at least, each woken by the descriptor alone.
        #expect(loop.queueTakes.load(ordering: .relaxed) == before)
        try await loop.submit { loop.deregister(ends[0]) }.get()
        try await loop.shutdownGracefully()
    }

    @Test("a poll that fails for good stops the loop, reports why, and refuses later work")
    func pollFailureStopsTheLoop() async throws {
        let reported = Mutex<Error?>(nil)
        let stopped = DispatchSemaphore(value: 0)
        let loop = try ServingEventLoop(name: "test-loop") { error in
            reported.withLock { $0 = error }
            stopped.signal()
        }
        // Put a pipe where the epoll descriptor was: the next epoll_wait fails with EINVAL, not EINTR.
        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        #expect(dup2(pipeEnds[0], loop.epoll) == loop.epoll)
        loop.execute {}  // wakes the loop, whose next wait meets the pipe
        let reportedInTime = try await offPool { stopped.wait(timeout: .now() + 30) == .success }
        #expect(reportedInTime)
        let failure = try #require(reported.withLock { $0 } as? ServingLoopFailure)
        #expect(failure.call == "epoll_wait")
        #expect(failure.errno == EINVAL)
        while loop.lifecycle != .closed { try await Task.sleep(for: .milliseconds(1)) }
        let ran = Flag()
        loop.execute { ran.set() }
        #expect(!ran.isSet)
        close(pipeEnds[0])
        close(pipeEnds[1])
    }
}
