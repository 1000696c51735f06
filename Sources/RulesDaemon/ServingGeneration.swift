import Atomics
import NIOCore
import RuleEngine
import RulesProtocol

/// Where a generation's rules came from.
public enum GenerationOrigin: String, Sendable {
    /// The rules directory, as configured.
    case rulesDirectory = "rules_directory"
    /// The state directory's copy of the last rule set that loaded, because the rules directory did not load.
    case lastKnownGood = "last_known_good"
    /// A revision from the history, made live by a rollback.
    case history
}

/// One loaded rule set, ready to serve: the validated model plus one Lua state per worker.
///
/// Each worker takes its own evaluator out of its box, on its own event loop, the first time it serves
/// this generation; from then on the evaluator belongs to that worker's thread alone.
public final class ServingGeneration: Sendable, AtomicReference {
    public let number: UInt64
    public let ruleSet: RuleSet
    public let origin: GenerationOrigin
    /// Seconds since the epoch.
    public let loadedAt: Double
    /// Bytes one Lua state holds right after loading.
    public let stateMemory: Int
    /// The first 16 hex digits of the revision, as every answer carries it.
    public let shortRevision: String
    /// `"ok":true,"revision":"…","generation":N,"result":`, the same for every answer of this generation.
    let answerHeader: [UInt8]
    private let evaluators: [NIOLoopBoundBox<RuleEvaluator?>]

    init(
        number: UInt64, ruleSet: RuleSet, origin: GenerationOrigin, loadedAt: Double, stateMemory: Int,
        evaluators: [NIOLoopBoundBox<RuleEvaluator?>]
    ) {
        self.number = number
        self.ruleSet = ruleSet
        self.origin = origin
        self.loadedAt = loadedAt
        self.stateMemory = stateMemory
        self.shortRevision = ruleSet.revision.short
        self.answerHeader = ResponseWriter.successHeader(revision: ruleSet.revision.short, generation: number)
        self.evaluators = evaluators
    }

    /// Hands worker `index` its evaluator; call on that worker's event loop. Nil once taken.
    func takeEvaluator(worker index: Int) -> RuleEvaluator? {
        guard index < evaluators.count else { return nil }
        let box = evaluators[index]
        let evaluator = box.value
        box.value = nil
        return evaluator
    }
}

/// The one place the serving generation is published.
///
/// Publishing stores the generation, then its number; workers check the number (a plain atomic load) on
/// every request and fetch the generation only when it changed, so evaluation takes no lock.
public final class GenerationStore: Sendable {
    private let current = ManagedAtomic<ServingGeneration?>(nil)
    private let number = ManagedAtomic<UInt64>(0)
    /// The overrides in force, published beside the generation and read the same lock-free way.
    let overrides = OverrideBoard()
    /// The process this rule set is evaluated in, with `isolation = process`.
    let isolated: IsolatedRuleProcess?

    public init(isolated: IsolatedRuleProcess? = nil) {
        self.isolated = isolated
    }

    /// Makes `generation` the one every new request uses.
    func publish(_ generation: ServingGeneration) {
        current.store(generation, ordering: .releasing)
        number.store(generation.number, ordering: .releasing)
    }

    /// The number of the newest published generation (0 before the first).
    var publishedNumber: UInt64 { number.load(ordering: .acquiring) }

    /// The newest published generation.
    public var generation: ServingGeneration? { current.load(ordering: .acquiring) }
}
