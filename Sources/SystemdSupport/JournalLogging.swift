import Glibc

/// Log levels (the same names as swift-log's `Logger.Level`, so `SyslogLevel(rawValue:)` maps
/// one onto the other) and their syslog priorities.
public enum SyslogLevel: String, Sendable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    /// The syslog priority journald stores: debug 7 … critical 2. Trace has no syslog level of its
    /// own and counts as debug.
    public var priority: Int32 {
        switch self {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// The `<N>` prefix journald reads off the start of a line written to its stream (systemd's
    /// default `SyslogLevelPrefix=yes`) to set the entry's priority.
    public var prefix: String { "<\(priority)>" }
}

/// The `<N>` prefix for a log line.
/// - Parameters:
///   - level: The line's level.
/// - Returns: "<7>" for debug down to "<2>" for critical.
public func syslogPrefix(for level: SyslogLevel) -> String {
    level.prefix
}

/// Whether output goes straight to the journal (systemd's `StandardError=journal`).
public enum JournalStream {
    /// Whether a descriptor is the journal stream systemd connected, per `$JOURNAL_STREAM`.
    ///
    /// systemd sets `JOURNAL_STREAM=<device>:<inode>` for the stream it connected to stdout or
    /// stderr. The variable is inherited by child processes whose output may be redirected
    /// elsewhere, so it counts only if `fd` really is that stream (`fstat`). When it is, the
    /// daemon writes `<N>`-prefixed lines without timestamps: journald adds its own.
    /// - Parameters:
    ///   - fd: The descriptor logs go to; stderr by default.
    ///   - environment: Where to read `JOURNAL_STREAM`; the process environment by default.
    /// - Returns: Whether `fd` is the journal stream.
    public static func isConnected(fd: Int32 = STDERR_FILENO, environment: SystemdEnvironment = .process) -> Bool {
        guard let value = environment.nonEmpty("JOURNAL_STREAM"), let (device, inode) = parse(value) else {
            return false
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }

    /// Parses "<device>:<inode>" (both decimal).
    static func parse(_ value: String) -> (device: UInt64, inode: UInt64)? {
        let parts = value.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return nil }
        return (device, inode)
    }
}
