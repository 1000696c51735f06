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

/// A stand-in for a daemon serving several namespaces: answers one connection's first request line with
/// `answers`, then closes it; records the request.
private final class ScriptedDaemon: @unchecked Sendable {
    // @unchecked: `request` is written by the serving thread before `done` is signalled, read after.
    let path: String
    private let listener: Int32
    private let done = DispatchSemaphore(value: 0)
    private(set) var request = ""

    init(directory: String, answers: [String]) throws {
        path = directory + "/d.sock"
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        let bound = withUnixSocketAddress(path) { bind(listener, $0, $1) }
        guard bound == 0, listen(listener, 1) == 0 else { throw HarnessError("cannot listen at \(path)") }
        Thread { [self] in
            let connection = accept(listener, nil, nil)
            var bytes: [UInt8] = []
            var byte: UInt8 = 0
            while read(connection, &byte, 1) == 1, byte != UInt8(ascii: "\n") { bytes.append(byte) }
            request = String(decoding: bytes, as: UTF8.self)
            let text = answers.map { $0 + "\n" }.joined()
            _ = text.withCString { write(connection, $0, strlen($0)) }
            close(connection)
            done.signal()
        }.start()
    }

    /// The request line it was sent, once it answered.
    func receivedRequest() -> String {
        done.wait()
        close(listener)
        return request
    }
}

@Suite("rulesctl's output for several namespaces")
struct RulesCtlNamespaceOutputTests {
    @Test("status prints the namespace it describes and lists every namespace, failing ones in their state")
    func statusListsNamespaces() throws {
        let directory = try DaemonHarness.makeTemporaryDirectory()
        defer { try? FileSystemEdit.removeTree(directory) }
        let revision = String(repeating: "ab", count: 32)
        let status =
            #"{"ok":true,"revision":"abababababababab","generation":3,"result":{"revision":"\#(revision)","#
            + #""generation":3,"rules_dir":"/r","namespace":"default","namespaces":["#
            + #"{"name":"default","serving":true,"revision":"\#(revision)","generation":3,"origin":"rules_directory","#
            + #""flags":12,"rules_dir":"/r","isolation":"thread","last_reload_ok":true,"error":null},"#
            + #"{"name":"payments","serving":false,"revision":null,"generation":0,"origin":null,"flags":0,"#
            + #""rules_dir":"/r/payments","isolation":"thread","last_reload_ok":false,"#
            + #""error":{"code":"RELOAD_FAILED","message":"main.lua:1: unexpected symbol"}}]}}"#
        let daemon = try ScriptedDaemon(directory: directory, answers: [status])
        let output = try runRulesctl(["status", "--socket", daemon.path])
        let request = daemon.receivedRequest()
        #expect(output.status == 0, "\(output)")
        #expect(request == #"{"op":"status"}"#)
        let lines = output.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("namespace") && $0.hasSuffix("default") })
        #expect(lines.contains { $0.contains("default ") && $0.contains("abababababababab (generation 3), 12 flags") })
        #expect(
            lines.contains {
                $0.contains("payments") && $0.contains("not serving")
                    && $0.contains("last reload failed: main.lua:1: unexpected symbol")
            })
    }

    @Test("status shows a process-isolated namespace's rule process: pid, state, restarts and why it last ended")
    func statusShowsTheRuleProcess() throws {
        let directory = try DaemonHarness.makeTemporaryDirectory()
        defer { try? FileSystemEdit.removeTree(directory) }
        let revision = String(repeating: "cd", count: 32)
        let status =
            #"{"ok":true,"revision":"cdcdcdcdcdcdcdcd","generation":2,"result":{"revision":"\#(revision)","#
            + #""generation":2,"rules_dir":"/r/hostile","namespace":"hostile","isolation":{"mode":"process","#
            + #""state":"running","pid":4242,"restarts":1,"last_exit":{"reason":"killed by SIGKILL","#
            + #""at":"2026-12-05T08:00:00.000Z"},"cgroup":null},"namespaces":["#
            + #"{"name":"default","serving":true,"revision":"\#(revision)","generation":2,"origin":"rules_directory","#
            + #""flags":1,"rules_dir":"/r","isolation":"thread","last_reload_ok":true,"error":null},"#
            + #"{"name":"hostile","serving":true,"revision":"\#(revision)","generation":2,"origin":"rules_directory","#
            + #""flags":2,"rules_dir":"/r/hostile","isolation":"process","last_reload_ok":true,"error":null}]}}"#
        let daemon = try ScriptedDaemon(directory: directory, answers: [status])
        let output = try runRulesctl(["status", "--socket", daemon.path, "--namespace", "hostile"])
        _ = daemon.receivedRequest()
        #expect(output.status == 0, "\(output)")
        let lines = output.stdout.split(separator: "\n").map(String.init)
        #expect(
            lines.contains {
                $0.hasPrefix("isolation")
                    && $0.hasSuffix("process, pid 4242, running, 1 restart (last: killed by SIGKILL)")
            }, "\(output.stdout)")
        #expect(lines.contains { $0.contains("hostile ") && $0.contains("2 flags, in its own process") })
        #expect(!lines.contains { $0.contains("default ") && $0.contains("in its own process") })
    }

    @Test("watch names each event's namespace, and --namespace asks for one namespace's events")
    func watchNamesNamespaces() throws {
        let directory = try DaemonHarness.makeTemporaryDirectory()
        defer { try? FileSystemEdit.removeTree(directory) }
        let daemon = try ScriptedDaemon(
            directory: directory,
            answers: [
                #"{"ok":true,"revision":"abababababababab","generation":3,"result":{"watching":true}}"#,
                #"{"namespace":"payments","event":"reloaded","revision":"cdcdcdcdcdcdcdcdcd","generation":2,"#
                    + #""trigger":"watcher","duration_ms":1,"files":1,"flags":2,"routes":0,"configs":1,"#
                    + #""at":"2026-12-05T09:00:00Z","state_dir_error":null}"#,
            ])
        let output = try runRulesctl(["--namespace", "payments", "watch", "--socket", daemon.path])
        let request = daemon.receivedRequest()
        #expect(request == #"{"op":"watch","namespace":"payments"}"#)
        #expect(output.stdout.contains("2026-12-05T09:00:00Z [payments] reloaded cdcdcdcdcdcdcdcd generation 2"))
    }
}
