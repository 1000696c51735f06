import NIOCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How many of the serving loops take query connections, and which loop each connection lives on: the
/// policy, as a value (the clock and the loads are handed in, so tests can drive it).
///
/// Why not always every loop: on a machine with few cores that also runs the clients, a loop beyond what the
/// load needs costs wake-ups and context switches and wins nothing. On 2 cores with the load client on the same
/// machine, 8 connections without pipelining got 168k answers/s from one loop and 109k from two, while with 32
/// requests in flight per connection two loops answered 631k/s and one 396k/s. Neither count wins at both
/// ends, and which one wins depends on what else the machine runs; so the daemon tries.
///
/// - Connections go to the active loop with the fewest of them; an active loop that holds two or more
///   connections more than another hands the difference over, and a loop no longer active hands over all of
///   its own (those that can move: see ``QueryConnection/isMovable``).
/// - One more loop becomes active, on trial, when an active loop was not blocked for at least ``growShare`` of
///   its last load window: it ran, or waited for a core (on a machine short of cores, another thread still
///   gets the loops a larger share of them). The trial keeps the loop only when
///   the requests answered per second over a whole rate period inside the trial beat the rate before it by
///   ``trialGain``; otherwise the loop is given up and the next trial waits a back-off that doubles each time
///   (``firstBackoff`` up to ``maxBackoff``: short, because the load changes, and a trial that does not pay
///   costs little). A loop with a single connection starts no trial: it would have nothing to hand over.
/// - One loop fewer is active when, in ``shrinkReports`` reports in a row, the active loops' busy shares add up
///   to less than ``shrinkShare`` times one loop fewer: the load fits, and fewer loops batch more per wake-up.
///   (One report is not enough: the first after a pause covers the pause.)
/// - A loop that has not reported for two windows is idle: a loop reports only when it wakes.
public struct LoopPlacement: Sendable, Equatable {
    public static let window = TimeAmount.milliseconds(25)
    public static let ratePeriod: UInt64 = 100_000_000
    public static let growShare = 0.85
    public static let shrinkShare = 0.5
    public static let trialGain = 1.05
    /// Reports in a row that must find the load fitting in fewer loops before one is given up.
    public static let shrinkReports = 4
    public static let firstBackoff: UInt64 = 500_000_000
    public static let maxBackoff: UInt64 = 2_000_000_000

    enum Phase: Sendable, Equatable {
        case steady
        /// One more loop is active since `since`; `baseline` is the rate before.
        case trial(since: UInt64, baseline: Double)
    }

    public let loopCount: Int
    /// Loops `0..<active` take connections.
    public private(set) var active = 1
    /// Connections on each loop.
    public private(set) var connections: [Int]
    private var shares: [Double]
    private var reportedAt: [UInt64]
    private(set) var phase = Phase.steady
    /// When the number of active loops last changed: the loops get two windows to report before the next
    /// decision.
    private var changedAt: UInt64 = 0
    private var backoffUntil: UInt64 = 0
    private var fittingReports = 0
    private var backoff = LoopPlacement.firstBackoff
    /// The start of the current rate period, the requests answered by then, and the last whole period's rate.
    private var periodStart: UInt64
    private var periodAnswered: Int
    private(set) var lastRate: Double?
    private var lastRateEnd: UInt64 = 0
    private let windowNanoseconds = UInt64(LoopPlacement.window.nanoseconds)

    public init(loopCount: Int, now: UInt64) {
        precondition(loopCount > 0)
        self.loopCount = loopCount
        connections = Array(repeating: 0, count: loopCount)
        shares = Array(repeating: 0, count: loopCount)
        reportedAt = Array(repeating: 0, count: loopCount)
        periodStart = now
        periodAnswered = 0
    }

    /// Makes loops `0..<count` the active ones, outside the policy (for an operator's or a test's decision).
    mutating func setActive(_ count: Int, now: UInt64) {
        active = min(max(1, count), loopCount)
        phase = .steady
        changedAt = now
    }

    /// Chooses the loop of a new connection and counts it there.
    public mutating func place() -> Int {
        let loop = fewest(excluding: nil)
        connections[loop] += 1
        return loop
    }

    public mutating func closed(on loop: Int) {
        connections[loop] -= 1
    }

    /// Where `loop` should hand one connection now, if anywhere; counts the move when it says.
    public mutating func nextMove(from loop: Int) -> Int? {
        guard connections[loop] > 0 else { return nil }
        let target = fewest(excluding: loop)
        guard target != loop else { return nil }
        if loop >= active || connections[loop] >= connections[target] + 2 {
            connections[loop] -= 1
            connections[target] += 1
            return target
        }
        return nil
    }

    /// Undoes a move counted by ``nextMove(from:)`` that could not happen.
    public mutating func moveFailed(from loop: Int, to target: Int) {
        connections[target] -= 1
        connections[loop] += 1
    }

    private func fewest(excluding excluded: Int?) -> Int {
        var best = -1
        for loop in 0..<active where loop != excluded {
            if best < 0 || connections[loop] < connections[best] { best = loop }
        }
        return best < 0 ? (excluded ?? 0) : best
    }

