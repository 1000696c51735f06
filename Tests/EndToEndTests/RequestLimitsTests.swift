import RuleModel
import RulesTestSupport
import Testing

/// The request limits of docs/PROTOCOL.md ("Limits and flow control"), against the real daemon with its default
/// settings: each limit answers with its documented code, and a request exactly at a limit is served.
@Suite("Request limits, against the real daemon")
struct RequestLimitsTests {
    let daemon: DaemonHarness

    init() throws {
        daemon = try DaemonHarness(rules: [
            "limits.lua": """
            flag "seen" { rule = function(ctx) if ctx.k9999 ~= nil or ctx.a ~= nil then return "on" end end }
            route "any" { match = function(r) return true end, target = "t" }
            """
        ])
        try daemon.start()
    }

    private func arrays(_ levels: Int) -> String {
        String(repeating: "[", count: levels) + String(repeating: "]", count: levels)
    }

    @Test("an id is echoed byte for byte, beyond a double's range or nested deeper than a context may be")
    func idsAreEchoedAsWritten() throws {
        let client = try daemon.connect()
        for id in ["1e400", "-123456789012345678901234567890.5e-400", arrays(40)] {
            try client.send(#"{"op":"ping","id":\#(id)}"# + "\n")
            let line = try #require(try client.readLine())
            #expect(line.hasPrefix(#"{"id":\#(id),"ok":true"#), "\(line)")
        }
    }

    @Test("a context one level or many levels too deep answers the documented context error, not PARSE_ERROR")
    func deepContexts() throws {
        let client = try daemon.connect()
        // The context is level 1, so 31 arrays inside it make 32 levels: the limit.
        let atLimit = try client.request(#"{"op":"flag","flag":"seen","context":{"a":\#(arrays(31))}}"#)
        #expect(atLimit["result"]?["variant"] == "on")
        for levels in [32, 33, 200] {
            let context = #"{"a":\#(arrays(levels))}"#
            let flag = try client.request(#"{"op":"flag","flag":"seen","context":\#(context)}"#)
            #expect(flag["result"]?["error_code"] == "INVALID_CONTEXT", "\(levels): \(flag)")
            #expect(flag["result"]?["error_message"]?.stringValue?.contains("deeper than 32 levels") == true)
            let flags = try client.request(#"{"op":"flags","context":\#(context)}"#)
            #expect(flags["error"]?["code"] == "INVALID_REQUEST", "\(levels): \(flags)")
            let route = try client.request(#"{"op":"route","request":\#(context)}"#)
            #expect(route["error"]?["code"] == "INVALID_REQUEST", "\(levels): \(route)")
        }
    }

    @Test("a context of exactly 10,000 members is served; one more member is refused")
    func contextValueLimit() throws {
        let client = try daemon.connect()
        func context(_ members: Int) -> String {
            "{" + (0..<members).map { #""k\#($0)":\#($0)"# }.joined(separator: ",") + "}"
        }
        let atLimit = try client.request(#"{"op":"flag","flag":"seen","context":\#(context(10_000))}"#)
        #expect(atLimit["result"]?["variant"] == "on")
        let over = try client.request(#"{"op":"flag","flag":"seen","context":\#(context(10_001))}"#)
        #expect(over["result"]?["error_code"] == "INVALID_CONTEXT")
    }

    @Test("a number beyond a double's range in a context is a context error, not PARSE_ERROR")
    func hugeNumberInContext() throws {
        let client = try daemon.connect()
        let flag = try client.request(#"{"op":"flag","flag":"seen","context":{"n":1e400}}"#)
        #expect(flag["result"]?["error_code"] == "INVALID_CONTEXT")
        let flags = try client.request(#"{"op":"flags","context":{"n":1e400}}"#)
        #expect(flags["error"]?["code"] == "INVALID_REQUEST")
    }

    @Test("a line nested deeper than 512 levels is a PARSE_ERROR")
    func parseDepthLimit() throws {
        let answer = try daemon.request(#"{"op":"flags","context":{"a":\#(arrays(600))}}"#)
        #expect(answer["error"]?["code"] == "PARSE_ERROR")
    }
}
