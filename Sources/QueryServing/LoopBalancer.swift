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
///   the requests answered per second over ``trialPeriods`` whole rate periods inside the trial beat the rate of
///   the two periods before it by ``trialGain``; otherwise the loop is given up, and the load it lost on is
///   remembered: the next trial waits until the rate rises to ``heavierLoad`` times the losing trial's baseline (a
///   heavier load is tried at once), or, after a back-off that doubles each time (``firstBackoff`` up to
///   ``maxBackoff``), until the load is another one (more or fewer connections) or ``forgetLoss`` has passed (what
///   else the machine runs may have changed). The same load tried again loses again: with back-offs of 0.5, 1 and
///   2 s, a steady load that one loop serves best spent a sixth of its time in trials that lost, and with 4 and 8 s
///   a load that pauses between bursts longer than that (a benchmark's interleaved runs) paid a trial per burst.
///   A loop with a single connection starts no trial: it would have nothing to hand over.
/// - One loop fewer is active when, in ``shrinkReports`` reports in a row, the active loops' busy shares add up
///   to less than ``shrinkShare`` times one loop fewer: the load fits, and fewer loops batch more per wake-up.
///   (One report is not enough: the first after a pause covers the pause.)
/// - With more than one loop active, one fewer is tried ``recheckAfter`` after the last change, and kept when
///   the rate stays within ``trialGain`` of the rate before: the load that made a loop pay may have become one
///   that fewer loops serve better (8 connections without pipelining after 32 requests in flight) while the
///   loops' shares stay too high for the rule above. A recheck that lost the rate doubles the wait before the
///   next one (up to ``maxRecheck``).
/// - A loop that has not reported for two windows is idle: a loop reports only when it wakes. A rate period
///   stretched by such a silence gives no rate, so no trial is started or judged on it.
public struct LoopPlacement: Sendable, Equatable {
    public static let window = TimeAmount.milliseconds(25)
    public static let ratePeriod: UInt64 = 100_000_000
    public static let growShare = 0.85
    public static let shrinkShare = 0.5
    public static let trialGain = 1.05
    /// Reports in a row that must find the load fitting in fewer loops before one is given up.
    public static let shrinkReports = 4
    public static let firstBackoff: UInt64 = 4_000_000_000
    public static let maxBackoff: UInt64 = 8_000_000_000
    /// A rate this many times a lost trial's baseline ends that trial's back-off.
    public static let heavierLoad = 1.25
    /// How long a lost trial keeps the same load (as many connections, a rate below ``heavierLoad`` times its
    /// baseline) from being tried again.
    public static let forgetLoss: UInt64 = 60_000_000_000
    /// With more than one loop active and steady, a trial of one loop fewer after this long, doubling (up to
    /// ``maxRecheck``) each time one fewer did not keep the rate.
    public static let recheckAfter: UInt64 = 1_000_000_000
    public static let maxRecheck: UInt64 = 8_000_000_000
    /// Whole rate periods a trial is judged on (one period of 100 ms is too noisy on a shared machine).
    public static let trialPeriods = 2

    enum Phase: Sendable, Equatable {
        case steady
        /// One loop more (`growing`) or one fewer is active since `since`; `baseline` is the rate before, and
        /// `rates` sums the `periods` whole rate periods seen since the trial settled.
        case trial(since: UInt64, baseline: Double, growing: Bool, rates: Double = 0, periods: Int = 0)

