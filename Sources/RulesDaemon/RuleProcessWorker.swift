import CRuleProcessLimits
import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// The rule process of `isolation = process`: rulesd re-executed with ``RuleProcessWorker/modeOption``, holding
/// one Lua state of its rule set and answering the requests rulesd passes it over a socketpair.
///
/// Before it reads its first message it closes every inherited descriptor but its channel, and limits itself:
/// no new privileges, death with its parent, `RLIMIT_AS`, `RLIMIT_CPU`, `RLIMIT_NOFILE`, no core dumps, and a
/// seccomp filter that leaves it input and output on the channel only.
public enum RuleProcessWorker {
    /// The hidden command-line option that makes rulesd a rule process: `--rule-process FD`.
    public static let modeOption = "rule-process"
    /// The hidden option that passes the rule set's `memory_limit` (bytes), for `RLIMIT_AS`.
    public static let memoryOption = "rule-process-memory"
    /// The descriptor the channel is inherited on.
    static let channelDescriptor: Int32 = 3
    /// Descriptors a rule process may hold: stdin, stdout, stderr, its channel (and a spare).
    static let openFiles: UInt64 = 5
    /// A backstop: CPU seconds over the whole life of the process. Evaluations are bounded by their own budgets
    /// long before; this ends a process whose C code (outside any budget) spins, within the hour.
    static let cpuSeconds: UInt64 = 3600

    /// The address space a rule process may map: its Lua states (the one serving and, during a reload, the next
    /// one), each capped at `memoryLimit`, plus what the process had mapped before loading any rules, plus
    /// 256 MiB for the runtime's own allocations and the data sets.
    static func addressSpaceLimit(memoryLimit: Int, mappedAtStart: Int) -> UInt64 {
        UInt64(mappedAtStart) + 2 * UInt64(memoryLimit) + (256 << 20)
    }

    /// Runs the rule process: limits itself, then answers until the channel closes. Never returns.
    /// - Parameters:
    ///   - channel: the inherited end of the socketpair.
    ///   - memoryLimit: the rule set's `memory_limit`, for `RLIMIT_AS` (nil: the default).
    public static func run(channel: Int32, memoryLimit: Int?) -> Never {
        let memoryLimit = memoryLimit ?? RuleEngineLimits().memoryLimit
        let stack = 16 << 20
        let status = DedicatedThread.run(name: "rulesd-rules", stackBytes: stack) { () -> Int32 in
            if let problem = confine(channel: channel, memoryLimit: memoryLimit) {
                writeStandardError("rulesd rule process: \(problem); not starting\n")
                return 70  // EX_SOFTWARE
            }
            var worker = Serving(channel: channel)
            return worker.serve()
        }
        exit(status)
    }

    /// Applies every limit; a description of what failed, or nil.
    static func confine(channel: Int32, memoryLimit: Int) -> String? {
        rpl_close_descriptors_from(channel + 1)
        var result = rpl_set_no_new_privileges_and_parent_death_signal()
        if result != 0 { return "prctl failed: \(String(cString: strerror(-result)))" }
        // The parent may have ended before the death signal was armed.
        if getppid() == 1 { return "rulesd is gone" }
        let limit = addressSpaceLimit(memoryLimit: memoryLimit, mappedAtStart: mappedBytes())
        result = rpl_set_resource_limits(limit, cpuSeconds, openFiles)
        if result != 0 { return "setrlimit failed: \(String(cString: strerror(-result)))" }
        result = rpl_install_seccomp_filter(channel)
        if result != 0 { return "seccomp failed: \(String(cString: strerror(-result)))" }
        return nil
    }

