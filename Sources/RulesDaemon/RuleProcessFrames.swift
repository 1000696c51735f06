import RuleEngine
import RuleModel

/// What rulesd and a rule process (`isolation = process`) tell each other over their socketpair.
///
/// Each message travels as one frame: a 4-byte big-endian length, then that many bytes, the first of which
/// names the kind of message. Integers are big-endian; byte strings carry a 4-byte length before them.
enum RuleProcessMessage: Equatable, Sendable {
    /// rulesd → rule process: build the Lua state of this rule set (already validated by rulesd) and answer from
    /// it from now on, as generation `generation`.
    case load(generation: UInt64, limits: RuleEngineLimits, sources: [RuleSource])
    /// rulesd → rule process: answer the request line `line` (without its newline), with `now` as the time
    /// rules see.
    case evaluate(request: UInt64, now: Double, line: [UInt8])
    /// rule process → rulesd: the rule set of `generation` is loaded, or could not be (`failure` says why).
    case loaded(generation: UInt64, failure: String?)
    /// rule process → rulesd: the whole answer line to `request`, newline included, byte for byte what an
    /// in-process worker writes; `ok` tells a success from a failure (for the metrics).
    case answer(request: UInt64, ok: Bool, bytes: [UInt8])

    private enum Kind: UInt8 {
        case load = 1
        case evaluate = 2
        case loaded = 3
        case answer = 4
    }

    /// Appends the message as one frame.
    func encode(into out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: [0, 0, 0, 0])
        switch self {
        case .load(let generation, let limits, let sources):
            out.append(Kind.load.rawValue)
            Self.append(generation, to: &out)
            for value in Self.limitFields(limits) { Self.append(UInt64(bitPattern: Int64(value)), to: &out) }
            Self.append(UInt64(sources.count), to: &out)
            for source in sources {
                Self.appendBytes(Array(source.path.utf8), to: &out)
                Self.appendBytes(source.content, to: &out)
            }
        case .evaluate(let request, let now, let line):
            out.append(Kind.evaluate.rawValue)
            Self.append(request, to: &out)
            Self.append(now.bitPattern, to: &out)
            Self.appendBytes(line, to: &out)
        case .loaded(let generation, let failure):
            out.append(Kind.loaded.rawValue)
            Self.append(generation, to: &out)
            out.append(failure == nil ? 0 : 1)
            Self.appendBytes(Array((failure ?? "").utf8), to: &out)
        case .answer(let request, let ok, let bytes):
            out.append(Kind.answer.rawValue)
            Self.append(request, to: &out)
            out.append(ok ? 1 : 0)
            Self.appendBytes(bytes, to: &out)
        }
        let length = UInt32(out.count - start - 4)
        for shift in 0..<4 { out[start + shift] = UInt8(truncatingIfNeeded: length >> (24 - 8 * UInt32(shift))) }
    }

    /// The frame of this message alone.
    var frame: [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    /// Reads one message from a frame's body (without its length).
    init(body: ArraySlice<UInt8>) throws(RuleProcessFrameError) {
        var reader = FieldReader(bytes: body)
        guard let kind = Kind(rawValue: try reader.byte()) else {
            throw RuleProcessFrameError("unknown message kind \(body.first ?? 0)")
        }
        switch kind {
        case .load:
            let generation = try reader.integer()
            var fields: [Int] = []
            for _ in 0..<Self.limitFieldCount { fields.append(Int(Int64(bitPattern: try reader.integer()))) }
            let count = try reader.integer()
            guard count <= UInt64(body.count) else { throw RuleProcessFrameError("bad source count \(count)") }
            var sources: [RuleSource] = []
            for _ in 0..<count {
                let path = String(decoding: try reader.bytes(), as: UTF8.self)
                sources.append(RuleSource(path: path, content: try reader.bytes()))
            }
            self = .load(generation: generation, limits: Self.limits(from: fields), sources: sources)
        case .evaluate:
            let request = try reader.integer()
            let now = Double(bitPattern: try reader.integer())
            self = .evaluate(request: request, now: now, line: try reader.bytes())
        case .loaded:
            let generation = try reader.integer()
            let failed = try reader.byte() != 0
            let text = String(decoding: try reader.bytes(), as: UTF8.self)
            self = .loaded(generation: generation, failure: failed ? text : nil)
        case .answer:
            let request = try reader.integer()
            let ok = try reader.byte() != 0
            self = .answer(request: request, ok: ok, bytes: try reader.bytes())
        }
        guard reader.isAtEnd else { throw RuleProcessFrameError("\(reader.remaining) stray bytes after a message") }
    }

    private static func append(_ value: UInt64, to out: inout [UInt8]) {
        for shift in stride(from: 56, through: 0, by: -8) {
            out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
        }
    }

    private static func appendBytes(_ bytes: [UInt8], to out: inout [UInt8]) {
        let count = UInt32(bytes.count)
        for shift in stride(from: 24, through: 0, by: -8) {
            out.append(UInt8(truncatingIfNeeded: count >> UInt32(shift)))
        }
        out.append(contentsOf: bytes)
    }

    private static let limitFieldCount = 12

    /// The limits as integers (durations in nanoseconds), in a fixed order.
    private static func limitFields(_ limits: RuleEngineLimits) -> [Int] {
        func nanoseconds(_ duration: Duration) -> Int {
            let (seconds, attoseconds) = duration.components
            return Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
        }
        return [
            limits.memoryLimit, limits.loadInstructionLimit, nanoseconds(limits.loadTimeout),
            limits.evaluationInstructionLimit, nanoseconds(limits.evaluationTimeout), limits.maxContextDepth,
            limits.maxContextValues, limits.maxFileBytes, limits.maxDataBytes, limits.logLinesPerEvaluation,
            limits.logLineBytes, nanoseconds(limits.testBudget),
        ]
    }

    private static func limits(from fields: [Int]) -> RuleEngineLimits {
        var limits = RuleEngineLimits()
        limits.memoryLimit = fields[0]
        limits.loadInstructionLimit = fields[1]
        limits.loadTimeout = .nanoseconds(fields[2])
        limits.evaluationInstructionLimit = fields[3]
        limits.evaluationTimeout = .nanoseconds(fields[4])
        limits.maxContextDepth = fields[5]
        limits.maxContextValues = fields[6]
        limits.maxFileBytes = fields[7]
        limits.maxDataBytes = fields[8]
        limits.logLinesPerEvaluation = fields[9]
        limits.logLineBytes = fields[10]
        limits.testBudget = .nanoseconds(fields[11])
        return limits
    }
}

