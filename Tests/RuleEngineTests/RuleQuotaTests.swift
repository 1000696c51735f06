import RuleEngine
import RuleModel
import Testing

/// Limits whose quotas are `files`, `flags` and `bytes`, everything else at its default.
private func quotas(files: Int = .max, flags: Int = .max, bytes: Int = .max) -> RuleEngineLimits {
    var limits = RuleEngineLimits()
    limits.maxFiles = files
    limits.maxFlags = flags
    limits.maxRulesBytes = bytes
    return limits
}

/// `count` files of one flag each: `f0.lua`, `f1.lua`, ...
private func flagFiles(_ count: Int) -> [String: String] {
    Dictionary(uniqueKeysWithValues: (0..<count).map { ("f\($0).lua", #"flag "flag-\#($0)" {}"#) })
}

@Suite("Rule set quotas: max_files, max_flags, max_rules_bytes")
struct RuleQuotaTests {
    @Test("by default the engine sets no quota")
    func defaults() throws {
        let limits = RuleEngineLimits()
        #expect(limits.maxFiles == .max && limits.maxFlags == .max && limits.maxRulesBytes == .max)
        #expect(try compile(flagFiles(50)).ruleSet.flags.count == 50)
    }

    @Test("a rule set at its quotas loads")
    func atQuota() throws {
        var files = flagFiles(3)
        files["words.txt"] = "a\nb\n"
        let bytes = files.values.reduce(0) { $0 + $1.utf8.count }
        let rules = try compile(files, limits: quotas(files: 4, flags: 3, bytes: bytes))
        #expect(rules.ruleSet.flags.count == 3)
    }

    @Test("one file over max_files refuses the load, naming the quota, its value and the count; data files count")
    func overFileQuota() {
        var files = flagFiles(3)
        files["words.txt"] = "a\nb\n"
        let failure = loadFailure(files, limits: quotas(files: 3))
        #expect(failure?.cause == .content)
        #expect(
            failure?.description
                == "quota max_files = 3 exceeded: the rule set has 4 files (rule and data files together)")
    }

    @Test("one flag over max_flags refuses the load, naming the quota, its value and the count")
    func overFlagQuota() {
        let failure = loadFailure(
            ["a.lua": #"flag "a" {} flag "b" {}"#, "b.lua": #"flag "c" {} config "not-a-flag" (1)"#],
            limits: quotas(flags: 2))
        #expect(failure?.isDeterministic == true)
        #expect(failure?.description == "quota max_flags = 2 exceeded: the rule files declare 3 flags")
    }

    @Test("one byte over max_rules_bytes refuses the load; data files count")
    func overByteQuota() {
        let files = ["a.lua": #"flag "a" {}"#, "big.json": #"{"k":"0123456789"}"#]
        let bytes = files.values.reduce(0) { $0 + $1.utf8.count }
        let failure = loadFailure(files, limits: quotas(bytes: bytes - 1))
        #expect(
            failure?.description
                == "quota max_rules_bytes = \(bytes - 1) exceeded: the rule set's files hold \(bytes) bytes "
                + "(rule and data files together)")
    }

    @Test("both file quotas over are both reported")
    func bothReported() {
        let failure = loadFailure(flagFiles(3), limits: quotas(files: 2, bytes: 10))
        #expect(failure?.diagnostics.count == 2)
    }
}
