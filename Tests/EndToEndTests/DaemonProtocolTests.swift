import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Rules shared by the protocol tests.
let protocolRules: [String: String] = [
    "flags.lua": """
    flag "beta" { rule = function(ctx) if ctx.plan == "pro" then return "on" end end }
    flag "color" {
      variants = { red = "#f00", blue = { hex = "#00f" } }, default = "red",
      rule = function(ctx) return ctx.color end,
    }
    flag "static" { }
    flag "dark" { enabled = false, rule = function(ctx) return "on" end }
    flag "boom" { rule = function(ctx) error("boom") end }
    flag "clock" { rule = function(ctx) if now() >= 2000000000 then return "on" end end }
    """,
    "routes.lua": """
    route "api" { priority = 10, match = function(r) return starts_with(r.path, "/api/") end, target = "api-v2" }
    route "broken" { priority = 5, match = function(r) return r.path == "/broken" and r.x.y end, target = "x" }
    route "home" { match = function(r) return r.path == "/" end, target = function(r) return "web-" .. (r.method or "GET") end }
    """,
    "config.lua": """
    config "http.timeout_ms" (1500)
    config "http.retries" (3)
    config "db" { host = "db1", port = 5432 }
    """,
]

@Suite("The socket protocol, against the real daemon")
struct DaemonProtocolTests {
    let daemon: DaemonHarness

    init() throws {
        daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start()
    }

