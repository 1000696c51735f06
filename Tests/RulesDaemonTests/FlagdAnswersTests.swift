import GRPCCore
import RuleEngine
import RuleModel
import SwiftProtobuf
import Synchronization
import Testing

@testable import RulesDaemon

private let flagdRules: [String: String] = [
    "flags.lua": """
    flag "beta" { rule = function(ctx) if ctx.plan == "pro" then return "on" end end }
    flag "greeting" { variants = { formal = "Good day", casual = "hi" }, default = "formal" }
    flag "limit" { variants = { low = 10, high = 1000 }, default = "low" }
    flag "ratio" { variants = { half = 0.5, whole = 1 }, default = "half" }
    flag "layout" { variants = { classic = { columns = 1 } }, default = "classic" }
    flag "boom" { rule = function(ctx) error("boom") end }
    flag "wrong" { rule = function(ctx) return "no-such-variant" end }
    flag "optional" { variants = { a = "A" }, default = false, rule = function(ctx) end }
    flag "integer-age" {
      rule = function(ctx) if math.type(ctx.age) == "integer" then return "on" end return "off" end,
    }
    """
]

private func compiled(_ files: [String: String] = flagdRules) throws -> (ServingGeneration, RuleEvaluator) {
    let (ruleSet, evaluator) = try RuleCompiler.compile(
        files.map { RuleSource(path: $0.key, content: Array($0.value.utf8)) }, limits: RuleEngineLimits())
    let generation = ServingGeneration(
        number: 7, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0, evaluators: [])
    return (generation, evaluator)
}

private func protobufStruct(_ fields: [String: Google_Protobuf_Value]) -> Google_Protobuf_Struct {
    var object = Google_Protobuf_Struct()
    object.fields = fields
    return object
}

/// The answer of `key` for a gRPC context, as the service computes it.
private func resolve(
    _ key: String, as type: FlagdValueType, context: Google_Protobuf_Struct? = nil
) throws -> Result<FlagdResolution, RPCError> {
    let (generation, evaluator) = try compiled()
    let index = try #require(generation.ruleSet.flagIndex(forKey: key))
    let decision = FlagdAnswers.context(context).withUnsafeBytes {
        evaluator.evaluateFlag(at: index, context: $0, now: 0)
    }
    return FlagdAnswers.resolve(generation.ruleSet.flags[index], decision, as: type, generation: generation)
}

@Suite("flagd gRPC answers: the context Struct, types, errors")
struct FlagdAnswersTests {
    @Test("whole-number doubles in the context become JSON integers, other numbers stay floats, null stays null")
    func contextNumbers() {
        let context = protobufStruct([
            "age": Google_Protobuf_Value(numberValue: 30),
            "score": Google_Protobuf_Value(numberValue: 2.5),
            "huge": Google_Protobuf_Value(numberValue: 9_223_372_036_854_775_808),  // 2^63: no Int64
            "negative": Google_Protobuf_Value(numberValue: -4),
            "targetingKey": Google_Protobuf_Value(nilLiteral: ()),
            "nested": Google_Protobuf_Value(
                structValue: protobufStruct([
                    "list": Google_Protobuf_Value(
                        listValue: Google_Protobuf_ListValue(values: [Google_Protobuf_Value(numberValue: 1)]))
                ])),
        ])
        let json = FlagdAnswers.json(context)
        #expect(json["age"] == .integer(30))
        #expect(json["negative"] == .integer(-4))
        #expect(json["score"] == .number(2.5))
        #expect(json["huge"] == .number(9_223_372_036_854_775_808))
        #expect(json["targetingKey"] == .null)
        #expect(json["nested"]?["list"] == .array([.integer(1)]))
        #expect(FlagdAnswers.context(nil) == Array("{}".utf8))
    }

