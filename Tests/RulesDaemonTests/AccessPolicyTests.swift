import RulesDaemon
import RulesProtocol
import SystemdSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Ids no account database in a test environment uses.
private let strangerUID: uid_t = 3_999_999
private let strangerGID: gid_t = 3_999_998
private let ownUID: uid_t = 3_999_990

private func stranger(groups: [gid_t]? = nil, gid: gid_t = strangerGID) -> PeerCredentials {
    PeerCredentials(pid: 4, uid: strangerUID, gid: gid, supplementaryGroups: groups)
}

private func policy(_ settings: [DaemonSettings.Key: String]) throws -> ResolvedAccessPolicy {
    var resolved = DaemonSettings()
    for (key, value) in settings { try resolved.apply(key, value: value, from: .commandLine) }
    return try resolved.accessPolicy.resolved(ownUID: ownUID)
}

@Suite("Access policy")
struct AccessPolicyTests {
    @Test("principals: *, user:, uid:, group:, gid:, separated by spaces or commas; empty for nobody")
    func parsesPrincipals() throws {
        #expect(
            try AccessPolicy.parsePrincipals("group:ops user:alice, uid:1001 gid:27 *") == [
                .group("ops"), .user("alice"), .uid(1001), .gid(27), .everyone,
            ])
        #expect(try AccessPolicy.parsePrincipals("") == [])
        #expect(try AccessPolicy.parsePrincipals("uid:5 uid:5") == [.uid(5)])
        for bad in ["alice", "uid:abc", "uid:-1", "uid:4294967295", "role:x", "user:", "group:two words", "user:-x"] {
            #expect(throws: SettingsError.self, "\(bad)") { try AccessPolicy.parsePrincipals(bad) }
        }
    }

    @Test("role settings read and print back in the config file's form")
    func settingsRoundTrip() throws {
        var settings = DaemonSettings()
        try settings.apply(.roleOperate, value: "group:ops  user:alice,uid:1001", from: .commandLine)
        #expect(settings.accessPolicy[.operate] == [.group("ops"), .user("alice"), .uid(1001)])
        #expect(settings.configurationText.contains("role_operate = group:ops user:alice uid:1001\n"))
        #expect(DaemonSettings().configurationText.contains("role_query = *\n"))
        #expect(DaemonSettings().configurationText.contains("role_admin = \"\"\n"))
        #expect(throws: SettingsError.self) { try settings.apply(.roleAdmin, value: "ops", from: .commandLine) }
    }

    @Test("an unknown role setting is an error, like every unknown setting")
    func unknownRoleSetting() {
        #expect(DaemonSettings.Key(rawValue: "role_superuser") == nil)
        #expect(throws: SettingsError.self) {
            try DaemonSettings.resolve(
                commandLine: [], environment: ["RULESD_ROLE_SUPERUSER": "*"], configFile: nil,
                defaultConfigFile: "/nonexistent/rulesd.conf")
        }
    }

    @Test("without a policy, everyone may query and observe; root and rulesd's user hold every role")
    func defaults() throws {
        let access = try AccessPolicy().resolved(ownUID: ownUID)
        #expect(access.roles(for: stranger()) == [.query, .observe])
        #expect(access.roles(for: PeerCredentials(pid: 1, uid: 0, gid: 0)) == .all)
        #expect(access.roles(for: PeerCredentials(pid: 2, uid: ownUID, gid: strangerGID)) == .all)
        // A peer whose credentials cannot be read holds only what everyone holds.
        #expect(access.roles(for: nil) == [.query, .observe])
    }

    @Test("uids, primary and supplementary groups grant their roles")
    func grantsByCredentials() throws {
        let access = try policy([.roleOperate: "uid:\(strangerUID)", .roleAdmin: "gid:4242", .roleObserve: "gid:77"])
        #expect(access.roles(for: stranger()) == [.query, .operate])
        #expect(access.roles(for: stranger(gid: 77)) == [.query, .observe, .operate])
        #expect(access.roles(for: stranger(groups: [1, 4242])) == .all)
        let other = PeerCredentials(pid: 5, uid: strangerUID + 1, gid: strangerGID)
        #expect(access.roles(for: other) == [.query])
    }

    @Test("an empty role_query and role_observe leave strangers with nothing; * grants to anyone")
    func restricted() throws {
        let access = try policy([.roleQuery: "", .roleObserve: "", .roleOperate: "*"])
        #expect(access.roles(for: stranger()) == [.operate])
        #expect(access.roles(for: nil) == [.operate])
    }

    @Test("user and group names are looked up when the policy is resolved; unknown names are errors")
    func namesAreLookedUp() throws {
        // `daemon` (uid 1, group `daemon`, gid 1) is in every Debian base system's account database.
        let user = try #require(getpwnam("daemon")).pointee
        let byUser = try policy([.roleOperate: "user:daemon"])
        #expect(byUser.roles(for: PeerCredentials(pid: 6, uid: user.pw_uid, gid: strangerGID)).contains(.operate))
        let byGroup = try policy([.roleAdmin: "group:daemon"])
        #expect(byGroup.roles(for: stranger(gid: user.pw_gid)) == .all)
        #expect(throws: SettingsError.self) { try policy([.roleOperate: "user:no-such-user-here"]) }
        #expect(throws: SettingsError.self) { try policy([.roleAdmin: "group:no-such-group-here"]) }
    }
}
