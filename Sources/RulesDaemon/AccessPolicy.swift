import RulesProtocol
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Who a role is granted to: `*` (everyone who can open the socket), `user:NAME`, `uid:N`, `group:NAME` or
/// `gid:N`. A group counts when it is the peer's primary group, one of the supplementary groups its process had
/// when it connected (`SO_PEERGROUPS`), or one the account database lists it in.
public enum AccessPrincipal: Sendable, Hashable, CustomStringConvertible {
    case everyone
    case user(String)
    case uid(uid_t)
    case group(String)
    case gid(gid_t)

    /// Parses one principal as the `role_*` settings spell it.
    /// - Throws: ``SettingsError`` saying what is expected.
    public static func parse(_ text: String) throws(SettingsError) -> AccessPrincipal {
        if text == "*" { return .everyone }
        guard let colon = text.firstIndex(of: ":") else {
            throw SettingsError("expected *, user:NAME, uid:N, group:NAME or gid:N, got '\(text)'")
        }
        let kind = text[..<colon]
        let value = String(text[text.index(after: colon)...])
        switch kind {
        case "user", "group":
            let allowed = value.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-$".contains($0)) }
            guard !value.isEmpty, allowed, value.first != "-", value.utf8.count <= 32 else {
                throw SettingsError("expected a \(kind) name after '\(kind):', got '\(text)'")
            }
            return kind == "user" ? .user(value) : .group(value)
        case "uid", "gid":
            // (uid_t)-1 means "no id" to the kernel's id calls, so it cannot name anyone.
            guard value.allSatisfy({ $0.isASCII && $0.isNumber }), let id = UInt32(value), id != UInt32.max else {
                throw SettingsError("expected a number after '\(kind):', got '\(text)'")
            }
            return kind == "uid" ? .uid(id) : .gid(id)
        default:
            throw SettingsError("expected *, user:NAME, uid:N, group:NAME or gid:N, got '\(text)'")
        }
    }

    public var description: String {
        switch self {
        case .everyone: "*"
        case .user(let name): "user:\(name)"
        case .uid(let id): "uid:\(id)"
        case .group(let name): "group:\(name)"
        case .gid(let id): "gid:\(id)"
        }
    }
}

/// The access policy of the daemon configuration: for each role, the principals it is granted to
/// (`role_query`, `role_observe`, `role_operate`, `role_admin`).
///
/// Root and rulesd's own user hold every role whatever the policy says (they can change the daemon's files and
/// signal it anyway), so no policy can lock the operator out. Without any `role_*` setting, everyone who can
/// open the socket may `query` and `observe`, and `operate` and `admin` are theirs alone.
///
/// One grant list per role now; a per-namespace policy would add lists keyed by namespace beside these, with
/// these as the default for a namespace that has none.
public struct AccessPolicy: Sendable, Equatable {
    public var grants: [AccessRole: [AccessPrincipal]] = [
        .query: [.everyone], .observe: [.everyone], .operate: [], .admin: [],
    ]

    public init() {}

    /// The principals of one role.
    public subscript(role: AccessRole) -> [AccessPrincipal] {
        get { grants[role] ?? [] }
        set { grants[role] = newValue }
    }

    /// Parses a `role_*` value: principals separated by spaces or commas; empty for nobody beyond root and
    /// rulesd's user.
    public static func parsePrincipals(_ text: String) throws(SettingsError) -> [AccessPrincipal] {
        var principals: [AccessPrincipal] = []
        for word in text.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\t" }) {
            let principal = try AccessPrincipal.parse(String(word))
            if !principals.contains(principal) { principals.append(principal) }
        }
        return principals
    }

    /// A `role_*` value as the config file spells it.
    public static func render(_ principals: [AccessPrincipal]) -> String {
        principals.map(\.description).joined(separator: " ")
    }

    /// The policy with user and group names looked up, ready to decide.
    /// - Throws: ``SettingsError`` naming a user or group the account database does not know.
    public func resolved(ownUID: uid_t = geteuid()) throws(SettingsError) -> ResolvedAccessPolicy {
        var resolved = ResolvedAccessPolicy(ownUID: ownUID)
        for role in AccessRole.allCases {
            var grant = ResolvedAccessPolicy.Grant()
            for principal in self[role] {
                switch principal {
                case .everyone: grant.everyone = true
                case .uid(let id): grant.uids.insert(id)
                case .gid(let id): grant.gids.insert(id)
                case .user(let name):
                    guard let entry = getpwnam(name) else {
                        throw SettingsError("role_\(role.rawValue): no user named '\(name)'")
                    }
                    grant.uids.insert(entry.pointee.pw_uid)
                case .group(let name):
                    guard let gid = GroupMembership.groupID(named: name) else {
                        throw SettingsError("role_\(role.rawValue): no group named '\(name)'")
                    }
                    grant.gids.insert(gid)
                }
            }
            resolved.grants[AccessRole.allCases.firstIndex(of: role)!] = grant
        }
        return resolved
    }
}

/// An ``AccessPolicy`` with names turned into ids: decides which roles a peer holds.
public struct ResolvedAccessPolicy: Sendable {
    struct Grant: Sendable {
        var everyone = false
        var uids: Set<uid_t> = []
        var gids: Set<gid_t> = []
    }

    /// In the order of ``AccessRole``: query, observe, operate, admin.
    var grants = [Grant](repeating: Grant(), count: 4)
    /// rulesd's own user, which holds every role.
    let ownUID: uid_t

    init(ownUID: uid_t) {
        self.ownUID = ownUID
    }

    private static let roleSets: [AccessRoles] = [.query, .observe, .operate, .all]

    /// The roles `peer` holds.
    ///
    /// Without `lookingUpGroups`, only what the peer's credentials carry counts (its uid, primary group and
    /// supplementary groups): enough for every connection that needs no more, and free of account-database
    /// lookups. With it, groups the account database lists the user in count too; connections ask for that
    /// only when a request needs a role the quick answer lacks.
    /// - Parameters:
    ///   - peer: the connection's credentials; nil (not an AF_UNIX peer) holds only what `*` grants.
    ///   - lookingUpGroups: whether to consult the account database for group membership.
    /// - Returns: the roles held.
    public func roles(for peer: PeerCredentials?, lookingUpGroups: Bool = true) -> AccessRoles {
        guard let peer else {
            var roles: AccessRoles = []
            for (index, grant) in grants.enumerated() where grant.everyone { roles.formUnion(Self.roleSets[index]) }
            return roles
        }
        if peer.uid == 0 || peer.uid == ownUID { return .all }
        var roles: AccessRoles = []
        for (index, grant) in grants.enumerated() where !roles.isSuperset(of: Self.roleSets[index]) {
            if grant.everyone || grant.uids.contains(peer.uid) || grant.gids.contains(peer.gid)
                || peer.supplementaryGroups?.contains(where: grant.gids.contains) == true
                || (lookingUpGroups
                    && grant.gids.contains { GroupMembership.isMember(uid: peer.uid, gid: peer.gid, ofGroup: $0) })
            {
                roles.formUnion(Self.roleSets[index])
            }
        }
        return roles
    }
}