    /// VmSize of this process, from /proc/self/status (0 when unreadable).
    private static func mappedBytes() -> Int {
        guard let file = fopen("/proc/self/status", "r") else { return 0 }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(cString: line)
            if text.hasPrefix("VmSize:") {
                let digits = text.dropFirst(7).filter(\.isNumber)
                return (Int(digits) ?? 0) * 1024
            }
        }
        return 0
    }

    static func writeStandardError(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// The loop: one message in, at most one message out.
    private struct Serving {
        let channel: Int32
        var decoder = RuleProcessFrameDecoder()
        var evaluator: RuleEvaluator?
        var header: [UInt8] = []
        var requestDecoder = RequestDecoder()
        var result: [UInt8] = []
        var output: [UInt8] = []
        var answerLine = ByteBufferAllocator().buffer(capacity: 4096)

        init(channel: Int32) {
            self.channel = channel
        }

        /// The exit status once the channel closed or failed.
        mutating func serve() -> Int32 {
            var input = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let count = input.withUnsafeMutableBytes { read(channel, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { return count == 0 ? 0 : 74 }  // EX_IOERR
                input.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                do {
                    while let message = try decoder.next() { handle(message) }
                } catch {
                    writeStandardError("rulesd rule process: \(error); stopping\n")
                    return 74
                }
                if !output.isEmpty {
                    guard sendAll() else { return 74 }
                }
            }
        }

        private mutating func handle(_ message: RuleProcessMessage) {
            switch message {
            case .load(let generation, let limits, let sources):
                // Freed first: its memory counts against RLIMIT_AS.
                evaluator = nil
                do {
                    let (ruleSet, loaded) = try RuleCompiler.compile(sources, limits: limits, runTests: false)
                    evaluator = loaded
                    header = ResponseWriter.successHeader(revision: ruleSet.revision.short, generation: generation)
                    requestDecoder = RequestDecoder(
                        maxDepth: max(limits.maxContextDepth + 2, RequestDecoder.defaultMaxDepth))
                    RuleProcessMessage.loaded(generation: generation, failure: nil).encode(into: &output)
                } catch {
                    RuleProcessMessage.loaded(generation: generation, failure: error.description).encode(into: &output)
                }
            case .evaluate(let request, let now, let line):
                answerLine.clear()
                let ok = line.withUnsafeBytes { answer(line: $0, now: now) }
                RuleProcessMessage.answer(request: request, ok: ok, bytes: Array(answerLine.readableBytesView))
                    .encode(into: &output)
            case .loaded, .answer:
                break
            }
        }

        /// Writes the answer to one request line into `answerLine`, exactly as an in-process worker does.
        private mutating func answer(line: UnsafeRawBufferPointer, now requestTime: Double) -> Bool {
            guard let evaluator else {
                ResponseWriter.writeFailure(
                    id: nil, error: ProtocolError(.internal, "no rule set is loaded"), into: &answerLine)
                return false
            }
            let request: DecodedRequest
            switch requestDecoder.decode(line) {
            case .success(let decoded): request = decoded
            case .failure(let failure):
                ResponseWriter.writeFailure(
                    id: failure.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }, error: failure.error,
                    into: &answerLine)
                return false
            }
            let id = request.id.map { UnsafeRawBufferPointer(rebasing: line[$0]) }
            let now = request.at ?? requestTime
            let empty = UnsafeRawBufferPointer(start: nil, count: 0)
            let context = request.context.map { UnsafeRawBufferPointer(rebasing: line[$0]) } ?? empty
            let observer = NoEvaluationObserver()
            result.removeAll(keepingCapacity: true)
            let failure: ProtocolError?
            switch request.operation {
            case .ping:
                failure = EvaluationAnswers.answer(
                    .ping, evaluator: evaluator, now: now, observer: observer, into: &result)
            case .flag:
                failure = request.withFlagBytes(in: line) { key in
                    EvaluationAnswers.answer(
                        .flag(key: key, context: context), evaluator: evaluator, now: now, observer: observer,
                        into: &result)
                }
            case .flags:
                failure = EvaluationAnswers.answer(
                    .flags(context: context), evaluator: evaluator, now: now, observer: observer, into: &result)
            case .route:
                let routed = request.request.map { UnsafeRawBufferPointer(rebasing: line[$0]) } ?? empty
                failure = EvaluationAnswers.answer(
                    .route(request: routed), evaluator: evaluator, now: now, observer: observer, into: &result)
            case .config:
                let question: RuleQuestion = request.key.map { .config(key: $0) } ?? .configPrefix(request.prefix ?? "")
                failure = EvaluationAnswers.answer(
                    question, evaluator: evaluator, now: now, observer: observer, into: &result)
            case .explain:
                if let routed = request.request {
                    failure = EvaluationAnswers.answer(
                        .explainRoute(request: UnsafeRawBufferPointer(rebasing: line[routed])), evaluator: evaluator,
                        now: now, observer: observer, into: &result)
                } else {
                    failure = request.withFlagBytes(in: line) { key in
                        EvaluationAnswers.answer(
                            .explainFlag(key: key, context: context), evaluator: evaluator, now: now,
                            observer: observer, into: &result)
                    }
                }
            default:
                failure = ProtocolError(.internal, "operation \(request.operation.rawValue) is not synchronous")
            }
            // A rule process does not forward rule log lines; they are dropped so that they do not pile up.
            if evaluator.hasLogs { _ = evaluator.takeLogs() }
            if let failure {
                ResponseWriter.writeFailure(id: id, error: failure, into: &answerLine)
                return false
            }
            ResponseWriter.writeSuccess(id: id, header: header, result: result, into: &answerLine)
            return true
        }

        private mutating func sendAll() -> Bool {
            var sent = 0
            while sent < output.count {
                let count = output.withUnsafeBytes {
                    send(channel, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
                }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { return false }
                sent += count
            }
            output.removeAll(keepingCapacity: output.count <= (1 << 20))
            return true
        }
    }
}
