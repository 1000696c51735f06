import Logging
import NIOCore
import NIOPosix
import RuleEngine
import RuleModel
import RulesProtocol
import Testing

@testable import RulesDaemon

/// A connection's decoder only skims a request's `context` (or `request`) and leaves its validation to the
/// sandbox that reads it. These tests answer many valid and broken lines both ways, through a worker: decoded with
/// the whole line validated first (as before), and with the context skimmed; the answers must be the same, byte for
/// byte, and so must what the workers count.
@Suite("a skimmed context answers as a validated one")
struct SkimmedContextTests {
    static let rules = """
        flag "targeted" { rule = function(ctx) if ctx.plan == "pro" then return "on" end return "off" end }
        flag "static" { variants = { a = 1, b = 2 }, default = "a" }
        flag "off" { enabled = false, rule = function(ctx) return "on" end }
        flag "failing" { rule = function(ctx) error("no") end }
        flag "nested" { rule = function(ctx) if ctx.user and ctx.user.id then return "on" end return "off" end }
        route "api" { match = function(req) return req.path == "/api" end, target = "api-pool" }
        route "rest" { match = function(req) return req.method == "GET" end, target = function(req) return "get" end }
        """

    /// Two workers serving the same rules, one fed fully validated requests, the other skimmed ones.
    final class Pair {
        let validated: Worker
        let skimmed: Worker
        var fullDecoder = RequestDecoder(maxDepth: RequestDecoder.defaultMaxDepth)
        var skimmingDecoder = RequestDecoder(maxDepth: RequestDecoder.defaultMaxDepth, skimmingContexts: true)

        /// Call on `loop`, where the workers are then used.
        init(on loop: EventLoop) throws {
            let source = [RuleSource(path: "rules.lua", content: Array(SkimmedContextTests.rules.utf8))]
            let (ruleSet, first) = try RuleCompiler.compile(source)
            let (_, second) = try RuleCompiler.compile(source)
            let generation = ServingGeneration(
                number: 1, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0,
                evaluators: [
                    NIOLoopBoundBox.makeBoxSendingValue(first, as: RuleEvaluator?.self, eventLoop: loop),
                    NIOLoopBoundBox.makeBoxSendingValue(second, as: RuleEvaluator?.self, eventLoop: loop),
                ])
            let store = GenerationStore()
            store.publish(generation)
            validated = Worker(
                index: 0, store: store, counters: WorkerCounters(), metrics: WorkerMetrics(),
                logger: Logger(label: "test"))
            skimmed = Worker(
                index: 1, store: store, counters: WorkerCounters(), metrics: WorkerMetrics(),
                logger: Logger(label: "test"))
        }

        /// The answer of `worker` to `line`, as a connection gives it.
        static func answer(_ line: [UInt8], _ decoder: inout RequestDecoder, _ worker: Worker) -> [UInt8] {
            var out = ByteBuffer()
            line.withUnsafeBytes { raw in
                switch decoder.decode(raw) {
                case .failure(let failure):
                    ResponseWriter.writeFailure(
                        id: failure.id.map { UnsafeRawBufferPointer(rebasing: raw[$0]) }, error: failure.error,
                        into: &out)
                    worker.recordUndecodable()
                case .success(let request):
                    worker.answer(request, line: raw, into: &out)
                }
            }
            return Array(out.readableBytesView)
        }

        /// Both answers to `line`, and whether what the workers counted still agrees.
        func compare(_ line: [UInt8]) -> (validated: [UInt8], skimmed: [UInt8], countsAgree: Bool) {
            let a = Self.answer(line, &fullDecoder, validated)
            let b = Self.answer(line, &skimmingDecoder, skimmed)
            let x = validated.metrics.snapshot()
            let y = skimmed.metrics.snapshot()
            let agree =
                validated.counters.requests.load(ordering: .relaxed)
                == skimmed.counters.requests.load(ordering: .relaxed)
                && x.requests == y.requests && x.evaluations == y.evaluations
                && validated.metrics.ruleErrors == skimmed.metrics.ruleErrors
                && x.latencyCounts.reduce(0, +) == y.latencyCounts.reduce(0, +)
            return (a, b, agree)
        }
    }

