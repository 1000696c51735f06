import Foundation
import RuleModel
import RulesClient
import RulesTestSupport
import Testing

@Suite("RulesClient watch and reconnection against the real daemon")
struct RulesClientWatchTests {
    let daemon: DaemonHarness

    init() throws {
        daemon = try DaemonHarness(rules: [
            "flags.lua": #"flag "beta" { variants = { on = true, off = false }, default = "off" }"#
        ])
        try daemon.start()
    }

    @Test("watch gives a reloaded event after an edit, and reload_failed with problems after a broken one")
    func watchEvents() async throws {
        let client = makeClient(daemon)
        var events = await client.watch().makeAsyncIterator()
        guard case .subscribed(let revision, _)? = await events.next() else {
            Issue.record("the watch did not subscribe")
            return
        }
        #expect(try await client.flag("beta").variant == "off")

        try daemon.writeRule("flags.lua", #"flag "beta" { variants = { on = true, off = false }, default = "on" }"#)
        let reloaded = await next(&events) { if case .reloaded = $0 { true } else { false } }
        guard case .reloaded(let event)? = reloaded else {
            Issue.record("no reloaded event")
            return
        }
        #expect(event.previousRevision?.hasPrefix(revision) == true)
        #expect(event.trigger == "watcher")
        let answer = try await client.flag("beta")
        #expect(answer.variant == "on")
        #expect(event.revision.hasPrefix(answer.servedBy.revision))

        try daemon.writeRule("flags.lua", "flag \"beta\" {\n  default = \n")
        let failed = await next(&events) { if case .reloadFailed = $0 { true } else { false } }
        guard case .reloadFailed(let failure)? = failed else {
            Issue.record("no reload_failed event")
            return
        }
        #expect(failure.error.code == .reloadFailed)
        #expect(failure.error.details["problems"]?[0]?["file"] == "flags.lua")
        #expect(failure.servingRevision == event.revision)
        #expect(try await client.flag("beta").variant == "on")
        await client.shutdown()
    }

    @Test("after a daemon restart, a request fails clearly, a later one reconnects, and the watch resubscribes")
    func reconnectAfterRestart() async throws {
        let client = makeClient(daemon)
        var events = await client.watch().makeAsyncIterator()
        guard case .subscribed? = await events.next() else {
            Issue.record("the watch did not subscribe")
            return
        }
        let before = try await client.ping()

        let daemon = self.daemon
        _ = try await offPool { try daemon.stop() }
        guard case .disconnected? = await events.next() else {
            Issue.record("the watch did not report the lost connection")
            return
        }
        do {
            _ = try await client.ping()
            Issue.record("answered while the daemon is stopped")
        } catch {
            switch error {
            case .unavailable, .connectionLost: break
            default: Issue.record("unexpected error while the daemon is stopped: \(error)")
            }
        }

        try daemon.writeRule("flags.lua", #"flag "beta" { variants = { on = true, off = false }, default = "on" }"#)
        try await offPool { try daemon.start() }
        // Requests within the back-off delay fail at once; keep asking until one connects.
        var answer: FlagAnswer?
        for _ in 0..<500 where answer == nil {
            do { answer = try await client.flag("beta") } catch {
                switch error {
                case .unavailable, .connectionLost: try await Task.sleep(for: .milliseconds(20))
                default: throw error
                }
            }
        }
        #expect(answer?.variant == "on")
        #expect(answer?.servedBy.revision != before.revision)

        let resubscribed = await next(&events) { if case .subscribed = $0 { true } else { false } }
        guard case .subscribed(let revision, _)? = resubscribed else {
            Issue.record("the watch did not subscribe again")
            return
        }
        #expect(revision == answer?.servedBy.revision)
        await client.shutdown()
    }
}
