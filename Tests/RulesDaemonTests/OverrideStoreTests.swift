import Foundation
import Logging
import NIOCore
import NIOPosix
import RuleEngine
import RuleModel
import RulesProtocol
import Synchronization
import Testing

@testable import RulesDaemon

/// Overrides as the daemon keeps them: time to live, the maximum, the state directory's file, expiry and the
/// drop on a reload that removes their flag or variant.
@Suite("Overrides")
struct OverrideStoreTests {
    static let rules = """
        flag "checkout" { variants = { on = true, off = false }, default = "off",
          rule = function(ctx) if ctx.beta then return "on" end end }
        flag "banner" { variants = { a = "A", b = "B" }, default = "a" }
        """

    /// Events announced to watchers, in order.
    final class Announcements: Sendable {
        private let lines = Mutex<[JSONValue]>([])
        private let stream: AsyncStream<JSONValue>
        private let continuation: AsyncStream<JSONValue>.Continuation

        init() { (stream, continuation) = AsyncStream.makeStream(of: JSONValue.self) }

        func record(_ line: [UInt8]) {
            let event = (try? JSONParser().parse(line)) ?? .null
            lines.withLock { $0.append(event) }
            continuation.yield(event)
        }

        var all: [JSONValue] { lines.withLock { $0 } }
        var names: [String] { all.compactMap { $0["event"]?.stringValue } }

        /// Waits for the next event called `name`.
        func next(_ name: String) async -> JSONValue? {
            for await event in stream where event["event"]?.stringValue == name { return event }
            return nil
        }
    }

    func scratch() throws -> String {
        let path = NSTemporaryDirectory() + "rulesd-overrides-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func generation(_ text: String = rules, number: UInt64 = 1) throws -> ServingGeneration {
        let (ruleSet, _) = try RuleCompiler.compile([RuleSource(path: "a.lua", content: Array(text.utf8))])
        return ServingGeneration(
            number: number, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0, evaluators: [])
    }

    func makeStore(
        _ directory: String, maxTTL: Duration = .seconds(86400), announcements: Announcements = Announcements()
    ) -> OverrideStore {
        OverrideStore(
            board: OverrideBoard(), stateDirectory: directory, maxTTL: maxTTL,
            loop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"),
            announce: announcements.record)
    }

    let alice = OverrideSetter(uid: 1000, user: "alice", pid: 42)

    @Test("a time to live is a duration or a number of seconds, from 1s to override_max_ttl")
    func timeToLive() throws {
        let max = Duration.seconds(86400)
        #expect(try OverrideStore.parseTTL("15m", max: max) == .seconds(900))
        #expect(try OverrideStore.parseTTL("2s", max: max) == .seconds(2))
        #expect(try OverrideStore.parseTTL("90", max: max) == .seconds(90))
        #expect(try OverrideStore.parseTTL("1.5h", max: max) == .seconds(5400))
        #expect(try OverrideStore.parseTTL("24h", max: max) == .seconds(86400))
        for bad in ["", "soon", "15 m", "-5s", "0s", "500ms", "1e3", "inf"] {
            #expect(throws: OverrideRefusal.self, "\(bad)") { try OverrideStore.parseTTL(bad, max: max) }
        }
    }