    static let contexts: [String] =
        [
            #"{"plan":"pro","user":{"id":7,"tags":["a","b"]},"n":1.5e3}"#,
            #"{"plan":"free","s":"esc \" \\ \/ \b\f\n\r\t \u00e9 \ud83d\ude00 \u0000"}"#,
            #"{ "plan" : "pro" , "list" : [ 1 , [ 2 , { "k" : true } ] , false ] }"#,
            #"{"big":123456789012345678901234567890,"neg":-0.0e-5}"#,
            #"{"é":"ü","日本":"語","x":[{},[]]}"#,
            #"{"plan":"pro","a":null}"#,
            #"{}"#,
            #"{"user":{"id":1,"id":2}}"#,
            #"{"plan":"pro","plan":"free"}"#,
            #"{"a":null,"a":1}"#,
            #"{"u":{"a":null,"a":1}}"#,
            #"{"a":1,"a":null}"#,
            #"{"p\u006can":"pro","plan":"x"}"#,
            #"{"huge":1e400}"#,
            #"{"huge":[-1e999]}"#,
            #"{"lone":"\ud800"}"#,
            #"{"low":"\udc00x"}"#,
            #"{"pair":"\ud800\u0041"}"#,
            #"{"bad":"\x"}"#,
            #"{"bad":"\u12G4"}"#,
            #"{"n":01}"#,
            #"{"n":1.}"#,
            #"{"n":-}"#,
            #"{"n":.5}"#,
            #"{"t":tru}"#,
            #"{"t":nul}"#,
            #"{"t":nulll}"#,
            #"{"a":1,}"#,
            #"{"a" 1}"#,
            #"{"a":[1,]}"#,
            #"{"a":[1}"#,
            #"{"a":{]}"#,
            #"{"a":"x"]}"#,
            #"{1:2}"#,
            #"{"k":"x\"}"#,
            #"{"k":"\\"}"#,
            #"{"k":"\\\"}"#,
        ] + SkimmedContextTests.wideContexts

