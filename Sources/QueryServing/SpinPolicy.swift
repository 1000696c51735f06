/// Whether a loop about to block should poll for a while first, learned from the waits it has seen.
///
/// Blocking costs a wake-up when the next request arrives: two context switches, and on a virtual machine
/// whose idle vCPU halts, tens of microseconds before the loop runs again. Polling instead pays only when the
/// next event comes within the poll; so a loop polls only when each of its last ``remembered`` waits ended
/// within the limit it is given (an idle or sparsely used daemon never polls), and then for at most twice the
/// longest of them. The limit is zero, and nothing polls, unless a core is left over for the clients: the
/// ``LoopBalancer`` gives it to the loops only while fewer loops are active than there are cores.
struct SpinPolicy {
    static let remembered = 4

    private var gaps: (UInt64, UInt64, UInt64, UInt64) = (.max, .max, .max, .max)
    private var next = 0

    /// Records how long a wait lasted, from the moment the loop had nothing to do to its next event.
    mutating func record(wait nanoseconds: UInt64) {
        switch next {
        case 0: gaps.0 = nanoseconds
        case 1: gaps.1 = nanoseconds
        case 2: gaps.2 = nanoseconds
        default: gaps.3 = nanoseconds
        }
        next = (next + 1) & 3
    }

    /// How long to poll before blocking, in nanoseconds; 0 to block at once.
    func budget(limit: UInt64) -> UInt64 {
        guard limit > 0 else { return 0 }
        let longest = max(max(gaps.0, gaps.1), max(gaps.2, gaps.3))
        guard longest <= limit else { return 0 }
        return min(limit, 2 * longest)
    }
}