    @Test("a time to live beyond override_max_ttl is refused, naming the maximum")
    func maximumTimeToLive() throws {
        do {
            _ = try OverrideStore.parseTTL("25h", max: .seconds(86400))
            Issue.record("25h was accepted")
        } catch {
            #expect(error.error.code == .invalidRequest)
            #expect(error.error.message.contains("override_max_ttl (24h)"), "\(error.error.message)")
        }
        #expect(try OverrideStore.parseTTL("2h", max: .seconds(7200)) == .seconds(7200))
        #expect(throws: OverrideRefusal.self) { try OverrideStore.parseTTL("2h", max: .seconds(3600)) }
        // The store applies its own maximum.
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = makeStore(directory, maxTTL: .seconds(60))
        defer { store.stop() }
        #expect(throws: OverrideRefusal.self) {
            try store.set(
                flag: "banner", variant: "b", ttl: "2m", reason: "r", by: alice, generation: try generation(), now: 0)
        }
    }

    @Test("an override needs a flag and a variant of the serving rules, and a reason")
    func validation() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = makeStore(directory)
        defer { store.stop() }
        let serving = try generation()
        func refusal(_ flag: String, _ variant: String, _ reason: String) -> ProtocolError? {
            do {
                _ = try store.set(
                    flag: flag, variant: variant, ttl: "1m", reason: reason, by: alice, generation: serving, now: 0)
                return nil
            } catch { return error.error }
        }
        #expect(refusal("nope", "on", "r")?.code == .flagNotFound)
        #expect(refusal("checkout", "maybe", "r")?.code == .invalidRequest)
        #expect(refusal("checkout", "maybe", "r")?.message.contains("its variants: off, on") == true)
        #expect(refusal("checkout", "on", "  ")?.code == .invalidRequest)
        #expect(refusal("checkout", "on", "incident 7") == nil)
        #expect(store.list(now: 0).map(\.flag) == ["checkout"])
    }

    @Test("overrides are written to the state directory and read back by the next start, expiry included")
    func persistenceRoundTrip() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = makeStore(directory)
        let serving = try generation()
        let now = 1_800_000_000.25
        let (set, _, problem) = try first.set(
            flag: "checkout", variant: "on", ttl: "15m", reason: "incident 7", by: alice, generation: serving, now: now)
        #expect(problem == nil)
        _ = try first.set(
            flag: "banner", variant: "b", ttl: "1h", reason: "launch", by: alice, generation: serving, now: now)
        first.stop()
        #expect(set.expiresAt == now + 900)
        // No temporary file is left behind.
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        #expect(names == ["overrides.json"])

        let second = makeStore(directory)
        defer { second.stop() }
        #expect(second.loadSaved(now: now + 1) == nil)
        let loaded = second.list(now: now + 1)
        #expect(loaded.map(\.flag) == ["checkout", "banner"])
        #expect(loaded[0] == set)
        #expect(loaded[0].setBy == alice)
        // Workers see what was loaded.
        #expect(Set(second.board.current.entries.keys) == ["checkout", "banner"])
    }

    @Test("an override whose time ran out while rulesd was stopped does not come back")
    func expiredWhileStopped() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = makeStore(directory)
        let now = 1_800_000_000.0
        _ = try first.set(
            flag: "checkout", variant: "on", ttl: "10s", reason: "r", by: alice, generation: try generation(), now: now)
        _ = try first.set(
            flag: "banner", variant: "b", ttl: "1h", reason: "r", by: alice, generation: try generation(), now: now)
        first.stop()

        let second = makeStore(directory)
        defer { second.stop() }
        second.loadSaved(now: now + 10)
        #expect(second.list(now: now + 10).map(\.flag) == ["banner"])
        #expect(second.board.current.entries["checkout"] == nil)
        // The file no longer holds it either.
        let third = makeStore(directory)
        defer { third.stop() }
        third.loadSaved(now: now)
        #expect(third.list(now: now).map(\.flag) == ["banner"])
    }

    @Test("a damaged file is reported and rulesd starts without overrides")
    func damagedFile() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Data("{\"overrides\":[{\"flag\":1}]}".utf8).write(
            to: URL(fileURLWithPath: directory + "/overrides.json"))
        let store = makeStore(directory)
        defer { store.stop() }
        #expect(store.loadSaved(now: 0) != nil)
        #expect(store.list(now: 0).isEmpty)
    }

    @Test("expiry removes the override, rewrites the file, publishes a table without it and announces it")
    func expiry() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let announcements = Announcements()
        let store = makeStore(directory, announcements: announcements)
        defer { store.stop() }
        let now = 1_800_000_000.0
        _ = try store.set(
            flag: "checkout", variant: "on", ttl: "1m", reason: "r", by: alice, generation: try generation(), now: now)
        let version = store.board.publishedVersion
        store.expire(now: now + 59)
        #expect(store.list(now: now + 59).count == 1)
        // Nothing was due: the workers' table stays as it was.
        #expect(store.board.publishedVersion == version)
        store.expire(now: now + 60)
        #expect(store.list(now: now).isEmpty)
        #expect(store.board.current.entries.isEmpty)
        #expect(store.board.publishedVersion > version)
        #expect(announcements.names == ["override_set", "override_expired"])
        #expect(announcements.all.last?["flag"]?.stringValue == "checkout")
        #expect(OverrideStore.read(store.path).map(\.isEmpty) == .success(true))
    }

    @Test("the expiry timer ends an override by itself")
    func expiryTimer() async throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let announcements = Announcements()
        let store = makeStore(directory, announcements: announcements)
        defer { store.stop() }
        _ = try store.set(
            flag: "banner", variant: "b", ttl: "1s", reason: "r", by: alice, generation: try generation(),
            now: Date().timeIntervalSince1970)
        let event = await announcements.next("override_expired")
        #expect(event?["flag"]?.stringValue == "banner")
        #expect(store.board.current.entries.isEmpty)
    }

    @Test("a reload that removes the flag or the variant drops the override and says why")
    func dropOnReload() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let announcements = Announcements()
        let store = makeStore(directory, announcements: announcements)
        defer { store.stop() }
        let serving = try generation()
        _ = try store.set(
            flag: "checkout", variant: "on", ttl: "1h", reason: "r", by: alice, generation: serving, now: 0)
        _ = try store.set(flag: "banner", variant: "b", ttl: "1h", reason: "r", by: alice, generation: serving, now: 0)

        // The same flags and variants: nothing changes.
        store.reconcile(with: try generation(number: 2), now: 1)
        #expect(store.list(now: 1).count == 2)

        // `banner` loses its variant `b`, `checkout` goes.
        let next = try generation(#"flag "banner" { variants = { a = "A", c = "C" }, default = "a" }"#, number: 3)
        store.reconcile(with: next, now: 2)
        #expect(store.list(now: 2).isEmpty)
        #expect(store.board.current.entries.isEmpty)
        let dropped = announcements.all.filter { $0["event"]?.stringValue == "override_dropped" }
        #expect(dropped.map { $0["flag"]?.stringValue } == ["banner", "checkout"])
        #expect(dropped[0]["why"]?.stringValue?.contains("no variant 'b'") == true)
        #expect(dropped[1]["why"]?.stringValue?.contains("no flag 'checkout'") == true)
        #expect(dropped[1]["revision"]?.stringValue == next.ruleSet.revision.hex)
        #expect(OverrideStore.read(store.path).map(\.isEmpty) == .success(true))
    }

    @Test("a set checked against rules older than the newest reconciled ones is refused for a removed flag")
    func setAfterReloadRemovedTheFlag() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = makeStore(directory)
        defer { store.stop() }
        let old = try generation(number: 1)
        store.reconcile(
            with: try generation(#"flag "banner" { variants = { a = "A" }, default = "a" }"#, number: 2), now: 0)
        do {
            _ = try store.set(
                flag: "checkout", variant: "on", ttl: "1m", reason: "r", by: alice, generation: old, now: 0)
            Issue.record("an override of a removed flag was set")
        } catch {
            #expect(error.error.code == .flagNotFound)
        }
        #expect(store.list(now: 0).isEmpty)
    }

    @Test("who set an override reads as the user name, uid and pid, or the uid alone without an account")
    func setterDescription() {
        #expect(alice.description == "alice (uid 1000, pid 42)")
        #expect(OverrideSetter(uid: 1234, user: nil, pid: 7).description == "uid 1234 (pid 7)")
        #expect(OverrideSetter(uid: nil, user: nil, pid: nil).description == "unknown")
    }

    @Test("clearing ends the override now; clearing a flag without one changes nothing")
    func clearing() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let announcements = Announcements()
        let store = makeStore(directory, announcements: announcements)
        defer { store.stop() }
        _ = try store.set(
            flag: "banner", variant: "b", ttl: "1h", reason: "r", by: alice, generation: try generation(), now: 0)
        #expect(store.clear(flag: "banner", by: alice, now: 1).cleared?.variant == "b")
        #expect(store.clear(flag: "banner", by: alice, now: 1).cleared == nil)
        #expect(store.list(now: 1).isEmpty)
        #expect(announcements.names == ["override_set", "override_cleared"])
    }

    @Test("a worker's view answers overridden flags with reason OVERRIDE, and only while the override lasts")
    func workerView() throws {
        let (ruleSet, evaluator) = try RuleCompiler.compile([RuleSource(path: "a.lua", content: Array(Self.rules.utf8))]
        )
        let serving = ServingGeneration(
            number: 1, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0, evaluators: [])
        let board = OverrideBoard()
        var view = WorkerOverrides()
        view.sync(board, serving, evaluator)
        #expect(!view.isActive)
        let entry = FlagOverride(
            flag: "checkout", variant: "on", reason: "incident 7", setBy: alice, setAt: 100, expiresAt: 200)
        board.publish(OverrideTable(version: 1, entries: ["checkout": entry]))
        view.sync(board, serving, evaluator)
        #expect(view.isActive)
        let index = serving.ruleSet.flagIndex(forKey: "checkout")
        let answer = try JSONParser().parse(try #require(view.override(at: index, now: 150)).flagAnswer)
        #expect(answer["key"]?.stringValue == "checkout")
        #expect(answer["value"] == .bool(true))
        #expect(answer["variant"]?.stringValue == "on")
        #expect(answer["reason"]?.stringValue == "OVERRIDE")
        #expect(answer["override"]?["reason"]?.stringValue == "incident 7")
        #expect(answer["override"]?["set_by"]?["user"]?.stringValue == "alice")
        #expect(answer["override"]?["expires_at"]?.stringValue == Timestamp.iso8601(200))
        #expect(answer["source"]?.stringValue == "a.lua:1")
        #expect(view.override(at: index, now: 200) == nil)
        #expect(view.override(at: serving.ruleSet.flagIndex(forKey: "banner"), now: 150) == nil)
        // An override of a variant the rules do not have is not applied.
        board.publish(
            OverrideTable(
                version: 2,
                entries: [
                    "checkout": FlagOverride(
                        flag: "checkout", variant: "maybe", reason: "", setBy: alice, setAt: 0, expiresAt: 200)
                ]))
        view.sync(board, serving, evaluator)
        #expect(!view.isActive)
    }

    @Test("flags that ask flag_value() for an overridden flag get its forced variant, until the override ends")
    func prerequisitesFollowOverrides() throws {
        let rules = """
            flag "kill" { variants = { on = true, off = false }, default = "off" }
            flag "feature" { variants = { on = true, off = false }, default = "on",
              rule = function(ctx) if flag_value("kill", ctx) == "on" then return "off" end return "on" end }
            """
        let (ruleSet, evaluator) = try RuleCompiler.compile([RuleSource(path: "a.lua", content: Array(rules.utf8))])
        let serving = ServingGeneration(
            number: 1, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0, evaluators: [])
        let feature = try #require(ruleSet.flagIndex(forKey: "feature"))
        func featureVariant() -> String {
            let decision = evaluator.evaluateFlag(
                at: feature, context: UnsafeRawBufferPointer(start: nil, count: 0), now: 0)
            return ruleSet.flags[feature].variants[decision.variantIndex].name
        }
        let board = OverrideBoard()
        var view = WorkerOverrides()
        view.sync(board, serving, evaluator)
        #expect(featureVariant() == "on")
        let kill = FlagOverride(flag: "kill", variant: "on", reason: "incident", setBy: alice, setAt: 0, expiresAt: 10)
        board.publish(OverrideTable(version: 1, entries: ["kill": kill]))
        view.sync(board, serving, evaluator)
        #expect(featureVariant() == "off")
        board.publish(OverrideTable(version: 2, entries: [:]))
        view.sync(board, serving, evaluator)
        #expect(featureVariant() == "on")
    }

    @Test("flags with an override answer the others exactly as without one")
    func flagsAnswer() throws {
        let (ruleSet, evaluator) = try RuleCompiler.compile([RuleSource(path: "a.lua", content: Array(Self.rules.utf8))]
        )
        let serving = ServingGeneration(
            number: 1, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0, evaluators: [])
        let context = Array(#"{"beta":true}"#.utf8)
        var plain: [UInt8] = []
        let failure = context.withUnsafeBytes {
            EvaluationAnswers.answer(
                .flags(context: $0), evaluator: evaluator, now: 0, observer: NoEvaluationObserver(), into: &plain)
        }
        #expect(failure == nil)
        let board = OverrideBoard()
        board.publish(
            OverrideTable(
                version: 1,
                entries: [
                    "banner": FlagOverride(
                        flag: "banner", variant: "b", reason: "r", setBy: alice, setAt: 0, expiresAt: 10)
                ]))
        var view = WorkerOverrides()
        view.sync(board, serving, evaluator)
        #expect(view.isActive)
        var overridden: [UInt8] = []
        _ = context.withUnsafeBytes {
            view.answerFlags(
                evaluator: evaluator, context: $0, now: 0, clock: 5, observer: NoEvaluationObserver(), into: &overridden
            )
        }
        let before = try JSONParser().parse(plain)
        let after = try JSONParser().parse(overridden)
        #expect(after["flags"]?["checkout"] == before["flags"]?["checkout"])
        #expect(before["flags"]?["checkout"]?["reason"]?.stringValue == "TARGETING_MATCH")
        #expect(after["flags"]?["banner"]?["variant"]?.stringValue == "b")
        #expect(after["flags"]?["banner"]?["reason"]?.stringValue == "OVERRIDE")
        #expect(after["flags"]?["banner"]?["override"]?["reason"]?.stringValue == "r")
    }
}
