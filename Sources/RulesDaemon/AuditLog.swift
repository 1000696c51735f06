import Atomics
import Logging
import NIOCore
import NIOPosix
import RuleModel
import RulesProtocol
import Synchronization
import SystemClock
import SystemdSupport

#if canImport(Glibc)
    import Glibc
#endif

/// One thing the audit log records: a reload, an operation that changes what serves, a refused request, or (for
/// what is built on this) an override. ``AuditLog/record(_:)`` adds the time and writes it.
public struct AuditEvent: Sendable {
    /// The kinds of events, each with a stable journal `MESSAGE_ID`.
    public enum Kind: String, Sendable, CaseIterable {
        /// A reload, rollback or resume that changed what serves, or failed.
        case reload
        /// An `operate` or `admin` operation, with the peer and its outcome.
        case operation
        /// Requests answered `FORBIDDEN` (rate-limited: one line stands for `count` of them).
        case refused
        /// An override set, cleared or expired.
        case override

        /// The journal's `MESSAGE_ID` of this kind of event (`journalctl MESSAGE_ID=...`); never changes.
        public var messageID: String {
            switch self {
            case .reload: "1736c599bf54401597ef3cc7324361a9"
            case .operation: "2f27ccd9aeec47bab60f79498522c0ad"
            case .refused: "c824840fd7c340769125d44846f28651"
            case .override: "dc2420b803b14db5bc643ddf669c0dc9"
            }
        }
    }

    public var kind: Kind
    /// The members after `at` and `event`, in order.
    public var members: [(String, JSONValue)]
    /// One line for people: the journal's `MESSAGE`.
    public var message: String
    /// Whether the event is a failure: a failed reload or operation, at `warning` in the journal rather than
    /// `notice`. Refusals are not failures of rulesd's: they stay at `notice`.
    public var isFailure: Bool

    public init(kind: Kind, members: [(String, JSONValue)], message: String, isFailure: Bool = false) {
        self.kind = kind
        self.members = members
        self.message = message
        self.isFailure = isFailure
    }

    /// An operation a peer asked for, and its outcome.
    /// - Parameters:
    ///   - operation: the operation's name (`reload`, `rollback`, ...).
    ///   - arguments: its arguments as sent (`{"revision":"6cae0ce8"}`), or an empty object.
    ///   - peer: the peer, as ``AuditPeer`` describes it.
    ///   - outcome: `ok` or the error code the peer was answered (`RELOAD_FAILED`, ...).
    ///   - detail: what happened, for people (`reloaded 6cae0ce8 -> 91b2d4aa`).
    public static func operation(
        _ operation: String, arguments: JSONValue = .object(JSONObject()), peer: AuditPeer, outcome: String,
        detail: String
    ) -> AuditEvent {
        AuditEvent(
            kind: .operation,
            members: [
                ("operation", .string(operation)), ("arguments", arguments), ("peer", peer.json),
                ("outcome", .string(outcome)), ("detail", .string(detail)),
            ],
            message: "\(operation) by \(peer.summary): \(outcome == "ok" ? detail : outcome + ": " + detail)",
            isFailure: outcome != "ok")
    }
}

/// Who asked: a connection's peer credentials, with the user's name and the executable when they can be read.
public struct AuditPeer: Sendable {
    public var uid: uid_t?
    public var gid: gid_t?
    public var pid: pid_t?
    public var user: String?
    /// `/proc/PID/exe`: readable for a peer of rulesd's own user, or any peer when rulesd runs as root.
    public var executable: String?

    /// The peer behind `credentials`, looked up now (the executable only while the process lives).
    public init(_ credentials: PeerCredentials?) {
        uid = credentials?.uid
        gid = credentials?.gid
        pid = credentials?.pid
        if let uid { user = GroupMembership.userName(uid: uid) }
        if let pid, pid > 0 { executable = Self.executable(of: pid) }
    }

    static func executable(of pid: pid_t) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/\(pid)/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    var json: JSONValue {
        [
            "uid": uid.map { .integer(Int64($0)) } ?? .null, "gid": gid.map { .integer(Int64($0)) } ?? .null,
            "pid": pid.map { .integer(Int64($0)) } ?? .null, "user": user.map { .string($0) } ?? .null,
            "exe": executable.map { .string($0) } ?? .null,
        ]
    }

    var summary: String {
        guard let uid else { return "an unknown peer" }
        return "uid \(uid)" + (user.map { " (\($0))" } ?? "") + (pid.map { " pid \($0)" } ?? "")
            + (executable.map { " \($0)" } ?? "")
    }
}

