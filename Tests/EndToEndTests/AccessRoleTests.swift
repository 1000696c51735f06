import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Roles from peer credentials (docs/OPERATIONS.md, "Access"): without a policy everyone who can connect may query
/// and observe, and only root and rulesd's own user may operate; `role_*` settings grant more. A refused request is
/// answered `FORBIDDEN` naming the operation and the role it needs, and is in the audit log. Checked with a real
/// second user connecting to the real daemon.
@Suite(
    "roles of a second user",
    .serialized,
    .enabled(if: ThrowawayUser.isUsable, Comment(rawValue: ThrowawayUser.skipReason ?? "")))
struct AccessRoleTests {
    /// A daemon whose socket (mode 0660, in a directory everyone may enter) has `group`.
    func startDaemon(group: String, _ arguments: [String] = []) throws -> DaemonHarness {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" { variants = { on = true }, default = \"on\" }\n"])
        // mkdtemp makes the directory 0700: let the other user reach the socket inside it.
        try #require(chmod(daemon.directory, 0o755) == 0)
        try daemon.start(arguments: ["--watch", "off", "--socket-mode", "0660", "--socket-group", group] + arguments)
        return daemon
    }

    /// rulesctl run as `user` (with the groups the account database gives it, or exactly `groups`).
    func rulesctl(as user: ThrowawayUser, groups: [gid_t]? = nil, _ arguments: [String]) throws -> (
        status: Int32, stdout: String, stderr: String
    ) {
        try runCommand(user.runAs(groups: groups) + [DaemonHarness.binary("rulesctl")] + arguments)
    }

    /// The audit log's events, parsed.
    func auditEvents(_ daemon: DaemonHarness) -> [JSONValue] {
        guard let text = try? String(contentsOfFile: daemon.stateDirectory + "/audit/audit.jsonl", encoding: .utf8)
        else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONParser().parse(Array($0.utf8)) }
    }

    /// Waits for an audit event that `matches`, and returns it.
    func waitForAuditEvent(_ daemon: DaemonHarness, _ matches: (JSONValue) -> Bool) -> JSONValue? {
        var found: JSONValue?
        _ = eventually {
            found = auditEvents(daemon).first(where: matches)
            return found != nil
        }
        return found
    }

    @Test("a member of the socket's group may query and observe, is refused reload with FORBIDDEN, and is audited")
    func groupMemberWithoutPolicy() throws {
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: true)
        let daemon = try startDaemon(group: socketGroup.name)
        let before = try #require(try daemon.servedRevision())
        // A change on disk that a successful reload would serve.
        try daemon.writeRule("b.lua", "flag \"y\" {}\n")
        let socket = ["--socket", daemon.socketPath]

        let reload = try rulesctl(as: user, socket + ["reload"])
        #expect(reload.status == 1, "\(reload)")
        #expect(reload.stderr.contains("FORBIDDEN: reload needs the operate role"), "\(reload)")
        #expect(try daemon.servedRevision() == before)
        // --json prints the error object as the daemon sent it, with the operation and the role.
        let json = try rulesctl(as: user, socket + ["reload", "--json"])
        #expect(json.status == 1, "\(json)")
        #expect(json.stdout.contains(#""code":"FORBIDDEN""#), "\(json)")
        #expect(json.stdout.contains(#""operation":"reload""#), "\(json)")
        #expect(json.stdout.contains(#""required_role":"operate""#), "\(json)")

        #expect(try rulesctl(as: user, socket + ["ping"]).status == 0)
        let flag = try rulesctl(as: user, socket + ["flag", "x"])
        #expect(flag.status == 0, "\(flag)")
        #expect(flag.stdout.contains("on"), "\(flag)")
        #expect(try rulesctl(as: user, socket + ["status"]).status == 0)

        let refusal = try #require(
            waitForAuditEvent(daemon) { $0["event"]?.stringValue == "refused" && $0["operation"] == "reload" })
        #expect(refusal["required_role"] == "operate")
        #expect(refusal["peer"]?["uid"]?.int64Value == Int64(user.uid))
        #expect(refusal["peer"]?["user"]?.stringValue == user.name)
        #expect(refusal["peer"]?["exe"]?.stringValue?.hasSuffix("/rulesctl") == true, "\(refusal)")
        #expect(refusal["count"] == 1)

        // rulesctl audit reads it (as root); the user itself may not read the log.
        let audit = try runRulesctl(["audit", "--state-dir", daemon.stateDirectory, "--since", "1h"])
        #expect(audit.status == 0, "\(audit)")
        #expect(audit.stdout.contains("refused  FORBIDDEN  uid=\(user.uid)(\(user.name))"), "\(audit)")
        #expect(audit.stdout.contains("reload needs operate"), "\(audit)")
        let denied = try rulesctl(as: user, ["audit", "--state-dir", daemon.stateDirectory])
        #expect(denied.status == 1, "\(denied)")
        #expect(denied.stderr.contains("readable by root and rulesd's user"), "\(denied)")

        // Root may, on the same socket, and the operation is recorded with its outcome and the reload it made.
        #expect(try runRulesctl(socket + ["reload"]).status == 0)
        #expect(try daemon.servedRevision() != before)
        let operation = try #require(
            waitForAuditEvent(daemon) { $0["event"]?.stringValue == "operation" && $0["operation"] == "reload" })
        #expect(operation["outcome"] == "ok")
        #expect(operation["peer"]?["uid"] == 0)
        let reloaded = try #require(waitForAuditEvent(daemon) { $0["event"]?.stringValue == "reload" })
        #expect(reloaded["outcome"] == "reloaded")
        #expect(reloaded["old_revision"]?.stringValue == before)
        let changes = reloaded["changes"]?.arrayValue ?? []
        #expect(changes.map { $0["path"]?.stringValue } == ["b.lua"])
        #expect(changes.first?["uid"] == 0)
    }

    @Test("role_operate naming a group lets its members reload; the operation is audited with their uid")
    func operateByGroup() throws {
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: true)
        let operators = try user.addGroup(suffix: "o", member: true)
        let daemon = try startDaemon(group: socketGroup.name, ["--role-operate", "group:\(operators.name)"])
        let before = try #require(try daemon.servedRevision())
        try daemon.writeRule("b.lua", "flag \"y\" {}\n")

        let reload = try rulesctl(as: user, ["--socket", daemon.socketPath, "reload"])
        #expect(reload.status == 0, "\(reload)")
        #expect(reload.stdout.hasPrefix("reloaded"), "\(reload)")
        #expect(try daemon.servedRevision() != before)
        let operation = try #require(
            waitForAuditEvent(daemon) { $0["event"]?.stringValue == "operation" && $0["operation"] == "reload" })
        #expect(operation["peer"]?["uid"]?.int64Value == Int64(user.uid))
        #expect(operation["outcome"] == "ok")
    }

    @Test("a group among the process's supplementary groups counts, though no database says so")
    func supplementaryGroupOfTheProcessCounts() throws {
        // What SO_PEERGROUPS reports, as under PrivateUsers=yes or with a container's supplemental groups: the
        // account database does not list the user in the group, the process's credentials do.
        let user = try ThrowawayUser()
        let operators = try user.addGroup(suffix: "o", member: false)
        let daemon = try startDaemon(group: operators.name, ["--role-operate", "gid:\(operators.gid)"])
        let socket = ["--socket", daemon.socketPath]
        let reload = try rulesctl(as: user, groups: [operators.gid], socket + ["reload"])
        #expect(reload.status == 0, "\(reload)")
        #expect(reload.stdout.hasPrefix("unchanged"), "\(reload)")
    }

    @Test("a group the account database lists the user in counts, though the process does not carry it")
    func databaseGroupCounts() throws {
        // The connection's first look uses the credentials only; a request needing more looks the user up.
        let user = try ThrowawayUser()
        let operators = try user.addGroup(suffix: "o", member: true)
        let daemon = try startDaemon(group: operators.name, ["--role-operate", "group:\(operators.name)"])
        let socket = ["--socket", daemon.socketPath]
        // Without supplementary groups the process could not open the 0660 socket of group `operators`.
        try #require(chmod(daemon.socketPath, 0o666) == 0)
        let reload = try rulesctl(as: user, groups: [], socket + ["reload"])
        #expect(reload.status == 0, "\(reload)")
        #expect(reload.stdout.hasPrefix("unchanged"), "\(reload)")
    }

    @Test("a user whose primary group is named in role_operate may reload")
    func primaryGroupCounts() throws {
        let user = try ThrowawayUser()
        let daemon = try startDaemon(group: user.name, ["--role-operate", "group:\(user.name)"])
        let reload = try rulesctl(as: user, groups: [], ["--socket", daemon.socketPath, "reload"])
        #expect(reload.status == 0, "\(reload)")
        #expect(reload.stdout.hasPrefix("unchanged"), "\(reload)")
    }

    @Test("role_query restricted to other users refuses even ping and flag, and role_admin grants everything")
    func queryRestricted() throws {
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: true)
        let daemon = try startDaemon(group: socketGroup.name, ["--role-query", "user:root", "--role-observe", ""])
        let socket = ["--socket", daemon.socketPath]
        let flag = try rulesctl(as: user, socket + ["flag", "x"])
        #expect(flag.status == 1, "\(flag)")
        #expect(flag.stderr.contains("FORBIDDEN: flag needs the query role; this peer has none"), "\(flag)")
        let status = try rulesctl(as: user, socket + ["status"])
        #expect(status.stderr.contains("FORBIDDEN: status needs the observe role"), "\(status)")
        #expect(try runRulesctl(socket + ["flag", "x"]).status == 0)

        let admin = try startDaemon(group: socketGroup.name, ["--role-query", "", "--role-admin", "uid:\(user.uid)"])
        #expect(try rulesctl(as: user, ["--socket", admin.socketPath, "flag", "x"]).status == 0)
        #expect(try rulesctl(as: user, ["--socket", admin.socketPath, "reload"]).status == 0)
    }

    @Test("refusals repeated within a window are written once, then counted on one line")
    func refusalsAreRateLimited() throws {
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: true)
        let daemon = try startDaemon(group: socketGroup.name)
        // One connection, five refused reloads.
        let lines = Array(repeating: #"{"op":"reload"}"#, count: 5).joined(separator: "\n") + "\n"
        let send = try runCommand(
            user.runAs() + [
                "/bin/sh", "-c", "printf '%s' \"$1\" | socat - UNIX-CONNECT:\"$2\"", "sh", lines,
                daemon.socketPath,
            ])
        #expect(send.stdout.split(separator: "\n").count { $0.contains(#""code":"FORBIDDEN""#) } == 5, "\(send)")
        #expect(try daemon.stop() == 0)
        let refusals = auditEvents(daemon).filter { $0["event"]?.stringValue == "refused" }
        #expect(refusals.map { $0["count"]?.int64Value } == [1, 4], "\(refusals)")
    }
}