    @Test("ping answers an empty result naming the revision and generation")
    func ping() throws {
        let answer = try daemon.request(#"{"op":"ping"}"#)
        #expect(answer["ok"] == true)
        #expect(answer["result"] == .object([:]))
        #expect(answer["revision"]?.stringValue?.count == 16)
        #expect(answer["generation"] == 1)
    }

    @Test("the id of a request is echoed verbatim, whatever JSON it is")
    func idEcho() throws {
        let client = try daemon.connect()
        #expect(try client.request(#"{"id":7,"op":"ping"}"#)["id"] == 7)
        #expect(try client.request(#"{"id":"abc","op":"ping"}"#)["id"] == "abc")
        #expect(try client.request(#"{"id":{"n":[1,2]},"op":"ping"}"#)["id"] == ["n": [1, 2]])
        #expect(try client.request(#"{"op":"nope","id":9}"#)["id"] == 9)
    }

    @Test("flag answers value, variant, reason and the deciding rule's file:line")
    func flag() throws {
        let answer = try daemon.request(#"{"op":"flag","flag":"color","context":{"color":"blue"}}"#)
        let result = try #require(answer["result"])
        #expect(result["key"] == "color")
        #expect(result["value"] == ["hex": "#00f"])
        #expect(result["variant"] == "blue")
        #expect(result["reason"] == "TARGETING_MATCH")
        #expect(result["source"] == "flags.lua:2")
    }

    @Test("each evaluation reason is reported")
    func reasons() throws {
        let client = try daemon.connect()
        #expect(
            try client.request(#"{"op":"flag","flag":"beta","context":{"plan":"free"}}"#)["result"]?["reason"]
                == "DEFAULT")
        #expect(try client.request(#"{"op":"flag","flag":"static"}"#)["result"]?["reason"] == "STATIC")
        #expect(try client.request(#"{"op":"flag","flag":"dark"}"#)["result"]?["reason"] == "DISABLED")
    }

    @Test("a failing rule still answers ok with the default value, reason ERROR and the error")
    func ruleError() throws {
        let answer = try daemon.request(#"{"op":"flag","flag":"boom"}"#)
        #expect(answer["ok"] == true)
        let result = try #require(answer["result"])
        #expect(result["value"] == false)
        #expect(result["reason"] == "ERROR")
        #expect(result["error_code"] == "GENERAL")
        #expect(result["error_message"]?.stringValue?.contains("flags.lua:8: boom") == true)
    }

    @Test("a rule that returns a non-variant is a TYPE_MISMATCH")
    func typeMismatch() throws {
        let result = try daemon.request(#"{"op":"flag","flag":"color","context":{"color":"green"}}"#)["result"]
        #expect(result?["error_code"] == "TYPE_MISMATCH")
        #expect(result?["value"] == "#f00")
    }

    @Test("an unknown flag is FLAG_NOT_FOUND")
    func flagNotFound() throws {
        let answer = try daemon.request(#"{"op":"flag","flag":"nope"}"#)
        #expect(answer["ok"] == false)
        #expect(answer["error"]?["code"] == "FLAG_NOT_FOUND")
    }

    @Test("at pins the time rules see")
    func pinnedTime() throws {
        let client = try daemon.connect()
        #expect(try client.request(#"{"op":"flag","flag":"clock","at":2100000000}"#)["result"]?["variant"] == "on")
        #expect(try client.request(#"{"op":"flag","flag":"clock","at":1900000000}"#)["result"]?["variant"] == "off")
    }

    @Test("flags evaluates every flag for one context")
    func flags() throws {
        let answer = try daemon.request(#"{"op":"flags","context":{"plan":"pro","color":"blue"}}"#)
        let flags = try #require(answer["result"]?["flags"]?.objectValue)
        #expect(flags.count == 6)
        #expect(flags["beta"]?["variant"] == "on")
        #expect(flags["color"]?["value"] == ["hex": "#00f"])
        #expect(flags["boom"]?["reason"] == "ERROR")
    }

    @Test("route answers the matching route's target and source, by priority")
    func route() throws {
        let client = try daemon.connect()
        let api = try client.request(#"{"op":"route","request":{"path":"/api/users","method":"GET"}}"#)["result"]
        #expect(api?["route"] == "api")
        #expect(api?["target"] == "api-v2")
        #expect(api?["source"] == "routes.lua:1")
        let home = try client.request(#"{"op":"route","request":{"path":"/","method":"POST"}}"#)["result"]
        #expect(home?["target"] == "web-POST")
    }

    @Test("no matching route is NO_ROUTE; a failing match function is RULE_ERROR")
    func routeFailures() throws {
        let client = try daemon.connect()
        #expect(try client.request(#"{"op":"route","request":{"path":"/zzz"}}"#)["error"]?["code"] == "NO_ROUTE")
        let broken = try client.request(#"{"op":"route","request":{"path":"/broken"}}"#)["error"]
        #expect(broken?["code"] == "RULE_ERROR")
        #expect(broken?["route"] == "broken")
    }

    @Test("config answers one key, or every key under a prefix, or CONFIG_NOT_FOUND")
    func config() throws {
        let client = try daemon.connect()
        #expect(
            try client.request(#"{"op":"config","key":"db"}"#)["result"] == [
                "key": "db", "value": ["host": "db1", "port": 5432],
            ])
        #expect(
            try client.request(#"{"op":"config","prefix":"http."}"#)["result"]
                == ["values": ["http.retries": 3, "http.timeout_ms": 1500]])
        #expect(try client.request(#"{"op":"config","key":"nope"}"#)["error"]?["code"] == "CONFIG_NOT_FOUND")
    }

    @Test("status reports the revision, files, counts, last reload and counters")
    func status() throws {
        let status = try #require(try daemon.request(#"{"op":"status"}"#)["result"])
        #expect(status["revision"]?.stringValue?.count == 64)
        #expect(status["generation"] == 1)
        #expect(status["files"]?.arrayValue?.count == 3)
        #expect(status["files"]?[0]?["sha256"]?.stringValue?.count == 64)
        #expect(status["counts"] == ["files": 3, "flags": 6, "routes": 3, "configs": 3])
        #expect(status["last_reload"]?["ok"] == true)
        #expect(status["loaded_at"]?.stringValue != nil)
        #expect(status["uptime_seconds"]?.doubleValue != nil)
        #expect(status["connections"]?.int64Value ?? 0 >= 1)
        #expect(status["requests_served"]?.int64Value != nil)
    }

    @Test("a line that is not JSON fails with PARSE_ERROR and the connection stays usable")
    func parseError() throws {
        let client = try daemon.connect()
        #expect(try client.request("{not json")["error"]?["code"] == "PARSE_ERROR")
        #expect(try client.request(#"{"op":"ping"}"#)["ok"] == true)
    }

    @Test("unknown ops, unknown fields and missing or mistyped fields are INVALID_REQUEST")
    func invalidRequests() throws {
        let client = try daemon.connect()
        for line in [
            #"{"op":"nope"}"#, #"{"flag":"beta"}"#, #"{"op":"flag"}"#, #"{"op":"flag","flag":1}"#,
            #"{"op":"flag","flag":"beta","contxt":{}}"#, #"{"op":"flag","flag":"beta","context":[1]}"#,
            #"{"op":"config","key":"a","prefix":"b"}"#, #"{"op":"flag","flag":"beta","at":"soon"}"#,
        ] {
            let answer = try client.request(line)
            #expect(answer["error"]?["code"] == "INVALID_REQUEST", "\(line)")
        }
        #expect(try client.request(#"{"op":"ping"}"#)["ok"] == true)
    }

    @Test("a last request without a newline is answered when the client half-closes")
    func unterminatedLastLine() throws {
        let client = try daemon.connect()
        try client.send(#"{"op":"ping","id":1}"# + "\n" + #"{"op":"ping","id":2}"#)
        client.shutdownWrite()
        #expect(try client.readJSON()["id"] == 1)
        #expect(try client.readJSON()["id"] == 2)
        #expect(try client.readLine() == nil)
    }

    @Test("requests cut across writes at any byte are answered once their line is complete")
    func splitAcrossWrites() throws {
        let client = try daemon.connect()
        let stream = (1...3).map { #"{"id":\#($0),"op":"flag","flag":"beta","context":{"plan":"pro"}}"# + "\n" }
            .joined()
        let bytes = Array(stream.utf8)
        // Pieces of 7 bytes with a pause after each: every read ends inside a line, some reads finish one
        // line and start the next.
        var offset = 0
        while offset < bytes.count {
            let piece = bytes[offset..<min(offset + 7, bytes.count)]
            try client.send(String(decoding: piece, as: UTF8.self))
            offset += piece.count
            usleep(2_000)
        }
        for id in 1...3 {
            let answer = try client.readJSON()
            #expect(answer["id"] == .integer(Int64(id)))
            #expect(answer["result"]?["variant"] == "on")
        }
    }

    @Test("10,000 pipelined requests are answered in order")
    func pipelining() throws {
        let client = try daemon.connect()
        var batch = ""
        for id in 0..<10_000 {
            batch += #"{"id":\#(id),"op":"flag","flag":"beta","context":{"plan":"pro"}}"# + "\n"
        }
        let requests = batch
        let writer = Thread { try? client.send(requests) }
        writer.start()
        for id in 0..<10_000 {
            let answer = try client.readJSON()
            guard answer["id"] == .integer(Int64(id)), answer["result"]?["variant"] == "on" else {
                Issue.record("answer \(id) out of order or wrong: \(answer)")
                return
            }
        }
    }

    @Test("200 concurrent connections are all served")
    func concurrentConnections() async throws {
        let socket = daemon.socketPath
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<200 {
                group.addTask {
                    let client = try LineClient(path: socket)
                    for round in 0..<5 {
                        let answer = try client.request(#"{"op":"ping","id":\#(index * 10 + round)}"#)
                        if answer["id"] != .integer(Int64(index * 10 + round)) { return false }
                    }
                    return true
                }
            }
            var served = 0
            for try await ok in group where ok { served += 1 }
            #expect(served == 200)
        }
    }

    @Test("a client that never reads its answers does not hold up other clients")
    func stuckClient() throws {
        let stuck = try daemon.connect()
        let line = Array((#"{"op":"flags","context":{"plan":"pro"}}"# + "\n").utf8)
        // Keep sending until the daemon stops reading (its answers pile up unread): send() then blocks, so
        // use non-blocking writes and stop at the first EAGAIN.
        let flags = fcntl(stuck.fd, F_GETFL)
        _ = fcntl(stuck.fd, F_SETFL, flags | O_NONBLOCK)
        var sent = 0
        outer: for _ in 0..<200_000 {
            var offset = 0
            while offset < line.count {
                let n = line.withUnsafeBytes {
                    Glibc.send(stuck.fd, $0.baseAddress! + offset, line.count - offset, Int32(MSG_NOSIGNAL))
                }
                if n < 0 { break outer }
                offset += n
            }
            sent += 1
        }
        #expect(sent < 200_000, "the daemon kept reading from a client that never reads")
        let other = try daemon.connect()
        #expect(try other.request(#"{"op":"ping"}"#)["ok"] == true)
    }
}

@Suite("Daemon limits and lifecycle")
struct DaemonLifecycleTests {
    @Test("clients that vanish with answers unread cost only their own connections")
    func vanishingClients() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start()
        let line = Array((#"{"op":"flags","context":{"plan":"pro"}}"# + "\n").utf8)
        for _ in 0..<20 {
            let client = try daemon.connect()
            _ = fcntl(client.fd, F_SETFL, fcntl(client.fd, F_GETFL) | O_NONBLOCK)
            var batch: [UInt8] = []
            for _ in 0..<500 { batch += line }
            _ = batch.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            // The client goes away here, its answers unread: the daemon's next write fails.
        }
        let watcher = try daemon.connect()
        var open = -1
        _ = try eventually {
            open = try watcher.request(#"{"op":"status"}"#)["result"]?["connections"]?.intValue ?? -1
            return open == 1
        }
        #expect(open == 1, "connections still counted after their clients left")
        #expect(try daemon.request(#"{"op":"flag","flag":"beta","context":{"plan":"pro"}}"#)["ok"] == true)
    }

    @Test("a request line over the limit is answered REQUEST_TOO_LARGE, then the connection closes")
    func oversizeLine() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start(arguments: ["--max-request-bytes", "1KiB"])
        let client = try daemon.connect()
        try client.send(#"{"op":"ping","pad":""# + String(repeating: "x", count: 4096) + "\"}\n")
        #expect(try client.readJSON()["error"]?["code"] == "REQUEST_TOO_LARGE")
        #expect(try client.readLine() == nil)
        #expect(try daemon.request(#"{"op":"ping"}"#)["ok"] == true)
    }

    @Test("connections beyond the maximum are refused cleanly while the others keep working")
    func connectionLimit() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start(arguments: ["--max-connections", "3"])
        // Fill the daemon up to its limit. Connections of the start-up probe may still be closing, so a
        // connection refused here is tried again rather than counted. Not with ping: a reserve connection answers
        // that too (and then closes), so it would be counted as held.
        var held: [LineClient] = []
        let flag = #"{"op":"flag","flag":"beta","context":{"plan":"pro"}}"#
        _ = try eventually {
            let client = try daemon.connect()
            if let answer = try? client.request(flag), answer["ok"] == true { held.append(client) }
            return held.count == 3
        }
        #expect(held.count == 3)
        // Beyond the limit, a reserve connection answers ping (then closes) and refuses anything else.
        let probe = try daemon.connect()
        #expect(try probe.request(#"{"op":"ping","id":1}"#)["ok"] == true)
        #expect(try probe.readLine() == nil)
        let extra = try daemon.connect()
        let refusal = try extra.request(#"{"op":"flag","flag":"beta","id":2}"#)
        #expect(refusal["error"]?["code"] == "TOO_MANY_CONNECTIONS")
        #expect(refusal["id"] == .integer(2))
        #expect(try extra.readLine() == nil)
        // With the reserve held too, a new connection is refused at once.
        var reserve: [LineClient] = []
        for _ in 0..<8 { reserve.append(try daemon.connect()) }
        let refused = try daemon.connect()
        #expect(try refused.readJSON()["error"]?["code"] == "TOO_MANY_CONNECTIONS")
        #expect(try refused.readLine() == nil)
        for client in held { #expect(try client.request(#"{"op":"ping"}"#)["ok"] == true) }
    }

    @Test("idle connections are closed after the idle timeout, not before")
    func idleTimeout() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start(arguments: ["--idle-timeout", "1s"])
        let client = try daemon.connect()
        let asked = ContinuousClock.now
        #expect(try client.request(#"{"op":"ping"}"#)["ok"] == true)
        #expect(try client.readLine() == nil)
        // The daemon read the request after it was sent, so it may close the connection a whole second later.
        #expect(ContinuousClock.now - asked >= .seconds(1))
    }

    @Test("a connection that keeps asking is never idle, however long it lives")
    func activityKeepsConnectionOpen() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        // Requests every 100 ms against a 3 s timeout: only a stall of nearly 3 s between two requests could
        // close the connection, while living 4 s proves the timer restarts with every request.
        try daemon.start(arguments: ["--idle-timeout", "3s"])
        let client = try daemon.connect()
        let started = ContinuousClock.now
        var id = 0
        var lastAsked = started
        while ContinuousClock.now - started < .seconds(4) {
            id += 1
            lastAsked = .now
            #expect(try client.request(#"{"op":"ping","id":\#(id)}"#)["id"] == .integer(Int64(id)))
            usleep(100_000)
        }
        #expect(try client.readLine() == nil)
        #expect(ContinuousClock.now - lastAsked >= .seconds(3))
    }

    @Test("with broken rules at start rulesd exits non-zero naming every error")
    func brokenAtStart() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": "flag \"x\" { rule = 3 }", "b.lua": "flag \"y\" {\n  default = 'nope',\n}\nthis is not lua",
        ])
        try daemon.start(waitForSocket: false)
        #expect(try daemon.waitForExit() == 1)
        let logs = daemon.logs
        #expect(logs.contains("a.lua:1: flag 'x': 'rule' must be a function"))
        #expect(logs.contains("b.lua:4:"))
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
    }

    @Test("an unknown setting is a usage error")
    func unknownSetting() throws {
        let daemon = try DaemonHarness(rules: protocolRules)
        try daemon.start(environment: ["RULESD_NO_SUCH_THING": "1"], waitForSocket: false)
        #expect(try daemon.waitForExit() == 64)
        #expect(daemon.logs.contains("unknown setting 'no_such_thing'"))
    }

    @Test("SIGTERM finishes answered requests, removes the socket and exits 0")
    func gracefulShutdown() throws {
        try expectGracefulStop(on: SIGTERM, rules: protocolRules, flag: "beta", requests: 2000)
    }

    @Test("a stale socket file is replaced; a live one makes a second rulesd refuse to start")
    func socketFiles() throws {
        let first = try DaemonHarness(rules: protocolRules)
        // A stale socket: bound, then abandoned.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        _ = withUnixSocketAddress(first.socketPath) { bind(fd, $0, $1) }
        close(fd)
        try first.start()
        #expect(try first.request(#"{"op":"ping"}"#)["ok"] == true)
        let second = try DaemonHarness(rules: protocolRules)
        try second.start(arguments: ["--socket", first.socketPath], waitForSocket: false)
        #expect(try second.waitForExit() != 0)
        #expect(second.logs.contains("already serving"))
        #expect(try first.request(#"{"op":"ping"}"#)["ok"] == true)
    }
}

/// Sends `requests` pipelined `flag` requests, signals the daemon once the first is answered, and expects every
/// request already read to be answered in order, the socket removed and exit status 0.
func expectGracefulStop(on signal: Int32, rules: [String: String], flag: String, requests: Int) throws {
    let daemon = try DaemonHarness(rules: rules)
    try daemon.start()
    let client = try daemon.connect()
    var batch = ""
    for id in 0..<requests { batch += #"{"id":\#(id),"op":"flag","flag":"\#(flag)"}"# + "\n" }
    try client.send(batch)
    #expect(try client.readJSON()["id"] == 0)
    daemon.signal(signal)
    var answered = 1
    while let line = try client.readLine() {
        #expect(try JSONParser().parse(line)["id"] == .integer(Int64(answered)))
        answered += 1
    }
    #expect(answered == requests)
    #expect(try daemon.waitForExit() == 0)
    #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
}
