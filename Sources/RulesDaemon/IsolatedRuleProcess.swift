import Logging
import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol
import Synchronization
import SystemClock

#if canImport(Glibc)
    import Glibc
#endif

/// What a rule process made of one request.
enum RuleProcessReply: Sendable {
    /// The whole answer line, as the rule process wrote it.
    case answered(ok: Bool, line: [UInt8])
    /// No rule process could answer (it is starting again, or was killed): the error to answer instead.
    case unavailable(ProtocolError)
}

/// One rule set evaluated in a process of its own (`isolation = process`): starts the rule process (rulesd
/// re-executed as a ``RuleProcessWorker``), sends it each generation's files, passes it requests and hands
/// back its answers, kills it when it hangs, and starts it again with back-off when it ends.
///
/// One supervising thread owns the socketpair and the process: it writes what workers queued, reads answers
/// and completes their promises, watches the deadline and restarts. Workers only queue under a lock and wake it,
/// so no event loop ever blocks on the rule process.
public final class IsolatedRuleProcess: Sendable {
    /// How long an evaluation may go unanswered, beyond the evaluation deadline, before the process is
    /// considered hung (it is seen within half as long again): generous, because the sandbox's own deadline ends runaway rules first, and a busy
    /// machine can delay a healthy process.
    static let hangMargin: Double = 1

    /// Requests queued for, or in, the process before new ones are refused with `RESOURCE_LIMIT`.
    static let maxPending = 100_000

    private enum Phase: Equatable {
        /// No rule set yet.
        case idle
        /// Running with this process id and channel (starting: its load may not have been answered yet).
        case running(pid: pid_t, channel: Int32)
        /// Ended; starts again at `due` (monotonic seconds).
        case waiting(due: Double)
        case stopped
    }

    private struct Pending {
        let promise: EventLoopPromise<RuleProcessReply>
    }

    private struct State {
        var phase = Phase.idle
        var pending: [UInt64: Pending] = [:]
        var nextRequest: UInt64 = 1
        var outbound: [UInt8] = []
        /// The newest generation's load message, sent first to every new process.
        var load: [UInt8]?
        var loadFiles = 0
        /// A load sent and not yet answered: its generation and deadline.
        var awaitingLoad: (generation: UInt64, due: Double)?
        /// When the process last showed progress with work outstanding (monotonic seconds).
        var progressAt: Double = 0
        var startedAt: Double = 0
        var restarts = 0
        var lastExit: (reason: String, at: Double, limit: Bool)?
        var exits: [String: Int] = [:]
        var backoff = RestartBackoff()
        /// Set when this supervisor killed the process because it hung.
        var killedForHang = false
        var loadedGeneration: UInt64 = 0
        var stopRequested = false
    }

    let namespace: String
    private let limits: RuleEngineLimits
    private let logger: Logger
    private let state = Mutex(State())
    /// Wakes the supervising thread: a pipe's reading and writing ends.
    private let wake: Int32
    private let wakeWriter: Int32
    private let cgroup: RuleProcessCgroup?
    /// Why cgroup limits are not used, when they are not.
    let cgroupProblem: String?
    private let executable: String

