import Crypto
import RuleModel

/// What capture records, as the settings say: how many requests per flag and per route, within how much memory,
/// and which context fields never reach memory as they were sent.
public struct CaptureSettings: Sendable, Equatable {
    /// `capture = on|off`.
    public enum Switch: String, Sendable, CaseIterable {
        case off, on
    }

    /// What happens to a field named in `capture_redact`.
    public enum RedactMode: String, Sendable, CaseIterable {
        /// Replaced by `"hmac:"` and the first 16 hex digits of its HMAC-SHA256 under the redaction key: equal
        /// values stay equal (so a replay still sees one user as one user), the value itself is not kept.
        case hash
        /// Removed from the captured context.
        case drop
    }

    public var capture: Switch = .off
    /// Distinct requests kept per flag and for the routes, by each worker and after merging.
    public var size = 1000
    /// Memory all captured requests may use, shared out evenly between the workers.
    public var memory = 16 << 20
    /// Top-level fields of a context (or of a routed request) that are redacted.
    public var redact: [String] = []
    public var redactMode: RedactMode = .hash
    /// The HMAC key for `hash`; empty means a random key generated when rulesd starts.
    public var redactKey = ""

    public init() {}

    public var enabled: Bool { capture == .on }
}

/// One captured request: the context (or routed request) as JSON text, after redaction.
struct CapturedEntry: Sendable, Equatable {
    /// The hash of the bytes as they arrived, which repeats are recognised by.
    var hash: Int
    /// `now()` for the request: its `at`, or the time it was answered.
    var at: Double
    /// When the worker first saw it, for keeping the most recent when rings of several workers merge.
    var seenAt: Double
    var json: [UInt8]

    /// What an entry costs besides its JSON: the entry itself, its slot in the set of hashes, allocation headers.
    static let overheadBytes = 96

    var costBytes: Int { json.count + Self.overheadBytes }
}

/// The recent distinct requests of one flag (or of the routes) seen by one worker: a ring buffer that forgets the
/// oldest entry when full, and ignores a request it already holds.
struct CaptureRing {
    let capacity: Int
    private var storage: [CapturedEntry] = []
    /// Index in `storage` of the oldest entry.
    private var head = 0
    private(set) var count = 0
    private var hashes: Set<Int> = []
    private(set) var bytes = 0

    init(capacity: Int) {
        precondition(capacity > 0, "a capture ring holds at least one entry")
        self.capacity = capacity
    }

    func contains(hash: Int) -> Bool { hashes.contains(hash) }

    /// Appends `entry`, forgetting the oldest one when the ring is full.
    /// - Returns: the bytes this freed.
    @discardableResult
    mutating func append(_ entry: CapturedEntry) -> Int {
        var freed = 0
        if count == capacity { freed = removeOldest() }
        if count == storage.count {
            // Every slot is taken and the ring may still grow: straighten it, then grow at the end.
            if head != 0 {
                storage = Array(storage[head...] + storage[..<head])
                head = 0
            }
            storage.append(entry)
        } else {
            storage[(head + count) % storage.count] = entry
        }
        count += 1
        hashes.insert(entry.hash)
        bytes += entry.costBytes
        return freed
    }

    /// Forgets the oldest entry.
    /// - Returns: the bytes this freed (0 when empty).
    @discardableResult
    mutating func removeOldest() -> Int {
        guard count > 0 else { return 0 }
        let oldest = storage[head]
        storage[head].json = []
        hashes.remove(oldest.hash)
        bytes -= oldest.costBytes
        head = (head + 1) % storage.count
        count -= 1
        if count == 0 {
            head = 0
            storage.removeAll(keepingCapacity: true)
        }
        return oldest.costBytes
    }

    /// The entries, oldest first.
    var entries: [CapturedEntry] {
        (0..<count).map { storage[(head + $0) % storage.count] }
    }
}

/// Rewrites the fields named in `capture_redact` before a request is kept.
struct CaptureRedaction: Sendable {
    let fields: Set<String>
    let mode: CaptureSettings.RedactMode
    /// The HMAC key's bytes (SymmetricKey itself is not Sendable; one is made per hash, which costs a copy).
    private let key: [UInt8]

