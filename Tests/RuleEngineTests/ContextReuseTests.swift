import RuleModel
import Testing

@testable import RuleEngine

/// Every evaluation's top-level context fills one storage table that the state keeps from one evaluation to the next;
/// what a rule sees must still be exactly the context it was given, whatever the evaluations before it did.
@Suite("Context storage reused between evaluations")
struct ContextReuseTests {
    /// A flag that logs every member it can see (sorted keys, through pairs, rawget and #), and fails when asked to;
    /// a compiled route that matches on one member.
    static let rules = """
        flag "members" {
          rule = function(ctx)
            local keys = {}
            for k, v in pairs(ctx) do keys[#keys + 1] = k .. "=" .. tostring(v) end
            table.sort(keys)
            log(table.concat(keys, ",") .. "|" .. tostring(rawget(ctx, "a")) .. "|" .. #ctx)
            if ctx.boom then error("boom") end
            return "on"
          end,
        }
        route "x" { match = function(req) return req.x == 1 end, target = "has-x" }
        """

    static func members(_ rules: LoadedRules, _ json: String) throws -> (FlagAnswer, String?) {
        let answer = try rules.flag("members", rawContext: Array(json.utf8))
        return (answer, rules.logs().first)
    }

    static func loaded(_ conversion: RuleEvaluator.ContextConversion) throws -> LoadedRules {
        let rules = try compile(["reuse.lua": Self.rules])
        rules.evaluator.setContextConversion(conversion)
        return rules
    }

    @Test(
        "a member of one evaluation's context is never seen by the next",
        arguments: [RuleEvaluator.ContextConversion.bySize, .whole])
    func noFieldCarriesOver(conversion: RuleEvaluator.ContextConversion) throws {
        let rules = try Self.loaded(conversion)
        #expect(try Self.members(rules, #"{"a":1,"b":"two"}"#).1 == "a=1,b=two|1|0")
        #expect(try Self.members(rules, #"{"c":3}"#).1 == "c=3|nil|0")
        #expect(try Self.members(rules, "").1 == "|nil|0")
        #expect(try Self.members(rules, #"{"a":null,"d":true}"#).1 == "d=true|nil|0")
    }

