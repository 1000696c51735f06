import RuleModel
import Testing

@testable import RulesDaemon

private func entry(_ text: String, at: Double = 0) -> CapturedEntry {
    var hasher = Hasher()
    Array(text.utf8).withUnsafeBytes { hasher.combine(bytes: $0) }
    return CapturedEntry(hash: hasher.finalize(), at: at, seenAt: at, json: Array(text.utf8))
}

private func recorder(
    size: Int = 10, memory: Int = 1 << 20, redact: [String] = [], mode: CaptureSettings.RedactMode = .hash
)
    -> CaptureRecorder
{
    let recorder = CaptureRecorder(
        size: size, memoryLimit: memory, redaction: CaptureRedaction(fields: redact, mode: mode, key: "k"))
    recorder.beginGeneration(flagCount: 4)
    return recorder
}

extension CaptureRecorder {
    fileprivate func flag(_ index: Int, _ context: String, at: Double = 0) {
        Array(context.utf8).withUnsafeBytes {
            recordFlag(index: index, key: { "flag-\(index)" }, context: $0, at: at, seenAt: at)
        }
    }

    fileprivate func contexts(_ key: String) -> [String] {
        (snapshot(.flag(key))[.flag(key)] ?? []).map { String(decoding: $0.json, as: UTF8.self) }
    }
}

