import Foundation
import NIOCore
import RuleModel
import RulesTestSupport
import Synchronization
import Testing

@testable import QueryServing

#if canImport(Glibc)
    import Glibc
#endif

private let millisecond: UInt64 = 1_000_000

/// Reports a load window that ended `milliseconds` after the start.
private func report(
    _ placement: inout LoopPlacement, loop: Int, share: Double, answered: Int, at milliseconds: UInt64
) -> Bool {
    placement.report(loop: loop, share: share, answered: answered, now: milliseconds * millisecond)
}

private func move(_ placement: inout LoopPlacement, from loop: Int) -> Int? {
    placement.nextMove(from: loop)
}

/// Every active loop reports a 25 ms window of `share`, from `from` to `to` ms, while all loops together answer
/// `rate(active)` requests a second; returns the times (ms) at which the number of active loops changed, with
/// the new count.
private func steadyLoad(
    _ placement: inout LoopPlacement, share: Double, answered: inout Int, from: UInt64, to: UInt64,
    rate: (Int) -> Int
) -> [(at: UInt64, active: Int)] {
    var changes: [(at: UInt64, active: Int)] = []
    var at = from
    while at <= to {
        answered += rate(placement.active) / 40
        for loop in 0..<placement.active
        where report(&placement, loop: loop, share: share, answered: answered, at: at) {
            changes.append((at, placement.active))
            break
        }
        at += 25
    }
    return changes
}

/// A placement over two loops holding two connections (a loop with one connection starts no trial).
private func twoConnectionsOnTwoLoops() -> LoopPlacement {
    var placement = LoopPlacement(loopCount: 2, now: 0)
    _ = (placement.place(), placement.place())
    return placement
}

/// A placement with both of its two loops active, holding eight connections (the state a trial that paid leaves).
private func eightConnectionsOnTwoActiveLoops() -> LoopPlacement {
    var placement = LoopPlacement(loopCount: 2, now: 0)
    placement.setActive(2, now: 0)
    for _ in 0..<8 { _ = placement.place() }
    return placement
}

@Suite("Which loops take connections: the policy")
struct LoopPlacementTests {
    @Test("new connections go to the active loop with the fewest connections")
    func placesOnFewest() {
        var placement = LoopPlacement(loopCount: 3, now: 0)
        let alone = [placement.place(), placement.place()]
        #expect(alone == [0, 0])
        placement.setActive(3, now: 0)
        let spread = [placement.place(), placement.place(), placement.place()]
        #expect(spread == [1, 2, 1])
        placement.closed(on: 0)
        let afterClose = placement.place()
        #expect(afterClose == 0)
    }

    @Test("a loop that is not saturated brings no other loop in")
    func unsaturatedStaysAlone() {
        var placement = twoConnectionsOnTwoLoops()
        #expect(!report(&placement, loop: 0, share: 0.6, answered: 10_000, at: 100))
        #expect(!report(&placement, loop: 0, share: 0.8, answered: 20_000, at: 200))
        #expect(placement.active == 1)
    }

    @Test("a saturated loop with a single connection brings no other loop in: it would have none to hand over")
    func singleConnectionStaysAlone() {
        var placement = LoopPlacement(loopCount: 2, now: 0)
        _ = placement.place()
        #expect(!report(&placement, loop: 0, share: 0.99, answered: 10_000, at: 100))
        #expect(placement.active == 1)
    }

    @Test("a trial that raised the answered rate over two rate periods keeps the loop")
    func trialThatPaysIsKept() {
        var placement = twoConnectionsOnTwoLoops()
        var answered = 0
        let changes = steadyLoad(&placement, share: 0.95, answered: &answered, from: 25, to: 600) {
            $0 == 1 ? 100_000 : 130_000
        }
        #expect(changes.map(\.active) == [2])
        #expect(placement.phase == .steady)
        #expect(placement.active == 2)
    }

    @Test("a trial that did not raise the rate gives the loop up; the same load is not tried again for a minute")
    func trialThatDoesNotPayBacksOff() {
        var placement = twoConnectionsOnTwoLoops()
        var answered = 0
        let changes = steadyLoad(&placement, share: 0.95, answered: &answered, from: 25, to: 62_000) { _ in 100_000 }
        #expect(changes.map(\.active) == [2, 1, 2, 1])
        guard changes.count == 4 else { return }
        // Each trial lasts a settling window and two rate periods; the same load waits a minute.
        #expect(changes[1].at - changes[0].at >= 225)
        #expect(changes[2].at - changes[1].at >= 60_000)
    }

