import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

private let overrideRules = [
    "a.lua": """
    flag "checkout" { variants = { on = true, off = false }, default = "off",
      rule = function(ctx) if ctx.beta then return "on" end end }
    flag "banner" { variants = { a = "A", b = "B" }, default = "a" }
    flag "banner-shown" { variants = { yes = true, no = false }, default = "no",
      rule = function(ctx) if flag_value("banner", ctx) == "b" then return "yes" end end }
    """
]

/// Overrides against the real daemon: set with rulesctl, answered with reason OVERRIDE on every path, ended
/// by their time to live (also across restarts), dropped by a reload that removes their variant.
@Suite("Overrides against the real daemon")
struct OverrideEndToEndTests {
    func startDaemon(_ arguments: [String] = []) throws -> DaemonHarness {
        let daemon = try DaemonHarness(rules: overrideRules)
        try daemon.start(arguments: ["--watch", "off"] + arguments)
        return daemon
    }

    func rulesctl(_ daemon: DaemonHarness, _ arguments: [String]) throws -> (
        status: Int32, stdout: String, stderr: String
    ) {
        try runRulesctl(["--socket", daemon.socketPath] + arguments)
    }

    func checkout(_ daemon: DaemonHarness) throws -> JSONValue? {
        try daemon.request(#"{"op":"flag","flag":"checkout","context":{}}"#)["result"]
    }

    /// Reads a watcher's lines until the event `name`, returning it.
    func nextEvent(_ watcher: LineClient, _ name: String) throws -> JSONValue {
        while true {
            let event = try watcher.readJSON()
            if event["event"]?.stringValue == name { return event }
        }
    }

    @Test("an override with --ttl 2s answers OVERRIDE naming who set it, then expires by itself")
    func setThenExpires() throws {
        let daemon = try startDaemon()
        let watcher = try daemon.connect()
        #expect(try watcher.request(#"{"op":"watch"}"#)["result"]?["watching"] == true)

        let set = try rulesctl(daemon, ["override", "set", "checkout", "on", "--ttl", "2s", "--reason", "incident 7"])
        #expect(set.status == 0, "\(set)")
        #expect(set.stdout.hasPrefix("override set: checkout answers on until "), "\(set)")

        let answer = try #require(try checkout(daemon))
        #expect(answer["value"] == true)
        #expect(answer["variant"] == "on")
        #expect(answer["reason"] == "OVERRIDE")
        #expect(answer["override"]?["reason"] == "incident 7")
        #expect(answer["override"]?["set_by"]?["uid"]?.int64Value == Int64(getuid()))
        #expect(answer["override"]?["set_by"]?["user"]?.stringValue != nil)
        #expect(answer["override"]?["set_by"]?["pid"]?.int64Value != nil)
        #expect(answer["override"]?["expires_at"]?.stringValue != nil)
        // Every way of asking says so: flags, explain (with what the rules would say), and rulesctl.
        let flags = try daemon.request(#"{"op":"flags","context":{"beta":false}}"#)["result"]?["flags"]
        #expect(flags?["checkout"]?["reason"] == "OVERRIDE")
        #expect(flags?["banner"]?["reason"] == "STATIC")
        let explained = try daemon.request(#"{"op":"explain","flag":"checkout"}"#)["result"]
        #expect(explained?["reason"] == "OVERRIDE")
        #expect(explained?["without_override"]?["variant"] == "off")
        #expect(explained?["without_override"]?["trace"] != nil)
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["overrides"] == 1)
        let status = try rulesctl(daemon, ["status"])
        #expect(status.stdout.contains("1 in force"), "\(status)")
        let printed = try rulesctl(daemon, ["flag", "checkout"])
        #expect(printed.stdout.contains("OVERRIDE"), "\(printed)")
        #expect(printed.stdout.contains("incident 7; set by "), "\(printed)")
        let list = try rulesctl(daemon, ["override", "list"])
        #expect(list.status == 0, "\(list)")
        #expect(list.stdout.contains("checkout  on"), "\(list)")
        #expect(list.stdout.contains("incident 7"), "\(list)")

        let setEvent = try nextEvent(watcher, "override_set")
        #expect(setEvent["flag"] == "checkout")
        let expired = try nextEvent(watcher, "override_expired")
        #expect(expired["flag"] == "checkout")
        #expect(expired["variant"] == "on")
        #expect(try checkout(daemon)?["reason"] == "DEFAULT")
        #expect(try rulesctl(daemon, ["override", "list"]).stdout == "no overrides\n")
        #expect(try daemon.request(#"{"op":"status"}"#)["result"]?["overrides"] == 0)
        #expect(daemon.logs.contains("override expired"))
    }

    @Test("flags that depend on an overridden flag through flag_value() follow it, and explain shows why")
    func dependentsFollow() throws {
        let daemon = try startDaemon()
        func shown() throws -> JSONValue? { try daemon.request(#"{"op":"flag","flag":"banner-shown"}"#)["result"] }
        #expect(try shown()?["variant"] == "no")
        #expect(try rulesctl(daemon, ["override", "set", "banner", "b", "--ttl", "1h", "--reason", "r"]).status == 0)
        #expect(try shown()?["variant"] == "yes")
        #expect(try shown()?["reason"] == "TARGETING_MATCH")
        let flags = try daemon.request(#"{"op":"flags"}"#)["result"]?["flags"]
        #expect(flags?["banner-shown"]?["variant"] == "yes")
        let trace = try daemon.request(#"{"op":"explain","flag":"banner-shown"}"#)["result"]?["trace"]?["steps"]
        let prerequisite = trace?.arrayValue?.first { $0["flag"] == "banner" }
        #expect(prerequisite?["variant"] == "b")
        #expect(prerequisite?["reason"] == "OVERRIDE")
        #expect(try rulesctl(daemon, ["override", "clear", "banner"]).status == 0)
        #expect(try shown()?["variant"] == "no")
    }

    @Test("an override survives a restart")
    func survivesRestart() throws {
        let daemon = try startDaemon()
        let set = try rulesctl(daemon, ["override", "set", "banner", "b", "--ttl", "1h", "--reason", "launch"])
        #expect(set.status == 0, "\(set)")
        let before = try daemon.request(#"{"op":"flag","flag":"banner"}"#)["result"]?["override"]
        #expect(try daemon.stop() == 0)
        try daemon.start(arguments: ["--watch", "off"])
        let after = try daemon.request(#"{"op":"flag","flag":"banner"}"#)["result"]
        #expect(after?["reason"] == "OVERRIDE")
        #expect(after?["variant"] == "b")
        #expect(after?["override"] == before)
        let list = try daemon.request(#"{"op":"override_list"}"#)["result"]?["overrides"]?.arrayValue
        #expect(list?.count == 1)
    }

    @Test("an override whose time ran out while rulesd was stopped does not come back")
    func expiredAcrossRestart() throws {
        let daemon = try startDaemon()
        #expect(
            try rulesctl(daemon, ["override", "set", "checkout", "on", "--ttl", "1s", "--reason", "r"]).status == 0)
        let setAt = Date()
        #expect(try daemon.stop() == 0)
        // Waits for the wall clock to pass the expiry with the daemon stopped (no event can say so).
        while Date().timeIntervalSince(setAt) <= 1.1 { usleep(50_000) }
        try daemon.start(arguments: ["--watch", "off"])
        #expect(try checkout(daemon)?["reason"] == "DEFAULT")
        #expect(try daemon.request(#"{"op":"override_list"}"#)["result"]?["overrides"]?.arrayValue?.isEmpty == true)
        #expect(daemon.logs.contains("override expired while rulesd was stopped"))
    }

    @Test("an override that expired while rulesd ran stays gone after a restart")
    func expiredThenRestart() throws {
        let daemon = try startDaemon()
        let watcher = try daemon.connect()
        _ = try watcher.request(#"{"op":"watch"}"#)
        #expect(
            try rulesctl(daemon, ["override", "set", "checkout", "on", "--ttl", "1s", "--reason", "r"]).status == 0)
        _ = try nextEvent(watcher, "override_expired")
        #expect(try daemon.stop() == 0)
        try daemon.start(arguments: ["--watch", "off"])
        #expect(try checkout(daemon)?["reason"] == "DEFAULT")
    }

    @Test("a reload that removes the override's variant drops it and announces why")
    func droppedByReload() throws {
        let daemon = try startDaemon()
        let watcher = try daemon.connect()
        _ = try watcher.request(#"{"op":"watch"}"#)
        #expect(try rulesctl(daemon, ["override", "set", "banner", "b", "--ttl", "1h", "--reason", "r"]).status == 0)
        try daemon.writeRule("a.lua", #"flag "banner" { variants = { a = "A", c = "C" }, default = "a" }"# + "\n")
        #expect(try daemon.request(#"{"op":"reload"}"#)["result"]?["outcome"] == "reloaded")
        let dropped = try nextEvent(watcher, "override_dropped")
        #expect(dropped["flag"] == "banner")
        #expect(dropped["why"]?.stringValue?.contains("no variant 'b'") == true)
        #expect(try daemon.request(#"{"op":"flag","flag":"banner"}"#)["result"]?["reason"] == "STATIC")
        #expect(daemon.logs.contains("override dropped"))
        // And it is not read back at the next start.
        #expect(try daemon.stop() == 0)
        try daemon.start(arguments: ["--watch", "off"])
        #expect(try daemon.request(#"{"op":"override_list"}"#)["result"]?["overrides"]?.arrayValue?.isEmpty == true)
    }

    @Test("clear ends an override at once; set refuses unknown variants and a ttl beyond override_max_ttl")
    func clearAndRefusals() throws {
        let daemon = try startDaemon(["--override-max-ttl", "1h"])
        #expect(
            try rulesctl(daemon, ["override", "set", "checkout", "on", "--ttl", "30m", "--reason", "r"]).status == 0)
        let clear = try rulesctl(daemon, ["override", "clear", "checkout"])
        #expect(clear.status == 0, "\(clear)")
        #expect(clear.stdout.hasPrefix("override cleared: checkout"), "\(clear)")
        #expect(try checkout(daemon)?["reason"] == "DEFAULT")
        #expect(try rulesctl(daemon, ["override", "clear", "checkout"]).stdout == "checkout had no override\n")

        let tooLong = try rulesctl(daemon, ["override", "set", "checkout", "on", "--ttl", "2h", "--reason", "r"])
        #expect(tooLong.status == 1, "\(tooLong)")
        #expect(tooLong.stderr.contains("override_max_ttl (1h)"), "\(tooLong)")
        let variant = try rulesctl(daemon, ["override", "set", "checkout", "maybe", "--ttl", "1m", "--reason", "r"])
        #expect(variant.status == 1, "\(variant)")
        #expect(variant.stderr.contains("no variant 'maybe'"), "\(variant)")
        let namespace = try rulesctl(
            daemon, ["override", "list", "--namespace", "payments", "--json"])
        #expect(namespace.status == 1, "\(namespace)")
        // A namespace the configuration does not declare has its own code (docs/PROTOCOL.md, "Namespaces").
        #expect(namespace.stdout.contains("NAMESPACE_NOT_FOUND"), "\(namespace)")
    }

    @Test("OFREP answers an overridden flag with reason OVERRIDE, singly and in bulk, under a new entity tag")
    func ofrep() throws {
        let ofrep = try OFREPDaemon(rules: overrideRules, arguments: ["--watch", "off"])
        let before = try ofrep.flags(#"{"context":{}}"#)
        let tag = try #require(before.headers["etag"])
        #expect(
            try runRulesctl([
                "--socket", ofrep.daemon.socketPath, "override", "set", "banner", "b", "--ttl", "1h", "--reason",
                "launch",
            ]).status == 0)
        let single = try #require(try ofrep.flag("banner").json)
        #expect(single["reason"] == "OVERRIDE")
        #expect(single["value"] == "B")
        #expect(single["metadata"]?["override_reason"] == "launch")
        let bulk = try ofrep.flags(#"{"context":{}}"#, ifNoneMatch: tag)
        #expect(bulk.status == 200)
        let entry = bulk.json?["flags"]?.arrayValue?.first { $0["key"] == "banner" }
        #expect(entry?["reason"] == "OVERRIDE")
    }
}

/// Setting and clearing overrides need the permission `reload` needs; listing does not. Checked with a real
/// second user connecting to the real daemon.
@Suite(
    "overrides from another user",
    .serialized,
    .enabled(if: ThrowawayUser.isUsable, Comment(rawValue: ThrowawayUser.skipReason ?? "")))
struct ForbiddenOverrideTests {
    @Test("a user outside the socket's group gets FORBIDDEN for override set and clear, and may list")
    func strangerIsForbidden() throws {
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: false)
        let daemon = try DaemonHarness(rules: overrideRules)
        try #require(chmod(daemon.directory, 0o755) == 0)
        try daemon.start(arguments: [
            "--watch", "off", "--socket-mode", "0666", "--socket-group", socketGroup.name,
        ])
        let socket = ["--socket", daemon.socketPath]
        func asUser(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
            try runCommand(user.runAs() + [DaemonHarness.binary("rulesctl")] + socket + arguments)
        }

        let set = try asUser(["override", "set", "checkout", "on", "--ttl", "1m", "--reason", "r"])
        #expect(set.status == 1, "\(set)")
        #expect(set.stderr.contains("FORBIDDEN"), "\(set)")
        #expect(set.stderr.contains("override_set needs the operate role"), "\(set)")
        #expect(try daemon.request(#"{"op":"flag","flag":"checkout"}"#)["result"]?["reason"] == "DEFAULT")

        #expect(
            try runRulesctl(socket + ["override", "set", "checkout", "on", "--ttl", "1m", "--reason", "r"]).status == 0)
        let clear = try asUser(["override", "clear", "checkout"])
        #expect(clear.status == 1, "\(clear)")
        #expect(clear.stderr.contains("override_clear needs the operate role"), "\(clear)")
        let list = try asUser(["override", "list"])
        #expect(list.status == 0, "\(list)")
        #expect(list.stdout.contains("checkout"), "\(list)")
        #expect(try daemon.request(#"{"op":"flag","flag":"checkout"}"#)["result"]?["reason"] == "OVERRIDE")

        // The audit log holds the refusals, the set that went through with its peer, and the override itself.
        let audit = try runRulesctl(["audit", "--state-dir", daemon.stateDirectory, "--json"])
        #expect(audit.status == 0, "\(audit)")
        #expect(audit.stdout.contains(#""operation":"override_set""#), "\(audit.stdout)")
        #expect(audit.stdout.contains(#""action":"set""#), "\(audit.stdout)")
        #expect(audit.stdout.contains(#""event":"refused","operation":"override_clear""#), "\(audit.stdout)")
    }
}
