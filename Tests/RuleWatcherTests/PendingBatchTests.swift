import Testing

@testable import RuleWatcher

/// The debounce rules, checked on a made-up timeline (no waiting).
@Suite("Debouncing events into signals")
struct PendingBatchTests {
    let start = ContinuousClock.now
    let quiet = Duration.milliseconds(300)
    let cap = Duration.seconds(5)

    func at(_ milliseconds: Int) -> ContinuousClock.Instant { start + .milliseconds(milliseconds) }

    func decide(_ batch: inout PendingBatch, _ milliseconds: Int) -> PendingBatch.Decision {
        batch.decide(now: at(milliseconds), quietWindow: quiet, maxDelay: cap)
    }

    @Test("Nothing recorded means nothing to signal")
    func emptyIsIdle() {
        var batch = PendingBatch()
        #expect(decide(&batch, 10_000) == .idle)
    }

    @Test("The signal is due one quiet window after the last event")
    func quietWindowAfterLastEvent() {
        var batch = PendingBatch()
        batch.record(at: at(0))
        batch.record(at: at(200))
        #expect(decide(&batch, 300) == .wait(until: at(500)))
        #expect(decide(&batch, 500) == .emit(ChangeSignal(cause: .filesChanged, eventCount: 2)))
        #expect(decide(&batch, 600) == .idle)
    }

    @Test("A steady stream of events is signalled at the cap")
    func capBoundsABusyTree() {
        var batch = PendingBatch()
        for milliseconds in stride(from: 0, through: 4_900, by: 100) {
            batch.record(at: at(milliseconds))
        }
        #expect(decide(&batch, 4_950) == .wait(until: at(5_000)))
        #expect(decide(&batch, 5_000) == .emit(ChangeSignal(cause: .filesChanged, eventCount: 50)))
    }

    @Test("A rule file modified and not yet closed holds the signal until it is closed")
    func openWriteWaitsForClose() {
        var batch = PendingBatch()
        batch.record(at: at(0), opened: "/r/a.lua")
        batch.record(at: at(1_000), opened: "/r/a.lua")
        #expect(decide(&batch, 2_000) == .wait(until: at(5_000)))
        batch.record(at: at(2_500), closed: "/r/a.lua")
        #expect(decide(&batch, 2_600) == .wait(until: at(2_800)))
        #expect(decide(&batch, 2_800) == .emit(ChangeSignal(cause: .filesChanged, eventCount: 3)))
    }

    @Test("A rule file never closed holds the signal no longer than the cap")
    func openWriteWaitsAtMostTheCap() {
        var batch = PendingBatch()
        batch.record(at: at(0), opened: "/r/a.lua")
        #expect(decide(&batch, 4_999) == .wait(until: at(5_000)))
        #expect(decide(&batch, 5_000) == .emit(ChangeSignal(cause: .filesChanged, eventCount: 1)))
    }

    @Test("A pending rebuild holds the signal, which then names the rebuild")
    func rebuildHoldsTheSignal() {
        var batch = PendingBatch()
        batch.record(at: at(0))
        batch.beginRebuild(at: at(10))
        #expect(decide(&batch, 6_000) == .hold)
        batch.finishRebuild(reason: "/r/sub was deleted", at: at(7_000))
        #expect(
            decide(&batch, 7_000) == .emit(ChangeSignal(cause: .watchesRebuilt("/r/sub was deleted"), eventCount: 1)))
    }

    @Test("A change found by polling is signalled as such")
    func pollChangeCause() {
        var batch = PendingBatch()
        batch.pollDetectedChange(at: at(0))
        #expect(decide(&batch, 300) == .emit(ChangeSignal(cause: .pollDetectedChange, eventCount: 0)))
    }
}
