import NIOCore
import Synchronization
import Testing

@testable import QueryServing

@Suite("The registry of open connections")
struct ConnectionRegistryTests {
    private let limits = ConnectionLimits(
        maxRequestBytes: 1024, maxPipelinedRequests: 8, idleTimeout: .seconds(1), maxContextDepth: 8,
        maxConnections: 2, reservedConnections: 1)

    @Test("connections up to the limit are ordinary, then the reserve fills, then they are refused")
    func admission() {
        let registry = ConnectionRegistry()
        let keys = (0..<4).map { _ in ConnectionKey() }
        #expect(registry.admit(keys[0].id, limits: limits) == .ordinary)
        #expect(registry.admit(keys[1].id, limits: limits) == .ordinary)
        #expect(registry.admit(keys[2].id, limits: limits) == .reserve)
        #expect(registry.admit(keys[3].id, limits: limits) == nil)
        #expect(registry.count == 3)
        registry.remove(keys[0].id)
        #expect(registry.admit(keys[3].id, limits: limits) == .reserve)
    }

    @Test("the shutdown's wait ends when the last connection closes, without polling")
    func waitEndsWithLastConnection() async {
        let registry = ConnectionRegistry()
        let key = ConnectionKey()
        _ = registry.admit(key.id, limits: limits)
        let drained = Flag()
        registry.setDrain(key.id) { drained.set() }
        registry.drainAll()
        #expect(drained.isSet)
        async let emptied = registry.waitUntilEmpty(timeout: .seconds(30))
        try? await Task.sleep(for: .milliseconds(20))
        registry.remove(key.id)
        #expect(await emptied)
    }

    @Test("the wait gives up after its timeout while a connection stays open")
    func waitTimesOut() async {
        let registry = ConnectionRegistry()
        let key = ConnectionKey()
        _ = registry.admit(key.id, limits: limits)
        #expect(await registry.waitUntilEmpty(timeout: .milliseconds(50)) == false)
        #expect(registry.count == 1)
    }

    @Test("once draining, no connection is admitted, and one admitted just before is drained as it starts")
    func drainingRefusesAndCatchesLateStarts() {
        let registry = ConnectionRegistry()
        let early = ConnectionKey()
        _ = registry.admit(early.id, limits: limits)
        registry.drainAll()
        #expect(registry.admit(ConnectionKey().id, limits: limits) == nil)
        let drained = Flag()
        registry.setDrain(early.id) { drained.set() }
        #expect(drained.isSet)
    }
}
