import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A real second user (and groups of its own), added to the system's account database for one test and
/// removed again when the value is released, also when the test fails.
///
/// Only root can add users, so tests that need one run as root (CI) and are skipped elsewhere with
/// ``skipReason``. Programs run as the user through util-linux's `setpriv`.
public final class ThrowawayUser: @unchecked Sendable {
    // @unchecked: immutable after init but for `extraGroups`, which only the owning test touches.

    /// Whether tests with a second user run here.
    public static var isUsable: Bool { skipReason == nil }

    /// Why tests with a second user are skipped here, or `nil` when they run.
    public static let skipReason: String? = {
        guard geteuid() == 0 else { return "adding a second user needs root; run the tests as root to run it" }
        for tool in [useradd, userdel, groupadd, groupdel, setpriv]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            return "needs \(tool) (passwd, util-linux)"
        }
        return nil
    }()

    static let useradd = "/usr/sbin/useradd"
    static let userdel = "/usr/sbin/userdel"
    static let groupadd = "/usr/sbin/groupadd"
    static let groupdel = "/usr/sbin/groupdel"
    static let gpasswd = "/usr/bin/gpasswd"
    /// util-linux's `setpriv`, to run a program with the user's ids.
    public static let setpriv = "/usr/bin/setpriv"

    /// The account tools lock /etc/passwd and /etc/group; tests running at the same time take turns.
    private static let accountLock = NSLock()

    public let name: String
    public let uid: uid_t
    /// The user's primary group, named like the user.
    public let gid: gid_t
    private var extraGroups: [String] = []

    /// Adds a user with a primary group of its own, no home directory and no login shell.
    public init() throws {
        _ = Self.leftoversRemoved
        // Unique across concurrent runs on one machine; user names are at most 32 bytes.
        name = "rdt\(getpid())x\(UInt32.random(in: 0..<1_000_000))"
        try Self.account([Self.groupadd, name])
        do {
            try Self.account([Self.useradd, "-M", "-N", "-g", name, "-s", "/usr/sbin/nologin", name])
        } catch {
            try? Self.account([Self.groupdel, name])
            throw error
        }
        guard let entry = getpwnam(name) else {
            Self.remove(user: name, groups: [name])
            throw HarnessError("useradd \(name) left no passwd entry")
        }
        uid = entry.pointee.pw_uid
        gid = entry.pointee.pw_gid
    }

    deinit { Self.remove(user: name, groups: [name] + extraGroups) }

    /// Adds a new group, named after the user with `suffix`; with `member`, the account database lists the user
    /// as its member (what `initgroups` then gives a login).
    /// - Returns: The group's name and id.
    public func addGroup(suffix: String, member: Bool) throws -> (name: String, gid: gid_t) {
        let group = name + suffix
        try Self.account([Self.groupadd, group])
        extraGroups.append(group)
        if member { try Self.account([Self.gpasswd, "-a", name, group]) }
        guard let entry = getgrnam(group) else { throw HarnessError("groupadd \(group) left no group entry") }
        return (group, entry.pointee.gr_gid)
    }

    /// `setpriv` arguments that run a program as this user: its uid and primary gid, and as supplementary groups
    /// either what the account database lists (`groups == nil`) or exactly `groups`.
    public func runAs(groups: [gid_t]? = nil) -> [String] {
        let groupOption =
            groups.map { $0.isEmpty ? "--clear-groups" : "--groups=" + $0.map(String.init).joined(separator: ",") }
            ?? "--init-groups"
        return [Self.setpriv, "--reuid=\(uid)", "--regid=\(gid)", groupOption, "--"]
    }

    /// Users and groups of test runs that died before releasing them (a crash, a SIGKILL), removed once per run:
    /// the name carries the pid of the run that made it.
    private static let leftoversRemoved: Void = {
        func ownerIsGone(_ name: String) -> Bool {
            guard name.hasPrefix("rdt"), let end = name.firstIndex(of: "x"),
                let pid = pid_t(name[name.index(name.startIndex, offsetBy: 3)..<end])
            else { return false }
            return kill(pid, 0) != 0 && errno == ESRCH
        }
        var users: [String] = []
        setpwent()
        while let entry = getpwent() { users.append(String(cString: entry.pointee.pw_name)) }
        endpwent()
        var groups: [String] = []
        setgrent()
        while let entry = getgrent() { groups.append(String(cString: entry.pointee.gr_name)) }
        endgrent()
        for user in users where ownerIsGone(user) { try? account([userdel, user]) }
        for group in groups.reversed() where ownerIsGone(group) { try? account([groupdel, group]) }
    }()

    private static func remove(user: String, groups: [String]) {
        try? account([userdel, user])
        for group in groups.reversed() { try? account([groupdel, group]) }
    }

    private static func account(_ command: [String]) throws {
        accountLock.lock()
        defer { accountLock.unlock() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        let message = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw HarnessError(
                "\(command.joined(separator: " ")) exited \(process.terminationStatus): "
                    + String(decoding: message, as: UTF8.self))
        }
    }
}