@Suite("Capture rings")
struct CaptureRingTests {
    @Test("a ring keeps at most its capacity, forgetting the oldest first")
    func bounded() {
        var ring = CaptureRing(capacity: 3)
        for n in 0..<5 { ring.append(entry("{\"n\":\(n)}")) }
        #expect(ring.count == 3)
        #expect(
            ring.entries.map { String(decoding: $0.json, as: UTF8.self) } == [#"{"n":2}"#, #"{"n":3}"#, #"{"n":4}"#])
        #expect(ring.bytes == ring.entries.reduce(0) { $0 + $1.costBytes })
    }

    @Test("a ring that lost entries to memory pressure grows again in order")
    func refillsAfterRemovals() {
        var ring = CaptureRing(capacity: 4)
        for n in 0..<3 { ring.append(entry("{\"n\":\(n)}")) }
        ring.removeOldest()
        for n in 3..<6 { ring.append(entry("{\"n\":\(n)}")) }
        #expect(ring.entries.map { String(decoding: $0.json, as: UTF8.self) } == (2..<6).map { "{\"n\":\($0)}" })
    }

    @Test("a request already held is not recorded again")
    func distinct() {
        let capture = recorder()
        for _ in 0..<3 { capture.flag(0, #"{"user":"a"}"#) }
        capture.flag(0, #"{"user":"b"}"#)
        #expect(capture.contexts("flag-0") == [#"{"user":"a"}"#, #"{"user":"b"}"#])
        #expect(capture.entries == 2)
    }

    @Test("each flag has its own ring, kept across generations by key")
    func perFlagAcrossGenerations() {
        let capture = recorder(size: 2)
        capture.flag(0, #"{"u":1}"#)
        capture.flag(1, #"{"u":2}"#)
        capture.beginGeneration(flagCount: 4)
        capture.flag(0, #"{"u":3}"#)
        #expect(capture.contexts("flag-0") == [#"{"u":1}"#, #"{"u":3}"#])
        #expect(capture.contexts("flag-1") == [#"{"u":2}"#])
        #expect(capture.snapshot(.all).count == 2)
        #expect(capture.snapshot(.routes).isEmpty)
    }

    @Test("a flags request's context goes into every flag's ring, once each")
    func allFlags() {
        let capture = recorder()
        for _ in 0..<2 {
            Array(#"{"user":"a"}"#.utf8).withUnsafeBytes {
                capture.recordAllFlags(count: 3, key: { "flag-\($0)" }, context: $0, at: 0, seenAt: 0)
            }
        }
        #expect((0..<3).map { capture.contexts("flag-\($0)") } == Array(repeating: [#"{"user":"a"}"#], count: 3))
        #expect(capture.entries == 3)
    }

    @Test("memory is capped: the fullest ring forgets first, and the totals stay within the cap")
    func memoryCap() {
        let limit = 10 * (CapturedEntry.overheadBytes + 20)
        let capture = recorder(size: 1000, memory: limit)
        for n in 0..<100 { capture.flag(0, "{\"user\":\"\(100_000 + n)\"}") }
        #expect(capture.bytes <= limit)
        #expect(capture.entries < 100)
        capture.flag(1, #"{"user":"other"}"#)
        #expect(capture.bytes <= limit)
        #expect(capture.contexts("flag-1") == [#"{"user":"other"}"#])
        #expect(capture.contexts("flag-0").last == #"{"user":"100099"}"#)
        let held = capture.snapshot(.all).values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.costBytes } }
        #expect(held == capture.bytes)
    }

    @Test("a request larger than the whole memory share is dropped and counted")
    func oversized() {
        let capture = recorder(memory: 200)
        capture.flag(0, "{\"blob\":\"" + String(repeating: "x", count: 500) + "\"}")
        #expect(capture.entries == 0)
        #expect(capture.dropped == 1)
    }

    @Test("redaction by drop removes the named fields before anything is kept")
    func redactDrop() {
        let capture = recorder(redact: ["email", "ip"], mode: .drop)
        capture.flag(0, #"{"user":"a","email":"a@example.com","ip":"10.0.0.1"}"#)
        #expect(capture.contexts("flag-0") == [#"{"user":"a"}"#])
    }

    @Test("redaction by keyed hash: equal values hash alike, another key hashes differently, the value is gone")
    func redactHash() throws {
        let capture = recorder(redact: ["email"], mode: .hash)
        capture.flag(0, #"{"email":"a@example.com","n":1}"#)
        capture.flag(0, #"{"n":2,"email":"a@example.com"}"#)
        let kept = capture.contexts("flag-0")
        #expect(kept.count == 2)
        #expect(!kept.joined().contains("a@example.com"))
        let hashes = try kept.map { try #require(JSONParser().parse($0)["email"]?.stringValue) }
        #expect(hashes[0] == hashes[1])
        #expect(hashes[0].hasPrefix("hmac:") && hashes[0].count == 5 + 16)
        let other = CaptureRedaction(fields: ["email"], mode: .hash, key: "another key")
        #expect(other.hashed("a@example.com") != hashes[0])
        let same = CaptureRedaction(fields: ["email"], mode: .hash, key: "k")
        #expect(same.hashed("a@example.com") == hashes[0])
        // No key set: a random one, so two starts hash differently.
        let first = CaptureRedaction(fields: ["email"], mode: .hash, key: "")
        let second = CaptureRedaction(fields: ["email"], mode: .hash, key: "")
        #expect(first.hashed("a@example.com") != second.hashed("a@example.com"))
    }

    @Test("merging workers keeps one copy of equal requests and the most recent up to the size, oldest first")
    func merge() {
        let first: [CaptureSubject: [CapturedEntry]] = [
            .flag("f"): [entry(#"{"u":1}"#, at: 1), entry(#"{"u":2}"#, at: 3)], .routes: [entry(#"{"p":"/"}"#, at: 1)],
        ]
        let second: [CaptureSubject: [CapturedEntry]] = [
            .flag("f"): [entry(#"{"u":2}"#, at: 2), entry(#"{"u":3}"#, at: 4)]
        ]
        let merged = CaptureExport.merge([first, second], size: 2)
        #expect(merged.map(\.0) == [.flag("f"), .routes])
        #expect(merged[0].1.map { String(decoding: $0.json, as: UTF8.self) } == [#"{"u":2}"#, #"{"u":3}"#])
        var line: [UInt8] = []
        CaptureExport.appendLine(.flag("f"), merged[0].1[0], to: &line)
        #expect(String(decoding: line, as: UTF8.self) == #"{"flag":"f","context":{"u":2},"at":3.0}"#)
        line = []
        CaptureExport.appendLine(.routes, merged[1].1[0], to: &line)
        #expect(String(decoding: line, as: UTF8.self) == #"{"route":{"p":"/"},"at":1.0}"#)
    }

    @Test("requests a worker saw in one batch keep their order through the merge")
    func mergeKeepsBatchOrder() {
        let batch: [CaptureSubject: [CapturedEntry]] = [.flag("f"): (0..<5).map { entry("{\"n\":\($0)}", at: 7) }]
        let merged = CaptureExport.merge([batch], size: 3)
        #expect(merged[0].1.map { String(decoding: $0.json, as: UTF8.self) } == (2..<5).map { "{\"n\":\($0)}" })
    }
}
