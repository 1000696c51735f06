import Glibc
import SystemClock

/// Builds the newline-separated `KEY=VALUE` payloads of the sd_notify protocol.
///
/// Kept apart from the socket so that the exact bytes can be tested without one.
public enum NotifyPayload {
    /// The longest STATUS= value sent, in UTF-8 bytes. systemd drops a whole notify datagram of
    /// 4096 bytes or more, and `systemctl status` shows one line anyway.
    public static let maxStatusBytes = 512

    /// The longest datagram sent, in bytes; systemd ignores datagrams of `PIPE_BUF` (4096) or more.
    public static let maxPayloadBytes = 4095

    /// `READY=1`, optionally with a status line.
    /// - Parameters:
    ///   - status: Text for `systemctl status`; made single-line and shortened.
    /// - Returns: The payload.
    public static func ready(status: String? = nil) -> String {
        join(["READY=1"], status: status)
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`, optionally with a status line.
    ///
    /// `MONOTONIC_USEC=` is always present: systemd 253 and later need it under `Type=notify-reload`
    /// to match the message with the reload job, and older versions ignore fields they do not know.
    /// - Parameters:
    ///   - status: Text for `systemctl status`; made single-line and shortened.
    ///   - monotonicMicroseconds: The time of the reload on CLOCK_MONOTONIC; defaults to now.
    /// - Returns: The payload.
    public static func reloading(status: String? = nil, monotonicMicroseconds: UInt64 = monotonicNow()) -> String {
        join(["RELOADING=1", "MONOTONIC_USEC=\(monotonicMicroseconds)"], status: status)
    }

    /// `STOPPING=1`, optionally with a status line.
    /// - Parameters:
    ///   - status: Text for `systemctl status`; made single-line and shortened.
    /// - Returns: The payload.
    public static func stopping(status: String? = nil) -> String {
        join(["STOPPING=1"], status: status)
    }

    /// A status line on its own.
    /// - Parameters:
    ///   - text: Text for `systemctl status`; made single-line and shortened.
    /// - Returns: The payload.
    public static func status(_ text: String) -> String {
        join([], status: text)
    }

    /// `WATCHDOG=1`, the keep-alive ping.
    public static let watchdog = "WATCHDOG=1"

    /// `EXTEND_TIMEOUT_USEC=`: asks systemd for more time for the current start, reload or stop.
    /// - Parameters:
    ///   - duration: How much time from now; negative durations count as zero.
    /// - Returns: The payload.
    public static func extendTimeout(_ duration: Duration) -> String {
        "EXTEND_TIMEOUT_USEC=\(microseconds(of: duration))"
    }

    /// `ERRNO=`: the error that is about to end the process, shown by `systemctl status`.
    /// - Parameters:
    ///   - code: An errno value.
    ///   - status: Optional text for `systemctl status`.
    /// - Returns: The payload.
    public static func errno(_ code: Int32, status: String? = nil) -> String {
        join(["ERRNO=\(code)"], status: status)
    }

    /// Makes a STATUS= value safe: control characters (newlines above all, which would start a new
    /// field) become spaces, and the text is cut to ``maxStatusBytes`` at a character boundary.
    /// - Parameters:
    ///   - text: Any text.
    /// - Returns: One line of at most ``maxStatusBytes`` UTF-8 bytes; cut text ends with "…".
    public static func statusLine(_ text: String) -> String {
        var scalars = String.UnicodeScalarView()
        var bytes = 0
        let ellipsis: Unicode.Scalar = "\u{2026}"
        let ellipsisBytes = UTF8.width(ellipsis)
        var truncated = false
        for scalar in text.unicodeScalars {
            // C0, DEL and the C1 block (which holds U+0085 NEXT LINE), plus the Unicode separators.
            let isControl =
                scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
                || scalar.value == 0x2028 || scalar.value == 0x2029
            let kept: Unicode.Scalar = isControl ? " " : scalar
            let width = UTF8.width(kept)
            if bytes + width > maxStatusBytes {
                truncated = true
                break
            }
            scalars.append(kept)
            bytes += width
        }
        if truncated {
            while bytes + ellipsisBytes > maxStatusBytes, let last = scalars.popLast() {
                bytes -= UTF8.width(last)
            }
            scalars.append(ellipsis)
        }
        return String(scalars)
    }

    /// CLOCK_MONOTONIC now, in microseconds, as systemd reads it for `MONOTONIC_USEC=`.
    /// - Returns: Microseconds since an arbitrary point (usually boot).
    public static func monotonicNow() -> UInt64 {
        SystemClock.monotonicNanoseconds() / 1_000
    }

    static func microseconds(of duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, !(seconds == 0 && attoseconds < 0) else { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000)
        guard !overflow else { return UInt64.max }
        let (total, overflow2) = whole.addingReportingOverflow(UInt64(max(attoseconds, 0) / 1_000_000_000_000))
        return overflow2 ? UInt64.max : total
    }

    private static func join(_ fields: [String], status: String?) -> String {
        var lines = fields
        if let status {
            lines.append("STATUS=" + statusLine(status))
        }
        return lines.joined(separator: "\n")
    }
}
