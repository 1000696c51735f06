import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Promises docs/PROTOCOL.md and docs/OPERATIONS.md make that no other test holds rulesd to.

@Suite("Protocol promises")
struct ProtocolPromiseTests {
    @Test("the id is left out of the answer when the request had none or was not JSON, and echoed when null")
    func idLeftOut() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let client = try daemon.connect()
        for request in [#"{"op":"ping"}"#, #"{"op":"flag","flag":"nope"}"#, "not json", #"{"op":"#, "[1,2]"] {
            let answer = try client.request(request)
            #expect(answer.objectValue?.keys.contains("id") == false, "\(request): \(answer)")
            #expect(answer["ok"] != nil, "\(request): \(answer)")
        }
        #expect(try client.request(#"{"op":"ping","id":null}"#).objectValue?.keys.contains("id") == true)
    }

    @Test("the default request limit is 1 MiB: a line of exactly 1 MiB is read, one byte more is refused")
    func defaultRequestLimit() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        // A request whose line (without its newline) is exactly `bytes` long.
        func request(bytes: Int) -> String {
            let frame = #"{"op":"ping","id":""}"#
            return #"{"op":"ping","id":""# + String(repeating: "x", count: bytes - frame.utf8.count) + #""}"#
        }
        let fits = try daemon.connect()
        #expect(try fits.request(request(bytes: 1 << 20))["ok"] == true)
        let tooLong = try daemon.connect()
        let refused = try tooLong.request(request(bytes: (1 << 20) + 1))
        #expect(refused["error"]?["code"] == "REQUEST_TOO_LARGE")
        #expect(try tooLong.readLine() == nil)
    }

    @Test("by default 1,024 connections are served at once; the next one gets only the reserve")
    func defaultConnectionLimit() throws {
        // Each connection costs a descriptor at both ends: raise the limit this process (and rulesd, which
        // inherits it) may open, where the hard limit or root allows.
        let needed: rlim_t = 2400
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        try #require(getrlimit(resource, &limit) == 0)
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed
            limit.rlim_max = max(limit.rlim_max, needed)
            try #require(setrlimit(resource, &limit) == 0, "cannot open \(needed) descriptors: errno \(errno)")
        }
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let flag = #"{"op":"flag","flag":"x"}"#
        var held: [LineClient] = []
        while held.count < 1024 {
            // The harness's own connection may still be counted for a moment: a reserve answer means try again.
            let admitted = try eventually {
                let client = try daemon.connect()
                guard try client.request(flag)["ok"] == true else { return false }
                held.append(client)
                return true
            }
            try #require(admitted, "connection \(held.count + 1) was never served")
        }
        let beyond = try daemon.connect()
        #expect(try beyond.request(flag)["error"]?["code"] == "TOO_MANY_CONNECTIONS")
        #expect(try daemon.request(#"{"op":"ping"}"#)["ok"] == true)
        #expect(try held[0].request(flag)["ok"] == true)
    }

    @Test("a client pipelining far beyond max_pipelined behind a slow reload gets every answer, in order")
    func pipelinedBeyondTheLimit() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: [
            "--watch", "off", "--max-pipelined", "4", "--load-timeout", "60s", "--load-instructions", "100000000000",
        ])
        // A file that takes a while to load, and defines the flag the requests behind the reload ask for.
        try daemon.writeRule("slow.lua", "local n = 0\nwhile n < 20000000 do n = n + 1 end\nflag \"slow\" {}\n")
        let client = try daemon.connect()
        // 50 times max_pipelined, in one write: rulesd must stop reading, not drop or refuse what it cannot hold.
        let count = 200
        var batch = #"{"op":"reload","id":0}"# + "\n"
        for id in 1...count {
            batch += id % 2 == 0 ? #"{"op":"ping","id":\#(id)}"# : #"{"op":"flag","flag":"slow","id":\#(id)}"#
            batch += "\n"
        }
        try client.send(batch)
        let reload = try client.readJSON()
        #expect(reload["id"] == 0)
        #expect(reload["result"]?["outcome"] == "reloaded", "\(reload)")
        for id in 1...count {
            let answer = try client.readJSON()
            #expect(answer["id"]?.intValue == id, "\(answer)")
            // Requests behind the reload are answered from the rules it loaded.
            #expect(answer["ok"] == true, "\(answer)")
        }
        #expect(try client.request(#"{"op":"ping","id":"last"}"#)["id"] == "last")
    }

    @Test("a connection waiting for a reload is not closed by the idle timeout")
    func noIdleTimeoutDuringReload() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: [
            "--watch", "off", "--idle-timeout", "300ms", "--load-timeout", "60s", "--load-instructions", "100000000000",
        ])
        // A file that takes a while to load: far longer than the idle timeout.
        try daemon.writeRule("slow.lua", "local n = 0\nwhile n < 150000000 do n = n + 1 end\nflag \"slow\" {}\n")
        // The load takes seconds on a quiet machine and far longer on a loaded one: wait for the answer generously.
        let client = try LineClient(path: daemon.socketPath, timeout: 300)
        let answer = try client.request(#"{"op":"reload","id":1}"#)
        #expect(answer["result"]?["outcome"] == "reloaded", "\(answer)")
        // Only meaningful if the reload outlasted the idle timeout.
        try #require((answer["result"]?["duration_ms"]?.doubleValue ?? 0) > 600, "\(answer)")
        #expect(answer["id"] == 1)
    }
}

