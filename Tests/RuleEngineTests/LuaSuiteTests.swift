import RuleEngine
import RuleModel
import Testing

// Lua 5.4's own test suite, adapted: the parts about the library functions rules can use (patterns, strings,
// utf8, pack, sort, next and tables, math) run inside the sandbox as rule files, and must agree with stock Lua
// except where the sandbox differs by design (each such check is marked with `differs` in the fixture and
// listed in docs/RULES.md, "Differences from stock Lua").

/// What one adapted file reported: checks that agree with stock Lua, those that do not, and the by-design
/// differences it met (each expected to really differ).
struct LuaSuiteReport {
    var agreed: Int
    var failures: [String]
    var differences: [String]
}

/// The harness around a fixture: `assert` counts and records the failing line instead of stopping the file;
/// `differs(reason, f)` runs a check that stock Lua passes and the sandbox, by design, does not; `by_design(reason,
/// n)` stands for n checks left out because, by design, they would stop the whole file (a resource limit is not
/// catchable). Everything runs
/// inside one function, and the file's globals are cleared before the summary is declared as a config value, so
/// nothing the suite made is left for the sandbox to freeze.
private func wrapped(_ fixture: String) -> String {
    """
    local suite_agreed, suite_failures, suite_differences = 0, {}, {}
    local function suite_where() local _, where = pcall(error, "", 4) return where end
    local function assert(condition, ...)
      if condition then suite_agreed = suite_agreed + 1
      else suite_failures[#suite_failures + 1] = suite_where() .. tostring((...)) end
      return condition, ...
    end
    local function differs(reason, check)
      local ok, result = pcall(check)
      if ok and result then
        suite_failures[#suite_failures + 1] = suite_where() .. "no longer differs: " .. reason
      else
        suite_differences[#suite_differences + 1] = reason
      end
    end
    local function by_design(reason, count)
      for _ = 1, count do suite_differences[#suite_differences + 1] = reason end
    end
    local function suite_run()
    \(fixture)
    end
    local ok, err = pcall(suite_run)
    if not ok then suite_failures[#suite_failures + 1] = "stopped: " .. tostring(err) end
    local env = _G
    for name in next, env do env[name] = nil end
    config "luasuite" ({
      agreed = suite_agreed,
      failures = table.concat(suite_failures, "\\n"),
      differences = table.concat(suite_differences, "\\n"),
    })
    """
}

/// Runs one adapted file of Lua's test suite in the sandbox: the file is placed inside the harness's `suite_run`
/// and loaded as a rule file, with budgets large enough for the whole file.
func runLuaSuiteFile(_ name: String) throws -> LuaSuiteReport {
    let path = fixturesDirectory + "/luasuite/" + name
    let bytes = try #require(readBytes(path), "cannot read \(path)")
    var limits = RuleEngineLimits()
    limits.loadInstructionLimit = 2_000_000_000
    limits.loadTimeout = .seconds(120)
    limits.memoryLimit = 512 << 20
    var source = Array(wrapped("").utf8)
    // The fixture goes in as bytes (some hold Latin-1 text), at the harness's placeholder line.
    let marker = Array("local function suite_run()\n".utf8)
    let split = try #require(firstRange(of: marker, in: source))
    source.insert(contentsOf: bytes + [10], at: split.upperBound)
    let (ruleSet, _) = try RuleCompiler.compile([RuleSource(path: name, content: source)], limits: limits)
    let summary = try #require(ruleSet.configs.first { $0.key == "luasuite" }).value
    func lines(_ key: String) -> [String] {
        guard let joined = summary[key]?.stringValue, !joined.isEmpty else { return [] }
        return joined.split(separator: "\n").map(String.init)
    }
    return LuaSuiteReport(
        agreed: summary["agreed"]?.intValue ?? 0, failures: lines("failures"), differences: lines("differences"))
}

private func firstRange(of needle: [UInt8], in haystack: [UInt8]) -> Range<Int>? {
    guard needle.count <= haystack.count else { return nil }
    for start in 0...(haystack.count - needle.count) where haystack[start..<start + needle.count].elementsEqual(needle)
    {
        return start..<start + needle.count
    }
    return nil
}

@Suite("Lua 5.4 test suite, adapted", .serialized)
struct LuaSuiteTests {
    @Test(
        "each adapted file agrees with stock Lua except for documented differences",
        arguments: [
            ("pm.lua", 2),
            ("strings.lua", 21),
            ("utf8.lua", 10),
            ("tpack.lua", 0),
            ("sort.lua", 7),
            ("math.lua", 8),
            ("nextvar.lua", 4),
        ])
    func adaptedFile(_ name: String, _ expectedDifferences: Int) throws {
        let report = try runLuaSuiteFile(name)
        #expect(report.failures == [], "\(name): \(report.failures.joined(separator: "; "))")
        #expect(report.differences.count == expectedDifferences, "\(name): \(report.differences)")
        #expect(report.agreed > 0)
        print("luasuite \(name): \(report.agreed) agree, \(report.differences.count) differ by design")
    }
}
