import Foundation
import RuleModel
import RulesTestSupport
import Testing

/// Rules with a flag of every value type, one that fails, and one that reads the context.
let ofrepRules: [String: String] = [
    "flags.lua": """
    flag "beta" { rule = function(ctx) if ctx.plan == "pro" then return "on" end end }
    flag "greeting" {
      variants = { formal = "Good day", casual = "hi" }, default = "formal",
      rule = function(ctx) if ctx.targetingKey == "u-casual" then return "casual" end end,
    }
    flag "layout" {
      variants = { classic = { columns = 1, theme = "light" }, wide = { columns = 3, theme = "dark" } },
      default = "classic",
      rule = function(ctx) if ctx.plan == "pro" then return "wide" end end,
    }
    flag "limit" { variants = { low = 10, high = 1000 }, default = "low" }
    flag "boom" { rule = function(ctx) error("boom") end }
    """
]

/// A daemon with the OFREP listener on a free loopback port.
struct OFREPDaemon {
    let daemon: DaemonHarness
    let port: Int

    init(rules: [String: String] = ofrepRules, arguments: [String] = []) throws {
        daemon = try DaemonHarness(rules: rules)
        port = try freeLoopbackPort()
        try daemon.start(arguments: ["--ofrep-listen", "127.0.0.1:\(port)"] + arguments)
        try #require(daemon.waitForLog("serving OFREP over HTTP"), "\(daemon.logs)")
    }

    func flag(_ key: String, _ body: String? = #"{"context":{}}"#) throws -> HTTPExchange.Response {
        try HTTPExchange.send(port: port, path: "/ofrep/v1/evaluate/flags/\(key)", body: body)
    }

    func flags(_ body: String, ifNoneMatch: String? = nil) throws -> HTTPExchange.Response {
        try HTTPExchange.send(
            port: port, path: "/ofrep/v1/evaluate/flags", body: body,
            headers: ifNoneMatch.map { ["If-None-Match": $0] } ?? [:])
    }

    /// The line protocol's `flag` answer for the same question.
    func lineFlag(_ key: String, context: String) throws -> JSONValue {
        try daemon.request(#"{"op":"flag","flag":"\#(key)","context":\#(context)}"#)
    }
}

@Suite("OFREP over HTTP, against the real daemon")
struct OFREPHTTPTests {
    let ofrep: OFREPDaemon

    init() throws {
        ofrep = try OFREPDaemon()
    }

