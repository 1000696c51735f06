/// How long to wait before starting a rule process again: 100 ms after the first end, doubling with each end
/// that follows soon after a start, up to 30 s; a process that ran for a stable minute starts the count anew.
struct RestartBackoff: Sendable, Equatable {
    var initial: Double = 0.1
    var maximum: Double = 30
    /// A process that ran at least this long (seconds) is considered stable.
    var stableAfter: Double = 60
    /// The delay the next end will get, unless the process was stable.
    private(set) var next: Double

    init(initial: Double = 0.1, maximum: Double = 30, stableAfter: Double = 60) {
        self.initial = initial
        self.maximum = maximum
        self.stableAfter = stableAfter
        self.next = initial
    }

    /// A process that ran for `seconds` ended: the delay before starting the next one.
    mutating func delay(afterRunningFor seconds: Double) -> Double {
        if seconds >= stableAfter { next = initial }
        let delay = next
        next = min(next * 2, maximum)
        return delay
    }
}
