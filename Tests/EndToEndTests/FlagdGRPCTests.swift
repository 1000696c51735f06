import Foundation
import RuleModel
import RulesTestSupport
import Testing

/// The OFREP tests' rules, a flag that tells whether a context number reached the rule as a Lua integer, and a
/// STATIC flag alone in its file for the edit.
let flagdGRPCRules: [String: String] = ofrepRules.merging([
    "ages.lua": """
    flag "integer-age" {
      rule = function(ctx) if math.type(ctx.age) == "integer" then return "on" end return "off" end,
    }
    """,
    "banner.lua": #"flag "banner" { variants = { old = "old text", new = "new text" }, default = "old" }"#,
]) { first, _ in first }

/// A daemon with flagd's gRPC API on a Unix socket in its temporary directory.
struct FlagdGRPCDaemon {
    let daemon: DaemonHarness
    let grpcSocket: String

    init(rules: [String: String] = flagdGRPCRules, arguments: [String] = []) throws {
        daemon = try DaemonHarness(rules: rules)
        grpcSocket = daemon.directory + "/flagd.sock"
        try daemon.start(arguments: ["--flagd-socket", grpcSocket] + arguments)
        try #require(daemon.waitForLog("serving flagd's gRPC evaluation API"), "\(daemon.logs)")
    }
}

/// `value` with every whole-number float as an integer.
private func wholeNumbersAsIntegers(_ value: JSONValue) -> JSONValue {
    switch value {
    case .number(let number): Int64(exactly: number).map { .integer($0) } ?? value
    case .array(let values): .array(values.map(wholeNumbersAsIntegers))
    case .object(let members): .object(JSONObject(members.map { ($0.key, wholeNumbersAsIntegers($0.value)) }))
    default: value
    }
}

extension PythonEnvironment {
    static let flagd = prepare(requirements: "requirements-flagd.txt")
}

@Suite("The OpenFeature Python SDK's flagd provider (RPC resolver) against rulesd's gRPC API")
struct FlagdProviderTests {
    @Test(
        "boolean, string and object flags as rulesctl flag answers; FLAG_NOT_FOUND, TYPE_MISMATCH; an edit is named",
        .enabled(pythonSkipComment) { PythonEnvironment.flagd.isUsable })
    func pythonProvider() throws {
        let python = try PythonEnvironment.flagd.get()
        let flagd = try FlagdGRPCDaemon()
        let questions: [(type: String, key: String, fallback: String, context: String)] = [
            ("boolean", "beta", "false", #"{"targetingKey":"u-1","plan":"pro"}"#),
            ("boolean", "beta", "true", #"{"targetingKey":"u-2","plan":"free"}"#),
            ("string", "greeting", #""none""#, #"{"targetingKey":"u-casual"}"#),
            ("string", "greeting", #""none""#, #"{"targetingKey":"u-other"}"#),
            ("object", "layout", "{}", #"{"targetingKey":"u-1","plan":"pro"}"#),
            ("integer", "limit", "0", #"{"targetingKey":"u-1"}"#),
            // The provider sends 30 as the double 30.0; the rule must see the integer the line protocol gives.
            ("boolean", "integer-age", "false", #"{"targetingKey":"u-1","age":30}"#),
            ("boolean", "no-such-flag", "true", #"{"targetingKey":"u-1"}"#),
            ("boolean", "greeting", "false", #"{"targetingKey":"u-1"}"#),
            ("boolean", "boom", "true", #"{"targetingKey":"u-1"}"#),
        ]
        func encode(_ question: (type: String, key: String, fallback: String, context: String)) -> String {
            #"{"type":"\#(question.type)","key":"\#(question.key)","default":\#(question.fallback),"context":\#(question.context)}"#
        }
        let edited = #"flag "banner" { variants = { old = "old text", new = "new text" }, default = "new" }"#
        var editContent = [UInt8]()
        JSONWriter.appendEscapedString(edited, to: &editContent)
        var editPath = [UInt8]()
        JSONWriter.appendEscapedString(flagd.daemon.rulesDirectory + "/banner.lua", to: &editPath)
        let input = """
            {"questions":[\(questions.map(encode).joined(separator: ","))],
             "edit":{"path":\(String(decoding: editPath, as: UTF8.self)),
                     "content":\(String(decoding: editContent, as: UTF8.self)),
                     "question":\(encode(("string", "banner", #""none""#, #"{"targetingKey":"u-1"}"#)))}}
            """
        let result = try python.runScript("flagd_resolve.py", [flagd.grpcSocket], input: input)
        let answers = try #require(result["answers"]?.arrayValue)
        try #require(answers.count == questions.count)

        for (question, answer) in zip(questions, answers).prefix(7) {
            let outcome = try RulesctlProcess.run([
                "flag", question.key, "--socket", flagd.daemon.socketPath, "--context", question.context, "--json",
            ])
            let expected = try outcome.json()
            // protobuf's Struct has doubles only: an object's 3 arrives as 3.0, as from flagd.
            #expect(
                answer["value"].map(wholeNumbersAsIntegers) == expected["value"], "\(question.key) \(question.context)")
            #expect(answer["variant"] == expected["variant"], "\(question.key) \(question.context)")
            #expect(answer["reason"] == expected["reason"], "\(question.key) \(question.context)")
            #expect(answer["error_code"] == .null, "\(question.key) \(question.context)")
            // The Python provider passes no flag metadata on (FlagdGRPCClientTests checks it).
        }
        #expect(answers[6]["value"] == true, "integer-age: \(answers[6])")
        #expect(answers[7]["error_code"] == "FLAG_NOT_FOUND")
        #expect(answers[7]["value"] == true)
        #expect(answers[8]["error_code"] == "TYPE_MISMATCH")
        #expect(answers[8]["value"] == false)
        #expect(answers[9]["error_code"] == "GENERAL", "\(answers[9])")
        #expect(answers[9]["value"] == true)

        // The STATIC answer is cached by the provider until an event names the flag.
        #expect(result["before"]?["value"] == "old text")
        #expect(result["before"]?["reason"] == "STATIC")
        #expect(result["changed"] == ["banner"])
        #expect(result["after"]?["value"] == "new text")
        #expect(result["after"]?["variant"] == "new")
        #expect(result["after"]?["reason"] == "STATIC")
    }
}

@Suite("flagd's gRPC listener at start")
struct FlagdGRPCStartTests {
    @Test("a flagd socket that cannot be bound stops the start, naming the socket and the bind's error")
    func unbindableSocket() throws {
        let daemon = try DaemonHarness(rules: flagdGRPCRules)
        let path = daemon.directory + "/missing/flagd.sock"
        try daemon.start(arguments: ["--flagd-socket", path], waitForSocket: false)
        #expect(try daemon.waitForExit() != 0)
        #expect(daemon.logs.contains("cannot serve flagd's gRPC API on unix:\(path)"), "\(daemon.logs)")
        #expect(daemon.logs.contains("No such file or directory"), "\(daemon.logs)")
    }
}