@Suite("watch promises")
struct WatchPromiseTests {
    @Test("watcher events carry no ok, say trigger watcher, and report revisions and the duration")
    func watcherEventFields() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start()
        let events = try EventLog(daemon)
        let first = try #require(try daemon.servedRevision())

        try daemon.writeRule("a.lua", markedRules("v2"))
        #expect(events.waitFor("reloaded"))
        let second = try #require(try daemon.servedRevision())
        try daemon.writeRule("a.lua", "config \"marker\" (")
        #expect(events.waitFor("reload_failed"))

        let all = events.all
        #expect(all.allSatisfy { $0.objectValue?.keys.contains("ok") == false }, "\(all)")
        let reloaded = try #require(events.named("reloaded").first)
        #expect(reloaded["trigger"] == "watcher")
        #expect(reloaded["previous_revision"]?.stringValue == first)
        #expect(reloaded["revision"]?.stringValue == second)
        #expect(reloaded["generation"] == 2)
        #expect((reloaded["duration_ms"]?.doubleValue ?? -1) >= 0, "\(reloaded)")
        #expect(reloaded["at"]?.stringValue != nil)
        let failed = try #require(events.named("reload_failed").first)
        #expect(failed["trigger"] == "watcher")
        #expect(failed["serving_revision"]?.stringValue == second)
        #expect(failed["revision"]?.stringValue?.count == 64)
        #expect(failed["revision"] != failed["serving_revision"])
    }

    @Test("the reload operation's events say trigger reload, SIGHUP's say sighup")
    func explicitTriggers() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--watch", "off"])
        let events = try EventLog(daemon)
        let first = try #require(try daemon.servedRevision())
        try daemon.writeRule("a.lua", markedRules("v2"))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        #expect(events.waitFor("reloaded"))
        let second = try #require(try daemon.servedRevision())
        try daemon.writeRule("a.lua", markedRules("v3"))
        daemon.signal(SIGHUP)
        #expect(events.waitFor("reloaded", count: 2))
        try daemon.writeRule("a.lua", "config \"marker\" (")
        #expect(try daemon.request(#"{"op":"reload"}"#)["error"]?["code"] == "RELOAD_FAILED")
        #expect(events.waitFor("reload_failed"))

        #expect(events.all.allSatisfy { $0.objectValue?.keys.contains("ok") == false }, "\(events.all)")
        let reloaded = events.named("reloaded")
        #expect(reloaded.map { $0["trigger"] } == ["reload", "sighup"])
        #expect(reloaded.map { $0["previous_revision"]?.stringValue } == [first, second])
        #expect(events.named("reload_failed").first?["trigger"] == "reload")
    }

    @Test("a watching connection outlives the idle timeout and still gets events")
    func watchersAreExemptFromIdleTimeout() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--watch", "off", "--idle-timeout", "300ms"])
        let watcher = try daemon.connect()
        #expect(try watcher.request(#"{"op":"watch"}"#)["result"]?["watching"] == true)
        // A plain connection opened after the watcher subscribed is closed for idling: the timeout has passed
        // for the watcher as well.
        let plain = try daemon.connect()
        #expect(try plain.request(#"{"op":"ping"}"#)["ok"] == true)
        #expect(try plain.readLine() == nil)
        try daemon.writeRule("a.lua", markedRules("v2"))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        #expect(try watcher.readJSON()["event"] == "reloaded")
    }

    @Test("a watcher that stops reading is closed; a watcher that reads, and other clients, are not affected")
    func watcherThatStopsReadingIsClosed() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let stalled = try daemon.connect()
        #expect(try stalled.request(#"{"op":"watch"}"#)["result"]?["watching"] == true)
        let reading = try daemon.connect()
        #expect(try reading.request(#"{"op":"watch"}"#)["result"]?["watching"] == true)
        // A failed reload's event lists every problem: 1,000 broken files with long names make each event about
        // 300 KB, more than the socket and rulesd's unsent output may hold together for a watcher.
        let stem = String(repeating: "n", count: 240)
        for index in 0..<1000 { try daemon.writeRule("\(stem)\(index).lua", "flag (\n") }
        // Fails to reload until rulesd hangs up on the stalled watcher (how many it takes depends on the
        // kernel's socket buffer sizes); the reading watcher gets every event meanwhile.
        var rounds = 0
        var hungUp = false
        while !hungUp && rounds < 20 {
            // Distinct content each time: each failure is announced.
            try daemon.writeRule("a.lua", "flag \"x\" {}\n-- \(rounds)\n")
            #expect(try daemon.request(#"{"op":"reload"}"#)["error"]?["code"] == "RELOAD_FAILED")
            let event = try reading.readJSON()
            #expect(event["event"] == "reload_failed")
            #expect(event["error"]?["problems"]?.arrayValue?.count == 1000)
            rounds += 1
            // POLLHUP is reported without reading, however much unread data waits.
            var state = pollfd(fd: stalled.fd, events: 0, revents: 0)
            hungUp = poll(&state, 1, 500) == 1 && state.revents & Int16(POLLHUP) != 0
        }
        #expect(hungUp, "rulesd kept a watcher that read nothing through \(rounds) events of 300 KB")
        // The stalled watcher finds what reached its socket before it was dropped, then the end of the stream.
        var events = 0
        while let line = try stalled.readLine() {
            if (try? JSONParser().parse(line))?["event"] == "reload_failed" { events += 1 }
        }
        #expect(events < rounds)
        #expect(try reading.request(#"{"op":"ping"}"#)["ok"] == true)
        #expect(try daemon.request(#"{"op":"ping"}"#)["ok"] == true)
    }
}