    @Test("after a lost trial's back-off, a load of more or fewer connections is tried; the back-off doubles")
    func otherConnectionsEndTheWait() {
        var placement = twoConnectionsOnTwoLoops()
        var answered = 0
        let lost = steadyLoad(&placement, share: 0.95, answered: &answered, from: 25, to: 3_000) { _ in 100_000 }
        #expect(lost.map(\.active) == [2, 1])
        // One more client each time, at the same rate: tried after back-offs of 4 s, then 8 s, and lost again.
        var lastLoss = lost.last?.at ?? 0
        var from: UInt64 = 3_025
        for (backoff, until) in [(UInt64(4_000), UInt64(8_000)), (8_000, 20_000)] {
            _ = placement.place()
            let changes = steadyLoad(&placement, share: 0.95, answered: &answered, from: from, to: until) { _ in
                100_000
            }
            #expect(changes.map(\.active) == [2, 1])
            guard changes.count == 2 else { return }
            #expect(changes[0].at - lastLoss >= backoff)
            lastLoss = changes[1].at
            from = until + 25
        }
    }

    @Test("a load heavier than a lost trial's baseline ends its back-off: it is tried at once")
    func heavierLoadEndsBackoff() {
        var placement = twoConnectionsOnTwoLoops()
        var answered = 0
        // A trial at 100k/s loses (two loops answer no more); the next would wait 4 s.
        let lost = steadyLoad(&placement, share: 0.95, answered: &answered, from: 25, to: 1_000) { _ in 100_000 }
        #expect(lost.map(\.active) == [2, 1])
        // Then the load doubles, and two loops answer more than one: a trial within a few rate periods, kept.
        let changes = steadyLoad(&placement, share: 0.95, answered: &answered, from: 1_025, to: 2_000) {
            $0 == 1 ? 200_000 : 260_000
        }
        #expect(changes.map(\.active) == [2])
        #expect((changes.first?.at ?? .max) <= 1_400)
    }

    @Test("a rate period stretched by an idle stretch is no baseline: a trial after a pause is judged on the load")
    func idleStretchIsNoBaseline() {
        var placement = twoConnectionsOnTwoLoops()
        var answered = 0
        // A light load, then five silent seconds (loops report only when they wake), then saturation that a
        // second loop does not serve any faster. Judged against the silence, the trial would look like a gain.
        #expect(steadyLoad(&placement, share: 0.3, answered: &answered, from: 25, to: 200) { _ in 50_000 }.isEmpty)
        let changes = steadyLoad(&placement, share: 0.95, answered: &answered, from: 5_000, to: 5_600) { _ in
            100_000
        }
        #expect(changes.map(\.active) == [2, 1])
        #expect(placement.active == 1)
    }

    @Test("with loops to spare, one fewer is tried after a while and kept when it keeps the rate")
    func recheckKeepsFewerLoops() {
        var placement = eightConnectionsOnTwoActiveLoops()
        var answered = 0
        // Busy enough that the shares never fit in one loop, yet one loop answers as many.
        let changes = steadyLoad(&placement, share: 0.7, answered: &answered, from: 25, to: 2_000) { _ in 150_000 }
        #expect(changes.map(\.active) == [1])
        #expect(changes.first.map { $0.at >= UInt64(LoopPlacement.recheckAfter / 1_000_000) } == true)
        #expect(placement.active == 1)
    }

    @Test("a recheck that lost the rate brings the loop back, and the next waits twice as long")
    func recheckThatLosesBacksOff() {
        var placement = eightConnectionsOnTwoActiveLoops()
        var answered = 0
        let changes = steadyLoad(&placement, share: 0.7, answered: &answered, from: 25, to: 5_000) {
            $0 == 1 ? 100_000 : 160_000
        }
        #expect(changes.map(\.active) == [1, 2, 1, 2])
        guard changes.count == 4 else { return }
        #expect(changes[2].at - changes[1].at >= 2_000)
        #expect(placement.active == 2)
    }

