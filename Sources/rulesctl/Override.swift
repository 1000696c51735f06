import ArgumentParser
import RuleModel
import RulesProtocol

/// `rulesctl override set|list|clear`: kill switches with an expiry.
struct OverrideCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "override",
        abstract: "Force a flag's variant for every context until a time to live runs out; list and clear overrides.",
        discussion: """
            An override answers with reason OVERRIDE and says who set it, why, and when it expires. rulesd keeps \
            overrides in its state directory, so they survive restarts, but never beyond their time to live \
            (at most override_max_ttl, 24h by default). A reload that removes the flag or its variant drops the \
            override. Setting and clearing are allowed to whoever may reload.
            """,
        subcommands: [Set.self, List.self, Clear.self])

    /// A request object; `--namespace` (a global option) is added when it is sent.
    static func request(_ members: [(String, JSONValue)]) -> JSONValue {
        .object(JSONObject(members))
    }

    /// `alice (uid 1000, pid 4242)`, from an override's `set_by`.
    static func person(_ value: JSONValue?) -> String {
        guard let uid = value?["uid"]?.int64Value else { return "unknown" }
        let pid = value?["pid"]?.int64Value.map { "pid \($0)" }
        guard let user = value?["user"]?.stringValue else { return "uid \(uid)" + (pid.map { " (\($0))" } ?? "") }
        return "\(user) (uid \(uid)" + (pid.map { ", \($0)" } ?? "") + ")"
    }

    /// An answer's `override` member for people: `incident 7; set by alice (uid 1000, pid 42) until T`.
    static func summary(_ value: JSONValue) -> String {
        "\(value["reason"]?.stringValue ?? "?"); set by \(person(value["set_by"])) until "
            + (value["expires_at"]?.stringValue ?? "?")
    }

    /// One `override_*` watch event for people: `AT override expired: FLAG (VARIANT; REASON; set by …)`.
    static func render(_ event: JSONValue, name: String, style: TextStyle) -> String {
        let what = "override " + name.dropFirst("override_".count)
        let flag = event["flag"]?.stringValue ?? "?"
        var text =
            "\(event["at"]?.stringValue ?? "") " + style.yellow(what) + ": \(flag) "
            + "(\(event["variant"]?.stringValue ?? "?"); \(event["reason"]?.stringValue ?? ""); "
            + "set by \(person(event["set_by"])) until \(event["expires_at"]?.stringValue ?? "?"))\n"
        if let why = event["why"]?.stringValue { text += "  \(why)\n" }
        return text
    }

    static func warnStateDirectory(_ result: JSONValue) {
        if let problem = result["state_dir_error"]?.stringValue {
            Console.write(
                "rulesctl: warning: rulesd could not save this in its state directory (\(problem)); "
                    + "it holds until rulesd stops\n", to: .standardError)
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make FLAG answer VARIANT for every context until the time to live runs out.",
            discussion: """
                Replaces any override of the flag. Exit status: 0 set, 1 refused (unknown flag or variant, \
                ttl beyond override_max_ttl, FORBIDDEN), 3 unreachable.
                """)
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The flag's key.") var flag: String
        @Argument(help: "The variant it answers while overridden.") var variant: String
        @Option(help: ArgumentHelp("How long the override lasts: 90s, 15m, 2h.", valueName: "duration"))
        var ttl: String
        @Option(help: ArgumentHelp("Why: kept with the override and shown in every answer.", valueName: "text"))
        var reason: String

        func run() async throws {
            let request = OverrideCommand.request([
                ("op", "override_set"), ("flag", .string(flag)), ("variant", .string(variant)), ("ttl", .string(ttl)),
                ("reason", .string(reason)),
            ])
            guard let result = try await History.result(request, socket: socket.path, json: output.json) else {
                return
            }
            let entry = result["override"]
            Console.write(
                "override set: \(flag) answers \(variant) until \(entry?["expires_at"]?.stringValue ?? "?")"
                    + " (reason: \(reason))\n")
            if let replaced = result["replaced"], replaced != .null {
                Console.write(
                    "  it replaces the override to \(replaced["variant"]?.stringValue ?? "?") set by "
                        + "\(OverrideCommand.person(replaced["set_by"]))\n")
            }
            OverrideCommand.warnStateDirectory(result)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the overrides in force, soonest to expire first.",
            discussion: "Exit status: 0 listed, 1 answered an error, 3 unreachable.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            guard
                let result = try await History.result(
                    OverrideCommand.request([("op", "override_list")]), socket: socket.path, json: output.json)
            else { return }
            let entries = result["overrides"]?.arrayValue ?? []
            if entries.isEmpty {
                Console.write("no overrides\n")
                return
            }
            var rows: [[String]] = [["FLAG", "VARIANT", "EXPIRES", "SET BY", "REASON"]]
            for entry in entries {
                rows.append([
                    entry["flag"]?.stringValue ?? "?", entry["variant"]?.stringValue ?? "?",
                    entry["expires_at"]?.stringValue ?? "?", OverrideCommand.person(entry["set_by"]),
                    entry["reason"]?.stringValue ?? "",
                ])
            }
            let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                var line = zip(row, widths).map { $0 + String(repeating: " ", count: $1 - $0.count) }.joined(
                    separator: "  ")
                while line.last == " " { line.removeLast() }
                Console.write(line + "\n")
            }
        }
    }

    struct Clear: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "End FLAG's override now.",
            discussion: "Exit status: 0 cleared or there was none, 1 refused (FORBIDDEN), 3 unreachable.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The flag's key.") var flag: String

        func run() async throws {
            guard
                let result = try await History.result(
                    OverrideCommand.request([("op", "override_clear"), ("flag", .string(flag))]), socket: socket.path,
                    json: output.json)
            else { return }
            if let cleared = result["cleared"], cleared != .null {
                Console.write(
                    "override cleared: \(flag) no longer forced to \(cleared["variant"]?.stringValue ?? "?") "
                        + "(set by \(OverrideCommand.person(cleared["set_by"])))\n")
            } else {
                Console.write("\(flag) had no override\n")
            }
            OverrideCommand.warnStateDirectory(result)
        }
    }
}
