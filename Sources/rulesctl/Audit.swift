import ArgumentParser
import Glibc
import RuleModel

/// `rulesctl audit`: reads rulesd's audit log straight from the state directory (no daemon needed).
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Print rulesd's audit log: reloads, operations and refused requests.",
        discussion: """
            Reads STATE_DIR/audit/audit.jsonl and its rotated files (audit.jsonl.1 to .3), oldest first. The files \
            are readable by root and rulesd's user only: run it with sudo or as the rulesd user. \
            Exit status: 0 printed (also when there is nothing to print), 1 when the log cannot be read, 2 on a \
            usage error.
            """)

    static let defaultStateDirectory = "/var/lib/rulesd"

    @Option(
        help: ArgumentHelp(
            "rulesd's state directory (default: $RULESD_STATE_DIR, else \(AuditCommand.defaultStateDirectory)).",
            valueName: "dir"))
    var stateDir: String?

    @Option(
        help: ArgumentHelp(
            "Only events at or after T: seconds since the epoch, an RFC 3339 time (2026-12-05T09:00:00Z), or a time "
                + "ago (90s, 15m, 2h, 7d).",
            valueName: "T"))
    var since: String?

    @Option(help: ArgumentHelp("Only events of this kind: reload, operation, refused, override.", valueName: "kind"))
    var event: String?

    @Option(
        help: ArgumentHelp(
            "Only events of this namespace (a line naming none, such as a refusal, counts as the default one's).",
            valueName: "name"))
    var namespace: String?

    @Flag(help: "Print the events as JSON lines, as stored.")
    var json = false

    func validate() throws {
        if let since, Self.sinceTime(since, now: 0) == nil {
            throw ValidationError("--since: expected epoch seconds, an RFC 3339 time or a time ago such as 15m")
        }
    }

    /// The directory holding the audit files.
    var directory: String {
        if let stateDir { return stateDir + "/audit" }
        if let value = getenv("RULESD_STATE_DIR").map({ String(cString: $0) }), !value.isEmpty {
            return value + "/audit"
        }
        return Self.defaultStateDirectory + "/audit"
    }

    /// Seconds since the epoch for `--since`; a duration counts back from `now`.
    static func sinceTime(_ text: String, now: Double) -> Double? {
        let units: [(Character, Double)] = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        if let last = text.last, let unit = units.first(where: { $0.0 == last }),
            let amount = Double(text.dropLast()), amount.isFinite, amount >= 0
        {
            return now - amount * unit.1
        }
        return TimeArgument.parse(text)
    }

    /// `--namespace`, wherever it stands on the command line.
    var selectedNamespace: String? { namespace ?? DaemonClient.namespaceOption.withLock { $0 } }

    func run() throws {
        let base = directory + "/audit.jsonl"
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let threshold = since.flatMap { Self.sinceTime($0, now: Double(now.tv_sec) + Double(now.tv_nsec) / 1e9) }
        var printed: [String] = []
        for path in (1...3).reversed().map({ "\(base).\($0)" }) + [base] {
            guard let bytes = try Self.readIfPresent(path) else { continue }
            for line in bytes.split(separator: UInt8(ascii: "\n")) {
                // A line is written whole; one that does not parse is shown as it is rather than hidden.
                guard let value = try? JSONParser().parse(Array(line)) else {
                    if threshold == nil && event == nil && selectedNamespace == nil {
                        printed.append(String(decoding: line, as: UTF8.self))
                    }
                    continue
                }
                if let event, value["event"]?.stringValue != event { continue }
                if let namespace = selectedNamespace, (value["namespace"]?.stringValue ?? "default") != namespace {
                    continue
                }
                if let threshold {
                    guard let at = value["at"]?.stringValue.flatMap(TimeArgument.parse), at >= threshold else {
                        continue
                    }
                }
                printed.append(json ? String(decoding: line, as: UTF8.self) : Self.text(value))
            }
        }
        Console.writeLines(printed)
    }

    /// The file's bytes; nil when it does not exist.
    static func readIfPresent(_ path: String) throws -> [UInt8]? {
        // A missing file is an empty log; one that cannot be reached or read (a directory of mode 0700) is not.
        if access(path, F_OK) != 0 && errno == ENOENT { return nil }
        if access(path, R_OK) != 0 {
            Console.write(
                "rulesctl: cannot read \(path): \(String(cString: strerror(errno))) (the audit log is readable by "
                    + "root and rulesd's user)\n", to: .standardError)
            throw ExitCode.failure
        }
        return try ReplayFiles.read(path)
    }

    /// One event as a line for people: time, kind, outcome, who, what.
    static func text(_ value: JSONValue) -> String {
        let at = value["at"]?.stringValue ?? "?"
        let kind = value["event"]?.stringValue ?? "?"
        var who = "-"
        if let peer = value["peer"], let uid = peer["uid"]?.int64Value {
            who = "uid=\(uid)"
            if let user = peer["user"]?.stringValue { who += "(\(user))" }
            if let pid = peer["pid"]?.int64Value { who += " pid=\(pid)" }
            if let exe = peer["exe"]?.stringValue { who += " exe=\(exe)" }
        }
        let what: String
        let outcome: String
        switch kind {
        case "reload":
            outcome = value["outcome"]?.stringValue ?? "?"
            let old = String((value["old_revision"]?.stringValue ?? "none").prefix(8))
            let new = String((value["new_revision"]?.stringValue ?? "?").prefix(8))
            let counts = value["counts"]
            var text =
                "\(value["trigger"]?.stringValue ?? "?"): \(old) -> \(new) +\(counts?["added"]?.int64Value ?? 0)"
                + " ~\(counts?["changed"]?.int64Value ?? 0) -\(counts?["removed"]?.int64Value ?? 0)"
            let owners = Set((value["changes"]?.arrayValue ?? []).compactMap { $0["uid"]?.int64Value })
            if !owners.isEmpty { text += " by uid " + owners.sorted().map(String.init).joined(separator: ",") }
            if let problem = value["problems"]?[0]?.stringValue { text += "; " + problem }
            what = text
        case "operation":
            outcome = value["outcome"]?.stringValue ?? "?"
            var text = value["operation"]?.stringValue ?? "?"
            if let arguments = value["arguments"]?.objectValue, !arguments.isEmpty {
                text += " " + JSONWriter.string(.object(arguments))
            }
            what = text + ": " + (value["detail"]?.stringValue ?? "")
        case "refused":
            outcome = "FORBIDDEN"
            let count = value["count"]?.int64Value ?? 1
            what =
                "\(value["operation"]?.stringValue ?? "?") needs \(value["required_role"]?.stringValue ?? "?")"
                + (count > 1 ? " (\(count) times since \(value["first_at"]?.stringValue ?? "?"))" : "")
        default:
            outcome = value["outcome"]?.stringValue ?? "-"
            what = value["detail"]?.stringValue ?? JSONWriter.string(value)
        }
        let subject = value["namespace"]?.stringValue.map { "[\($0)] " } ?? ""
        return [at, kind, outcome, who, subject + what].joined(separator: "  ")
    }
}
