import Glibc
import SystemClock
import SystemdSupport

/// A closed-loop load client: one thread, poll(2), N connections each keeping P requests in flight.
///
/// Every newline received completes the oldest outstanding request of its connection (answers come back in
/// order); a request's latency runs from just before the write that carried it to just after the read that
/// brought its answer's newline. One thread keeps the client's own CPU use small and measurable, which
/// matters on a machine where client and server share the cores.
struct LoadClient {
    struct Result {
        var requests: Int
        var seconds: Double
        var latenciesMicroseconds: [Double]
        var clientCPUSeconds: Double
        var firstReply: String

        var requestsPerSecond: Double { Double(requests) / seconds }

        func percentile(_ p: Double) -> Double {
            guard !latenciesMicroseconds.isEmpty else { return 0 }
            let sorted = latenciesMicroseconds.sorted()
            return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
        }
    }

    let socketPath: String
    let connections: Int
    let depth: Int
    let requests: [[UInt8]]

    private final class Connection {
        let fd: Int32
        let index: Int
        var sent: [UInt64]
        var head = 0
        var outstanding = 0
        var pending: [UInt8] = []
        var pendingOffset = 0
        var next: Int

        init(fd: Int32, index: Int, depth: Int, start: Int) {
            self.fd = fd
            self.index = index
            self.sent = [UInt64](repeating: 0, count: depth)
            self.next = start
        }
    }

    /// Runs for `warmup` then `duration` seconds and reports the measured window; `measuring` is called
    /// when that window opens (to sample the server's CPU time over the same window).
    func run(duration: Double, warmup: Double, measuring onMeasureStart: () -> Void = {}) throws -> Result {
        var conns: [Connection] = []
        for index in 0..<connections {
            let fd = try Self.connect(socketPath)
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
            let conn = Connection(fd: fd, index: index, depth: depth, start: index * 97)
            conns.append(conn)
        }
        defer { for conn in conns { close(conn.fd) } }
        let cpuStart = Self.cpuSeconds()
        let start = Self.now()
        let measureFrom = start + UInt64(warmup * 1e9)
        let end = measureFrom + UInt64(duration * 1e9)
        var measured = 0
        var latencies: [Double] = []
        latencies.reserveCapacity(1 << 20)
        var firstReply = ""
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        for conn in conns {
            refill(conn)
            flush(conn)
        }
        var polls = conns.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        var cpuMeasureStart = cpuStart
        var measuring = false
        while true {
            let now = Self.now()
            if now >= end { break }
            if !measuring && now >= measureFrom {
                measuring = true
                cpuMeasureStart = Self.cpuSeconds()
                onMeasureStart()
            }
            for index in conns.indices {
                polls[index].events =
                    Int16(POLLIN) | (conns[index].pendingOffset < conns[index].pending.count ? Int16(POLLOUT) : 0)
                polls[index].revents = 0
            }
            let n = poll(&polls, nfds_t(polls.count), 100)
            if n < 0 {
                if errno == EINTR { continue }
                throw BenchError("poll: \(errno)")
            }
            for i in polls.indices where polls[i].revents != 0 {
                let conn = conns[i]
                if polls[i].revents & Int16(POLLOUT) != 0 { flush(conn) }
                guard polls[i].revents & (Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)) != 0 else { continue }
                let got = buffer.withUnsafeMutableBytes { read(conn.fd, $0.baseAddress, $0.count) }
                if got == 0 { throw BenchError("the server closed a connection") }
                if got < 0 {
                    if errno == EAGAIN || errno == EINTR { continue }
                    throw BenchError("read: \(errno)")
                }
                let arrived = Self.now()
                var completed = 0
                for index in 0..<got where buffer[index] == 0x0A {
                    if firstReply.isEmpty {
                        firstReply = String(decoding: buffer[0..<min(index, 160)], as: UTF8.self)
                    }
                    let sentAt = conn.sent[conn.head]
                    conn.head = (conn.head + 1) % depth
                    conn.outstanding -= 1
                    completed += 1
                    if measuring && arrived < end {
                        measured += 1
                        latencies.append(Double(arrived &- sentAt) / 1000)
                    }
                }
                if completed > 0 {
                    refill(conn)
                    flush(conn)
                }
            }
        }
        let cpu = Self.cpuSeconds() - cpuMeasureStart
        return Result(
            requests: measured, seconds: duration, latenciesMicroseconds: latencies, clientCPUSeconds: cpu,
            firstReply: firstReply)
    }

    private func refill(_ conn: Connection) {
        let now = Self.now()
        while conn.outstanding < depth {
            let request = requests[conn.next % requests.count]
            conn.next += 1
            conn.pending.append(contentsOf: request)
            conn.sent[(conn.head + conn.outstanding) % depth] = now
            conn.outstanding += 1
        }
    }

    private func flush(_ conn: Connection) {
        while conn.pendingOffset < conn.pending.count {
            let n = conn.pending.withUnsafeBytes {
                send(
                    conn.fd, $0.baseAddress! + conn.pendingOffset, conn.pending.count - conn.pendingOffset,
                    Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                // EAGAIN: the rest goes when poll says the socket can take it.
                return
            }
            conn.pendingOffset += n
        }
        conn.pending.removeAll(keepingCapacity: true)
        conn.pendingOffset = 0
    }

    static func connect(_ path: String) throws -> Int32 {
        guard let address = UnixSocketAddress(path: path) else { throw BenchError("socket path too long: \(path)") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard address.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
            close(fd)
            throw BenchError("cannot connect to \(path): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    static func now() -> UInt64 { SystemClock.monotonicNanoseconds() }

    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
            + Double(usage.ru_stime.tv_usec) / 1e6
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