    @Test("loops whose CPU shares fit in one loop fewer are given up")
    func shrinksWhenTheLoadFits() {
        var placement = LoopPlacement(loopCount: 2, now: 0)
        placement.setActive(2, now: 0)
        // No decision in the first two windows after a change: every loop gets to report.
        #expect(!report(&placement, loop: 0, share: 0.1, answered: 1_000, at: 20))
        #expect(!report(&placement, loop: 1, share: 0.3, answered: 2_000, at: 40))
        #expect(!report(&placement, loop: 0, share: 0.3, answered: 3_000, at: 60))
        #expect(placement.active == 2)
        // Four reports in a row must find that the load fits: the first after a pause covers the pause.
        #expect(!report(&placement, loop: 1, share: 0.1, answered: 4_000, at: 70))
        #expect(!report(&placement, loop: 0, share: 0.1, answered: 5_000, at: 80))
        #expect(!report(&placement, loop: 1, share: 0.5, answered: 6_000, at: 90))
        for (index, at) in [100, 110, 120].enumerated() {
            #expect(!report(&placement, loop: (index + 1) % 2, share: 0.1, answered: 7_000 + index, at: UInt64(at)))
        }
        #expect(report(&placement, loop: 0, share: 0.1, answered: 8_000, at: 130))
        #expect(placement.active == 1)
    }

    @Test("a loop that has not reported for two windows counts as idle")
    func silentLoopIsIdle() {
        var placement = LoopPlacement(loopCount: 2, now: 0)
        placement.setActive(2, now: 0)
        #expect(!report(&placement, loop: 1, share: 0.9, answered: 1_000, at: 40))
        #expect(!report(&placement, loop: 0, share: 0.3, answered: 2_000, at: 60))
        for at in [100, 110, 120] {
            #expect(!report(&placement, loop: 0, share: 0.3, answered: 3_000, at: UInt64(at)))
        }
        #expect(report(&placement, loop: 0, share: 0.3, answered: 3_000, at: 130))
        #expect(placement.active == 1)
    }

    @Test("a loop no longer active hands over all its connections; an active one only two or more over another")
    func movesToEvenOut() {
        var placement = LoopPlacement(loopCount: 2, now: 0)
        placement.setActive(2, now: 0)
        for _ in 0..<4 { _ = placement.place() }
        #expect(placement.connections == [2, 2])
        #expect(move(&placement, from: 1) == nil)
        placement.setActive(1, now: 0)
        #expect(move(&placement, from: 1) == 0)
        #expect(move(&placement, from: 1) == 0)
        #expect(move(&placement, from: 1) == nil)
        #expect(placement.connections == [4, 0])
        placement.setActive(2, now: 0)
        #expect(move(&placement, from: 0) == 1)
        #expect(move(&placement, from: 0) == 1)
        #expect(move(&placement, from: 0) == nil)
        #expect(placement.connections == [2, 2])
    }
}

/// A connection served over a socketpair on the loop the balancer chose.
private struct PlacedConnection {
    let client: LineClient
    let home: ConnectionHome
    let closed: Flag

    init(_ balancer: LoopBalancer, backend: EchoBackend) async throws {
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else {
            throw HarnessError("socketpair: \(errno)")
        }
        let served = pair[0]
        _ = fcntl(served, F_SETFL, fcntl(served, F_GETFL) | O_NONBLOCK)
        let loop = balancer.place()
        let closed = Flag()
        self.closed = closed
        home = try await loop.submit {
            let connection = QueryConnection(
                descriptor: served, loop: loop, responder: backend.responder(on: loop), backend: backend,
                limits: ConnectionHarness.limits(), peer: nil,
                onClose: { loop in
                    balancer.closed(on: loop)
                    closed.set()
                })
            _ = connection.start()
            return connection.home
        }.get()
        client = LineClient(descriptor: pair[1], timeout: 20)
    }