    /// - Parameter key: the HMAC key's text; empty for a random one.
    init(fields: [String], mode: CaptureSettings.RedactMode, key: String) {
        self.fields = Set(fields)
        self.mode = mode
        self.key = key.isEmpty ? SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) } : Array(key.utf8)
    }

    var isActive: Bool { !fields.isEmpty }

    /// The object `json` with its named top-level fields dropped or hashed, written with sorted keys; nil when
    /// it is not a JSON object.
    func apply(_ json: UnsafeRawBufferPointer) -> [UInt8]? {
        guard case .object(let object)? = try? JSONParser().parse(json) else { return nil }
        var members: [(String, JSONValue)] = []
        for (name, value) in object {
            guard fields.contains(name) else {
                members.append((name, value))
                continue
            }
            if mode == .hash { members.append((name, .string(hashed(value)))) }
        }
        var out: [UInt8] = []
        JSONWriter(options: .sortedKeys).write(.object(JSONObject(members)), to: &out)
        return out
    }

    /// `hmac:` and the first 16 hex digits of the HMAC-SHA256 of the value's canonical JSON text.
    func hashed(_ value: JSONValue) -> String {
        let text = Array(JSONWriter.string(value, options: .sortedKeys).utf8)
        let mac = HMAC<SHA256>.authenticationCode(for: text, using: SymmetricKey(data: key))
        let hex = mac.prefix(8).map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }
        return "hmac:" + hex.joined()
    }
}

/// One worker's captured requests: a ring per flag (by key, so that rings outlive reloads) and one for the
/// routes. Owned by its worker and used only on its thread; the export copies it there.
final class CaptureRecorder {
    let size: Int
    /// This worker's share of `capture_memory`.
    let memoryLimit: Int
    let redaction: CaptureRedaction
    private var flagRings: [String: Int] = [:]
    /// Rings by position: index 0 is the routes', the others the flags' in `flagRings`.
    private var rings: [CaptureRing]
    private var ringKeys: [String?]
    /// The ring of each flag index of the serving generation; -1 until that flag is first captured.
    private var ringOfFlag: [Int] = []
    private(set) var bytes = 0
    private(set) var entries = 0
    /// Requests not kept because one alone is larger than this worker's share of memory.
    private(set) var dropped = 0

    init(size: Int, memoryLimit: Int, redaction: CaptureRedaction) {
        self.size = size
        self.memoryLimit = memoryLimit
        self.redaction = redaction
        rings = [CaptureRing(capacity: size)]
        ringKeys = [nil]
    }

    /// A new generation numbers its flags afresh: the rings stay, found again by key when next used.
    func beginGeneration(flagCount: Int) {
        ringOfFlag = Array(repeating: -1, count: flagCount)
    }

    /// A request on its way into one or more rings: its hash computed once, and the bytes to keep (redacted) made
    /// once, when a ring first needs them.
    private struct Pending {
        let json: UnsafeRawBufferPointer
        let hash: Int
        var kept: [UInt8]?

        init(_ json: UnsafeRawBufferPointer) {
            self.json = json
            var hasher = Hasher()
            hasher.combine(bytes: json)
            hash = hasher.finalize()
        }
    }

    /// The ring of the flag at `index`, made the first time the flag is captured.
    @inline(__always)
    private func ring(ofFlag index: Int, key: () -> String) -> Int? {
        guard index < ringOfFlag.count else { return nil }
        if ringOfFlag[index] >= 0 { return ringOfFlag[index] }
        let name = key()
        let ring: Int
        if let existing = flagRings[name] {
            ring = existing
        } else {
            ring = rings.count
            rings.append(CaptureRing(capacity: size))
            ringKeys.append(name)
            flagRings[name] = ring
        }
        ringOfFlag[index] = ring
        return ring
    }

    /// Records a flag request unless this worker already holds its context.
    /// - Parameters:
    ///   - index: the flag's index in the serving generation.
    ///   - key: the flag's key, asked for only the first time the flag is captured in a generation.
    @inline(__always)
    func recordFlag(index: Int, key: () -> String, context: UnsafeRawBufferPointer, at: Double, seenAt: Double) {
        guard let ring = ring(ofFlag: index, key: key) else { return }
        var pending = Pending(context)
        record(ring: ring, &pending, at: at, seenAt: seenAt)
    }

    /// Records a `flags` request's context for every flag it answered (hashed and redacted once).
    /// - Parameter key: the key of the flag at an index, asked for only the first time that flag is captured.
    func recordAllFlags(count: Int, key: (Int) -> String, context: UnsafeRawBufferPointer, at: Double, seenAt: Double) {
        var pending = Pending(context)
        for index in 0..<count {
            guard let ring = ring(ofFlag: index, key: { key(index) }) else { return }
            record(ring: ring, &pending, at: at, seenAt: seenAt)
        }
    }

    /// Records a routed request unless this worker already holds it.
    @inline(__always)
    func recordRoute(request: UnsafeRawBufferPointer, at: Double, seenAt: Double) {
        var pending = Pending(request)
        record(ring: 0, &pending, at: at, seenAt: seenAt)
    }

