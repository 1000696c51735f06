import Foundation
import Glibc
import RulesTestSupport
import SystemdSupport
import Testing

/// A connected AF_UNIX stream pair; both ends are closed by the caller.
private func streamPair() -> (Int32, Int32) {
    var fds: [Int32] = [-1, -1]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
    return (fds[0], fds[1])
}

/// A user id that no account database in a test environment uses.
private let strangerUID: uid_t = 3_999_999
private let strangerGID: gid_t = 3_999_998

@Suite("Peer credentials and groups")
struct PeerCredentialsTests {
    @Test("Peer credentials over a socketpair are our own pid, uid and gid")
    func ownCredentials() throws {
        let (left, right) = streamPair()
        defer { close(left); close(right) }
        let peer = try #require(peerCredentials(fd: left))
        #expect(peer == PeerCredentials(pid: getpid(), uid: geteuid(), gid: getegid()))
    }

    @Test("A descriptor that is not a socket has no peer credentials")
    func noCredentialsForPipe() {
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(peerCredentials(fd: fds[0]) == nil)
    }

    @Test("Peer groups over a socketpair are our supplementary groups")
    func ownGroups() throws {
        let (left, right) = streamPair()
        defer { close(left); close(right) }
        let count = getgroups(0, nil)
        var expected = [gid_t](repeating: 0, count: Int(count))
        _ = getgroups(count, &expected)
        let groups = try #require(peerGroups(fd: right))
        #expect(groups.sorted() == expected.sorted())
    }

    @Test("The primary group counts as membership")
    func primaryGroupIsMembership() {
        #expect(GroupMembership.isMember(uid: strangerUID, gid: 4242, ofGroup: 4242))
    }

    @Test("An unknown user is a member of no other group")
    func strangerIsNoMember() {
        #expect(!GroupMembership.isMember(uid: strangerUID, gid: strangerGID, ofGroup: 0))
    }

    @Test("A user is a member of the groups its database entry lists")
    func databaseMembership() throws {
        // root exists everywhere; whatever groups the database gives it, through getgrouplist(3). An
        // unrelated primary group makes every other answer come from the database.
        var count: Int32 = 256
        var groups = [gid_t](repeating: 0, count: Int(count))
        try #require(getgrouplist("root", strangerGID, &groups, &count) >= 0)
        for group in groups.prefix(Int(count)) {
            #expect(GroupMembership.isMember(uid: 0, gid: strangerGID, ofGroup: group), "group \(group)")
        }
    }

    @Test("Root and the daemon's own user are privileged peers")
    func rootAndSelfArePrivileged() {
        let root = PeerCredentials(pid: 1, uid: 0, gid: 0)
        let daemon = PeerCredentials(pid: 2, uid: 997, gid: 997)
        #expect(GroupMembership.isPrivileged(peer: root, supplementaryGroups: nil, group: 4242, ownUID: 997))
        #expect(GroupMembership.isPrivileged(peer: daemon, supplementaryGroups: nil, group: 4242, ownUID: 997))
    }

    @Test("A peer with the socket's group among its supplementary groups is privileged")
    func supplementaryGroupIsPrivileged() {
        let admin = PeerCredentials(pid: 3, uid: strangerUID, gid: strangerGID)
        #expect(GroupMembership.isPrivileged(peer: admin, supplementaryGroups: [27, 4242], group: 4242, ownUID: 997))
    }

    @Test("A stranger outside the socket's group is not privileged")
    func strangerIsNotPrivileged() {
        let stranger = PeerCredentials(pid: 4, uid: strangerUID, gid: strangerGID)
        #expect(!GroupMembership.isPrivileged(peer: stranger, supplementaryGroups: [27], group: 4242, ownUID: 997))
    }

    @Test("Our own end of a socketpair is a privileged peer")
    func socketPairPeerIsPrivileged() {
        let (left, right) = streamPair()
        defer { close(left); close(right) }
        #expect(GroupMembership.isPrivilegedPeer(fd: left, group: strangerGID))
    }

    @Test("A descriptor without peer credentials is never privileged")
    func noPeerIsNotPrivileged() {
        #expect(!GroupMembership.isPrivilegedPeer(fd: -1, group: 0))
    }

    @Test("Group names resolve to ids")
    func groupLookup() {
        #expect(GroupMembership.groupID(named: "root") == 0)
        #expect(GroupMembership.groupID(named: "no-such-group-for-rulesd") == nil)
    }

