import Glibc

/// Who is at the other end of a connected AF_UNIX socket, as the kernel recorded it at `connect()`.
public struct PeerCredentials: Sendable, Equatable {
    /// The peer's process id (0 when the peer lives in a pid namespace we cannot see into).
    public let pid: pid_t
    /// The peer's effective user id.
    public let uid: uid_t
    /// The peer's effective group id.
    public let gid: gid_t
    /// The peer's supplementary groups (``peerGroups(fd:)``), when read.
    public var supplementaryGroups: [gid_t]?

    /// Creates a value.
    /// - Parameters:
    ///   - pid: Process id.
    ///   - uid: User id.
    ///   - gid: Group id.
    ///   - supplementaryGroups: Supplementary group ids, when known.
    public init(pid: pid_t, uid: uid_t, gid: gid_t, supplementaryGroups: [gid_t]? = nil) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.supplementaryGroups = supplementaryGroups
    }
}

/// Reads the peer's credentials with `SO_PEERCRED`.
///
/// Swift's Glibc module does not import `struct ucred` (it needs `_GNU_SOURCE`), so the 12 bytes
/// are read into a tuple with the same layout: `pid_t pid; uid_t uid; gid_t gid`.
/// - Parameters:
///   - fd: A connected AF_UNIX socket (e.g. one returned by `accept`).
/// - Returns: The credentials, or nil when `fd` is not such a socket.
public func peerCredentials(fd: Int32) -> PeerCredentials? {
    var raw: (Int32, UInt32, UInt32) = (0, 0, 0)
    var length = socklen_t(MemoryLayout.size(ofValue: raw))
    guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &raw, &length) == 0,
        Int(length) == MemoryLayout.size(ofValue: raw)
    else { return nil }
    return PeerCredentials(pid: raw.0, uid: raw.1, gid: raw.2)
}

/// Reads the peer's supplementary groups with `SO_PEERGROUPS` (Linux 4.13 and later).
///
/// This is what the peer process really had at `connect()`, which beats looking its user up in
/// the group database: the database may have changed since the user logged in, and inside a user
/// namespace (`PrivateUsers=yes`) an unmapped uid reads as `nobody` while a mapped group such as
/// the socket's group still shows up here.
/// - Parameters:
///   - fd: A connected AF_UNIX socket.
/// - Returns: The group ids (possibly empty), or nil when the kernel cannot tell.
public func peerGroups(fd: Int32) -> [gid_t]? {
    var capacity = 64
    while true {
        var groups = [gid_t](repeating: 0, count: capacity)
        var length = socklen_t(capacity * MemoryLayout<gid_t>.size)
        let result = groups.withUnsafeMutableBytes { buffer in
            getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, buffer.baseAddress, &length)
        }
        if result == 0 {
            return Array(groups.prefix(Int(length) / MemoryLayout<gid_t>.size))
        }
        // ERANGE: the kernel wrote the size it needs into `length`.
        guard Glibc.errno == ERANGE, Int(length) / MemoryLayout<gid_t>.size > capacity else { return nil }
        capacity = Int(length) / MemoryLayout<gid_t>.size
    }
}

/// Group lookups for deciding what a peer may do.
public enum GroupMembership {
    /// Whether a user belongs to a group according to the group database (NSS).
    ///
    /// True when `gid` (the primary group) is `group`, when the user's group list
    /// (`getgrouplist`) holds it, or when the group's member list (`getgrgid_r`) names the user.
    /// - Parameters:
    ///   - uid: The user.
    ///   - gid: The user's primary (or effective) group.
    ///   - group: The group asked about.
    /// - Returns: Whether the user is a member.
    public static func isMember(uid: uid_t, gid: gid_t, ofGroup group: gid_t) -> Bool {
        if gid == group { return true }
        guard let name = userName(uid: uid) else { return false }
        if groupList(user: name, primaryGroup: gid).contains(group) { return true }
        return members(ofGroup: group)?.contains(name) ?? false
    }

