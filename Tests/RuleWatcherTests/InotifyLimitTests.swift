import Foundation
import Glibc
import RuleEngine
import RulesTestSupport
import Testing

@testable import RuleWatcher

// The kernel's inotify limits are real here: each scenario runs in a child process that is root of its own
// user namespace (`unshare --user --map-root-user`), where `/proc/sys/user/max_inotify_watches` and
// `max_inotify_instances` can be lowered for that namespace alone. The child is this test binary again, told by
// an environment variable which scenario to play. Root can always make the namespace, so a run as root runs
// these tests; elsewhere they need unprivileged user namespaces and are skipped with the reason when the kernel
// refuses them (`UserNamespace`).

/// Which scenario a child process plays (unset in the parent).
let scenarioVariable = "RULESD_WATCHER_SCENARIO"

private var scenario: String? {
    ProcessInfo.processInfo.environment[scenarioVariable]
}

extension UserNamespace {
    /// Why the limit tests do not run here; shown with the skip.
    static var skipComment: Comment { Comment(rawValue: skipReason ?? "") }

    /// Runs one scenario test of this binary in a new user namespace; returns its exit status and output.
    static func run(scenario name: String, test: String) throws -> (status: Int32, output: String) {
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: unshare)
        process.arguments = [
            "--user", "--map-root-user", executable, "--testing-library", "swift-testing", "--filter", test,
        ]
        var environment = ProcessInfo.processInfo.environment
        environment[scenarioVariable] = name
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }
}

extension LiveWatcherTests {
    @Test(
        "With the inotify watch limit exhausted, the watcher polls, says so, and still converges",
        .enabled(if: scenario == nil && UserNamespace.isUsable, UserNamespace.skipComment))
    func watchLimitExhausted() throws {
        try expectScenarioPasses("watch-limit")
    }

    @Test(
        "Once the watch limit is raised again, polling goes back to inotify",
        .enabled(if: scenario == nil && UserNamespace.isUsable, UserNamespace.skipComment))
    func watchLimitRaisedAgain() throws {
        try expectScenarioPasses("watch-limit-raised")
    }

    @Test(
        "With no inotify instance left, the watcher polls and still converges",
        .enabled(if: scenario == nil && UserNamespace.isUsable, UserNamespace.skipComment))
    func instanceLimitExhausted() throws {
        try expectScenarioPasses("instance-limit")
    }

    private func expectScenarioPasses(_ name: String) throws {
        let test = "playScenario"
        let (status, output) = try UserNamespace.run(scenario: name, test: test)
        // A skipped scenario also exits 0: only its own "passed" line shows that it ran.
        let passed = output.contains("Test \(test)() passed")
        #expect(status == 0 && passed, "scenario \(name) failed (exit \(status)):\n\(output.suffix(6000))")
    }
}

/// Played only inside the child processes started above; `.ci/swift-test.sh` leaves this suite out of the
/// ordinary run (`--skip InotifyLimitScenarios`), where it would only show as skipped.
@Suite("inotify limit scenarios (run in a user namespace)")
struct InotifyLimitScenarios {
    @Test(.enabled(if: scenario != nil, "plays a scenario only in the child process of an inotify limit test"))
    func playScenario() async throws {
        switch scenario {
        case "watch-limit": try await watchLimitScenario()
        case "watch-limit-raised": try await watchLimitRaisedScenario()
        case "instance-limit": try await instanceLimitScenario()
        default: Issue.record("unknown scenario \(scenario ?? "nil")")
        }
    }

    private func setLimit(_ name: String, _ value: Int) throws {
        let path = "/proc/sys/user/\(name)"
        try "\(value)\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(WatchRegistry.readSmallFile(path) == "\(value)")
    }

    private func makeTree(_ dir: borrowing TemporaryDirectory) throws -> String {
        let root = dir.join("rules")
        var files: [String: String] = [:]
        for index in 0..<6 { files["team\(index)/r\(index).lua"] = rule("r\(index)", 1) }
        try FileSystemEdit.writeFiles(files, in: root)
        return root
    }

    private func watchLimitScenario() async throws {
        // The root's parent, the root and one of its six subdirectories fit; the second subdirectory does not.
        try setLimit("max_inotify_watches", 3)
        let dir = TemporaryDirectory()
        let root = try makeTree(dir)
        let harness = try await WatchHarness(root: root)

        guard case .polling(let reason) = harness.watcher.mode else {
            Issue.record("expected polling, got \(harness.watcher.mode)")
            return
        }
        #expect(reason == "inotify watch limit reached (max_inotify_watches=3)")
        #expect(harness.logs.all.contains { $0.metadata["rules.watcher.mode"] == "polling" && $0.level == .info })

        try FileSystemEdit.vimRenameOnSave.save(rule("r2", 2), to: "team2/r2.lua", in: root)
        #expect(await harness.waitForSignals(2))
        #expect(harness.log.all[1].signal.cause == .pollDetectedChange)
        #expect(contents(harness.scan())["team2/r2.lua"] == rule("r2", 2))
        #expect(contents(harness.log.all[1].snapshot) == contents(harness.scan()))
        await harness.stop()
    }

    private func watchLimitRaisedScenario() async throws {
        try setLimit("max_inotify_watches", 3)
        let dir = TemporaryDirectory()
        let root = try makeTree(dir)
        var settings = WatchSettings.testing
        settings.inotifyRetryInterval = .seconds(1)
        let harness = try await WatchHarness(root: root, settings: settings)
        #expect(harness.watcher.mode != .inotify)

        try setLimit("max_inotify_watches", 10_000)
        #expect(await waitUntil(timeout: .seconds(30)) { harness.watcher.mode == .inotify })
        #expect(await harness.waitForSignals(2))
        #expect(harness.log.all[1].signal.cause == .watchesRebuilt("inotify is available again"))
        await harness.settle()
        let count = harness.log.count

        try FileSystemEdit.sedInPlace.save(rule("r4", 2), to: "team4/r4.lua", in: root)
        #expect(await harness.waitForSignals(count + 1))
        #expect(harness.log.all.last?.signal.cause == .filesChanged)
        #expect(contents(harness.scan())["team4/r4.lua"] == rule("r4", 2))
        await harness.stop()
    }

    private func instanceLimitScenario() async throws {
        try setLimit("max_inotify_instances", 0)
        let dir = TemporaryDirectory()
        let root = try makeTree(dir)
        let harness = try await WatchHarness(root: root)

        guard case .polling(let reason) = harness.watcher.mode else {
            Issue.record("expected polling, got \(harness.watcher.mode)")
            return
        }
        #expect(reason == "inotify_init failed: too many inotify instances (max_inotify_instances=0)")

        try FileSystemEdit.rsyncTempRename.save(rule("r0", 2), to: "team0/r0.lua", in: root)
        #expect(await harness.waitForSignals(2))
        #expect(contents(harness.scan())["team0/r0.lua"] == rule("r0", 2))
        await harness.stop()
    }
}