        var isTrial: Bool {
            if case .trial = self { return true }
            return false
        }
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
    /// The baseline of the last trial of one loop more that did not pay, the connections it was judged on, and
    /// when it lost.
    private var lostBaseline: Double?
    private var lostConnections = 0
    private var lostAt: UInt64 = 0
    /// When a trial of one loop fewer is due, and the wait before the next one after a trial that did not pay.
    private var recheckAt: UInt64 = 0
    private var recheckBackoff = LoopPlacement.recheckAfter
    /// The start of the current rate period, the requests answered by then, and the last whole period's rate.
    private var periodStart: UInt64
    private var periodAnswered: Int
    private(set) var lastRate: Double?
    private var lastRateEnd: UInt64 = 0
    /// The rate of the whole period before the last one, when it directly preceded it.
    private var previousRate: Double?
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
        recheckAt = now &+ recheckBackoff
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
        var periodEnded = false
        if now &- periodStart >= Self.ratePeriod {
            let length = now &- periodStart
            // Loops report only when they wake, so a period much longer than `ratePeriod` spans an idle stretch:
            // its rate says nothing of the load now, and as a trial's baseline it would make any trial look
            // like a gain (the trial then kept a loop that costs more than it brings).
            let rate =
                length <= Self.ratePeriod &+ 2 * windowNanoseconds
                ? Double(answered - periodAnswered) * 1e9 / Double(length) : nil
            previousRate = rate == nil ? nil : lastRate
            lastRate = rate
            lastRateEnd = now
            periodStart = now
            periodAnswered = answered
            periodEnded = rate != nil
        }
        switch phase {
        case .trial(let since, let baseline, let growing, var rates, var periods):
            // Judged on whole rate periods that began after the trial had settled for a window.
            guard periodEnded, let rate = lastRate, lastRateEnd >= since &+ windowNanoseconds &+ Self.ratePeriod
            else { return false }
            rates += rate
            periods += 1
            guard periods >= Self.trialPeriods else {
                phase = .trial(since: since, baseline: baseline, growing: growing, rates: rates, periods: periods)
                return false
            }
            phase = .steady
            let trialRate = rates / Double(periods)
            if growing {
                if trialRate >= baseline * Self.trialGain {
                    backoff = Self.firstBackoff
                    lostBaseline = nil
                    recheckAt = now &+ recheckBackoff
                    return false
                }
                active -= 1
                backoffUntil = now &+ backoff
                backoff = min(backoff * 2, Self.maxBackoff)
                lostBaseline = baseline
                lostConnections = connections.reduce(0, +)
                lostAt = now
            } else {
                // One loop fewer that keeps the rate (within the gain a loop more must bring) is kept: fewer
                // wake-ups and context switches, and a core left for the clients.
                if trialRate * Self.trialGain >= baseline {
                    recheckBackoff = Self.recheckAfter
                    backoffUntil = now &+ backoff
                    return false
                }
                active += 1
                recheckBackoff = min(recheckBackoff * 2, Self.maxRecheck)
                recheckAt = now &+ recheckBackoff
            }
            changedAt = now
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
            if active < loopCount, busiest >= Self.growShare, busiestConnections >= 2, let rate = lastRate,
                mayTryGrowing(rate: rate, now: now)
            {
                phase = .trial(since: now, baseline: baseline(rate), growing: true)
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
                lostBaseline = nil
                return true
            }
            // Whether the loops still pay is rechecked now and then: the load that made a trial win may have
            // changed into one that fewer loops serve better, without the shares ever falling low enough.
            if active > 1, now >= recheckAt, let rate = lastRate {
                phase = .trial(since: now, baseline: baseline(rate), growing: false)
                active -= 1
                changedAt = now
                return true
            }
            return false
        }
    }

    /// Whether a trial of one loop more may start at `rate`, after the last one that lost (if any).
    private func mayTryGrowing(rate: Double, now: UInt64) -> Bool {
        guard let lostBaseline else { return now >= backoffUntil }
        if rate >= lostBaseline * Self.heavierLoad { return true }
        guard now >= backoffUntil else { return false }
        return connections.reduce(0, +) != lostConnections || now &- lostAt >= Self.forgetLoss
    }

    /// A trial's baseline: the mean of the last two whole periods when they were consecutive.
    private func baseline(_ rate: Double) -> Double {
        guard let previousRate else { return rate }
        return (rate + previousRate) / 2
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
