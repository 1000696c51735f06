import RuleModel

/// One loaded rule file, as `status` reports it.
public struct RuleFileInfo: Sendable, Hashable {
    public var path: String
    public var bytes: Int
    /// SHA-256 of the content, hex.
    public var sha256: String

    public init(path: String, bytes: Int, sha256: String) {
        self.path = path
        self.bytes = bytes
        self.sha256 = sha256
    }
}

/// A validated rule set: what it declares and where, independent of any Lua state.
///
/// Immutable and shareable across threads; evaluation happens in ``RuleEvaluator``s made from it, one per
/// thread.
public final class RuleSet: Sendable {
    public let revision: RuleRevision
    public let sources: [RuleSource]
    public let files: [RuleFileInfo]
    /// Sorted by key.
    public let flags: [FlagDefinition]
    /// In the order they are tried: priority (highest first), then file path, then order in the file.
    public let routes: [RouteDefinition]
    /// Sorted by key.
    public let configs: [ConfigEntry]
    /// The rule tests the files declare, in load order; never flags, answers or metrics.
    public let tests: [RuleTestDefinition]
    /// The data files the rules use (`data "name"`), in the order first asked for; shared by every evaluator.
    public let dataSets: [RuleDataSet]
    public let limits: RuleEngineLimits
    private let flagIndexes: UTF8KeyIndex
    private let configIndexes: [String: Int]
    /// Pre-encoded pieces of flag answers, so that answering copies bytes instead of escaping text.
    let flagFragments: FlagAnswerTable

    init(
        revision: RuleRevision, sources: [RuleSource], flags: [FlagDefinition], routes: [RouteDefinition],
        configs: [ConfigEntry], tests: [RuleTestDefinition] = [], dataSets: [RuleDataSet] = [],
        limits: RuleEngineLimits
    ) {
        self.revision = revision
        self.sources = sources
        self.files = sources.map {
            RuleFileInfo(path: $0.path, bytes: $0.content.count, sha256: RuleRevision.digest(of: $0.content))
        }
        self.flags = flags
        self.routes = routes
        self.configs = configs
        self.tests = tests
        self.dataSets = dataSets
        self.limits = limits
        self.flagIndexes = UTF8KeyIndex(flags.map(\.key))
        self.flagFragments = FlagAnswerTable(flags)
        var configIndexes: [String: Int] = [:]
        for (index, entry) in configs.enumerated() { configIndexes[entry.key] = index }
        self.configIndexes = configIndexes
    }

    /// Index of the flag named `key` in ``flags``.
    public func flagIndex(forKey key: String) -> Int? { flagIndexes.index(of: key) }

    /// Index of the flag whose key is spelled by these UTF-8 bytes.
    public func flagIndex(forUTF8 key: UnsafeRawBufferPointer) -> Int? { flagIndexes.index(of: key) }

    /// The config value named `key`.
    public func config(key: String) -> ConfigEntry? { configIndexes[key].map { configs[$0] } }

    /// Every config value whose key starts with `prefix`, sorted by key.
    public func configs(prefix: String) -> [ConfigEntry] {
        if prefix.isEmpty { return configs }
        let target = Array(prefix.utf8)
        // Keys are sorted bytewise, so the matches are one contiguous run.
        var low = 0
        var high = configs.count
        while low < high {
            let mid = (low + high) / 2
            if Array(configs[mid].key.utf8).lexicographicallyPrecedes(target) { low = mid + 1 } else { high = mid }
        }
        var result: [ConfigEntry] = []
        var index = low
        while index < configs.count, configs[index].key.utf8.starts(with: target) {
            result.append(configs[index])
            index += 1
        }
        return result
    }
}

/// Why a rule set did not load: every problem found, each with its file and line.
public struct RuleLoadFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure it is, which says whether trying the same files again can succeed.
    public enum Cause: Sendable, Hashable {
        /// The files themselves: syntax, a failing chunk, validation. The same files fail the same way.
        case content
        /// A time, instruction or memory budget ran out, or the files could not be read: a stalled or busy
        /// machine can cause it, so the same files may load on another try.
        case resourceLimit
        /// Loading was abandoned (the daemon is stopping).
        case cancelled
    }

    public var diagnostics: [RuleDiagnostic]
    public var cause: Cause

    public init(diagnostics: [RuleDiagnostic], cause: Cause = .content) {
        self.diagnostics = diagnostics
        self.cause = cause
    }

    public init(_ message: String, cause: Cause = .content) {
        self.diagnostics = [RuleDiagnostic(location: SourceLocation(file: "", line: 0), message: message)]
        self.cause = cause
    }

    /// A failure of loading abandoned on request.
    public static let cancelled = RuleLoadFailure("loading cancelled", cause: .cancelled)

    /// Whether the same files are certain to fail again, so that the failure may be remembered by revision.
    public var isDeterministic: Bool { cause == .content }

    /// One `file:line: message` per line.
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// The parts of a flag's answers that never change: `{"key":"K"`, each variant's `"value":V,"variant":"N"`,
/// and `,"source":"file:line"}`.
struct FlagAnswerFragments: Sendable {
    let head: ArraySlice<UInt8>
    let variants: [[UInt8]]
    let tail: ArraySlice<UInt8>

