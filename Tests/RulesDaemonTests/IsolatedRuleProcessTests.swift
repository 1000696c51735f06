import Logging
import NIOCore
import NIOPosix
import RuleEngine
import RuleModel
import RulesTestSupport
import Testing

@testable import RulesDaemon

/// `isolation = process`: what a request meets while the first rule process is being started.
@Suite("A rule process starting for its first rule set")
struct IsolatedRuleProcessStartTests {
    @Test("requests sent as the first rule set is published wait for the process behind its load, and are answered")
    func requestsDuringTheFirstStartAreAnswered() throws {
        let (ruleSet, _) = try RuleCompiler.compile(
            [RuleSource(path: "a.lua", content: Array(#"flag "calm" { default = "on" }"#.utf8))],
            limits: RuleEngineLimits())
        let process = IsolatedRuleProcess(
            namespace: "default", limits: ruleSet.limits, logger: Logger(label: "test"),
            executable: DaemonHarness.binary("rulesd"))
        defer { process.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        // Submitted right after publishing, before the supervising thread has started the process: the requests
        // were refused ("the rule process is starting") until they waited for it.
        process.publish(
            ServingGeneration(
                number: 1, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0, evaluators: []))
        let line = Array(#"{"id":7,"op":"flag","flag":"calm"}"#.utf8)
        let replies = (0..<3).map { _ in line.withUnsafeBytes { process.submit(line: $0, now: 0, on: group.next()) } }
        for reply in replies {
            switch try reply.wait() {
            case .answered(let ok, let bytes):
                #expect(ok, "\(String(decoding: bytes, as: UTF8.self))")
                #expect(String(decoding: bytes, as: UTF8.self).contains(#""variant":"on""#))
            case .unavailable(let error):
                Issue.record("refused while the first process started: \(error)")
            }
        }
    }
}
