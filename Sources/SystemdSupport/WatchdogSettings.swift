import Glibc

/// The service watchdog systemd asked for (`WatchdogSec=`), as sd_watchdog_enabled(3) reads it.
///
/// The daemon should send ``SystemdNotifier/watchdog()`` every ``pingPeriod`` from its main event
/// loop, so that a wedged loop stops the pings and systemd restarts the service.
public struct WatchdogSettings: Sendable, Equatable {
    /// The interval after which systemd acts if no ping came, in microseconds (`$WATCHDOG_USEC`).
    public let intervalMicroseconds: UInt64

    /// The interval after which systemd acts if no ping came.
    public var interval: Duration { .microseconds(intervalMicroseconds) }

    /// How often to ping: half the interval, as sd_watchdog_enabled(3) recommends, so one late
    /// ping does not cost a restart.
    public var pingPeriod: Duration { .microseconds(intervalMicroseconds / 2) }

    /// Creates settings for a known interval.
    /// - Parameters:
    ///   - intervalMicroseconds: The watchdog interval; must be positive.
    public init?(intervalMicroseconds: UInt64) {
        guard intervalMicroseconds > 0 else { return nil }
        self.intervalMicroseconds = intervalMicroseconds
    }

    /// Interprets `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    /// - Parameters:
    ///   - watchdogUSec: The value of `WATCHDOG_USEC`: a positive decimal number of microseconds.
    ///   - watchdogPID: The value of `WATCHDOG_PID`; when set, the watchdog is only ours if it
    ///     equals `pid` (a forked helper inherits the variables but must not ping).
    ///   - pid: Our process id.
    /// - Returns: nil when the watchdog is off, is meant for another process, or the values do
    ///   not parse.
    public init?(watchdogUSec: String?, watchdogPID: String?, pid: pid_t = getpid()) {
        guard let watchdogUSec, let interval = UInt64(watchdogUSec) else { return nil }
        if let watchdogPID, !watchdogPID.isEmpty {
            guard let owner = pid_t(watchdogPID), owner > 0, owner == pid else { return nil }
        }
        self.init(intervalMicroseconds: interval)
    }

    /// Reads the watchdog settings from the environment.
    /// - Parameters:
    ///   - environment: Where to read the variables; the process environment by default.
    ///   - pid: Our process id; `getpid()` by default.
    ///   - unsetEnvironment: Remove `WATCHDOG_USEC` and `WATCHDOG_PID` afterwards, so that child
    ///     processes do not believe they are watched.
    /// - Returns: nil when the watchdog is not enabled for this process.
    public static func fromEnvironment(
        _ environment: SystemdEnvironment = .process,
        pid: pid_t = getpid(),
        unsetEnvironment: Bool = false
    ) -> WatchdogSettings? {
        let settings = WatchdogSettings(
            watchdogUSec: environment.nonEmpty("WATCHDOG_USEC"),
            watchdogPID: environment.nonEmpty("WATCHDOG_PID"),
            pid: pid
        )
        if unsetEnvironment {
            environment.unset("WATCHDOG_USEC")
            environment.unset("WATCHDOG_PID")
        }
        return settings
    }
}