    @Test("a rule sees a whole-number double from gRPC as the integer the line protocol gives it")
    func sameAnswerAsLineProtocol() throws {
        let (generation, evaluator) = try compiled()
        let index = try #require(generation.ruleSet.flagIndex(forKey: "integer-age"))
        let grpc = FlagdAnswers.context(protobufStruct(["age": Google_Protobuf_Value(numberValue: 30)]))
        let line = Array(#"{"age":30}"#.utf8)
        let fromGRPC = grpc.withUnsafeBytes { evaluator.evaluateFlag(at: index, context: $0, now: 0) }
        let fromLine = line.withUnsafeBytes { evaluator.evaluateFlag(at: index, context: $0, now: 0) }
        #expect(fromGRPC == fromLine)
        #expect(generation.ruleSet.flags[index].variants[fromGRPC.variantIndex].name == "on")
    }

    @Test("each method's type accepts its own values; integers are floats, whole floats are integers")
    func typeAcceptance() {
        #expect(FlagdValueType.boolean.accepts(.bool(true)))
        #expect(!FlagdValueType.boolean.accepts(.string("true")))
        #expect(FlagdValueType.string.accepts(.string("x")))
        #expect(FlagdValueType.integer.accepts(.integer(3)))
        #expect(FlagdValueType.integer.accepts(.number(3)))
        #expect(!FlagdValueType.integer.accepts(.number(3.5)))
        #expect(FlagdValueType.float.accepts(.integer(3)))
        #expect(FlagdValueType.float.accepts(.number(3.5)))
        #expect(FlagdValueType.object.accepts(.object(JSONObject())))
        #expect(!FlagdValueType.object.accepts(.array([])))
        #expect(!FlagdValueType.object.accepts(.string("{}")))
    }

    @Test("a value with its reason, variant and metadata naming the revision and the rule's file:line")
    func success() throws {
        let resolution = try resolve(
            "beta", as: .boolean, context: protobufStruct(["plan": Google_Protobuf_Value(stringValue: "pro")])
        ).get()
        #expect(resolution.value == .bool(true))
        #expect(resolution.reason == "TARGETING_MATCH")
        #expect(resolution.variant == "on")
        #expect(resolution.metadata.fields["source"]?.stringValue == "flags.lua:1")
        #expect(resolution.metadata.fields["generation"]?.numberValue == 7)
        #expect(resolution.metadata.fields["revision"]?.stringValue.count == 16)
        let limit = try resolve("limit", as: .integer).get()
        #expect(limit.value == .integer(10))
        #expect(limit.reason == "STATIC")
    }

    @Test("a variant of another type is INVALID_ARGUMENT (TYPE_MISMATCH)")
    func typeMismatch() throws {
        for (key, type) in [
            ("greeting", FlagdValueType.boolean), ("beta", .string), ("ratio", .integer),
            ("limit", .object), ("layout", .string),
        ] {
            guard case .failure(let error) = try resolve(key, as: type) else {
                Issue.record("\(key) as \(type) answered")
                continue
            }
            #expect(error.code == .invalidArgument, "\(key)")
            #expect(error.message.hasPrefix("TYPE_MISMATCH"), "\(error.message)")
        }
    }

    @Test("a failed rule is UNKNOWN (flagd's GENERAL), never INVALID_ARGUMENT, with rulesd's code leading")
    func failedRule() throws {
        for key in ["boom", "wrong"] {
            guard case .failure(let error) = try resolve(key, as: .boolean) else {
                Issue.record("\(key) answered")
                continue
            }
            #expect(error.code == .unknown, "\(key)")
            #expect(error.message.contains("flag '\(key)'"), "\(error.message)")
        }
        let parse = FlagdAnswers.error("x", RuleFailure(code: .parseError, message: "bad targeting"))
        #expect(parse.code == .dataLoss)
    }

    @Test("an unknown flag is NOT_FOUND")
    func notFound() {
        #expect(FlagdAnswers.flagNotFound("nope").code == .notFound)
    }

    @Test("a flag with no default variant that no rule decided has no value: the client's default")
    func codeDefault() throws {
        let resolution = try resolve("optional", as: .string).get()
        #expect(resolution.value == nil)
        #expect(resolution.variant == nil)
        #expect(resolution.reason == "DEFAULT")
    }
}

@Suite("flagd configuration_change: which flags a reload names")
struct FlagDigestsTests {
    private func digests(_ files: [String: String]) throws -> FlagDigests {
        FlagDigests(try compiled(files).0.ruleSet)
    }

    private let base: [String: String] = [
        "a.lua": #"flag "alpha" { variants = { x = 1, y = 2 }, default = "x" }"#,
        "b.lua": """
        flag "bravo" { rule = function(ctx) if ctx.plan == "pro" then return "on" end end }
        flag "charlie" { variants = { a = "A" }, default = "a" }
        """,
        "d.lua": #"flag "delta" { }"#,
    ]

    @Test("an edit of one flag's file names exactly the flags of that file as updates")
    func editOneFlag() throws {
        var edited = base
        edited["a.lua"] = #"flag "alpha" { variants = { x = 1, y = 2 }, default = "y" }"#
        #expect(try digests(edited).changes(since: digests(base)) == ["alpha": .update])
    }