    /// Whether a peer may change the daemon's state (e.g. `reload`): root, the daemon's own user,
    /// or a member of `group` (normally the socket's group).
    ///
    /// Membership counts from the peer's real credentials first (`supplementaryGroups`, from
    /// ``peerGroups(fd:)``) and from the group database second.
    /// - Parameters:
    ///   - peer: The peer's credentials.
    ///   - supplementaryGroups: The peer's supplementary groups, if known.
    ///   - group: The group whose members are trusted.
    ///   - ownUID: The daemon's user id.
    /// - Returns: Whether the peer is trusted.
    public static func isPrivileged(
        peer: PeerCredentials,
        supplementaryGroups: [gid_t]?,
        group: gid_t,
        ownUID: uid_t = geteuid()
    ) -> Bool {
        if peer.uid == 0 || peer.uid == ownUID || peer.gid == group { return true }
        if supplementaryGroups?.contains(group) == true { return true }
        return isMember(uid: peer.uid, gid: peer.gid, ofGroup: group)
    }

    /// ``isPrivileged(peer:supplementaryGroups:group:ownUID:)`` for a connected socket.
    /// - Parameters:
    ///   - fd: A connected AF_UNIX socket.
    ///   - group: The group whose members are trusted.
    ///   - ownUID: The daemon's user id.
    /// - Returns: Whether the peer is trusted; false when its credentials cannot be read.
    public static func isPrivilegedPeer(fd: Int32, group: gid_t, ownUID: uid_t = geteuid()) -> Bool {
        guard let peer = peerCredentials(fd: fd) else { return false }
        return isPrivileged(peer: peer, supplementaryGroups: peerGroups(fd: fd), group: group, ownUID: ownUID)
    }

    /// Looks up a group id by name (`getgrnam_r`).
    /// - Parameters:
    ///   - name: A group name such as "rulesd".
    /// - Returns: The group id, or nil when there is no such group.
    public static func groupID(named name: String) -> gid_t? {
        withGroupBuffer { group, buffer, result in
            getgrnam_r(name, &group, buffer.baseAddress, buffer.count, &result)
        } read: {
            $0.gr_gid
        }
    }

    /// Looks up a user name by id (`getpwuid_r`).
    /// - Parameters:
    ///   - uid: A user id.
    /// - Returns: The name, or nil when there is no such user.
    public static func userName(uid: uid_t) -> String? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 1024)
        while true {
            let code = getpwuid_r(uid, &entry, &buffer, buffer.count, &result)
            if code == ERANGE, buffer.count < 1 << 20 {
                buffer = [CChar](repeating: 0, count: buffer.count * 4)
                continue
            }
            guard code == 0, result != nil, let name = entry.pw_name else { return nil }
            return String(cString: name)
        }
    }

    /// The member names listed for a group in the database (`getgrgid_r`).
    static func members(ofGroup gid: gid_t) -> [String]? {
        withGroupBuffer { group, buffer, result in
            getgrgid_r(gid, &group, buffer.baseAddress, buffer.count, &result)
        } read: { group in
            var names: [String] = []
            var cursor = group.gr_mem
            while let member = cursor?.pointee {
                names.append(String(cString: member))
                cursor = cursor?.successor()
            }
            return names
        }
    }

    /// The groups of a user (`getgrouplist`), primary group included.
    static func groupList(user: String, primaryGroup: gid_t) -> [gid_t] {
        var count: Int32 = 32
        while true {
            var groups = [gid_t](repeating: 0, count: Int(count))
            var found = count
            if getgrouplist(user, primaryGroup, &groups, &found) >= 0 {
                return Array(groups.prefix(Int(found)))
            }
            // -1: too small; `found` now holds the number needed.
            guard found > count else { return [primaryGroup] }
            count = found
        }
    }

    /// Runs a `getgr*_r` call with a buffer that grows on ERANGE, then reads the entry.
    private static func withGroupBuffer<Value>(
        _ call: (inout group, UnsafeMutableBufferPointer<CChar>, inout UnsafeMutablePointer<group>?) -> Int32,
        read: (group) -> Value
    ) -> Value? {
        var size = 1024
        while true {
            var entry = group()
            var result: UnsafeMutablePointer<group>?
            var buffer = [CChar](repeating: 0, count: size)
            let code = buffer.withUnsafeMutableBufferPointer { call(&entry, $0, &result) }
            if code == ERANGE, size < 1 << 22 {
                size *= 4
                continue
            }
            guard code == 0, result != nil else { return nil }
            // The entry points into `buffer`, so it is read before the buffer goes away.
            return withExtendedLifetime(buffer) { read(entry) }
        }
    }
}