    /// `"value":V,"variant":"N"`.
    static func encodedVariant(_ variant: FlagVariant) -> [UInt8] {
        var bytes = Array(#""value":"#.utf8)
        bytes.append(contentsOf: variant.json)
        bytes.append(contentsOf: #","variant":"#.utf8)
        JSONWriter.appendEscapedString(variant.name, to: &bytes)
        return bytes
    }

    init(head: ArraySlice<UInt8>, variants: [[UInt8]], tail: ArraySlice<UInt8>) {
        self.head = head
        self.variants = variants
        self.tail = tail
    }

    /// The fragments of one flag alone.
    init(_ flag: FlagDefinition) {
        var text: [UInt8] = []
        Self.appendHead(flag, to: &text)
        let tail = text.count
        Self.appendTail(flag, to: &text)
        self.init(head: text[..<tail], variants: flag.variants.map(Self.encodedVariant), tail: text[tail...])
    }

    /// `{"key":"K"`.
    static func appendHead(_ flag: FlagDefinition, to text: inout [UInt8]) {
        text.append(contentsOf: #"{"key":"#.utf8)
        JSONWriter.appendEscapedString(flag.key, to: &text)
    }

    /// `,"metadata":M` when the flag has metadata, then `,"source":"file:line"}`.
    static func appendTail(_ flag: FlagDefinition, to text: inout [UInt8]) {
        if let metadata = flag.metadata {
            text.append(contentsOf: #","metadata":"#.utf8)
            text.append(contentsOf: JSONWriter.string(metadata).utf8)
        }
        text.append(contentsOf: #","source":"#.utf8)
        JSONWriter.appendEscapedString(flag.location.description, to: &text)
        text.append(UInt8(ascii: "}"))
    }
}

/// The ``FlagAnswerFragments`` of every flag of a rule set, as offsets into two byte arrays.
///
/// Answering a flag reads three fragments; held as slices and arrays per flag, each read retained and released
/// its array (about 60 ns of the full request's 1,570 in `rulesbench engine`); as offsets, nothing is counted.
/// Smaller too: 20 bytes per flag rather than 72.
struct FlagAnswerTable: Sendable {
    /// A flag's fragments: its head is `text[head..<tail]`, its tail `text[tail..<end]`, its variant `v`
    /// `variantText[variantBounds[variants + v]..<variantBounds[variants + v + 1]]`.
    struct Record: Sendable {
        var head, tail, end, variants, variantCount: Int32
    }

    /// The heads and tails of every flag, one flag after another.
    let text: [UInt8]
    /// The encoded variants, once for each variants array that flags share (every boolean flag shares one).
    let variantText: [UInt8]
    let variantBounds: [Int32]
    let records: [Record]

    init(_ flags: [FlagDefinition]) {
        var text: [UInt8] = []
        var variantText: [UInt8] = []
        var variantBounds: [Int32] = []
        var records: [Record] = []
        records.reserveCapacity(flags.count)
        var encoded: [UnsafeRawPointer: Int32] = [:]
        for flag in flags {
            let head = Int32(text.count)
            FlagAnswerFragments.appendHead(flag, to: &text)
            let tail = Int32(text.count)
            FlagAnswerFragments.appendTail(flag, to: &text)
            // The storage's address names the array while `flags` holds it, as it does throughout.
            let storage = flag.variants.withUnsafeBufferPointer { $0.baseAddress.map(UnsafeRawPointer.init) }
            let base: Int32
            if let storage, let shared = encoded[storage] {
                base = shared
            } else {
                base = Int32(variantBounds.count)
                for variant in flag.variants {
                    variantBounds.append(Int32(variantText.count))
                    variantText.append(contentsOf: FlagAnswerFragments.encodedVariant(variant))
                }
                variantBounds.append(Int32(variantText.count))
                if let storage { encoded[storage] = base }
            }
            records.append(
                Record(
                    head: head, tail: tail, end: Int32(text.count), variants: base,
                    variantCount: Int32(flag.variants.count)))
        }
        self.text = text
        self.variantText = variantText
        self.variantBounds = variantBounds
        self.records = records
    }

    var count: Int { records.count }

    /// One flag's fragments, copied out (for the slow paths and tests).
    subscript(index: Int) -> FlagAnswerFragments {
        let record = records[index]
        let variants = (0..<Int(record.variantCount)).map { v in
            Array(
                variantText[
                    Int(variantBounds[Int(record.variants) + v])..<Int(variantBounds[Int(record.variants) + v + 1])])
        }
        return FlagAnswerFragments(
            head: text[Int(record.head)..<Int(record.tail)], variants: variants,
            tail: text[Int(record.tail)..<Int(record.end)])
    }
}