    private func record(ring: Int, _ pending: inout Pending, at: Double, seenAt: Double) {
        let hash = pending.hash
        if rings[ring].contains(hash: hash) { return }
        if pending.kept == nil {
            if pending.json.isEmpty {
                pending.kept = Array("{}".utf8)
            } else if redaction.isActive {
                guard let redacted = redaction.apply(pending.json) else { return }
                pending.kept = redacted
            } else {
                pending.kept = Array(pending.json)
            }
        }
        let kept = pending.kept!
        let entry = CapturedEntry(hash: hash, at: at, seenAt: seenAt, json: kept)
        guard entry.costBytes <= memoryLimit else {
            dropped += 1
            return
        }
        if rings[ring].count == rings[ring].capacity {
            bytes -= rings[ring].removeOldest()
            entries -= 1
        }
        // Over the memory share, the ring holding the most bytes forgets its oldest entries first, so that one
        // flag with large contexts cannot crowd out the others.
        while bytes + entry.costBytes > memoryLimit {
            guard let fullest = rings.indices.max(by: { rings[$0].bytes < rings[$1].bytes }), rings[fullest].count > 0
            else { break }
            bytes -= rings[fullest].removeOldest()
            entries -= 1
        }
        rings[ring].append(entry)
        bytes += entry.costBytes
        entries += 1
    }

    /// A copy of what this worker holds, for the export.
    /// - Parameter filter: which rings to copy.
    func snapshot(_ filter: CaptureFilter) -> [CaptureSubject: [CapturedEntry]] {
        var result: [CaptureSubject: [CapturedEntry]] = [:]
        for (index, ring) in rings.enumerated() where ring.count > 0 {
            let subject: CaptureSubject = ringKeys[index].map { .flag($0) } ?? .routes
            if filter.includes(subject) { result[subject] = ring.entries }
        }
        return result
    }
}

/// Which captured requests an export wants.
enum CaptureFilter: Sendable, Equatable {
    case all
    case flag(String)
    case routes

    func includes(_ subject: CaptureSubject) -> Bool {
        switch (self, subject) {
        case (.all, _), (.routes, .routes): return true
        case (.flag(let wanted), .flag(let key)): return wanted == key
        default: return false
        }
    }
}

/// What a ring captures: one flag's requests, or the routed ones.
enum CaptureSubject: Sendable, Hashable, Comparable {
    case flag(String)
    case routes
}

/// The export: every worker's rings merged, as JSON Lines.
enum CaptureExport {
    /// Merges the workers' copies: per subject, the `size` most recently seen distinct requests (equal JSON text
    /// counts once whichever workers saw it), oldest first; subjects in order, flags by key, routes last.
    static func merge(_ snapshots: [[CaptureSubject: [CapturedEntry]]], size: Int) -> [(
        CaptureSubject, [CapturedEntry]
    )] {
        var bySubject: [CaptureSubject: [CapturedEntry]] = [:]
        for snapshot in snapshots {
            for (subject, entries) in snapshot { bySubject[subject, default: []].append(contentsOf: entries) }
        }
        return bySubject.keys.sorted().map { subject in
            var seen: Set<[UInt8]> = []
            var kept: [CapturedEntry] = []
            // Newest first; entries seen in the same batch keep their order within their worker.
            let entries = bySubject[subject]!
            let newestFirst = entries.indices.sorted { a, b in
                entries[a].seenAt != entries[b].seenAt ? entries[a].seenAt > entries[b].seenAt : a > b
            }
            for index in newestFirst where kept.count < size {
                if seen.insert(entries[index].json).inserted { kept.append(entries[index]) }
            }
            return (subject, kept.reversed())
        }
    }

    /// One line (without its newline): `{"flag":"KEY","context":{...},"at":T}` or `{"route":{...},"at":T}`.
    static func appendLine(_ subject: CaptureSubject, _ entry: CapturedEntry, to out: inout [UInt8]) {
        switch subject {
        case .flag(let key):
            out.append(contentsOf: #"{"flag":"#.utf8)
            JSONWriter.appendEscapedString(key, to: &out)
            out.append(contentsOf: #","context":"#.utf8)
        case .routes:
            out.append(contentsOf: #"{"route":"#.utf8)
        }
        out.append(contentsOf: entry.json)
        out.append(contentsOf: #","at":"#.utf8)
        JSONWriter.appendDouble(entry.at, to: &out)
        out.append(UInt8(ascii: "}"))
    }
}