/// The audit log: JSON lines in `state_dir/audit/audit.jsonl` and, under systemd, structured journal entries
/// with a stable `MESSAGE_ID` per kind of event.
///
/// Every line is built whole and written with one `write(2)` to a file opened `O_APPEND`, so a reader never
/// sees half a line and nothing waits in a buffer of rulesd's. At `maxBytes` the file is renamed to
/// `audit.jsonl.1` (`.1` to `.2`, `.2` to `.3`; the oldest is dropped). The directory is 0700 and the files
/// 0600: reading them takes root or rulesd's user.
///
/// Writing happens on a thread of the log's own, so recording never blocks a worker. Refused requests are
/// rate-limited per peer user and operation: the first refusal is written at once, and the ones after it within
/// ``refusalWindow`` are counted and written as one line with their `count` when the window ends.
public final class AuditLog: Sendable {
    /// The length of a refusal window.
    public static let refusalWindow = TimeAmount.seconds(10)
    /// Rotated files kept beside the current one.
    public static let rotatedFiles = 3

    public let directory: String
    public var path: String { directory + "/audit.jsonl" }
    private let group: MultiThreadedEventLoopGroup
    private let loop: any EventLoop
    private let writer: NIOLoopBoundBox<AuditWriter>
    /// Set by ``close()``: a late event (an answer finishing during shutdown) is dropped rather than sent to a
    /// stopped thread. Shared with the namespaces' views of the log.
    private let closed: ManagedAtomic<Bool>
    /// The namespace this view's reload, operation and override lines name (see ``namespaced(_:)``).
    public let namespace: String?

    /// - Parameters:
    ///   - directory: where the files go (`state_dir/audit`); created when missing.
    ///   - maxBytes: the size at which the file is rotated.
    ///   - journal: where structured entries go, or nil.
    ///   - logger: where failures to write are reported.
    public init(directory: String, maxBytes: Int, journal: JournalSender?, logger: Logger) {
        self.directory = directory
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
        writer = NIOLoopBoundBox.makeBoxSendingValue(
            AuditWriter(directory: directory, maxBytes: maxBytes, journal: journal, logger: logger),
            as: AuditWriter.self, eventLoop: loop)
        closed = ManagedAtomic(false)
        namespace = nil
    }

    private init(sharing log: AuditLog, namespace: String) {
        directory = log.directory
        group = log.group
        loop = log.loop
        writer = log.writer
        closed = log.closed
        self.namespace = namespace
    }

    /// The same log, whose reload, operation and override lines carry `"namespace":NAME` first.
    public func namespaced(_ namespace: String) -> AuditLog {
        AuditLog(sharing: self, namespace: namespace)
    }

    /// Records an event (never blocks: written on the log's thread).
    public func record(_ event: AuditEvent) {
        guard !closed.load(ordering: .relaxed) else { return }
        var event = event
        if let namespace, event.kind != .refused { event.members.insert(("namespace", .string(namespace)), at: 0) }
        let at = SystemClock.epochSeconds()
        let writer = self.writer
        loop.execute { writer.value.write(event, at: at) }
    }

    /// Records a request answered `FORBIDDEN`, rate-limited per peer user and operation.
    /// - Parameters:
    ///   - operation: what was refused.
    ///   - peer: who asked.
    ///   - held: the roles the peer holds.
    public func refused(_ operation: RequestOperation, peer: PeerCredentials?, held: AccessRoles) {
        guard !closed.load(ordering: .relaxed) else { return }
        let at = SystemClock.epochSeconds()
        let writer = self.writer
        let loop = self.loop
        loop.execute {
            guard writer.value.refused(operation, peer: peer, held: held, at: at) else { return }
            // The first of a window was written; the rest are counted until the window ends.
            loop.scheduleTask(in: Self.refusalWindow) {
                writer.value.endWindow(of: RefusalKey(uid: peer?.uid, operation: operation))
            }
        }
    }

    /// Writes what is pending (the counts of open refusal windows) and stops the log's thread.
    public func close() async {
        // Only the log itself stops the thread; its namespaces' views share it.
        guard namespace == nil, !closed.exchange(true, ordering: .relaxed) else { return }
        let writer = self.writer
        try? await loop.submit { writer.value.endAllWindows() }.get()
        try? await group.shutdownGracefully()
    }
}

struct RefusalKey: Hashable {
    var uid: uid_t?
    var operation: RequestOperation
}

/// The audit log's state; lives on the log's thread.
final class AuditWriter {
    private struct Window {
        var first: Double
        var last: Double
        var suppressed: Int
        var held: AccessRoles
        var peer: PeerCredentials?
    }

    let directory: String
    let maxBytes: Int
    let journal: JournalSender?
    let logger: Logger
    private var descriptor: Int32 = -1
    private var size = 0
    private var failing = false
    private var windows: [RefusalKey: Window] = [:]
    /// Beyond this many open windows (peers of many uids refused at once), refusals are counted under no key.
    private static let maxWindows = 256

    init(directory: String, maxBytes: Int, journal: JournalSender?, logger: Logger) {
        self.directory = directory
        self.maxBytes = maxBytes
        self.journal = journal
        self.logger = logger
    }