    /// Objects with more members than the decoder compares one by one, with and without a duplicate.
    static let wideContexts: [String] = [40, 41].flatMap { count in
        let members = (0..<count).map { #""k\#($0 % 40)":"value \#($0)""# }.joined(separator: ",")
        return ["{" + members + "}", #"{"plan":"pro","w":{"# + members + "}}"]
    }

    /// Contexts with bytes that are not UTF-8, or raw control characters, in and out of strings.
    static let byteContexts: [[UInt8]] = [
        Array(#"{"s":""#.utf8) + [0xC0, 0x80] + Array(#""}"#.utf8),
        Array(#"{"s":""#.utf8) + [0xED, 0xA0, 0x80] + Array(#""}"#.utf8),
        Array(#"{"s":""#.utf8) + [0xF4, 0x90, 0x80, 0x80] + Array(#""}"#.utf8),
        Array(#"{"s":""#.utf8) + [0x80] + Array(#""}"#.utf8),
        Array(#"{"s":""#.utf8) + [0xE2, 0x82] + Array(#""}"#.utf8),
        Array(#"{"s":""#.utf8) + [0x01] + Array(#""}"#.utf8),
        Array(#"{"s":"a"#.utf8) + [0x0A] + Array(#""}"#.utf8),
        Array(#"{"s":1"#.utf8) + [0xFF] + Array(#"}"#.utf8),
        Array(#"{"#.utf8) + [0xEF, 0xBB, 0xBF] + Array(#""s":1}"#.utf8),
        Array(#"{"s":"ok"}"#.utf8) + [0x00],
    ]

    /// Every way each line is asked: the ops that carry a context or a request, around the object `object`.
    static func lines(around object: [UInt8]) -> [[UInt8]] {
        let shapes: [(String, String)] = [
            (#"{"id":1,"op":"flag","flag":"targeted","context":"#, "}"),
            (#"{"op":"flag","context":"#, #","flag":"static","id":"s"}"#),
            (#"{"id":2,"op":"flag","flag":"off","context":"#, "}"),
            (#"{"id":3,"op":"flag","flag":"failing","context":"#, "}"),
            (#"{"id":4,"op":"flag","flag":"nested","context":"#, "}"),
            (#"{"id":5,"op":"flag","flag":"missing","context":"#, "}"),
            (#"{"id":6,"op":"flags","context":"#, #","at":1700000000}"#),
            (#"{"id":7,"op":"route","request":"#, "}"),
            (#"{"id":8,"op":"explain","flag":"targeted","context":"#, "}"),
            (#"{"id":9,"op":"explain","request":"#, "}"),
            (#"{"id":10,"op":"flag","flag":"targeted","namespace":"elsewhere","context":"#, "}"),
            (#"{"id":11,"op":"flag","flag":"targeted","context":"#, #","contxt":1}"#),
            (#"{"id":12,"op":"route","context":"#, "}"),
            (#"{"id":13,"op":"flag","flag":"targeted","context":"#, #","context":{}}"#),
            (#"{"id":14,"op":"flag","flag":"targeted","context":"#, #","at":"soon"}"#),
            (#"{"id":15,"op":"explain","flag":"targeted","request":{},"context":"#, "}"),
            (#"{"id":16,"op":"flag","flag":"targeted","context":"#, #"} trailing"#),
            (#"{"id":17,"op":"flag","flag":"targeted","c\u006fntext":"#, "}"),
        ]
        return shapes.map { Array($0.0.utf8) + object + Array($0.1.utf8) }
    }

    /// Runs `body` with a pair of workers on the event loop they belong to; returns the differences it found.
    static func differences(_ body: @escaping @Sendable (Pair) -> [String]) throws -> [String] {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        return try loop.submit { body(try Pair(on: loop)) }.wait()
    }

    /// How the two answers to `line` differ, if they do.
    static func difference(_ pair: Pair, _ line: [UInt8]) -> String? {
        let (a, b, agree) = pair.compare(line)
        if a == b && agree { return nil }
        return String(decoding: line, as: UTF8.self) + (agree ? "" : " (counts differ)") + "\n  validated: "
            + String(decoding: a, as: UTF8.self) + "\n  skimmed:   " + String(decoding: b, as: UTF8.self)
    }

    @Test("valid and broken contexts, bad UTF-8, duplicate keys, huge numbers and escapes answer the same")
    func sampleContexts() throws {
        let differences = try Self.differences { pair in
            (Self.contexts.map { Array($0.utf8) } + Self.byteContexts).flatMap { context in
                Self.lines(around: context).compactMap { Self.difference(pair, $0) }
            }
        }
        #expect(differences.isEmpty, "\(differences.count): \(differences.prefix(3).joined(separator: "\n"))")
    }

    @Test("a context cut short, missing a byte or given a stray byte at any position answers the same")
    func brokenAtEveryPosition() throws {
        let strays: [[UInt8]] = [
            [UInt8(ascii: "\"")], [UInt8(ascii: "\\")], [UInt8(ascii: "{")], [UInt8(ascii: "}")],
            [UInt8(ascii: "[")], [UInt8(ascii: "]")], [UInt8(ascii: ",")], [UInt8(ascii: ":")], Array("null".utf8),
            [0x01], [0xFF], [0xC3], Array(#""a":1,"#.utf8),
        ]
        let differences = try Self.differences { pair in
            var found: [String] = []
            for context in Self.contexts.prefix(3).map({ Array($0.utf8) }) {
                var broken: [[UInt8]] = []
                for position in 0...context.count {
                    broken.append(Array(context[..<position]))
                    if position < context.count {
                        var missing = context
                        missing.remove(at: position)
                        broken.append(missing)
                    }
                    for stray in strays {
                        var inserted = context
                        inserted.insert(contentsOf: stray, at: position)
                        broken.append(inserted)
                    }
                }
                for object in broken {
                    let lines = Self.lines(around: object)
                    for shape in [0, 1, 6, 7, 8, 10, 11] {
                        if let difference = Self.difference(pair, lines[shape]) { found.append(difference) }
                    }
                }
            }
            return found
        }
        #expect(differences.isEmpty, "\(differences.count): \(differences.prefix(3).joined(separator: "\n"))")
    }

    @Test("contexts nested to the context limit, beyond it and beyond the line's limit answer the same")
    func deepNesting() throws {
        let differences = try Self.differences { pair in
            var objects: [String] = []
            for depth in [30, 31, 32, 33, 40, 509, 510, 511, 512, 600] {
                let arrays =
                    #"{"plan":"pro","d":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
                objects += ["}", ",}", "", #","d":1}"#].map { arrays + $0 }
                let nested =
                    #"{"a":"# + String(repeating: #"{"a":"#, count: depth) + "1" + String(repeating: "}", count: depth)
                objects += ["}", "]}", #","a":2}"#].map { nested + $0 }
            }
            return objects.flatMap { object in
                Self.lines(around: Array(object.utf8)).compactMap { Self.difference(pair, $0) }
            }
        }
        #expect(differences.isEmpty, "\(differences.count): \(differences.prefix(3).joined(separator: "\n"))")
    }

    @Test("a valid context is evaluated with the decoder's skim alone, and answers as it always did")
    func validContextIsNotValidatedTwice() throws {
        var decoder = RequestDecoder(skimmingContexts: true)
        let line = Array(#"{"id":1,"op":"flag","flag":"targeted","context":{"plan":"pro"}}"#.utf8)
        try line.withUnsafeBytes { raw in
            let request = try decoder.decode(raw).get()
            #expect(!request.isValidated)
            #expect(request.validationFailure(in: raw) == nil)
        }
        let answers = try Self.differences { pair in
            let (a, b, _) = pair.compare(line)
            return [String(decoding: a, as: UTF8.self), String(decoding: b, as: UTF8.self)]
        }
        #expect(answers[0] == answers[1])
        #expect(answers[1].contains(#""variant":"on""#))
    }
}
