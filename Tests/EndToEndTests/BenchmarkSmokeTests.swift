import Foundation
import RulesTestSupport
import Testing

/// `make bench` prints figures that nothing checks; these runs of `rulesbench` with tiny sizes check that every
/// benchmark still runs to its end and prints every row, so that the benchmark code cannot rot unnoticed. They
/// look at no figure: the machine is shared, and a figure from a debug build means nothing.
@Suite("rulesbench with tiny sizes")
struct BenchmarkSmokeTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// The C ceilings' sources live outside the repository: RULESBENCH_CEILINGS, else ../shared/perf beside
    /// the checkout, when there.
    static var ceilings: String? {
        let candidates = [ProcessInfo.processInfo.environment["RULESBENCH_CEILINGS"], root + "/../shared/perf"]
        return candidates.compactMap { $0 }.first {
            FileManager.default.fileExists(atPath: $0 + "/lua_ceiling.c")
        }
    }

    static func bench(_ arguments: [String]) throws -> String {
        let result = try runCommand([DaemonHarness.binary("rulesbench")] + arguments)
        #expect(result.status == 0, "rulesbench \(arguments.joined(separator: " ")): \(result.stderr)")
        return result.stdout
    }

    /// The lines of `output` that start a row titled `title`.
    static func rows(_ output: String, _ title: String) -> [Substring] {
        output.split(separator: "\n").filter { $0.hasPrefix("  " + title) }
    }

    @Test func theMeasuresTablePrintsEveryRowWithTheCeilingsWhenTheyAreThere() throws {
        let output = try Self.bench([
            "measures", "--quick", "--rulesd", DaemonHarness.binary("rulesd"), "--examples",
            Self.root + "/config/rules.d", "--ceilings", Self.ceilings ?? Self.root + "/no-ceilings",
        ])
        let table = String(output[(output.range(of: "\nmeasures: ")?.upperBound ?? output.endIndex)...])
        let expected: [(String, Int)] = [
            ("(8 conn, depth 32), default workers", 1), ("(8, 1), default workers", 3), ("(1, 1) p50", 1),
            ("full request in process (decode, evaluate, encode)", 1), ("targeting + split flag, in process", 1),
            ("routing over 50 routes, in process", 1), ("resident memory, example rules", 1),
            ("200 flags: build", 1), ("200 flags: daemon RSS, 2 workers", 1),
        ]
        for (title, count) in expected {
            #expect(Self.rows(table, title).count == count, "row \(title) in:\n\(table)")
        }
        let socketRows = Self.rows(table, "(")
        #expect(socketRows.count == 5)
        #expect(socketRows.allSatisfy { $0.contains("switches/req") == false && $0.contains(" / ") })
        if Self.ceilings != nil {
            #expect(!table.contains("n/a"), "every ceiling ran:\n\(table)")
        } else {
            // The C servers' rows; the single worker and the plain Lua state are measured without them.
            #expect(Self.rows(table, "").filter { $0.contains("n/a (ceiling not run)") }.count == 9)
        }
    }

    @Test func theGrowthCurvesPrintARowPerSizeWithTheCostPerUnit() throws {
        let output = try Self.bench([
            "growth", "--fields", "1,10,20", "--routes", "10,20,30", "--flags", "10,20,30", "--files", "2",
            "--rounds", "1", "--milliseconds", "2", "--builds", "1",
        ])
        for (curve, unit) in [
            ("evaluation by context fields", "fields"), ("routing by routes", "routes"), ("build by flags", "flags"),
            ("memory of one state by flags", "flags"),
        ] {
            guard let start = output.range(of: "growth: " + curve) else {
                Issue.record("no curve \(curve) in:\n\(output)")
                continue
            }
            // The rest of the title's line, then the table.
            let lines = output[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false)
                .dropFirst().prefix(4)
            #expect(lines.first?.hasPrefix("  \(unit)") == true, "\(curve): \(lines.first ?? "")")
            #expect(lines.first?.contains("marginal") == true)
            #expect(lines.dropFirst().count == 3, "a row per size for \(curve)")
        }
        #expect(output.components(separatedBy: "marginal cost, last step / first step").count - 1 == 4)
    }

    @Test func theReloadBenchmarkPrintsItsGrowthCurveAndTheHammerRun() throws {
        let output = try Self.bench([
            "reload", "--rulesd", DaemonHarness.binary("rulesd"), "--files", "1,3,5", "--edits", "1",
            "--quiet-window", "50", "--hammer-reloads", "2",
        ])
        guard let start = output.range(of: "growth: reload by files") else {
            Issue.record("no reload curve in:\n\(output)")
            return
        }
        let lines = output[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false).dropFirst()
        #expect(lines.first?.hasPrefix("  files") == true)
        #expect(lines.dropFirst().prefix(3).map { $0.split(separator: " ").first } == ["1", "3", "5"])
        #expect(output.contains("reloads while 3 clients asked"))
    }

    @Test func theNeighbourBenchmarkPrintsBothNeighboursPerIsolationModeAndTheMemoryPerNamespace() throws {
        let output = try Self.bench([
            "neighbour", "--rulesd", DaemonHarness.binary("rulesd"), "--requests", "20", "--canaries", "1",
            "--hostiles", "1", "--extra-namespaces", "1",
        ])
        let lines = output.split(separator: "\n")
        for isolation in ["thread", "process"] {
            for neighbour in ["none", "hostile"] {
                let rows = lines.filter {
                    let words = $0.split(separator: " ")
                    return words.first == Substring(isolation) && words.dropFirst().first == Substring(neighbour)
                }
                #expect(rows.count == 1, "a row for \(isolation) beside \(neighbour) in:\n\(output)")
            }
        }
        #expect(lines.contains { $0.hasPrefix("default only") }, "\(output)")
        #expect(lines.contains { $0.hasPrefix("default + copies") && $0.split(separator: " ").count == 6 }, "\(output)")
    }
}