    @Test("one flag answers key, value, reason, variant and metadata naming the revision and the rule's file:line")
    func singleFlag() throws {
        let response = try ofrep.flag("layout", #"{"context":{"targetingKey":"u-1","plan":"pro"}}"#)
        #expect(response.status == 200)
        #expect(response.headers["content-type"] == "application/json")
        let json = try #require(response.json)
        #expect(json["key"] == "layout")
        #expect(json["value"] == ["columns": 3, "theme": "dark"])
        #expect(json["variant"] == "wide")
        #expect(json["reason"] == "TARGETING_MATCH")
        let line = try ofrep.lineFlag("layout", context: #"{"plan":"pro"}"#)
        #expect(json["metadata"]?["revision"] == line["revision"])
        #expect(json["metadata"]?["generation"] == line["generation"])
        #expect(json["metadata"]?["source"] == "flags.lua:6")
        #expect(json["metadata"]?["source"] == line["result"]?["source"])
    }

    @Test("answers equal the line protocol's for the same flag and context")
    func sameAnswersAsTheSocket() throws {
        let cases: [(String, String)] = [
            ("beta", #"{"plan":"pro"}"#), ("beta", #"{"plan":"free"}"#), ("greeting", #"{"targetingKey":"u-casual"}"#),
            ("greeting", "{}"), ("layout", "{}"), ("limit", #"{"plan":"pro"}"#),
        ]
        for (key, context) in cases {
            let http = try #require(try ofrep.flag(key, #"{"context":\#(context)}"#).json)
            let line = try #require(try ofrep.lineFlag(key, context: context)["result"])
            for member in ["key", "value", "variant", "reason"] {
                #expect(http[member] == line[member], "\(key) \(context) \(member)")
            }
            #expect(http["metadata"]?["source"] == line["source"])
        }
    }

    @Test("a body of {} or no body at all is the empty context")
    func emptyBodies() throws {
        for body in ["{}", "", #"{"context":null}"#] {
            let response = try ofrep.flag("greeting", body)
            #expect(response.status == 200, "\(body)")
            #expect(response.json?["value"] == "Good day", "\(body)")
            #expect(response.json?["reason"] == "DEFAULT", "\(body)")
        }
    }

    @Test("an unknown flag is 404 FLAG_NOT_FOUND naming the key")
    func unknownFlag() throws {
        let response = try ofrep.flag("no-such-flag")
        #expect(response.status == 404)
        #expect(response.headers["content-type"] == "application/json")
        #expect(response.json?["key"] == "no-such-flag")
        #expect(response.json?["errorCode"] == "FLAG_NOT_FOUND")
        #expect(response.json?["errorDetails"] == "no flag named 'no-such-flag'")
    }

    @Test("a flag with no default variant that no rule decided is OFREP's code-default answer, one or in bulk")
    func codeDefault() throws {
        let rules = [
            "10-optional.lua": """
            flag "optional" {
              variants = { a = "A" }, default = false,
              rule = function(ctx) if ctx.pick then return "a" end end,
            }
            """
        ]
        let daemon = try OFREPDaemon(rules: rules)
        let unset = try daemon.flag("optional")
        #expect(unset.status == 200, "\(String(decoding: unset.body, as: UTF8.self))")
        #expect(unset.json?["key"] == "optional", "\(String(decoding: unset.body, as: UTF8.self))")
        #expect(unset.json?["reason"] == "DEFAULT")
        #expect(unset.json?["value"] == nil && unset.json?["variant"] == nil)
        #expect(unset.json?["metadata"]?["revision"] != nil)
        let bulk = try daemon.flags(#"{"context":{}}"#)
        #expect(bulk.status == 200)
        #expect(bulk.json?["flags"]?[0]?["key"] == "optional")
        #expect(bulk.json?["flags"]?[0]?["value"] == nil)
        // The daemon is still there, and a rule that picks a variant answers it.
        let picked = try daemon.flag("optional", #"{"context":{"pick":true}}"#)
        #expect(picked.json?["value"] == "A" && picked.json?["variant"] == "a")
    }

    @Test("a failed rule is 400 GENERAL with rulesd's code and message in the details")
    func failedRule() throws {
        let response = try ofrep.flag("boom")
        #expect(response.status == 400)
        #expect(response.json?["key"] == "boom")
        #expect(response.json?["errorCode"] == "GENERAL")
        let details = try #require(response.json?["errorDetails"]?.stringValue)
        #expect(details.hasPrefix("GENERAL: ") && details.contains("boom"), "\(details)")
    }

    @Test("a body that is not JSON is 400 PARSE_ERROR; a context that is not an object is 400 INVALID_CONTEXT")
    func badBodies() throws {
        let notJSON = try ofrep.flag("beta", #"{"context":"#)
        #expect(notJSON.status == 400)
        #expect(notJSON.json?["errorCode"] == "PARSE_ERROR")
        #expect(notJSON.json?["key"] == "beta")
        let notObject = try ofrep.flag("beta", #"{"context":[1,2]}"#)
        #expect(notObject.status == 400)
        #expect(notObject.json?["errorCode"] == "INVALID_CONTEXT")
        let tooDeep = String(repeating: #"{"a":"#, count: 40) + "1" + String(repeating: "}", count: 40)
        let deep = try ofrep.flag("beta", #"{"context":\#(tooDeep)}"#)
        #expect(deep.status == 400)
        #expect(deep.json?["errorCode"] == "INVALID_CONTEXT")
    }

    @Test("other methods are 405 and other paths 404, with JSON bodies")
    func otherRequests() throws {
        let get = try HTTPExchange.send(port: ofrep.port, method: "GET", path: "/ofrep/v1/evaluate/flags/beta")
        #expect(get.status == 405)
        #expect(get.headers["allow"] == "POST")
        let elsewhere = try HTTPExchange.send(port: ofrep.port, path: "/metrics", body: "{}")
        #expect(elsewhere.status == 404)
        #expect(elsewhere.json?["errorDetails"] != nil)
    }

    @Test("a percent-encoded key in the path names the flag")
    func percentEncodedKey() throws {
        let response = try ofrep.flag("gr%65eting")
        #expect(response.status == 200)
        #expect(response.json?["key"] == "greeting")
    }

    @Test("OFREP evaluations count in the daemon's request and flag metrics")
    func metrics() throws {
        _ = try ofrep.flag("limit")
        let text = try #require(ofrep.daemon.request(#"{"op":"metrics"}"#)["result"]?["text"]?.stringValue)
        let line = text.split(separator: "\n").first {
            $0.hasPrefix("rulesd_flag_evaluations_total") && $0.contains(#"flag="limit""#)
        }
        #expect(line?.hasSuffix(" 1") == true, "\(text)")
    }

    @Test("bulk evaluation answers every flag, a failed rule as an error entry, with an ETag")
    func bulk() throws {
        let response = try ofrep.flags(#"{"context":{"plan":"pro"}}"#)
        #expect(response.status == 200)
        #expect(response.headers["etag"]?.hasPrefix("\"") == true)
        let flags = try #require(response.json?["flags"]?.arrayValue)
        #expect(flags.map { $0["key"]?.stringValue ?? "" } == ["beta", "boom", "greeting", "layout", "limit"])
        #expect(flags[0]["value"] == true)
        #expect(flags[0]["reason"] == "TARGETING_MATCH")
        #expect(flags[1]["errorCode"] == "GENERAL")
        #expect(flags[1]["value"] == nil)
        #expect(flags[3]["value"] == ["columns": 3, "theme": "dark"])
        #expect(flags[4]["value"] == 10)
        #expect(flags[4]["reason"] == "STATIC")
    }

    @Test("If-None-Match with the current tag is 304 with no body; another context or a reload gives a new tag")
    func bulkEntityTags() throws {
        let body = #"{"context":{"plan":"pro"}}"#
        let first = try ofrep.flags(body)
        let tag = try #require(first.headers["etag"])
        let again = try ofrep.flags(body, ifNoneMatch: tag)
        #expect(again.status == 304)
        #expect(again.body.isEmpty)
        #expect(again.headers["etag"] == tag)

        let other = try ofrep.flags(#"{"context":{"plan":"free"}}"#, ifNoneMatch: tag)
        #expect(other.status == 200)
        #expect(other.headers["etag"] != tag)

        let revision = try ofrep.daemon.servedRevision()
        try ofrep.daemon.writeRule("more.lua", #"flag "extra" { }"#)
        #expect(eventually { (try? ofrep.daemon.servedRevision()) != revision })
        let reloaded = try ofrep.flags(body, ifNoneMatch: tag)
        #expect(reloaded.status == 200)
        #expect(reloaded.headers["etag"] != tag)
        #expect(reloaded.json?["flags"]?.arrayValue?.contains { $0["key"] == "extra" } == true)
    }
}

@Suite("OFREP request limits")
struct OFREPLimitTests {
    @Test("a body over max_request_bytes is 413, and the listener goes on answering")
    func bodyLimit() throws {
        let ofrep = try OFREPDaemon(arguments: ["--max-request-bytes", "1KiB"])
        let big = #"{"context":{"pad":""# + String(repeating: "x", count: 2000) + #""}}"#
        let response = try ofrep.flag("beta", big)
        #expect(response.status == 413)
        #expect(response.json?["errorCode"] == "PARSE_ERROR")
        #expect(try ofrep.flag("beta").status == 200)
    }
}

@Suite("The OpenFeature Python SDK's OFREP provider against rulesd")
struct OFREPProviderTests {
    @Test(
        "boolean, string and object flags resolve as rulesctl flag answers; FLAG_NOT_FOUND and TYPE_MISMATCH",
        .enabled(pythonSkipComment) { PythonEnvironment.ofrep.isUsable })
    func pythonProvider() throws {
        let python = try PythonEnvironment.ofrep.get()
        let ofrep = try OFREPDaemon()
        let questions: [(type: String, key: String, fallback: String, context: String)] = [
            ("boolean", "beta", "false", #"{"targetingKey":"u-1","plan":"pro"}"#),
            ("boolean", "beta", "true", #"{"targetingKey":"u-2","plan":"free"}"#),
            ("string", "greeting", #""none""#, #"{"targetingKey":"u-casual"}"#),
            ("string", "greeting", #""none""#, #"{"targetingKey":"u-other"}"#),
            ("object", "layout", "{}", #"{"targetingKey":"u-1","plan":"pro"}"#),
            ("integer", "limit", "0", #"{"targetingKey":"u-1"}"#),
            ("boolean", "no-such-flag", "true", #"{"targetingKey":"u-1"}"#),
            ("boolean", "greeting", "false", #"{"targetingKey":"u-1"}"#),
        ]
        let input =
            "["
            + questions.map {
                #"{"type":"\#($0.type)","key":"\#($0.key)","default":\#($0.fallback),"context":\#($0.context)}"#
            }.joined(separator: ",") + "]"
        let answers = try #require(
            try python.runScript("ofrep_resolve.py", ["http://127.0.0.1:\(ofrep.port)"], input: input).arrayValue)
        try #require(answers.count == questions.count)

        for (question, answer) in zip(questions, answers).prefix(6) {
            let outcome = try RulesctlProcess.run([
                "flag", question.key, "--socket", ofrep.daemon.socketPath, "--context", question.context, "--json",
            ])
            let expected = try outcome.json()
            #expect(answer["value"] == expected["value"], "\(question.key) \(question.context)")
            #expect(answer["variant"] == expected["variant"], "\(question.key) \(question.context)")
            #expect(answer["reason"] == expected["reason"], "\(question.key) \(question.context)")
            #expect(answer["error_code"] == .null, "\(question.key) \(question.context)")
            #expect(answer["metadata"]?["source"] == expected["source"])
        }
        let notFound = answers[6]
        #expect(notFound["error_code"] == "FLAG_NOT_FOUND")
        #expect(notFound["value"] == true)
        let mismatch = answers[7]
        #expect(mismatch["error_code"] == "TYPE_MISMATCH")
        #expect(mismatch["value"] == false)

        // An edited rule file: the provider's next evaluation has the new value.
        let revision = try ofrep.daemon.servedRevision()
        let edited = try #require(ofrepRules["flags.lua"]).replacingOccurrences(
            of: #"default = "formal""#, with: #"default = "casual""#)
        try ofrep.daemon.writeRule("flags.lua", edited)
        #expect(eventually { (try? ofrep.daemon.servedRevision()) != revision })
        let after = try python.runScript(
            "ofrep_resolve.py", ["http://127.0.0.1:\(ofrep.port)"],
            input: #"[{"type":"string","key":"greeting","default":"none","context":{"targetingKey":"u-other"}}]"#)
        #expect(after[0]?["value"] == "hi")
        #expect(after[0]?["variant"] == "casual")
    }
}