@Suite("Signal promises")
struct SignalPromiseTests {
    @Test("SIGINT stops like SIGTERM: requests already read are answered, the socket is removed, exit 0")
    func sigint() throws {
        try expectGracefulStop(on: SIGINT, rules: ["a.lua": "flag \"x\" {}\n"], flag: "x", requests: 500)
    }
}

@Suite("State directory promises")
struct StateDirectoryPromiseTests {
    /// The files a saved copy's manifest names, as relative path => content read from the stored objects.
    func files(savedAs revision: String, in daemon: DaemonHarness) -> [String: String] {
        let manifest = daemon.stateDirectory + "/last-good/" + revision + ".json"
        guard let bytes = FileManager.default.contents(atPath: manifest),
            let json = try? JSONParser().parse(Array(bytes)), json["revision"]?.stringValue == revision
        else { return [:] }
        var found: [String: String] = [:]
        for file in json["files"]?.arrayValue ?? [] {
            guard let path = file["path"]?.stringValue, let digest = file["sha256"]?.stringValue else { continue }
            found[path] = try? String(
                contentsOfFile: daemon.stateDirectory + "/history/objects/" + digest, encoding: .utf8)
        }
        return found
    }

    /// The revision `last-good/current` designates: the manifest it links to, named after the revision.
    func current(_ daemon: DaemonHarness) -> String? {
        let path = daemon.stateDirectory + "/last-good/current"
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) else { return nil }
        let name = (target as NSString).lastPathComponent
        return name.hasSuffix(".json") ? String(name.dropLast(5)) : name
    }

    @Test("every rule set that goes live is kept as last-good/<revision>.json naming its stored files")
    func lastGoodLayout() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1"), "team/b.lua": "flag \"b\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let first = try #require(try daemon.servedRevision())
        // The copy is saved after the rules go live, off the serving path.
        #expect(eventually { current(daemon) == first })
        #expect(files(savedAs: first, in: daemon) == ["a.lua": markedRules("v1"), "team/b.lua": "flag \"b\" {}\n"])

        try daemon.writeRule("a.lua", markedRules("v2"))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        let second = try #require(try daemon.servedRevision())
        #expect(eventually { current(daemon) == second })
        #expect(files(savedAs: second, in: daemon) == ["a.lua": markedRules("v2"), "team/b.lua": "flag \"b\" {}\n"])

        // A rule set that fails is never kept.
        try daemon.writeRule("a.lua", "config \"marker\" (")
        #expect(try daemon.request(#"{"op":"reload"}"#)["error"]?["code"] == "RELOAD_FAILED")
        #expect(current(daemon) == second)
    }

    @Test("a state directory in the older layout (last-good/<revision>/ with the files) still starts and rolls back")
    func olderStateLayout() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--watch", "off"])
        let first = try #require(try daemon.servedRevision())
        try daemon.writeRule("a.lua", markedRules("v2"))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        let second = try #require(try daemon.servedRevision())
        #expect(eventually { current(daemon) == second })
        #expect(
            try eventually {
                try daemon.request(#"{"op":"history"}"#)["result"]?["revisions"]?.arrayValue?.count == 2
            })
        try daemon.stop()

        // The layout older versions wrote: a full copy of the files, `current` linking to its directory. The
        // history's layout (objects and revision manifests) is unchanged.
        let lastGood = daemon.stateDirectory + "/last-good"
        try FileManager.default.removeItem(atPath: lastGood)
        try FileManager.default.createDirectory(atPath: lastGood + "/" + second, withIntermediateDirectories: true)
        try Data(markedRules("v2").utf8).write(to: URL(fileURLWithPath: lastGood + "/" + second + "/a.lua"))
        try Data((second + "\n").utf8).write(to: URL(fileURLWithPath: lastGood + "/" + second + "/REVISION"))
        try FileManager.default.createSymbolicLink(atPath: lastGood + "/current", withDestinationPath: second)

        try daemon.writeRule("a.lua", "config \"marker\" (")
        try daemon.start(arguments: ["--watch", "off"])
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["origin"] == "last_known_good")
        #expect(try daemon.servedRevision() == second)
        let revisions = try daemon.request(#"{"op":"history"}"#)["result"]?["revisions"]?.arrayValue ?? []
        #expect(revisions.compactMap { $0["revision"]?.stringValue } == [second, first])
        #expect(try daemon.request(#"{"op":"rollback","revision":"\#(first)"}"#)["result"]?["outcome"] == "rolled_back")
        #expect(try daemon.servedRevision() == first)

        // Once the rules directory loads again, its copy replaces the older layout's.
        try daemon.writeRule("a.lua", markedRules("v3"))
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        let third = try #require(try daemon.servedRevision())
        #expect(eventually { current(daemon) == third })
        #expect(files(savedAs: third, in: daemon) == ["a.lua": markedRules("v3")])
        #expect(!FileManager.default.fileExists(atPath: lastGood + "/" + second))
    }

    @Test("serving the last known good copy shows in rulesd_rules_info{origin=\"last_known_good\"}")
    func lastKnownGoodMetric() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1")])
        try daemon.start(arguments: ["--watch", "off"])
        let good = try #require(try daemon.servedRevision())
        try daemon.stop()
        try daemon.writeRule("a.lua", "config \"marker\" (")
        try daemon.start(arguments: ["--watch", "off"])
        let text = try #require(try daemon.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue)
        let info = text.split(separator: "\n").filter { $0.hasPrefix("rulesd_rules_info{") }
        #expect(info.count == 1, "\(info)")
        #expect(info.first?.contains(#"origin="last_known_good""#) == true, "\(info)")
        #expect(info.first?.contains(good) == true || info.first?.contains(String(good.prefix(16))) == true)
    }
}

