import Foundation
import RuleModel
import RulesTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A rule set whose flags must all agree with each other: every flag answers `set`.
func agreeingRules(_ set: String, flags: Int = 8) -> String {
    var text = ""
    for index in 0..<flags {
        text += """
            flag "f\(index)" { variants = { a = "a", b = "b" }, default = "a", rule = function(ctx) return "\(set)" end }

            """
    }
    return text
}

@Suite("Reloads against the real daemon")
struct DaemonReloadTests {
    @Test("reload answers unchanged, reloaded or failed with file:line, and bad rules never replace good ones")
    func reloadOutcomes() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off"])
        let unchanged = try daemon.request(#"{"op":"reload"}"#)
        #expect(unchanged["result"]?["outcome"] == "unchanged")
        try daemon.writeRule("r.lua", agreeingRules("b"))
        let reloaded = try daemon.request(#"{"op":"reload"}"#)
        #expect(reloaded["result"]?["outcome"] == "reloaded")
        #expect(reloaded["generation"] == 2)
        try daemon.writeRule("r.lua", "flag \"f0\" {\n  rule = 42,\n}\n")
        let failed = try daemon.request(#"{"op":"reload"}"#)
        #expect(failed["ok"] == false)
        #expect(failed["error"]?["code"] == "RELOAD_FAILED")
        #expect(failed["error"]?["problems"]?[0]?["file"] == "r.lua")
        #expect(failed["error"]?["problems"]?[0]?["line"] == 1)
        let still = try daemon.request(#"{"op":"flag","flag":"f3"}"#)
        #expect(still["result"]?["variant"] == "b")
        #expect(still["generation"] == 2)
        let status = try daemon.request(#"{"op":"status"}"#)["result"]
        #expect(status?["last_reload"]?["ok"] == false)
        #expect(status?["last_reload"]?["error"]?["problems"]?[0]?["line"] == 1)
    }

    @Test("SIGHUP reloads")
    func sighup() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off"])
        try daemon.writeRule("r.lua", agreeingRules("b"))
        daemon.signal(SIGHUP)
        var generation: JSONValue?
        _ = try eventually {
            generation = try daemon.request(#"{"op":"ping"}"#)["generation"]
            return generation == 2
        }
        #expect(generation == 2)
        #expect(try daemon.request(#"{"op":"flag","flag":"f0"}"#)["result"]?["variant"] == "b")
    }

    @Test("watch acknowledges, then pushes reloaded and reload_failed events as they happen")
    func watch() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off"])
        let watcher = try daemon.connect()
        #expect(try watcher.request(#"{"op":"watch","id":1}"#)["result"]?["watching"] == true)
        try daemon.writeRule("r.lua", agreeingRules("b"))
        _ = try daemon.request(#"{"op":"reload"}"#)
        let reloaded = try watcher.readJSON()
        #expect(reloaded["event"] == "reloaded")
        #expect(reloaded["generation"] == 2)
        #expect(reloaded["revision"]?.stringValue?.count == 64)
        try daemon.writeRule("r.lua", "flag \"x\" {\n\n  unknown = 1 }\n")
        _ = try daemon.request(#"{"op":"reload"}"#)
        let failed = try watcher.readJSON()
        #expect(failed["event"] == "reload_failed")
        #expect(failed["error"]?["problems"]?[0]?["message"]?.stringValue?.contains("unknown field 'unknown'") == true)
    }

    @Test("under continuous load, hundreds of swaps never produce an answer that mixes two generations")
    func consistencyUnderSwaps() throws {
        let daemon = try DaemonHarness(rules: ["r.lua": agreeingRules("a")])
        try daemon.start(arguments: ["--watch", "off"])
        let stop = Atomic<Bool>(false)
        let problems = Mutex<[String]>([])
        let answers = Atomic<Int>(0)
        let seen = Mutex<[Int64: String]>([:])
        var clients: [Thread] = []
        for _ in 0..<4 {
            let thread = Thread { [socket = daemon.socketPath] in
                do {
                    let client = try LineClient(path: socket)
                    while !stop.load(ordering: .relaxed) {
                        let answer = try client.request(#"{"op":"flags"}"#)
                        guard let generation = answer["generation"]?.int64Value,
                            let flags = answer["result"]?["flags"]?.objectValue
                        else {
                            problems.withLock { $0.append("bad answer: \(answer)") }
                            return
                        }
                        let variants = Set(flags.map { $0.value["variant"]?.stringValue ?? "?" })
                        if variants.count != 1 { problems.withLock { $0.append("mixed answer: \(answer)") } }
                        let variant = variants.first ?? "?"
                        seen.withLock { seen in
                            if let known = seen[generation], known != variant {
                                problems.withLock {
                                    $0.append("generation \(generation) answered \(known) and \(variant)")
                                }
                            }
                            seen[generation] = variant
                        }
                        answers.add(1, ordering: .relaxed)
                    }
                } catch {
                    problems.withLock { $0.append("client failed: \(error)") }
                }
            }
            thread.start()
            clients.append(thread)
        }
        var swaps = 0
        for round in 0..<300 {
            let set = round % 2 == 0 ? "b" : "a"
            try daemon.writeRule("r.lua", agreeingRules(set))
            if round % 3 == 0 {
                // SIGHUP is asynchronous: wait for the new generation to show.
                daemon.signal(SIGHUP)
                let client = try daemon.connect()
                let reloaded = try eventually {
                    try client.request(#"{"op":"flag","flag":"f0"}"#)["result"]?["variant"]?.stringValue == set
                }
                if !reloaded { throw HarnessError("SIGHUP did not reload") }
            } else {
                let outcome = try daemon.request(#"{"op":"reload"}"#)
                #expect(outcome["result"]?["outcome"] == "reloaded")
            }
            swaps += 1
        }
        stop.store(true, ordering: .relaxed)
        while clients.contains(where: { $0.isExecuting }) { usleep(10_000) }
        #expect(problems.withLock { $0 } == [])
        #expect(swaps == 300)
        #expect(answers.load(ordering: .relaxed) > 300)
        #expect(seen.withLock { $0.count } > 100)
    }
}
