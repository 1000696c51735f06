import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `rulesctl --namespace` and `RULESD_NAMESPACE` (docs/OPERATIONS.md, "Namespaces at run time"), against a
/// daemon that serves only the default namespace: what it answers shows which namespace each request named.
@Suite("rulesctl's namespace option")
struct RulesCtlNamespaceTests {
    @Test("--namespace, before or after the command, names the namespace of every request it sends")
    func namespaceOptionReachesTheDaemon() throws {
        let daemon = try DaemonHarness(rules: ["main.lua": "flag \"kill\" { default = \"off\" }\n"])
        try daemon.start(arguments: ["--watch", "off"])
        defer { _ = try? daemon.stop() }
        let socket = ["--socket", daemon.socketPath]
        let plain = try runRulesctl(["flag", "kill"] + socket)
        let named = try runRulesctl(["--namespace", "default", "flag", "kill"] + socket)
        let unknown = try runRulesctl(["flag", "kill", "--namespace", "payments"] + socket)
        let status = try runRulesctl(["status", "--namespace", "payments"] + socket)
        let reload = try runRulesctl(["--namespace", "payments", "reload"] + socket)
        let overrides = try runRulesctl(["override", "list", "--namespace", "payments"] + socket)
        #expect(plain.status == 0)
        #expect(named.status == 0)
        #expect(named.stdout == plain.stdout)
        for answer in [unknown, status, reload, overrides] {
            #expect(answer.status == 1)
            #expect(answer.stderr.contains("NAMESPACE_NOT_FOUND"))
            #expect(answer.stderr.contains("'default'"))
        }
        // ping is daemon-wide: it is sent without the namespace.
        #expect(try runRulesctl(["--namespace", "payments", "ping"] + socket).status == 0)
    }

    @Test("RULESD_NAMESPACE names the namespace when --namespace does not")
    func environmentNamesTheNamespace() throws {
        let daemon = try DaemonHarness(rules: ["main.lua": "flag \"kill\" { default = \"off\" }\n"])
        try daemon.start(arguments: ["--watch", "off"])
        defer { _ = try? daemon.stop() }
        let socket = ["--socket", daemon.socketPath]
        let fromEnvironment = try runRulesctl(["flag", "kill"] + socket, environment: ["RULESD_NAMESPACE": "payments"])
        let overridden = try runRulesctl(
            ["--namespace", "default", "flag", "kill"] + socket, environment: ["RULESD_NAMESPACE": "payments"])
        #expect(fromEnvironment.status == 1)
        #expect(fromEnvironment.stderr.contains("NAMESPACE_NOT_FOUND"))
        #expect(overridden.status == 0)
    }

    @Test("rulesctl audit --namespace prints that namespace's events; lines naming none are the default one's")
    func auditByNamespace() throws {
        let directory = try DaemonHarness.makeTemporaryDirectory()
        defer { try? FileSystemEdit.removeTree(directory) }
        let lines = [
            #"{"at":"2026-12-05T09:00:00Z","event":"reload","namespace":"payments","trigger":"reload","outcome":"reloaded","old_revision":null,"new_revision":"aaaaaaaa","generation":2,"counts":{"added":1,"changed":0,"removed":0},"changes":[]}"#,
            #"{"at":"2026-12-05T09:00:01Z","event":"reload","trigger":"reload","outcome":"reloaded","old_revision":null,"new_revision":"bbbbbbbb","generation":2,"counts":{"added":1,"changed":0,"removed":0},"changes":[]}"#,
        ]
        try FileSystemEdit.writeFiles(["audit/audit.jsonl": lines.joined(separator: "\n") + "\n"], in: directory)
        let payments = try runRulesctl(["audit", "--namespace", "payments", "--state-dir", directory])
        let plain = try runRulesctl(["audit", "--namespace", "default", "--state-dir", directory])
        let all = try runRulesctl(["audit", "--state-dir", directory])
        #expect(payments.status == 0)
        #expect(payments.stdout.split(separator: "\n").count == 1)
        #expect(payments.stdout.contains("[payments]"))
        #expect(payments.stdout.contains("aaaaaaaa"))
        #expect(plain.stdout.split(separator: "\n").count == 1)
        #expect(plain.stdout.contains("bbbbbbbb"))
        #expect(all.stdout.split(separator: "\n").count == 2)
    }
}
