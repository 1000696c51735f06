import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Every request gets exactly one answer, in order, against the real daemon: the serving core's promise,
/// checked where clients meet it.
@Suite("Answers in request order, against the real daemon")
struct AnswerOrderTests {
    @Test("requests read together with a reload are answered after it, in order, and later ones too")
    func requestsBehindReload() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start()
        let client = try daemon.connect()
        try client.send(
            #"{"op":"reload","id":"r"}"# + "\n" + #"{"op":"config","key":"http.timeout_ms","id":"t"}"# + "\n")
        let reload = try client.readJSON()
        #expect(reload["id"] == "r")
        #expect(reload["result"]?["outcome"] == "unchanged")
        let timeout = try client.readJSON()
        #expect(timeout["id"] == "t")
        #expect(timeout["result"]?["value"] == 1500)
        #expect(try client.request(#"{"op":"config","key":"http.retries","id":"n"}"#)["result"]?["value"] == 3)
    }

    @Test("after a half-close, requests mixed with status, metrics and reload are all answered, then it closes")
    func halfCloseWithWaitingOperations() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start()
        let client = try daemon.connect()
        let lines = [
            #"{"op":"status","id":1}"#, #"{"op":"flag","flag":"beta","context":{"plan":"pro"},"id":2}"#,
            #"{"op":"metrics","id":3}"#, #"{"op":"reload","id":4}"#, #"{"op":"ping","id":5}"#,
        ]
        try client.send(lines.joined(separator: "\n") + "\n")
        client.shutdownWrite()
        for id in 1...5 { #expect(try client.readJSON()["id"] == .integer(Int64(id))) }
        #expect(try client.readLine() == nil)
    }

    @Test("at the connection limit, rulesctl ping still answers through the reserve")
    func pingAtTheLimit() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start(arguments: ["--max-connections", "2"])
        // Held with a flag request: a reserve connection would answer ping too, then close.
        var held: [LineClient] = []
        let flag = #"{"op":"flag","flag":"beta","context":{"plan":"pro"}}"#
        let filled = try eventually {
            let client = try daemon.connect()
            if let answer = try? client.request(flag), answer["ok"] == true { held.append(client) }
            return held.count == 2
        }
        try #require(filled)
        let ping = try runRulesctl(["--socket", daemon.socketPath, "ping"])
        #expect(ping.status == 0, "rulesctl ping failed at the limit: \(ping.stderr)")
        let status = try runRulesctl(["--socket", daemon.socketPath, "status"])
        #expect(status.status == 0, "rulesctl status failed at the limit: \(status.stderr)")
    }
}