    /// Records a load window of `loop` that ended at `now`, with `answered` requests answered by all loops so
    /// far; returns whether the number of active loops changed.
    public mutating func report(loop: Int, share: Double, answered: Int, now: UInt64) -> Bool {
        shares[loop] = share
        reportedAt[loop] = now
        if now &- periodStart >= Self.ratePeriod {
            lastRate = Double(answered - periodAnswered) * 1e9 / Double(now &- periodStart)
            lastRateEnd = now
            periodStart = now
            periodAnswered = answered
        }
        switch phase {
        case .trial(let since, let baseline):
            // Judged on a whole rate period that began after the trial had settled for a window.
            guard let rate = lastRate, lastRateEnd >= since &+ windowNanoseconds &+ Self.ratePeriod else {
                return false
            }
            phase = .steady
            if rate >= baseline * Self.trialGain {
                backoff = Self.firstBackoff
                return false
            }
            active -= 1
            changedAt = now
            backoffUntil = now &+ backoff
            backoff = min(backoff * 2, Self.maxBackoff)
            return true
        case .steady:
            guard now &- changedAt >= 2 * windowNanoseconds else { return false }
            var total = 0.0
            var busiest = 0.0
            var busiestConnections = 0
            for index in 0..<active where now &- reportedAt[index] <= 2 * windowNanoseconds {
                total += shares[index]
                if shares[index] > busiest {
                    busiest = shares[index]
                    busiestConnections = connections[index]
                }
            }
            // A loop with one connection would have nothing to hand over.
            if active < loopCount, busiest >= Self.growShare, busiestConnections >= 2, now >= backoffUntil,
                let rate = lastRate
            {
                phase = .trial(since: now, baseline: rate)
                active += 1
                changedAt = now
                return true
            }
            fittingReports = active > 1 && total < Self.shrinkShare * Double(active - 1) ? fittingReports + 1 : 0
            if fittingReports >= Self.shrinkReports {
                fittingReports = 0
                active -= 1
                changedAt = now
                // The load went down: the next saturation is a new situation, worth a trial at once.
                backoff = Self.firstBackoff
                backoffUntil = 0
                return true
            }
            return false
        }
    }
}

/// Applies a ``LoopPlacement`` to the serving loops: places new connections, takes each loop's load reports
/// (on that loop), and moves connections when the placement says so (each move runs on the loop that gives
/// the connection up).
final class LoopBalancer: Sendable {
    let loops: [ServingEventLoop]
    private let placement: Mutex<LoopPlacement>
    private let indexes: [ObjectIdentifier: Int]

    init(loops: [ServingEventLoop]) {
        self.loops = loops
        placement = Mutex(LoopPlacement(loopCount: loops.count, now: NIODeadline.now().uptimeNanoseconds))
        var indexes: [ObjectIdentifier: Int] = [:]
        for (index, loop) in loops.enumerated() { indexes[ObjectIdentifier(loop)] = index }
        self.indexes = indexes
    }

    /// The placement as it stands.
    var current: LoopPlacement { placement.withLock { $0 } }

    /// The polling limit of the active loops while a core is left over for the clients (see ``SpinPolicy``).
    static let spinLimit: UInt64 = 100_000

    /// Lets the active loops poll before blocking while they leave a core over.
    private func updateSpinning(active: Int) {
        let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        for loop in loops { loop.spinLimit.store(active < cores ? Self.spinLimit : 0, ordering: .relaxed) }
    }

    /// Starts each loop's load reports; with one loop there is nothing to decide.
    func start() {
        updateSpinning(active: current.active)
        guard loops.count > 1 else { return }
        for (index, loop) in loops.enumerated() {
            loop.execute { [self] in
                loop.observeLoad(every: LoopPlacement.window) { [self] load in
                    reported(load, by: index)
                }
            }
        }
    }

    /// The loop for a new connection (counted there).
    func place() -> ServingEventLoop {
        loops[placement.withLock { $0.place() }]
    }

    /// Counts out a connection that closed on `loop`.
    func closed(on loop: ServingEventLoop) {
        guard let index = indexes[ObjectIdentifier(loop)] else { return }
        placement.withLock { $0.closed(on: index) }
    }

    private var answered: Int {
        loops.reduce(0) { $0 + $1.requestsAnswered.load(ordering: .relaxed) }
    }

    private func reported(_ load: LoopLoad, by index: Int) {
        let now = NIODeadline.now().uptimeNanoseconds
        let total = answered
        let (changed, active) = placement.withLock {
            ($0.report(loop: index, share: load.busyShare, answered: total, now: now), $0.active)
        }
        if changed {
            updateSpinning(active: active)
            rebalanceElsewhere(than: index)
        }
        rebalance(index)
    }

    /// Every loop but `index` looks at its connections once (it may now hold more than its share).
    private func rebalanceElsewhere(than index: Int?) {
        for (other, loop) in loops.enumerated() where other != index { loop.execute { [self] in rebalance(other) } }
    }

    /// Makes `count` loops active now, outside the policy, and lets every loop rebalance.
    func setActive(_ count: Int) {
        let now = NIODeadline.now().uptimeNanoseconds
        updateSpinning(
            active: placement.withLock {
                $0.setActive(count, now: now); return $0.active
            })
        rebalanceElsewhere(than: nil)
    }

    /// Hands the connections `loops[index]` should give up to the loops the placement names; on that loop.
    func rebalance(_ index: Int) {
        let loop = loops[index]
        let movable = loop.registeredSources().compactMap { $0 as? QueryConnection }.filter(\.isMovable)
        for connection in movable {
            guard let target = placement.withLock({ $0.nextMove(from: index) }) else { return }
            if !connection.move(to: loops[target]) {
                placement.withLock { $0.moveFailed(from: index, to: target) }
            }
        }
    }
}