    @Test(
        "a rule that fails half-way leaves nothing for the next evaluation",
        arguments: [RuleEvaluator.ContextConversion.bySize, .whole])
    func afterRuleError(conversion: RuleEvaluator.ContextConversion) throws {
        let rules = try Self.loaded(conversion)
        let (failed, seen) = try Self.members(rules, #"{"a":"x","boom":true}"#)
        #expect(failed.code == .general)
        #expect(seen == "a=x,boom=true|x|0")
        #expect(try Self.members(rules, #"{"e":5}"#).1 == "e=5|nil|0")
    }

    @Test(
        "a context refused half-way through its conversion leaves nothing for the next evaluation",
        arguments: [RuleEvaluator.ContextConversion.bySize, .whole])
    func afterInvalidContext(conversion: RuleEvaluator.ContextConversion) throws {
        let rules = try Self.loaded(conversion)
        let (refused, _) = try Self.members(rules, #"{"f":1,"g":2,"h":}"#)
        #expect(refused.code == .invalidContext)
        #expect(try Self.members(rules, #"{"i":1}"#).1 == "i=1|nil|0")
        let (duplicate, _) = try Self.members(rules, #"{"j":1,"j":2}"#)
        #expect(duplicate.code == .invalidContext)
        #expect(try Self.members(rules, "{}").1 == "|nil|0")
    }

    @Test("a context with many members is followed by a small one that sees only its own")
    func afterLargeContext() throws {
        let rules = try Self.loaded(.whole)
        let many = (0..<100).map { #""k\#($0)":\#($0)"# }.joined(separator: ",")
        let (answer, seen) = try Self.members(rules, "{" + many + "}")
        #expect(answer.reason == .targetingMatch)
        #expect(seen?.hasPrefix("k0=0,k10=10,k11=11,") == true)
        #expect(try Self.members(rules, #"{"a":2}"#).1 == "a=2|2|0")
        #expect(try Self.members(rules, #"{"b":3}"#).1 == "b=3|nil|0")
    }

    @Test("keys read the same however they are spelled, and after many other keys took their place")
    func keysAcrossEvaluations() throws {
        let rules = try Self.loaded(.whole)
        let long = String(repeating: "k", count: 40)
        #expect(try Self.members(rules, #"{"a\u0062":1,"\#(long)":3}"#).1 == "ab=1,\(long)=3|nil|0")
        #expect(try Self.members(rules, #"{"ab":1,"\#(long)":3}"#).1 == "ab=1,\(long)=3|nil|0")
        #expect(try Self.members(rules, #"{"ab":1,"a\u0062":2}"#).0.code == .invalidContext)
        #expect(try Self.members(rules, #"{"ab":1,"c":1}"#).1 == "ab=1,c=1|nil|0")
        #expect(try Self.members(rules, #"{"a\u0062":2}"#).1 == "ab=2|nil|0")
        #expect(try Self.members(rules, #"{"ab":null,"c":2}"#).1 == "c=2|nil|0")
        #expect(try Self.members(rules, #"{"a\u0062":3,"\#(long)":4}"#).1 == "ab=3,\(long)=4|nil|0")
        #expect(try Self.members(rules, #"{"ab":5}"#).1 == "ab=5|nil|0")
        // k41, k92, k103, k143, k147 and k155 share one of the key cache's four-slot sets (rs_json.c's
        // key_cache_set_of): a context with five of them evicts its own keys.
        #expect(
            try Self.members(rules, #"{"k41":1,"k92":2,"k103":3,"k143":4,"k147":5}"#).1
                == "k103=3,k143=4,k147=5,k41=1,k92=2|nil|0")
        #expect(
            try Self.members(rules, #"{"k41":1,"k92":2,"k103":3,"k143":4,"k147":5,"k41":6}"#).0.code
                == .invalidContext)
        #expect(
            try Self.members(rules, #"{"k92":1,"k103":2,"k143":3,"k147":4,"k155":5,"k103":6}"#).0.code
                == .invalidContext)
        #expect(try Self.members(rules, #"{"k155":5,"k41":6}"#).1 == "k155=5,k41=6|nil|0")
        #expect(try Self.members(rules, #"{"k92":7}"#).1 == "k92=7|nil|0")
        for round in 0..<3 {
            for index in 0..<200 {
                let key = "key\(index)"
                let seen = try Self.members(rules, #"{"\#(key)":\#(round)}"#).1
                #expect(seen == "\(key)=\(round)|nil|0")
            }
        }
    }

    @Test("keys that differ in one byte are told apart, at every length the key cache holds")
    func keysDifferingInOneByte() throws {
        let rules = try Self.loaded(.whole)
        // 36 spellings of one position spread over 64 sets of four slots, so some share a set and are compared byte
        // for byte: at the first, a middle and the last byte, for keys of 1 to 32 bytes (31 is the longest cached).
        let spellings = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        for length in 1...32 {
            for position in Set([0, length / 2, length - 1]) {
                for round in 0..<2 {
                    for spelling in spellings {
                        var bytes = Array(repeating: Character("q"), count: length)
                        bytes[position] = spelling
                        let key = String(bytes)
                        let rawA = key == "a" ? "\(round)" : "nil"  // the flag logs rawget(ctx, "a") too
                        #expect(try Self.members(rules, #"{"\#(key)":\#(round)}"#).1 == "\(key)=\(round)|\(rawA)|0")
                    }
                }
            }
        }
    }

    @Test("string values that differ in one byte read back exactly, from the string cache or not, at every length")
    func valuesDifferingInOneByte() throws {
        let rules = try Self.loaded(.whole)
        // A string is cached at its set's second miss in a row, so each value is read three times in a row (a miss,
        // a miss that caches it, a hit), then all of them once more: similar values meet in shared sets, evict each
        // other and are compared byte for byte, for values of 0 to 32 bytes (31 is the longest cached).
        let spellings = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        var values: [String] = [""]
        for length in 1...32 {
            for position in Set([0, length / 2, length - 1]).sorted() {
                for spelling in spellings {
                    var bytes = Array(repeating: Character("q"), count: length)
                    bytes[position] = spelling
                    values.append(String(bytes))
                }
            }
        }
        for value in values {
            for _ in 0..<3 {
                #expect(try Self.members(rules, #"{"v":"\#(value)","n":1}"#).1 == "n=1,v=\(value)|nil|0")
            }
        }
        for value in values.reversed() {
            #expect(try Self.members(rules, #"{"n":2,"v":"\#(value)"}"#).1 == "n=2,v=\(value)|nil|0")
        }
        // Spelled with an escape, a value equal to a cached one reads the same; a nested object's strings too.
        #expect(try Self.members(rules, #"{"v":"q\u0071"}"#).1 == "v=qq|nil|0")
        #expect(try Self.members(rules, #"{"v":"qq","w":{"qq":"qq"}}"#).1?.hasPrefix("v=qq,w=table") == true)
    }

    @Test("a member whose string is the same as the last context's stays; a string's cache slot taken over is seen")
    func keptStringMembers() throws {
        let rules = try Self.loaded(.whole)
        // s7, s22, s59, s127 and s132 share one of the string cache's four-slot sets (rs_json.c's
        // short_string_hash): once four are cached, the fifth takes the slot of one that members still hold.
        let four = #""a":"s7","b":"s22","c":"s59","d":"s127""#
        for _ in 0..<3 {  // a miss, a miss that caches them, then members kept as they are
            #expect(try Self.members(rules, "{" + four + "}").1 == "a=s7,b=s22,c=s59,d=s127|s7|0")
        }
        for _ in 0..<2 {  // s132 is cached at its second miss, in the slot s7 held
            #expect(try Self.members(rules, "{" + four + #","e":"s132"}"#).1 == "a=s7,b=s22,c=s59,d=s127,e=s132|s7|0")
        }
        // a still holds s7 from the storage; the slot it came from now holds s132
        let others = #""b":"s22","c":"s59","d":"s127""#
        #expect(try Self.members(rules, #"{"a":"s132","# + others + "}").1 == "a=s132,b=s22,c=s59,d=s127|s132|0")
        #expect(try Self.members(rules, #"{"a":"s7","# + others + "}").1 == "a=s7,b=s22,c=s59,d=s127|s7|0")
        // kept members beside members that change, disappear, turn null or into other types
        #expect(try Self.members(rules, #"{"a":"s7","b":"s7","d":null,"e":1}"#).1 == "a=s7,b=s7,e=1|s7|0")
        #expect(try Self.members(rules, #"{"a":"s7","b":"s7","e":"1"}"#).1 == "a=s7,b=s7,e=1|s7|0")
        #expect(try Self.members(rules, #"{"a":true,"b":"s7"}"#).1 == "a=true,b=s7|true|0")
        #expect(try Self.members(rules, #"{"a":"s7","b":"s7"}"#).1 == "a=s7,b=s7|s7|0")
        // keys spelled with escapes, of members otherwise kept
        let plain = (0..<60).map { #""k\#($0)":"s7""# }.joined(separator: ",")
        let escaped = (0..<60).map { #""\u006b\#($0)":"s7""# }.joined(separator: ",")
        let all = (0..<60).map { "k\($0)=s7" }.sorted().joined(separator: ",")
        for text in [plain, plain, plain, escaped, escaped, plain] {
            #expect(try Self.members(rules, "{" + text + "}").1 == all + "|nil|0")
        }
        // a context refused after a kept member leaves nothing behind
        #expect(try Self.members(rules, #"{"a":"s7","b":"s7","c":}"#).0.code == .invalidContext)
        #expect(try Self.members(rules, #"{"a":"s7"}"#).1 == "a=s7|s7|0")
        #expect(try Self.members(rules, #"{"a":"s7"}"#).1 == "a=s7|s7|0")
    }

    @Test("strings are read to their last byte, whatever byte ends them and wherever they lie in the text")
    func stringEnds() throws {
        let rules = try Self.loaded(.whole)
        // Strings are scanned eight bytes at a time, the last few bytes as the tail of the text's last word: a
        // special byte at every position of strings of 0 to 20 bytes, with the string starting at every alignment.
        for shift in 0..<8 {
            let key = "k" + String(repeating: "p", count: shift)
            for length in 0...20 {
                let plain = String(repeating: "s", count: length)
                let prefix = #"{"\#(key)":""#
                #expect(try Self.members(rules, prefix + plain + #""}"#).1 == "\(key)=\(plain)|nil|0")
                for position in 0..<max(length, 1) {
                    let head = String(plain.prefix(position)), tail = String(plain.dropFirst(position + 1))
                    let accented = head + "\u{E9}" + tail
                    #expect(try Self.members(rules, prefix + accented + #""}"#).1 == "\(key)=\(accented)|nil|0")
                    let escaped = try Self.members(rules, prefix + head + #"\u0041"# + tail + #""}"#).1
                    #expect(escaped == "\(key)=\(head)A\(tail)|nil|0")
                    // A raw control byte or a byte that is not UTF-8 is refused at its own offset.
                    let at = prefix.utf8.count + position
                    for (bad, why) in [(UInt8(0x01), "control character"), (0xFF, "invalid UTF-8")] {
                        var text = Array((prefix + plain + #""}"#).utf8)
                        if length == 0 { text.insert(bad, at: at) } else { text[at] = bad }
                        let answer = try rules.flag("members", rawContext: text)
                        #expect(answer.code == .invalidContext)
                        #expect(answer.message?.contains("at byte \(at): \(why)") == true, "\(answer.message ?? "")")
                    }
                }
            }
            // An unterminated string ends the text at any length.
            #expect(try rules.flag("members", rawContext: Array(#"{"\#(key)":"ss"#.utf8)).code == .invalidContext)
        }
    }

    @Test(
        "beyond eight members, duplicates are found in this context's members only",
        arguments: [RuleEvaluator.ContextConversion.bySize, .whole])
    func duplicatesBeyondEightMembers(conversion: RuleEvaluator.ContextConversion) throws {
        let rules = try Self.loaded(conversion)
        let nine = (0..<9).map { #""\#(Character(UnicodeScalar(97 + $0)!))":\#($0)"# }.joined(separator: ",")
        #expect(try Self.members(rules, #"{"z":1,"y":2}"#).1 == "y=2,z=1|nil|0")
        #expect(try Self.members(rules, "{" + nine + #","z":9}"#).1 == "a=0,b=1,c=2,d=3,e=4,f=5,g=6,h=7,i=8,z=9|0|0")
        #expect(try Self.members(rules, "{" + nine + #","y":9}"#).1 == "a=0,b=1,c=2,d=3,e=4,f=5,g=6,h=7,i=8,y=9|0|0")
        #expect(try Self.members(rules, "{" + nine + #","c":9}"#).0.code == .invalidContext)
        #expect(try Self.members(rules, #"{"z":3}"#).1 == "z=3|nil|0")
    }

    @Test("compiled routing reads only the current request's members")
    func routingSeesCurrentRequest() throws {
        let rules = try Self.loaded(.bySize)
        #expect(try rules.route(["x": 1]) == RouteAnswer(name: "x", target: "has-x"))
        #expect(try rules.route(["y": 1]) == nil)
        #expect(try rules.route([:]) == nil)
        _ = try Self.members(rules, #"{"x":1}"#)
        #expect(try rules.route(["z": 1]) == nil)
    }
}
