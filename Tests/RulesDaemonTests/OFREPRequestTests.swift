import RuleModel
import Testing

@testable import RulesDaemon

@Suite("OFREP requests: paths, bodies and entity tags")
struct OFREPRequestTests {
    @Test("the evaluation paths are routed; the key is percent-decoded; the query is ignored")
    func routes() {
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flags") == .allFlags)
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flags/") == .allFlags)
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flags?x=1") == .allFlags)
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flags/checkout.new-flow") == .flag("checkout.new-flow"))
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flags/a%2Fb%20c?x") == .flag("a/b c"))
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flagsX") == nil)
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flags/bad%zz") == nil)
        #expect(OFREPRoute(uri: "/ofrep/v1/evaluate/flags/%ff") == nil)
        #expect(OFREPRoute(uri: "/metrics") == nil)
    }

    @Test("a body is the empty context when empty or without context; bad bodies and contexts are told apart")
    func bodies() throws {
        func context(_ body: String) -> Result<[UInt8], OFREPFailure> {
            OFREPAnswers.context(fromBody: Array(body.utf8), key: "k")
        }
        for empty in ["", " \n", "{}", #"{"context":null}"#, #"{"other":1}"#] {
            #expect(try context(empty).get() == Array("{}".utf8), "\(empty)")
        }
        let parsed = try JSONParser().parse(try context(#"{"context":{"targetingKey":"u","n":2}}"#).get())
        #expect(parsed == ["targetingKey": "u", "n": 2])
        for (body, code) in [("{", "PARSE_ERROR"), ("[1]", "PARSE_ERROR"), (#"{"context":"x"}"#, "INVALID_CONTEXT")] {
            guard case .failure(let failure) = context(body) else {
                Issue.record("\(body) was accepted")
                continue
            }
            #expect(failure.code == code, "\(body)")
            #expect(failure.key == "k")
        }
    }

    @Test("If-None-Match names the tag in a list, weakly, or as *")
    func entityTagMatching() {
        let tag = #""abc-123""#
        #expect(OFREPAnswers.matches(tag, tag: tag))
        #expect(OFREPAnswers.matches(#""x", "abc-123""#, tag: tag))
        #expect(OFREPAnswers.matches(#"W/"abc-123""#, tag: tag))
        #expect(OFREPAnswers.matches("*", tag: tag))
        #expect(!OFREPAnswers.matches(#""abc-124""#, tag: tag))
        #expect(!OFREPAnswers.matches("abc-123", tag: tag))
    }

    @Test("errors are JSON with errorCode and errorDetails, and the key when there is one")
    func failureJSON() throws {
        let withKey = try JSONParser().parse(OFREPFailure(key: "a\"b", code: "FLAG_NOT_FOUND", details: "d").json)
        #expect(withKey == ["key": "a\"b", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "d"])
        let without = try JSONParser().parse(OFREPFailure(key: nil, code: "GENERAL", details: "x").json)
        #expect(without == ["errorCode": "GENERAL", "errorDetails": "x"])
    }
}