    deinit { if descriptor >= 0 { Glibc.close(descriptor) } }

    var path: String { directory + "/audit.jsonl" }

    /// Counts a refusal; true when it opened a window (and was written).
    func refused(_ operation: RequestOperation, peer: PeerCredentials?, held: AccessRoles, at: Double) -> Bool {
        var key = RefusalKey(uid: peer?.uid, operation: operation)
        if windows[key] == nil && windows.count >= Self.maxWindows { key.uid = nil }
        if var window = windows[key] {
            window.suppressed += 1
            window.last = at
            windows[key] = window
            return false
        }
        windows[key] = Window(first: at, last: at, suppressed: 0, held: held, peer: peer)
        write(Self.refusal(operation, peer: AuditPeer(peer), held: held, count: 1, since: nil), at: at)
        return true
    }

    func endWindow(of key: RefusalKey) {
        guard let window = windows.removeValue(forKey: key), window.suppressed > 0 else { return }
        let peer = key.uid == nil ? AuditPeer(nil) : AuditPeer(window.peer)
        write(
            Self.refusal(key.operation, peer: peer, held: window.held, count: window.suppressed, since: window.first),
            at: window.last)
    }

    func endAllWindows() {
        for key in Array(windows.keys) { endWindow(of: key) }
    }

    static func refusal(
        _ operation: RequestOperation, peer: AuditPeer, held: AccessRoles, count: Int, since: Double?
    ) -> AuditEvent {
        let role = operation.requiredRole.rawValue
        var members: [(String, JSONValue)] = [
            ("operation", .string(operation.rawValue)), ("required_role", .string(role)),
            ("roles", .array(held.names.map { .string($0) })), ("peer", peer.json), ("count", .integer(Int64(count))),
        ]
        if let since { members.append(("first_at", .string(Timestamp.iso8601(since)))) }
        let times = count == 1 ? "" : " \(count) times since \(since.map { Timestamp.iso8601($0) } ?? "")"
        return AuditEvent(
            kind: .refused, members: members,
            message: "refused \(operation.rawValue) (needs \(role)) to \(peer.summary)\(times)")
    }

    func write(_ event: AuditEvent, at: Double) {
        let object = JSONObject(
            [("at", .string(Timestamp.iso8601(at))), ("event", .string(event.kind.rawValue))] + event.members)
        let line = JSONWriter.string(.object(object))
        appendLine(line)
        sendToJournal(event, line: line)
    }

    private func appendLine(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.append(UInt8(ascii: "\n"))
        if descriptor >= 0, size > 0, size + bytes.count > maxBytes { rotate() }
        if descriptor < 0 { open() }
        guard descriptor >= 0 else { return }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else {
                report("cannot write the audit log", code: errno)
                Glibc.close(descriptor)
                descriptor = -1
                return
            }
            offset += written
        }
        size += bytes.count
        if failing {
            failing = false
            logger.notice("the audit log is written again", metadata: ["audit.path": "\(path)"])
        }
    }

    private func open() {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            report("cannot create the audit log's directory", code: errno)
            return
        }
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            report("cannot open the audit log", code: errno)
            return
        }
        var info = stat()
        size = fstat(fd, &info) == 0 ? Int(info.st_size) : 0
        descriptor = fd
    }

    private func rotate() {
        Glibc.close(descriptor)
        descriptor = -1
        for index in stride(from: AuditLog.rotatedFiles - 1, through: 1, by: -1) {
            rename("\(path).\(index)", "\(path).\(index + 1)")
        }
        rename(path, "\(path).1")
    }

    /// A failure to write is logged once, until writing works again.
    private func report(_ message: String, code: Int32) {
        guard !failing else { return }
        failing = true
        logger.error(
            "\(message); audit events go to the journal only until it works again",
            metadata: ["audit.path": "\(path)", "error": "\(String(cString: strerror(code)))"])
    }

    private func sendToJournal(_ event: AuditEvent, line: String) {
        guard let journal else { return }
        var fields: [(name: String, value: String)] = [
            ("MESSAGE", event.message), ("MESSAGE_ID", event.kind.messageID),
            ("PRIORITY", event.isFailure ? "4" : "5"), ("SYSLOG_IDENTIFIER", "rulesd"),
            ("RULESD_AUDIT_EVENT", event.kind.rawValue), ("RULESD_AUDIT", line),
        ]
        for (name, value) in event.members {
            switch (name, value) {
            case ("operation", .string(let text)): fields.append(("RULESD_OPERATION", text))
            case ("outcome", .string(let text)): fields.append(("RULESD_OUTCOME", text))
            case ("peer", .object(let peer)):
                if let uid = peer["uid"]?.int64Value { fields.append(("RULESD_PEER_UID", String(uid))) }
                if let pid = peer["pid"]?.int64Value { fields.append(("RULESD_PEER_PID", String(pid))) }
            default: break
            }
        }
        journal.send(fields)
    }
}
