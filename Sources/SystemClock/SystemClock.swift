import Glibc

/// The one place rulesd reads the system's clocks (`clock_gettime`), for every target: rule time, latency
/// measurement, watchdog heartbeats, systemd's monotonic timestamps, logs and benchmarks.
public enum SystemClock {
    /// Seconds since the epoch (CLOCK_REALTIME), with sub-second precision.
    @inlinable
    public static func epochSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Nanoseconds on the monotonic clock (CLOCK_MONOTONIC): for intervals, never for dates.
    @inlinable
    public static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Seconds on the monotonic clock.
    @inlinable
    public static func monotonicSeconds() -> Double {
        Double(monotonicNanoseconds()) / 1e9
    }
}