@Suite("Metrics promises")
struct MetricsPromiseTests {
    @Test("every series docs/OPERATIONS.md lists is exposed, with its documented type")
    func everyDocumentedSeries() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": "flag \"x\" {}\nflag \"bad\" { rule = function() error('no') end }\n"
        ])
        try daemon.start()
        // Something for the per-request series, the rule errors and the reloads to count.
        let client = try daemon.connect()
        #expect(try client.request(#"{"op":"flag","flag":"x"}"#)["ok"] == true)
        #expect(try client.request(#"{"op":"flag","flag":"bad"}"#)["result"]?["reason"] == "ERROR")
        try daemon.writeRule("b.lua", "flag \"y\" {}\n")
        #expect(try client.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        let watcher = try daemon.connect()
        _ = try watcher.request(#"{"op":"watch"}"#)
        let text = try #require(try client.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue)
        let lines = text.split(separator: "\n").map(String.init)

        let documented: [(name: String, type: String)] = [
            ("rulesd_requests_total", "counter"), ("rulesd_request_duration_seconds", "histogram"),
            ("rulesd_flag_evaluations_total", "counter"), ("rulesd_rule_errors_total", "counter"),
            ("rulesd_reloads_total", "counter"), ("rulesd_reload_duration_seconds", "histogram"),
            ("rulesd_generation", "gauge"), ("rulesd_rules_info", "gauge"), ("rulesd_rule_files", "gauge"),
            ("rulesd_flags", "gauge"), ("rulesd_routes", "gauge"), ("rulesd_configs", "gauge"),
            ("rulesd_lua_state_bytes", "gauge"), ("rulesd_open_connections", "gauge"),
            ("rulesd_watch_subscribers", "gauge"), ("rulesd_watcher_mode", "gauge"),
            ("rulesd_start_time_seconds", "gauge"),
        ]
        for series in documented {
            #expect(lines.contains("# TYPE \(series.name) \(series.type)"), "\(series.name)")
            #expect(
                lines.contains {
                    $0.hasPrefix(series.name + " ") || $0.hasPrefix(series.name + "{")
                        || $0.hasPrefix(series.name + "_")
                }, "\(series.name)")
        }
        func value(_ prefix: String) -> Double? {
            lines.first { $0.hasPrefix(prefix + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        #expect(lines.contains { $0.hasPrefix(#"rulesd_flag_evaluations_total{flag="bad",reason="ERROR"}"#) })
        #expect(lines.contains { $0.hasPrefix(#"rulesd_rule_errors_total{code="GENERAL"}"#) })
        #expect(lines.contains { $0.hasPrefix(#"rulesd_reloads_total{outcome="ok"}"#) })
        #expect(lines.contains { $0.hasPrefix(#"rulesd_watcher_mode{mode="inotify"} 1"#) })
        #expect(value("rulesd_generation") == 2)
        #expect(value("rulesd_rule_files") == 2)
        #expect(value("rulesd_flags") == 3)
        #expect(value("rulesd_routes") == 0)
        #expect(value("rulesd_watch_subscribers") == 1)
        #expect((value("rulesd_open_connections") ?? 0) >= 2)
        #expect((value("rulesd_lua_state_bytes") ?? 0) > 0)
        #expect((value("rulesd_start_time_seconds") ?? 0) > 1_700_000_000)
    }
}

@Suite("Log promises")
struct LogPromiseTests {
    @Test("rule log() lines: at most 8 per evaluation and 20 a second per worker, with a suppressed count")
    func ruleLogRateLimit() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": """
            flag "chatty" { rule = function(ctx)
              for i = 1, 50 do log("info", "chatty line " .. i .. " of " .. ctx.n) end
              return "on"
            end }
            """
        ])
        try daemon.start(arguments: ["--watch", "off"], workers: 1)
        let client = try daemon.connect()
        let evaluations = 100
        var batch = ""
        for n in 0..<evaluations { batch += #"{"op":"flag","flag":"chatty","context":{"n":\#(n)}}"# + "\n" }
        let started = ContinuousClock.now
        try client.send(batch)
        for _ in 0..<evaluations { #expect(try client.readJSON()["ok"] == true) }
        let elapsed = ContinuousClock.now - started
        // Later evaluations, spaced out, until a line gets through again and reports what was dropped.
        var later = 0
        #expect(
            eventually {
                later += 1
                _ = try? client.request(#"{"op":"flag","flag":"chatty","context":{"n":-1}}"#)
                return daemon.logLines(containing: "rule log lines suppressed") > 0
            })

        let lines = daemon.logs.split(separator: "\n")
        let burst = lines.filter { $0.contains("chatty line") && !$0.contains("of -1") }
        // Per evaluation, only the first 8 lines are kept.
        #expect(!burst.contains { $0.contains("chatty line 9 ") }, "\(burst.prefix(20))")
        // Per worker, a bucket of 20 that refills at 20 a second: the 800 kept lines of the burst cannot all pass.
        let seconds = Double(elapsed.components.seconds) + 1
        #expect(burst.count <= 20 + Int(20 * seconds), "\(burst.count) lines in \(elapsed)")
        #expect(burst.count < evaluations * 8)
        let reported =
            lines.filter { $0.contains("rule log lines suppressed") }
            .compactMap { line in line.split(separator: " ").first { $0.hasPrefix("rules.suppressed=") } }
            .compactMap { Int($0.dropFirst("rules.suppressed=".count)) }
        #expect(reported.reduce(0, +) > 0, "\(lines.filter { $0.contains("suppressed") })")
        // Nothing is counted twice: shown and suppressed lines add up to no more than were kept.
        let shown = lines.filter { $0.contains("chatty line") }.count
        #expect(reported.reduce(0, +) + shown <= (evaluations + later) * 8)
    }

    @Test("at the default level, answering requests logs nothing")
    func noLinePerRequest() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--watch", "off"])
        let before = daemon.logs.split(separator: "\n").count
        let client = try daemon.connect()
        for id in 0..<200 {
            #expect(try client.request(#"{"op":"flag","flag":"x","id":\#(id)}"#)["ok"] == true)
            #expect(try client.request(#"{"op":"flag","flag":"missing"}"#)["ok"] == false)
        }
        // A reload logs when it starts and when it is done: everything the requests logged is in the file by then.
        try daemon.writeRule("a.lua", "flag \"x\" {}\nflag \"y\" {}\n")
        #expect(try client.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        #expect(daemon.waitForLog("reload.trigger=reload"))
        let new = daemon.logs.split(separator: "\n").dropFirst(before)
        // Only the reload's own lines ("loading rules", "rules loaded"), none for the 400 requests.
        #expect(new.allSatisfy { $0.contains("reload.trigger=reload") }, "\(new)")
    }
}

@Suite("Reload promises")
struct ReloadPromiseTests {
    @Test("a directory emptied for good is confirmed by one more quiet window, then serves the empty set")
    func emptiedDirectoryStaysEmpty() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1"), "b.lua": "flag \"b\" {}\n"])
        try daemon.start()
        #expect(daemon.waitUntilWatching())
        let events = try EventLog(daemon)
        try daemon.removeRule("a.lua")
        try daemon.removeRule("b.lua")
        #expect(events.waitFor("reloaded"))
        let reloaded = try #require(events.named("reloaded").first)
        #expect(reloaded["files"] == 0)
        #expect(reloaded["flags"] == 0)
        #expect(events.count("reload_failed") == 0)
        #expect(try daemon.request(#"{"op":"flag","flag":"b"}"#)["error"]?["code"] == "FLAG_NOT_FOUND")
        #expect(try daemon.request(#"{"op":"ping"}"#)["ok"] == true)
    }

    @Test("files that vanish for less than a quiet window never go live as a smaller rule set")
    func briefLossIsNotReloaded() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": markedRules("v1"), "b.lua": "flag \"b\" {}\n"])
        // A quiet window of 3 s: b.lua must be back before the confirming rescan, even on a stalled machine.
        try daemon.start(arguments: ["--log-level", "debug", "--quiet-window", "3s"])
        let events = try EventLog(daemon)
        // b.lua goes away; the watcher signals; only while the daemon confirms the loss does b.lua come back.
        let signals = daemon.logLines(containing: "rules directory may have changed")
        try daemon.removeRule("b.lua")
        #expect(daemon.waitForLog("rules directory may have changed", count: signals + 1))
        try daemon.writeRule("b.lua", "flag \"b\" {}\n")
        let sentinel = try daemon.sentinelReload("after-loss", events: events)
        #expect(events.reloadedRevisions == [sentinel].compactMap { $0 }, "\(events.all)")
        #expect(try daemon.request(#"{"op":"flag","flag":"b"}"#)["ok"] == true)
    }
}

@Suite("systemd promises")
struct SystemdPromiseTests {
    @Test("a first load over 2 s sends EXTEND_TIMEOUT_USEC before READY")
    func extendTimeoutOnSlowStart() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": "flag \"x\" {}\n",
            // Several seconds of loading on this kind of machine.
            "slow.lua": "local n = 0\nwhile n < 150000000 do n = n + 1 end\nflag \"slow\" {}\n",
        ])
        let address = daemon.directory + "/notify"
        let notify = try FakeNotifySocket(address: address)
        let started = ContinuousClock.now
        try daemon.start(
            arguments: ["--watch", "off", "--load-timeout", "120s", "--load-instructions", "9223372036854775807"],
            environment: ["NOTIFY_SOCKET": address], waitForSocket: false)
        var extensions: [String] = []
        var ready: [String: String]?
        while ready == nil, let fields = notify.next() {
            if let value = fields["EXTEND_TIMEOUT_USEC"] { extensions.append(value) }
            if fields["READY"] != nil { ready = fields }
        }
        try #require(ready != nil, "\(daemon.logs)")
        // Only meaningful when the load really took more than two seconds.
        try #require(ContinuousClock.now - started > .milliseconds(2_500))
        #expect(!extensions.isEmpty)
        #expect(extensions.allSatisfy { (UInt64($0) ?? 0) > 0 }, "\(extensions)")
    }

    @Test("a socket handed over by systemd keeps its mode, whatever socket_mode says")
    func handedOverSocketIsNotChmodded() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        let socket = daemon.directory + "/q.sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
        process.arguments = [
            "-l", socket, "--fdname=query", DaemonHarness.binary("rulesd"), "--rules", daemon.rulesDirectory,
            "--state-dir", daemon.stateDirectory, "--socket", daemon.directory + "/unused.sock", "--watch", "off",
            "--socket-mode", "0600",
        ]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        #expect(eventually { FileManager.default.fileExists(atPath: socket) })
        var before = stat()
        try #require(stat(socket, &before) == 0)
        try #require(before.st_mode & 0o777 != 0o600, "the test needs a mode that differs from socket_mode")
        // The first connection starts rulesd; once it answers, it has done whatever it does to the socket.
        #expect(try LineClient(path: socket).request(#"{"op":"ping"}"#)["ok"] == true)
        var after = stat()
        try #require(stat(socket, &after) == 0)
        #expect(after.st_mode & 0o7777 == before.st_mode & 0o7777)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }
}