    /// - Parameters:
    ///   - namespace: the rule set's namespace (for logs, status, metrics and its cgroup).
    ///   - limits: the rule set's budgets; the evaluation deadline sets when the process counts as hung.
    ///   - executable: the rulesd binary to start in worker mode.
    ///   - cgroupRoot: where the unified cgroup hierarchy is mounted.
    public init(
        namespace: String, limits: RuleEngineLimits, logger: Logger, executable: String = "/proc/self/exe",
        cgroupRoot: String = "/sys/fs/cgroup"
    ) {
        self.namespace = namespace
        self.limits = limits
        self.logger = logger
        self.executable = executable
        var pipe: [Int32] = [-1, -1]
        if Glibc.pipe(&pipe) != 0 {
            logger.critical("cannot create the rule process's wake-up pipe", metadata: ["errno": "\(errno)"])
        }
        for end in pipe where end >= 0 {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
        }
        (self.wake, self.wakeWriter) = (pipe[0], pipe[1])
        var membership = ""
        if let file = fopen("/proc/self/cgroup", "r") {
            var line = [CChar](repeating: 0, count: 4096)
            while fgets(&line, Int32(line.count), file) != nil { membership += String(cString: line) }
            fclose(file)
        }
        switch RuleProcessCgroup.prepare(root: cgroupRoot, membership: membership, pid: getpid()) {
        case .success(let cgroup):
            self.cgroup = cgroup
            self.cgroupProblem = nil
        case .failure(let problem):
            self.cgroup = nil
            self.cgroupProblem = problem.reason
            logger.notice(
                "cgroup limits for rule processes are unavailable; the process limits (rlimits, seccomp) still apply",
                metadata: ["reason": "\(problem.reason)", "rules.namespace": "\(namespace)"])
        }
        let started = DedicatedThread.start(name: "rulesd-isolate", stackBytes: 1 << 20) { [self] in supervise() }
        if started == nil { logger.critical("cannot start the rule process's supervising thread") }
    }

    deinit {
        close(wake)
        close(wakeWriter)
    }

    // MARK: - what other threads call

    /// Makes `generation` the rule set the process answers from (the first one starts the process).
    func publish(_ generation: ServingGeneration) {
        let ruleSet = generation.ruleSet
        let frame = RuleProcessMessage.load(
            generation: generation.number, limits: ruleSet.limits, sources: ruleSet.sources
        )
        .frame
        state.withLock { state in
            state.load = frame
            state.loadFiles = ruleSet.sources.count
            if case .running = state.phase {
                state.outbound.append(contentsOf: frame)
                state.awaitingLoad = (generation.number, SystemClock.monotonicSeconds() + loadDeadline(state))
            }
        }
        signal()
    }

    /// Passes one request line to the process. The future always completes later, on `loop`.
    func submit(line: UnsafeRawBufferPointer, now: Double, on loop: any EventLoop) -> EventLoopFuture<RuleProcessReply>
    {
        let promise = loop.makePromise(of: RuleProcessReply.self)
        var wakeSupervisor = false
        let refusal: ProtocolError? = state.withLock { state in
            let channel: Int32?
            switch state.phase {
            case .running(_, let running): channel = running
            // The first process is being started for the rule set just published (the daemon serves from then
            // on): the request waits for it, behind its load, rather than being refused.
            case .idle where state.load != nil && !state.stopRequested: channel = nil
            default: return unavailableError(state)
            }
            guard state.pending.count < Self.maxPending else {
                return ProtocolError(.resourceLimit, "the rule process has \(Self.maxPending) requests waiting")
            }
            let request = state.nextRequest
            state.nextRequest += 1
            if state.pending.isEmpty { state.progressAt = SystemClock.monotonicSeconds() }
            state.pending[request] = Pending(promise: promise)
            let wasIdle = state.outbound.isEmpty
            RuleProcessMessage.evaluate(request: request, now: now, line: Array(line)).encode(into: &state.outbound)
            // Written here when nothing else waits to be written (the usual case): a hand-over to the
            // supervising thread would cost a thread switch per request. What the channel does not take now,
            // the supervising thread writes when it can.
            if wasIdle, let channel { Self.send(&state.outbound, on: channel) }
            wakeSupervisor = !state.outbound.isEmpty
            return nil
        }
        if let refusal {
            loop.execute { promise.succeed(.unavailable(refusal)) }
        } else if wakeSupervisor {
            signal()
        }
        return promise.futureResult
    }

    /// Stops the process for good (the daemon is stopping); requests still waiting are refused.
    public func stop() {
        state.withLock { $0.stopRequested = true }
        signal()
    }

    /// The process id while one runs.
    var pid: pid_t? {
        state.withLock { state in
            if case .running(let pid, _) = state.phase { return pid }
            return nil
        }
    }

