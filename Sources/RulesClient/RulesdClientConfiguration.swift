#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// How a ``RulesdClient`` reaches the daemon and how long it waits.
public struct RulesdClientConfiguration: Sendable {
    /// The daemon's socket.
    public var socketPath: String
    /// How long a request waits for its answer; `nil` waits as long as the connection lasts. `reload` may take
    /// as long as loading the rules does, so keep this above the daemon's load budget.
    public var requestTimeout: Duration?
    /// How long connecting may take.
    public var connectTimeout: Duration
    /// The delays between connection attempts after failures.
    public var backoff: Backoff
    /// The longest answer line accepted (a `flags` or `show` answer can be large).
    public var maxLineBytes: Int

    /// Delays that grow from `initial` by `multiplier` per consecutive failure, up to `maximum`; a success
    /// starts again from `initial`.
    public struct Backoff: Sendable, Hashable {
        public var initial: Duration
        public var maximum: Duration
        public var multiplier: Int

        public init(initial: Duration = .milliseconds(50), maximum: Duration = .seconds(5), multiplier: Int = 2) {
            self.initial = initial
            self.maximum = maximum
            self.multiplier = max(1, multiplier)
        }

        /// The delay after `failures` consecutive failures (at least one).
        public func delay(afterFailures failures: Int) -> Duration {
            var delay = initial
            for _ in 1..<max(1, failures) {
                delay = delay * multiplier
                if delay >= maximum { return maximum }
            }
            return min(delay, maximum)
        }
    }

    /// The socket rulesctl uses too: `$RULESD_SOCKET` when set, else `/run/rulesd/rulesd.sock`.
    public static var defaultSocketPath: String {
        if let value = getenv("RULESD_SOCKET"), value.pointee != 0 { return String(cString: value) }
        return "/run/rulesd/rulesd.sock"
    }

    /// Creates a configuration.
    /// - Parameters:
    ///   - socketPath: the daemon's socket (default ``defaultSocketPath``).
    ///   - requestTimeout: how long a request waits for its answer (default 30 s).
    ///   - connectTimeout: how long connecting may take (default 5 s).
    ///   - backoff: delays between connection attempts after failures (default 50 ms doubling up to 5 s).
    ///   - maxLineBytes: the longest answer line accepted (default 256 MiB).
    public init(
        socketPath: String = RulesdClientConfiguration.defaultSocketPath, requestTimeout: Duration? = .seconds(30),
        connectTimeout: Duration = .seconds(5), backoff: Backoff = Backoff(), maxLineBytes: Int = 256 << 20
    ) {
        self.socketPath = socketPath
        self.requestTimeout = requestTimeout
        self.connectTimeout = connectTimeout
        self.backoff = backoff
        self.maxLineBytes = maxLineBytes
    }
}