    /// Sends pings `ids` in one write and checks that their answers come back in order.
    func pingInOrder(_ ids: ClosedRange<Int>) async throws {
        try client.send(ids.map { #"{"op":"ping","id":\#($0)}"# + "\n" }.joined())
        let client = self.client
        let answered = try await offPool { try ids.map { _ in try client.readJSON()["id"] } }
        #expect(answered == ids.map { .integer(Int64($0)) })
    }
}

/// What a loop has registered, read on the loop: the queue is first in, first out, so this runs after every
/// task queued there before it.
private func registered(on loop: ServingEventLoop) async throws -> Int {
    try await loop.submit { loop.registeredCount }.get()
}

@Suite("Which loops take connections: moving connections between loops")
struct LoopBalancerTests {
    @Test("a loop no longer active hands its connections over and parks; they answer in order where they went")
    func inactiveLoopParks() async throws {
        let loops = [try ServingEventLoop(name: "balanced-0"), try ServingEventLoop(name: "balanced-1")]
        let balancer = LoopBalancer(loops: loops)
        balancer.setActive(2)
        let backend = EchoBackend()
        let first = try await PlacedConnection(balancer, backend: backend)
        let second = try await PlacedConnection(balancer, backend: backend)
        #expect(first.home.loop === loops[0])
        #expect(second.home.loop === loops[1])
        try await second.pingInOrder(1...5)

        balancer.setActive(1)
        // Loop 1 rebalances before it runs this; the arrival it queues on loop 0 runs before loop 0 runs that.
        #expect(try await registered(on: loops[1]) == 0)
        #expect(try await registered(on: loops[0]) == 2)
        #expect(second.home.loop === loops[0])
        #expect(balancer.current.connections == [2, 0])

        let wakeUps = loops[1].wakeUps.load(ordering: .relaxed)
        try await second.pingInOrder(6...40)
        try await first.pingInOrder(1...10)
        #expect(loops[1].wakeUps.load(ordering: .relaxed) == wakeUps)
        for loop in loops { try await loop.shutdownGracefully() }
    }

    @Test("a line split across a move is answered after it, in order")
    func partialLineMovesAlong() async throws {
        let loops = [try ServingEventLoop(name: "balanced-0"), try ServingEventLoop(name: "balanced-1")]
        let balancer = LoopBalancer(loops: loops)
        balancer.setActive(2)
        let backend = EchoBackend()
        let staying = try await PlacedConnection(balancer, backend: backend)
        let moving = try await PlacedConnection(balancer, backend: backend)
        try moving.client.send(#"{"op":"ping","id":1}"# + "\n" + #"{"op":"pi"#)
        #expect(try await offPool { try moving.client.readJSON()["id"] } == .integer(1))
        balancer.setActive(1)
        #expect(try await registered(on: loops[1]) == 0)
        _ = try await registered(on: loops[0])
        #expect(moving.home.loop === loops[0])
        try moving.client.send(#"ng","id":2}"# + "\n")
        #expect(try await offPool { try moving.client.readJSON()["id"] } == .integer(2))
        withExtendedLifetime(staying) {}
        for loop in loops { try await loop.shutdownGracefully() }
    }

    @Test("a connection with an operation in flight stays on its loop until the answer is written")
    func busyConnectionStays() async throws {
        let loops = [try ServingEventLoop(name: "balanced-0"), try ServingEventLoop(name: "balanced-1")]
        let balancer = LoopBalancer(loops: loops)
        balancer.setActive(2)
        let backend = EchoBackend(held: true)
        let staying = try await PlacedConnection(balancer, backend: backend)
        let waiting = try await PlacedConnection(balancer, backend: backend)
        try waiting.client.send(#"{"op":"reload","id":1}"# + "\n" + #"{"op":"ping","id":2}"# + "\n")
        while try await loops[1].submit({
            loops[1].registeredSources().compactMap { $0 as? QueryConnection }.first?.state
        }).get() != .awaitingAnswer {
            usleep(1000)
        }
        balancer.setActive(1)
        #expect(try await registered(on: loops[1]) == 1)
        #expect(waiting.home.loop === loops[1])
        backend.release()
        #expect(try await offPool { try waiting.client.readJSON()["id"] } == .integer(1))
        #expect(try await offPool { try waiting.client.readJSON()["id"] } == .integer(2))
        // Nothing in flight any more: the next rebalance moves it.
        try await loops[1].submit { balancer.rebalance(1) }.get()
        #expect(try await registered(on: loops[0]) == 2)
        #expect(waiting.home.loop === loops[0])
        try await waiting.pingInOrder(3...6)
        withExtendedLifetime(staying) {}
        for loop in loops { try await loop.shutdownGracefully() }
    }

    @Test("the shutdown's drain reaches a connection on the loop it moved to")
    func drainFollowsTheConnection() async throws {
        let loops = [try ServingEventLoop(name: "balanced-0"), try ServingEventLoop(name: "balanced-1")]
        let balancer = LoopBalancer(loops: loops)
        balancer.setActive(2)
        let backend = EchoBackend()
        let staying = try await PlacedConnection(balancer, backend: backend)
        let moving = try await PlacedConnection(balancer, backend: backend)
        balancer.setActive(1)
        #expect(try await registered(on: loops[1]) == 0)
        moving.home.run { $0.drain() }
        #expect(try await offPool { try moving.client.readLine() } == nil)
        #expect(moving.closed.isSet)
        #expect(balancer.current.connections == [1, 0])
        withExtendedLifetime(staying) {}
        for loop in loops { try await loop.shutdownGracefully() }
    }
}

@Suite("The workers' event loop: load windows and writes")
struct LoopLoadTests {
    @Test("a load window counts the loop's CPU time, within the window's length")
    func loadWindowCountsCPU() async throws {
        let loop = try ServingEventLoop(name: "load")
        let reports = Mutex<[LoopLoad]>([])
        try await loop.submit {
            loop.observeLoad(every: .nanoseconds(1)) { load in reports.withLock { $0.append(load) } }
        }.get()
        // Work that uses CPU, then one more task so that the loop goes round and closes the window.
        try await loop.submit {
            let start = ServingEventLoop.threadCPUNanoseconds()
            while ServingEventLoop.threadCPUNanoseconds() &- start < 2_000_000 {}
        }.get()
        try await loop.submit {}.get()
        let busiest = try #require(reports.withLock { $0.max { $0.cpuNanoseconds < $1.cpuNanoseconds } })
        #expect(busiest.cpuNanoseconds >= 2_000_000)
        #expect(busiest.cpuNanoseconds <= busiest.wallNanoseconds)
        #expect(busiest.blockedNanoseconds <= busiest.wallNanoseconds)
        try await loop.shutdownGracefully()
    }

    @Test("the answers to the lines of one read go out in one write, in order")
    func oneWritePerRead() async throws {
        let harness = try await ConnectionHarness()
        try harness.client.send((1...50).map { #"{"op":"ping","id":\#($0)}"# + "\n" }.joined())
        for id in 1...50 { #expect(try await harness.readJSON()["id"] == .integer(Int64(id))) }
        #expect(try await harness.writes() == 1)
        await harness.stop()
    }
}

@Suite("The workers' event loop: polling before blocking")
struct SpinPolicyTests {
    private let microsecond: UInt64 = 1_000

    @Test("a loop whose last waits were all short polls for twice the longest of them, up to its limit")
    func pollsAfterShortWaits() {
        var policy = SpinPolicy()
        for wait in [10, 20, 15, 12] { policy.record(wait: UInt64(wait) * microsecond) }
        #expect(policy.budget(limit: 100 * microsecond) == 40 * microsecond)
        policy.record(wait: 60 * microsecond)
        #expect(policy.budget(limit: 100 * microsecond) == 100 * microsecond)
    }

    @Test("a long wait among the last ones, no history or no limit: the loop blocks at once")
    func blocksOtherwise() {
        var policy = SpinPolicy()
        #expect(policy.budget(limit: 100 * microsecond) == 0)
        for wait in [10, 10, 10, 500] { policy.record(wait: UInt64(wait) * microsecond) }
        #expect(policy.budget(limit: 100 * microsecond) == 0)
        for wait in [10, 10, 10] { policy.record(wait: UInt64(wait) * microsecond) }
        #expect(policy.budget(limit: 100 * microsecond) == 0)
        policy.record(wait: 10 * microsecond)
        #expect(policy.budget(limit: 100 * microsecond) == 20 * microsecond)
        #expect(policy.budget(limit: 0) == 0)
    }

    @Test("a loop allowed to poll answers requests in order and runs the tasks handed to it")
    func pollingLoopServes() async throws {
        let harness = try await ConnectionHarness()
        harness.loop.spinLimit.store(1_000_000, ordering: .relaxed)
        for id in 1...200 {
            try harness.client.send(#"{"op":"ping","id":\#(id)}"# + "\n")
            #expect(try await harness.readJSON()["id"] == .integer(Int64(id)))
            if id % 50 == 0 { #expect(try await harness.loop.submit { id }.get() == id) }
        }
        await harness.stop()
    }
}