    /// The `isolation` member of `status`.
    var status: JSONValue {
        state.withLock { state in
            var object: [(String, JSONValue)] = [("mode", "process")]
            switch state.phase {
            case .running(let pid, _):
                object.append(("state", .string(state.awaitingLoad == nil ? "running" : "loading")))
                object.append(("pid", .integer(Int64(pid))))
            case .waiting: object.append(("state", "restarting")); object.append(("pid", .null))
            case .idle: object.append(("state", "starting")); object.append(("pid", .null))
            case .stopped: object.append(("state", "stopped")); object.append(("pid", .null))
            }
            object.append(("restarts", .integer(Int64(state.restarts))))
            if let exit = state.lastExit {
                object.append(
                    (
                        "last_exit",
                        ["reason": .string(exit.reason), "at": .string(Timestamp.iso8601(exit.at))]
                    ))
            } else {
                object.append(("last_exit", .null))
            }
            if let cgroup {
                object.append(("cgroup", .string(cgroup.groupDirectory(namespace: namespace))))
            } else {
                object.append(("cgroup", .null))
                object.append(("cgroup_unavailable", .string(cgroupProblem ?? "")))
            }
            return .object(JSONObject(object))
        }
    }

    /// Prometheus text of the figures of `processes` (one per process-isolated namespace), each family described
    /// once and its samples labelled with their namespace.
    static func metricsText(_ processes: [IsolatedRuleProcess]) -> String {
        guard !processes.isEmpty else { return "" }
        let figures = processes.map { process in
            process.state.withLock { state -> (label: String, pid: pid_t, restarts: Int, exits: [String: Int]) in
                var pid: pid_t = 0
                if case .running(let running, _) = state.phase { pid = running }
                return ("namespace=\"\(process.namespace)\"", pid, state.restarts, state.exits)
            }
        }
        var text = """
            # HELP rulesd_rule_process_up Whether the rule process of a process-isolated rule set is running
            # TYPE rulesd_rule_process_up gauge

            """
        for figure in figures { text += "rulesd_rule_process_up{\(figure.label)} \(figure.pid == 0 ? 0 : 1)\n" }
        text += """
            # HELP rulesd_rule_process_pid The rule process's id (0 while none runs)
            # TYPE rulesd_rule_process_pid gauge

            """
        for figure in figures { text += "rulesd_rule_process_pid{\(figure.label)} \(figure.pid)\n" }
        text += """
            # HELP rulesd_rule_process_restarts_total Rule processes started again after one ended
            # TYPE rulesd_rule_process_restarts_total counter

            """
        for figure in figures { text += "rulesd_rule_process_restarts_total{\(figure.label)} \(figure.restarts)\n" }
        text += """
            # HELP rulesd_rule_process_exits_total Rule processes that ended, by reason
            # TYPE rulesd_rule_process_exits_total counter

            """
        for figure in figures {
            for (reason, count) in figure.exits.sorted(by: { $0.key < $1.key }) {
                text += "rulesd_rule_process_exits_total{\(figure.label),reason=\"\(reason)\"} \(count)\n"
            }
        }
        return text
    }

    // MARK: - the supervising thread

    private func signal() {
        // A full pipe already holds a wake-up.
        var one: UInt8 = 1
        _ = Glibc.write(wakeWriter, &one, 1)
    }

    private func loadDeadline(_ state: State) -> Double {
        // The parent loaded the same files within its own budgets; this allows the same per file, and more.
        let perFile =
            Double(limits.loadTimeout.components.seconds) + Double(limits.loadTimeout.components.attoseconds) / 1e18
        return 10 + perFile * Double(max(1, state.loadFiles))
    }

    private var hangAfter: Double {
        let (seconds, attoseconds) = limits.evaluationTimeout.components
        return Double(seconds) + Double(attoseconds) / 1e18 + Self.hangMargin
    }

