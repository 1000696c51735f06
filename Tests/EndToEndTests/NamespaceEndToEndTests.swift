import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Two namespaces declared in the config file, served by the real binary (docs/OPERATIONS.md, "Namespaces at run
/// time"): each answers from its own rules, and a broken file in one never stops the other's reload.
@Suite("namespaces in the real daemon")
struct NamespaceEndToEndTests {
    /// A daemon whose config file declares `payments` beside the default namespace.
    func startDaemon(payments files: [String: String], watch: String = "off") throws -> (DaemonHarness, String) {
        let daemon = try DaemonHarness(rules: ["main.lua": "config \"marker\" (\"default\")\n"])
        let payments = daemon.directory + "/payments"
        try FileSystemEdit.writeFiles(files, in: payments)
        let file = daemon.directory + "/rulesd.conf"
        try Data("[namespace payments]\nrules = \(payments)\n".utf8).write(to: URL(fileURLWithPath: file))
        try daemon.start(arguments: ["--config", file, "--watch", watch])
        return (daemon, payments)
    }

    @Test("a broken file in one namespace: the other still reloads, and rulesctl says which namespace failed")
    func brokenNamespaceLeavesTheOtherReloading() throws {
        let (daemon, payments) = try startDaemon(payments: ["main.lua": "config \"marker\" (\"payments\")\n"])
        defer { _ = try? daemon.stop() }
        let socket = ["--socket", daemon.socketPath]
        #expect(
            try daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)["result"]?["value"]
                == "payments")
        try FileSystemEdit.writeFiles(["main.lua": "config \"marker\" (\"payments\"\nflag {"], in: payments)
        try daemon.writeRule("main.lua", "config \"marker\" (\"default-2\")\n")
        let broken = try runRulesctl(["--namespace", "payments", "reload"] + socket)
        let reloaded = try runRulesctl(["reload"] + socket)
        let status = try runRulesctl(["status"] + socket)
        #expect(broken.status == 1, "\(broken)")
        #expect(broken.stderr.contains("RELOAD_FAILED"), "\(broken)")
        #expect(reloaded.status == 0, "\(reloaded)")
        #expect(try daemon.request(#"{"op":"config","key":"marker"}"#)["result"]?["value"] == "default-2")
        #expect(
            try daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)["result"]?["value"]
                == "payments")
        #expect(status.stdout.contains("namespaces"), "\(status)")
        #expect(
            status.stdout.split(separator: "\n").contains {
                $0.contains("payments") && $0.contains("last reload failed")
            })
    }

    @Test("a namespace whose rules do not load at start does not stop the daemon; it serves once fixed")
    func namespaceFailingAtStart() throws {
        let (daemon, payments) = try startDaemon(payments: ["main.lua": "flag {"])
        defer { _ = try? daemon.stop() }
        let unavailable = try daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)
        #expect(unavailable["error"]?["code"] == "NAMESPACE_UNAVAILABLE")
        #expect(try daemon.request(#"{"op":"config","key":"marker"}"#)["result"]?["value"] == "default")
        try FileSystemEdit.writeFiles(["main.lua": "config \"marker\" (\"payments\")\n"], in: payments)
        let reload = try runRulesctl(["--namespace", "payments", "reload", "--socket", daemon.socketPath])
        #expect(reload.status == 0, "\(reload)")
        #expect(
            try daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)["result"]?["value"]
                == "payments")
    }

    @Test("both namespaces follow their directories with inotify; an edit in the second goes live")
    func everyNamespaceWatchedWithInotify() throws {
        let (daemon, payments) = try startDaemon(
            payments: ["main.lua": "config \"marker\" (\"payments\")\n"], watch: "inotify")
        defer { _ = try? daemon.stop() }
        let namespaces = [#""namespace":"default""#, #""namespace":"payments""#]
        func status(_ namespace: String) throws -> JSONValue {
            try daemon.request(#"{"op":"status","# + namespace + "}")
        }
        // Armed once each watcher's first signal became a rescan; the mode is settled from then on.
        for namespace in namespaces {
            #expect(
                try eventually { try status(namespace)["result"]?["last_reload"]?["trigger"] == "watcher" },
                "\(daemon.logs)")
            #expect(try status(namespace)["result"]?["watcher"]?["mode"] == "inotify", "\(daemon.logs)")
        }
        try FileSystemEdit.writeFiles(["main.lua": "config \"marker\" (\"payments-2\")\n"], in: payments)
        #expect(
            try eventually {
                try daemon.request(#"{"op":"config","key":"marker","namespace":"payments"}"#)["result"]?["value"]
                    == "payments-2"
            })
    }
}