/// A frame that cannot be read: the stream cannot be trusted after it, so the channel is closed.
struct RuleProcessFrameError: Error, Equatable, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

/// Cuts a byte stream into messages.
struct RuleProcessFrameDecoder {
    /// Longest frame accepted: a rule set's files travel in one (the rules directory is read with a 512 MiB
    /// total by default), so the bound is generous; a larger length means a broken stream.
    static let defaultMaxFrameBytes = 1 << 30

    let maxFrameBytes: Int
    private var buffer: [UInt8] = []
    private var start = 0

    init(maxFrameBytes: Int = Self.defaultMaxFrameBytes) {
        self.maxFrameBytes = maxFrameBytes
    }

    /// Bytes received and not yet part of a returned message.
    var bufferedBytes: Int { buffer.count - start }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// The next complete message, or nil until more bytes arrive.
    mutating func next() throws(RuleProcessFrameError) -> RuleProcessMessage? {
        guard buffer.count - start >= 4 else { return nil }
        var length = 0
        for index in 0..<4 { length = length << 8 | Int(buffer[start + index]) }
        guard length >= 1, length <= maxFrameBytes else {
            throw RuleProcessFrameError("frame length \(length) is out of bounds (1...\(maxFrameBytes))")
        }
        guard buffer.count - start - 4 >= length else { return nil }
        let body = buffer[(start + 4)..<(start + 4 + length)]
        start += 4 + length
        return try RuleProcessMessage(body: body)
    }
}

/// Reads a message's fields in order.
private struct FieldReader {
    let data: ArraySlice<UInt8>
    private var position: Int

    init(bytes: ArraySlice<UInt8>) {
        self.data = bytes
        self.position = bytes.startIndex
    }

    var isAtEnd: Bool { position == data.endIndex }
    var remaining: Int { data.endIndex - position }

    mutating func byte() throws(RuleProcessFrameError) -> UInt8 {
        guard remaining >= 1 else { throw RuleProcessFrameError("message ends early") }
        defer { position += 1 }
        return data[position]
    }

    mutating func integer() throws(RuleProcessFrameError) -> UInt64 {
        guard remaining >= 8 else { throw RuleProcessFrameError("message ends early") }
        var value: UInt64 = 0
        for index in position..<(position + 8) { value = value << 8 | UInt64(data[index]) }
        position += 8
        return value
    }

    mutating func bytes() throws(RuleProcessFrameError) -> [UInt8] {
        guard remaining >= 4 else { throw RuleProcessFrameError("message ends early") }
        var count = 0
        for index in position..<(position + 4) { count = count << 8 | Int(data[index]) }
        position += 4
        guard remaining >= count else { throw RuleProcessFrameError("field of \(count) bytes overruns its message") }
        defer { position += count }
        return Array(data[position..<(position + count)])
    }
}