    private func unavailableError(_ state: State) -> ProtocolError {
        if case .stopped = state.phase { return ProtocolError(.ruleError, "rulesd is stopping") }
        if let exit = state.lastExit {
            let message = "the rule process \(exit.limit ? "was stopped" : "ended") (\(exit.reason)); it is restarting"
            return ProtocolError(exit.limit ? .resourceLimit : .ruleError, message)
        }
        return ProtocolError(.ruleError, "the rule process is starting")
    }

    private func supervise() {
        var decoder = RuleProcessFrameDecoder()
        var input = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let now = SystemClock.monotonicSeconds()
            // Decide what to do under the lock; do it outside.
            enum Step {
                case stop(pid: pid_t?, channel: Int32?)
                case start
                case poll(channel: Int32?, wantsWrite: Bool, timeout: Double)
                case hung(pid: pid_t, channel: Int32)
            }
            let step: Step = state.withLock { state in
                if state.stopRequested {
                    defer { state.phase = .stopped }
                    if case .running(let pid, let channel) = state.phase { return .stop(pid: pid, channel: channel) }
                    return .stop(pid: nil, channel: nil)
                }
                switch state.phase {
                case .stopped:
                    return .stop(pid: nil, channel: nil)
                case .idle:
                    return state.load == nil ? .poll(channel: nil, wantsWrite: false, timeout: 60) : .start
                case .waiting(let due):
                    return due <= now ? .start : .poll(channel: nil, wantsWrite: false, timeout: due - now)
                case .running(let pid, let channel):
                    var deadline = Double.infinity
                    if let load = state.awaitingLoad { deadline = load.due }
                    if !state.pending.isEmpty && state.awaitingLoad == nil {
                        deadline = min(deadline, state.progressAt + hangAfter)
                    }
                    if deadline <= now {
                        state.killedForHang = true
                        return .hung(pid: pid, channel: channel)
                    }
                    // Workers send requests without waking this thread, so it looks again every half deadline
                    // even when nothing was outstanding: a hang is seen within one and a half deadlines.
                    return .poll(
                        channel: channel, wantsWrite: !state.outbound.isEmpty,
                        timeout: min(deadline - now, hangAfter / 2))
                }
            }
            switch step {
            case .stop(let pid, let channel):
                stopProcess(pid: pid, channel: channel)
                return
            case .start:
                start()
            case .hung(let pid, let channel):
                logger.error(
                    "the rule process did not answer in time; killing it",
                    metadata: [
                        "rules.namespace": "\(namespace)", "pid": "\(pid)",
                        "deadline_ms": "\(Int(hangAfter * 1000))",
                    ])
                kill(pid, SIGKILL)
                ended(pid: pid, channel: channel, decoder: &decoder)
            case .poll(let channel, let wantsWrite, let timeout):
                var fds = [pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
                if let channel {
                    fds.append(
                        pollfd(fd: channel, events: Int16(POLLIN) | (wantsWrite ? Int16(POLLOUT) : 0), revents: 0))
                }
                let milliseconds = Int32(min(max(timeout * 1000, 0), 60_000).rounded(.up))
                let ready = poll(&fds, nfds_t(fds.count), milliseconds)
                if ready < 0 && errno != EINTR { usleep(10_000) }
                if fds[0].revents != 0 {
                    var drained = [UInt8](repeating: 0, count: 256)
                    while drained.withUnsafeMutableBytes({ read(wake, $0.baseAddress, $0.count) }) == 256 {}
                }
                guard let channel, fds.count > 1 else { continue }
                if fds[1].revents & Int16(POLLOUT) != 0 { writeOutbound(channel) }
                if fds[1].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    if !readAnswers(channel, into: &input, decoder: &decoder) {
                        if case .running(let pid, _) = state.withLock({ $0.phase }) {
                            ended(pid: pid, channel: channel, decoder: &decoder)
                        }
                    }
                } else if wantsWrite {
                    writeOutbound(channel)
                }
            }
        }
    }

    /// Starts a process and queues the current rule set for it.
    private func start() {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            startFailed("socketpair: \(String(cString: strerror(errno)))")
            return
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pair[1], RuleProcessWorker.channelDescriptor)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        sigaddset(&defaults, SIGHUP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let arguments = [
            "rulesd", "--\(RuleProcessWorker.modeOption)", "\(RuleProcessWorker.channelDescriptor)",
            "--\(RuleProcessWorker.memoryOption)", "\(limits.memoryLimit)",
        ]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, &argv, environ)
        close(pair[1])
        guard result == 0 else {
            close(pair[0])
            startFailed("cannot start \(executable): \(String(cString: strerror(result)))")
            return
        }
        let channel = pair[0]
        _ = fcntl(channel, F_SETFL, fcntl(channel, F_GETFL) | O_NONBLOCK)
        if let cgroup,
            let problem = cgroup.place(pid, namespace: namespace, limits: .init(memoryLimit: limits.memoryLimit))
        {
            logger.warning(
                "cannot put the rule process into its cgroup", metadata: ["reason": "\(problem)", "pid": "\(pid)"])
        }
        let now = SystemClock.monotonicSeconds()
        let restarted = state.withLock { state -> Bool in
            guard state.phase != .stopped else { return false }
            // Requests queued while the first process was being started follow its load.
            let queued = state.phase == .idle ? state.outbound : []
            state.phase = .running(pid: pid, channel: channel)
            state.startedAt = now
            state.killedForHang = false
            state.outbound.removeAll()
            if let load = state.load {
                state.outbound.append(contentsOf: load)
                state.awaitingLoad = (0, now + loadDeadline(state))
            }
            state.outbound.append(contentsOf: queued)
            return state.lastExit != nil
        }
        logger.info(
            restarted ? "rule process restarted" : "rule process started",
            metadata: ["rules.namespace": "\(namespace)", "pid": "\(pid)"])
    }

    private func startFailed(_ reason: String) {
        logger.error("cannot start the rule process", metadata: ["reason": "\(reason)"])
        let waiting: [Pending] = state.withLock { state in
            guard state.phase != .stopped else { return [] }
            let delay = state.backoff.delay(afterRunningFor: 0)
            state.lastExit = ("start_failed", SystemClock.epochSeconds(), false)
            state.exits["start_failed", default: 0] += 1
            state.phase = .waiting(due: SystemClock.monotonicSeconds() + delay)
            // What waited for the first process is refused, as it would have been had it come now.
            let waiting = Array(state.pending.values)
            state.pending.removeAll()
            state.outbound.removeAll()
            return waiting
        }
        let refusal = ProtocolError(.ruleError, "the rule process could not be started (\(reason)); it is restarting")
        for pending in waiting { pending.promise.succeed(.unavailable(refusal)) }
    }

    /// Writes what is queued, as far as the channel takes it.
    private func writeOutbound(_ channel: Int32) {
        state.withLock { Self.send(&$0.outbound, on: channel) }
    }

    /// Sends the front of `outbound` without blocking, and drops what was sent.
    private static func send(_ outbound: inout [UInt8], on channel: Int32) {
        var sent = 0
        while sent < outbound.count {
            let count = outbound.withUnsafeBytes {
                Glibc.send(channel, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            sent += count
        }
        if sent == outbound.count {
            outbound.removeAll(keepingCapacity: outbound.count <= (1 << 20))
        } else if sent > 0 {
            outbound.removeFirst(sent)
        }
    }

    /// Reads and delivers answers; false when the channel ended or broke.
    private func readAnswers(
        _ channel: Int32, into input: inout [UInt8], decoder: inout RuleProcessFrameDecoder
    ) -> Bool {
        while true {
            let count = input.withUnsafeMutableBytes { read(channel, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
            if count <= 0 { return false }
            input.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            var replies: [(EventLoopPromise<RuleProcessReply>, RuleProcessReply)] = []
            do {
                while let message = try decoder.next() {
                    let now = SystemClock.monotonicSeconds()
                    state.withLock { state in
                        switch message {
                        case .answer(let request, let ok, let bytes):
                            state.progressAt = now
                            if let pending = state.pending.removeValue(forKey: request) {
                                replies.append((pending.promise, .answered(ok: ok, line: bytes)))
                            }
                        case .loaded(let generation, let failure):
                            state.awaitingLoad = nil
                            state.progressAt = now
                            state.loadedGeneration = generation
                            if let failure {
                                logger.error(
                                    "the rule process could not load the rule set",
                                    metadata: ["rules.generation": "\(generation)", "error": "\(failure)"])
                            }
                        case .load, .evaluate:
                            break
                        }
                    }
                }
            } catch {
                logger.error("the rule process sent an unreadable message", metadata: ["error": "\(error)"])
                for (promise, reply) in replies { promise.succeed(reply) }
                return false
            }
            for (promise, reply) in replies { promise.succeed(reply) }
            if count < input.count { return true }
        }
    }

    /// The process ended (or was killed): collects it, refuses what waited for it, schedules the next start.
    private func ended(pid: pid_t, channel: Int32, decoder: inout RuleProcessFrameDecoder) {
        // The phase leaves `running` before the channel closes: its number can be reused at once (by a client's
        // connection), and no worker may write to it after that.
        let waiting: [Pending] = state.withLock { state in
            if state.phase != .stopped { state.phase = .waiting(due: .infinity) }
            let waiting = Array(state.pending.values)
            state.pending.removeAll()
            state.outbound.removeAll()
            state.awaitingLoad = nil
            return waiting
        }
        close(channel)
        decoder = RuleProcessFrameDecoder()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let now = SystemClock.monotonicSeconds()
        let (reason, delay, restarts): (String, Double, Int) = state.withLock { state in
            let (reason, limit) = Self.exitReason(status: status, killedForHang: state.killedForHang)
            state.lastExit = (reason, SystemClock.epochSeconds(), limit)
            state.exits[reason, default: 0] += 1
            guard state.phase != .stopped else { return (reason, 0, state.restarts) }
            let delay = state.backoff.delay(afterRunningFor: now - state.startedAt)
            state.restarts += 1
            state.phase = .waiting(due: now + delay)
            return (reason, delay, state.restarts)
        }
        logger.warning(
            "rule process ended; restarting",
            metadata: [
                "rules.namespace": "\(namespace)", "pid": "\(pid)", "reason": "\(reason)",
                "restart_in_ms": "\(Int(delay * 1000))", "restarts": "\(restarts)",
            ])
        let error = state.withLock { unavailableError($0) }
        for pending in waiting { pending.promise.succeed(.unavailable(error)) }
    }

    /// Why a process ended, and whether a limit ended it.
    static func exitReason(status: Int32, killedForHang: Bool) -> (String, Bool) {
        let signalled = status & 0x7f
        if signalled == 0 {
            return ("exited with status \((status >> 8) & 0xff)", false)
        }
        switch signalled {
        case SIGKILL where killedForHang: return ("hung: no answer within the deadline", true)
        case SIGXCPU: return ("cpu_limit: RLIMIT_CPU reached", true)
        case SIGKILL: return ("killed by SIGKILL", false)
        case SIGSYS: return ("seccomp: a forbidden system call", false)
        default: return ("crashed with signal \(signalled)", false)
        }
    }

    private func stopProcess(pid: pid_t?, channel: Int32?) {
        if let pid {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        if let channel { close(channel) }
        let waiting: [Pending] = state.withLock { state in
            let waiting = Array(state.pending.values)
            state.pending.removeAll()
            return waiting
        }
        for pending in waiting {
            pending.promise.succeed(.unavailable(ProtocolError(.ruleError, "rulesd is stopping")))
        }
    }
}
