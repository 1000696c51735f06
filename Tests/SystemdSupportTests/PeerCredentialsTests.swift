import Glibc
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
