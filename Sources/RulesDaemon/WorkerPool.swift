import Atomics
import Logging
import NIOCore
import QueryServing
import RuleEngine

#if canImport(Glibc)
    import Glibc
#endif

/// The worker threads (each a ``ServingEventLoop``) and the worker each of them owns.
final class WorkerPool: Sendable {
    let loops: [ServingEventLoop]
    private let workers: [NIOLoopBound<Worker>]
    private let counters: [WorkerCounters]
    private let indexes: [ObjectIdentifier: Int]
    private let nextWorker = ManagedAtomic<Int>(0)

    private init(loops: [ServingEventLoop], workers: [NIOLoopBound<Worker>], counters: [WorkerCounters]) {
        self.loops = loops
        self.workers = workers
        self.counters = counters
        var indexes: [ObjectIdentifier: Int] = [:]
        for (index, loop) in loops.enumerated() { indexes[ObjectIdentifier(loop)] = index }
        self.indexes = indexes
    }

    /// Starts `count` worker threads and creates each one's worker on its own thread.
    /// - Parameters:
    ///   - store: the default namespace's generations.
    ///   - namespaces: the declared namespaces besides `default`, each with its own generation store; every
    ///     worker keeps a Lua state of each.
    ///   - onLoopFailure: told when a loop had to stop (its poll failed); the daemon cannot serve on.
    static func start(
        count: Int, store: GenerationStore, namespaces: [(name: String, store: GenerationStore)] = [],
        logger: Logger, capture: CaptureSettings = CaptureSettings(),
        onLoopFailure: (@Sendable (Error) -> Void)? = nil
    ) async throws -> WorkerPool {
        // One redaction (and so one HMAC key) for all workers, so that equal values hash alike whichever
        // worker saw them.
        let redaction = CaptureRedaction(fields: capture.redact, mode: capture.redactMode, key: capture.redactKey)
        var loops: [ServingEventLoop] = []
        for index in 0..<count {
            loops.append(try ServingEventLoop(name: "rulesd-worker-\(index)", onFailure: onLoopFailure))
        }
        var workers: [NIOLoopBound<Worker>] = []
        var counters: [WorkerCounters] = []
        for (index, loop) in loops.enumerated() {
            let counter = WorkerCounters()
            let worker = try await loop.submit { () throws -> NIOLoopBound<Worker> in
                let stack = ThreadStack.currentBytes()
                guard stack == 0 || stack >= ThreadStack.minimumBytes else {
                    throw StartupError("event-loop threads have a \(stack)-byte stack; Lua needs at least 1 MiB")
                }
                var workerLogger = logger
                workerLogger[metadataKey: "worker"] = "\(index)"
                let recorder =
                    capture.enabled
                    ? CaptureRecorder(
                        size: capture.size, memoryLimit: max(1, capture.memory / count), redaction: redaction) : nil
                let worker = Worker(
                    index: index, store: store, counters: counter, metrics: WorkerMetrics(), logger: workerLogger,
                    capture: recorder, namespaces: namespaces)
                return NIOLoopBound(worker, eventLoop: loop)
            }.get()
            workers.append(worker)
            counters.append(counter)
        }
        return WorkerPool(loops: loops, workers: workers, counters: counters)
    }

    /// The worker of the event loop the caller runs on.
    func worker(on loop: any EventLoop) -> Worker {
        workers[indexes[ObjectIdentifier(loop)]!].value
    }

    /// Runs `body` on the next worker in turn, on its own thread (for requests that arrive off the workers'
    /// loops, such as the HTTP listeners').
    func onNextWorker<T: Sendable>(_ body: @escaping @Sendable (Worker) -> T) -> EventLoopFuture<T> {
        let turn = UInt(bitPattern: nextWorker.loadThenWrappingIncrement(ordering: .relaxed))
        let index = Int(turn % UInt(loops.count))
        let worker = workers[index]
        return loops[index].submit { body(worker.value) }
    }

    /// Makes every worker adopt the newest generation now rather than at its next request.
    func refreshAll() {
        for (index, loop) in loops.enumerated() {
            let worker = workers[index]
            loop.execute { worker.value.refresh() }
        }
    }

    /// Requests answered so far, by all workers.
    var requestsServed: Int { counters.reduce(0) { $0 + $1.requests.load(ordering: .relaxed) } }

    /// Captured requests held by all workers, and their bytes.
    var captureTotals: (entries: Int, bytes: Int) {
        counters.reduce((0, 0)) {
            ($0.0 + $1.captureEntries.load(ordering: .relaxed), $0.1 + $1.captureBytes.load(ordering: .relaxed))
        }
    }

    /// Each worker's captured requests, copied on its own thread.
    func captureSnapshots(_ filter: CaptureFilter) async -> [[CaptureSubject: [CapturedEntry]]] {
        var snapshots: [[CaptureSubject: [CapturedEntry]]] = []
        for (index, loop) in loops.enumerated() {
            let worker = workers[index]
            if let snapshot = try? await loop.submit({ worker.value.capture?.snapshot(filter) ?? [:] }).get() {
                snapshots.append(snapshot)
            }
        }
        return snapshots
    }

    /// Each worker's metrics, copied on its own thread.
    func metricsSnapshots() async -> [WorkerMetricsSnapshot] {
        var snapshots: [WorkerMetricsSnapshot] = []
        for (index, loop) in loops.enumerated() {
            let worker = workers[index]
            if let snapshot = try? await loop.submit({ worker.value.metrics.snapshot() }).get() {
                snapshots.append(snapshot)
            }
        }
        return snapshots
    }

    /// Each worker's flag-evaluation metrics of each declared namespace (not `default`, whose are in
    /// ``metricsSnapshots()``), copied on its own thread.
    func namespaceMetricsSnapshots() async -> [String: [WorkerMetricsSnapshot]] {
        var snapshots: [String: [WorkerMetricsSnapshot]] = [:]
        for (index, loop) in loops.enumerated() {
            let worker = workers[index]
            let taken = try? await loop.submit {
                worker.value.namespaces.dropFirst().map { ($0.name, $0.metrics.snapshot()) }
            }.get()
            for (name, snapshot) in taken ?? [] { snapshots[name, default: []].append(snapshot) }
        }
        return snapshots
    }

    func shutdown() async {
        for loop in loops { try? await loop.shutdownGracefully() }
    }
}