    @Test("User ids resolve to names")
    func userLookup() {
        #expect(GroupMembership.userName(uid: 0) == "root")
        #expect(GroupMembership.userName(uid: strangerUID) == nil)
    }
}

/// Connects to a socket of ours as `user` (rulesctl run through setpriv, with the groups the account database
/// gives the user, or exactly `groups`) and calls `inspect` with our end of the accepted connection; the
/// connection records the child's credentials at `connect`, so its request is left unanswered.
private func acceptConnection(
    from user: ThrowawayUser, groups: [gid_t]?, _ inspect: (Int32) throws -> Void
) throws {
    let scratch = ScratchDirectory()
    // mkdtemp makes the directory 0700: let the other user reach the socket inside it.
    try #require(chmod(scratch.path, 0o755) == 0)
    let path = scratch.file("s")
    let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    try #require(listener >= 0)
    defer { close(listener) }
    try #require(withTestAddress(path: path) { bind(listener, $0, $1) } == 0)
    try #require(chmod(path, 0o777) == 0)
    try #require(listen(listener, 1) == 0)

    let child = Process()
    let command = user.runAs(groups: groups) + [DaemonHarness.binary("rulesctl"), "--socket", path, "ping"]
    child.executableURL = URL(fileURLWithPath: command[0])
    child.arguments = Array(command.dropFirst())
    child.standardOutput = FileHandle.nullDevice
    child.standardError = FileHandle.nullDevice
    try child.run()
    defer {
        if child.isRunning { kill(child.processIdentifier, SIGKILL) }
        child.waitUntilExit()
    }
    var ready = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
    try #require(poll(&ready, 1, 60_000) == 1, "rulesctl run as \(user.name) never connected")
    let connection = accept(listener, nil, nil)
    try #require(connection >= 0)
    defer { close(connection) }
    try inspect(connection)
}

@Suite(
    "Peer credentials of another user",
    .serialized,
    .enabled(if: ThrowawayUser.isUsable, Comment(rawValue: ThrowawayUser.skipReason ?? "")))
struct SecondUserCredentialsTests {
    @Test("another user's peer credentials are its uid and primary gid, and it is not privileged")
    func strangerCredentials() throws {
        let user = try ThrowawayUser()
        let unrelated = try user.addGroup(suffix: "u", member: false)
        try acceptConnection(from: user, groups: []) { connection in
            let peer = try #require(peerCredentials(fd: connection))
            #expect(peer.uid == user.uid)
            #expect(peer.gid == user.gid)
            #expect(peer.pid > 0)
            #expect(peerGroups(fd: connection) == [])
            #expect(!GroupMembership.isPrivilegedPeer(fd: connection, group: unrelated.gid))
            #expect(GroupMembership.isPrivilegedPeer(fd: connection, group: user.gid))
        }
    }

    @Test("supplementary groups come from the peer's credentials (SO_PEERGROUPS), even ones no database lists")
    func supplementaryGroupsFromCredentials() throws {
        let user = try ThrowawayUser()
        // The user is no member of these in the account database: only the process's credentials carry them.
        let first = try user.addGroup(suffix: "a", member: false)
        let second = try user.addGroup(suffix: "b", member: false)
        let outside = try user.addGroup(suffix: "c", member: false)
        try acceptConnection(from: user, groups: [first.gid, second.gid]) { connection in
            #expect(peerGroups(fd: connection)?.sorted() == [first.gid, second.gid].sorted())
            #expect(GroupMembership.isPrivilegedPeer(fd: connection, group: second.gid))
            #expect(!GroupMembership.isPrivilegedPeer(fd: connection, group: outside.gid))
            #expect(!GroupMembership.isMember(uid: user.uid, gid: user.gid, ofGroup: second.gid))
        }
    }

    @Test("a group the account database lists the user in is membership, with or without it in the credentials")
    func databaseGroupOfARealUser() throws {
        let user = try ThrowawayUser()
        let listed = try user.addGroup(suffix: "m", member: true)
        #expect(GroupMembership.isMember(uid: user.uid, gid: user.gid, ofGroup: listed.gid))
        try acceptConnection(from: user, groups: nil) { connection in
            // --init-groups: what a login gets from the database.
            #expect(peerGroups(fd: connection)?.contains(listed.gid) == true)
            #expect(GroupMembership.isPrivilegedPeer(fd: connection, group: listed.gid))
        }
        try acceptConnection(from: user, groups: []) { connection in
            #expect(peerGroups(fd: connection) == [])
            #expect(GroupMembership.isPrivilegedPeer(fd: connection, group: listed.gid))
        }
    }
}
