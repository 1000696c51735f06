import Foundation
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `reload` is allowed to root, rulesd's own user and members of the socket's group; others get `FORBIDDEN`
/// (docs/PROTOCOL.md). Checked with a real second user connecting to the real daemon.
@Suite(
    "reload from another user",
    .serialized,
    .enabled(if: ThrowawayUser.isUsable, Comment(rawValue: ThrowawayUser.skipReason ?? "")))
struct ForbiddenReloadTests {
    /// A daemon whose socket (mode 0666, in a directory everyone may enter) has `group`.
    func startDaemon(group: String) throws -> DaemonHarness {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" { variants = { on = true }, default = \"on\" }\n"])
        // mkdtemp makes the directory 0700: let the other user reach the socket inside it.
        try #require(chmod(daemon.directory, 0o755) == 0)
        try daemon.start(arguments: ["--watch", "off", "--socket-mode", "0666", "--socket-group", group])
        var status = stat()
        try #require(stat(daemon.socketPath, &status) == 0)
        try #require(status.st_mode & 0o777 == 0o666)
        return daemon
    }

    /// rulesctl run as `user` (with the groups the account database gives it, or exactly `groups`).
    func rulesctl(as user: ThrowawayUser, groups: [gid_t]? = nil, _ arguments: [String]) throws -> (
        status: Int32, stdout: String, stderr: String
    ) {
        try runCommand(user.runAs(groups: groups) + [DaemonHarness.binary("rulesctl")] + arguments)
    }

    @Test("a user outside the socket's group gets FORBIDDEN for reload, and may still ping and ask for flags")
    func strangerIsForbidden() throws {
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: false)
        let daemon = try startDaemon(group: socketGroup.name)
        let before = try #require(try daemon.servedRevision())
        // A change on disk that a successful reload would serve.
        try daemon.writeRule("b.lua", "flag \"y\" {}\n")
        let socket = ["--socket", daemon.socketPath]

        let reload = try rulesctl(as: user, socket + ["reload"])
        #expect(reload.status == 1, "\(reload)")
        #expect(reload.stderr.contains("FORBIDDEN"), "\(reload)")
        #expect(reload.stderr.contains("reload is allowed to root"), "\(reload)")
        #expect(try daemon.servedRevision() == before)
        // --json prints the error object as the daemon sent it.
        let json = try rulesctl(as: user, socket + ["reload", "--json"])
        #expect(json.status == 1, "\(json)")
        #expect(json.stdout.contains(#""code":"FORBIDDEN""#), "\(json)")

        let ping = try rulesctl(as: user, socket + ["ping"])
        #expect(ping.status == 0, "\(ping)")
        let flag = try rulesctl(as: user, socket + ["flag", "x"])
        #expect(flag.status == 0, "\(flag)")
        #expect(flag.stdout.contains("on"), "\(flag)")

        // Root may, on the same socket.
        #expect(try runRulesctl(socket + ["reload"]).status == 0)
        #expect(try daemon.servedRevision() != before)
    }

    @Test("a member of the socket's group may reload")
    func groupMemberMayReload() throws {
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: true)
        let daemon = try startDaemon(group: socketGroup.name)
        let before = try #require(try daemon.servedRevision())
        try daemon.writeRule("b.lua", "flag \"y\" {}\n")

        let reload = try rulesctl(as: user, ["--socket", daemon.socketPath, "reload"])
        #expect(reload.status == 0, "\(reload)")
        #expect(reload.stdout.hasPrefix("reloaded"), "\(reload)")
        #expect(try daemon.servedRevision() != before)
    }

    @Test("a process with the socket's group among its supplementary groups may reload, though no database says so")
    func supplementaryGroupOfTheProcessMayReload() throws {
        // What SO_PEERGROUPS reports, as under PrivateUsers=yes or with a container's supplemental groups: the
        // account database does not list the user in the group, the process's credentials do.
        let user = try ThrowawayUser()
        let socketGroup = try user.addGroup(suffix: "s", member: false)
        let daemon = try startDaemon(group: socketGroup.name)
        let socket = ["--socket", daemon.socketPath]
        let reload = try rulesctl(as: user, groups: [socketGroup.gid], socket + ["reload"])
        #expect(reload.status == 0, "\(reload)")
        #expect(reload.stdout.hasPrefix("unchanged"), "\(reload)")
        // The same user without that group in its credentials is refused.
        #expect(try rulesctl(as: user, groups: [], socket + ["reload"]).status == 1)
    }

    @Test("a user whose primary group is the socket's group may reload")
    func primaryGroupMayReload() throws {
        let user = try ThrowawayUser()
        let daemon = try startDaemon(group: user.name)
        let reload = try rulesctl(as: user, groups: [], ["--socket", daemon.socketPath, "reload"])
        #expect(reload.status == 0, "\(reload)")
        #expect(reload.stdout.hasPrefix("unchanged"), "\(reload)")
    }
}