    @Test("an edited rule body is an update though the flag's declared shape is the same")
    func editRuleBody() throws {
        var edited = base
        edited["b.lua"] = base["b.lua"]!.replacing(#""pro""#, with: #""team""#)
        let changes = try digests(edited).changes(since: digests(base))
        // Both flags of b.lua: a helper anywhere in a file can change any rule in it.
        #expect(changes == ["bravo": .update, "charlie": .update])
    }

    @Test("added flags are writes, removed flags deletes, untouched files name nothing")
    func addAndRemove() throws {
        var edited = base
        edited["d.lua"] = nil
        edited["e.lua"] = #"flag "echo" { }"#
        #expect(try digests(edited).changes(since: digests(base)) == ["delta": .delete, "echo": .write])
        #expect(try digests(base).changes(since: digests(base)).isEmpty)
    }

    @Test("the event's data is {flags: {key: {type}}}")
    func eventData() throws {
        let (type, data) = FlagdEvent.configurationChange(["alpha": .update, "echo": .write]).message
        #expect(type == "configuration_change")
        let flags = try #require(data?.fields["flags"]?.structValue)
        #expect(flags.fields["alpha"]?.structValue.fields["type"]?.stringValue == "update")
        #expect(flags.fields["echo"]?.structValue.fields["type"]?.stringValue == "write")
        #expect(FlagdEvent.keepAlive.message.type == "keep_alive")
    }
}

@Suite("flagd event streams")
struct FlagdEventStreamTests {
    /// Runs one stream until `stop` says so, collecting its events' types and data.
    private final class Recorder: Sendable {
        let events = Mutex<[(String, Google_Protobuf_Struct?)]>([])
        let arrived: AsyncStream<Void>.Continuation
        let arrivals: AsyncStream<Void>

        init() {
            (arrivals, arrived) = AsyncStream<Void>.makeStream()
        }

        func record(_ type: String, _ data: Google_Protobuf_Struct?) {
            events.withLock { $0.append((type, data)) }
            arrived.yield()
        }

        var types: [String] { events.withLock { $0.map(\.0) } }
    }

    private func generation(_ number: UInt64, _ files: [String: String]) throws -> ServingGeneration {
        let (ruleSet, _) = try RuleCompiler.compile(
            files.map { RuleSource(path: $0.key, content: Array($0.value.utf8)) }, limits: RuleEngineLimits())
        return ServingGeneration(
            number: number, ruleSet: ruleSet, origin: .rulesDirectory, loadedAt: 0, stateMemory: 0, evaluators: [])
    }

    @Test("provider_ready at once, then a configuration_change naming what a reload changed; closing ends it")
    func readyThenChanges() async throws {
        let store = GenerationStore()
        store.publish(try generation(1, ["a.lua": #"flag "alpha" { }"#, "b.lua": #"flag "bravo" { }"#]))
        let streams = FlagdEventStreams(store: store)
        let recorder = Recorder()
        let stream = Task {
            try await streams.serve(keepAlive: .seconds(3600)) { type, data in recorder.record(type, data) }
        }
        var arrivals = recorder.arrivals.makeAsyncIterator()
        _ = await arrivals.next()
        #expect(recorder.types == ["provider_ready"])
        // The stream is registered before provider_ready is written.
        #expect(streams.count == 1)

        store.publish(
            try generation(2, ["a.lua": #"flag "alpha" { enabled = false }"#, "b.lua": #"flag "bravo" { }"#]))
        streams.reloaded()
        _ = await arrivals.next()
        #expect(recorder.types == ["provider_ready", "configuration_change"])
        let data = try #require(recorder.events.withLock { $0.last?.1 })
        #expect(data.fields["flags"]?.structValue.fields.keys.sorted() == ["alpha"])

        // A reload that changed no flag sends nothing; the next real change is the next event.
        streams.reloaded()
        store.publish(try generation(3, ["a.lua": #"flag "alpha" { enabled = false }"#]))
        streams.reloaded()
        _ = await arrivals.next()
        let last = try #require(recorder.events.withLock { $0.last?.1 })
        #expect(last.fields["flags"]?.structValue.fields["bravo"]?.structValue.fields["type"]?.stringValue == "delete")
        #expect(recorder.types.count == 3)

        streams.closeAll()
        try await stream.value
        #expect(streams.count == 0)
    }

    @Test("an idle stream gets keep_alive events")
    func keepAlive() async throws {
        let store = GenerationStore()
        store.publish(try generation(1, ["a.lua": #"flag "alpha" { }"#]))
        let streams = FlagdEventStreams(store: store)
        let recorder = Recorder()
        let stream = Task {
            try await streams.serve(keepAlive: .milliseconds(1)) { type, data in recorder.record(type, data) }
        }
        var arrivals = recorder.arrivals.makeAsyncIterator()
        _ = await arrivals.next()
        _ = await arrivals.next()
        #expect(Array(recorder.types.prefix(2)) == ["provider_ready", "keep_alive"])
        streams.closeAll()
        try await stream.value
    }

    @Test("a stream opened after the listener began stopping is refused")
    func refusedWhenStopping() async throws {
        let streams = FlagdEventStreams(store: GenerationStore())
        streams.closeAll()
        await #expect(throws: RPCError.self) {
            try await streams.serve(keepAlive: .seconds(1)) { _, _ in }
        }
    }
}
