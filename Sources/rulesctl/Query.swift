import ArgumentParser
import RuleModel
import RulesProtocol

/// The commands that ask a running rulesd. Answers print exactly like `rulesctl eval`'s for the same question.
enum Query {
    /// Prints a daemon's answer like an offline one: its `result`, or its `error` (exit status 1).
    static func emit(_ answer: ProtocolAnswer, json: Bool) throws {
        let printer = AnswerPrinter(json: json)
        if answer.ok, let result = answer.resultJSON {
            printer.printResult(result)
        } else {
            printer.printError(answer.error ?? ProtocolError(.internal, "the daemon's answer has no result"))
            throw ExitCode.failure
        }
    }

    /// The request object for a flag, flags or route question: the object, and `at` only when given.
    static func request(_ op: String, extra: [(String, JSONValue)], object: (name: String, json: [UInt8])?, at: String?)
        throws -> JSONValue
    {
        var members: [(String, JSONValue)] = [("op", .string(op))] + extra
        if let object {
            members.append((object.name, try JSONParser().parse(object.json)))
        }
        if let at, let seconds = TimeArgument.parse(at) {
            members.append(("at", .number(seconds)))
        }
        return .object(JSONObject(members))
    }

    struct Ping: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check that rulesd serves (exit 0), for scripts and liveness probes.",
            discussion: "Exit status: 0 serving, 1 answered an error or serves no rule set, 3 unreachable.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let answer = try await DaemonClient.request(socket: socket.path, ["op": "ping"])
            guard answer.ok else { return try emit(answer, json: output.json) }
            guard answer.revision != nil else { throw Query.servesNoRules(socket: socket.path) }
            if output.json {
                Console.write(JSONWriter.string(answer.value) + "\n")
            } else {
                Console.write(
                    "rulesd serves revision \(answer.revision ?? "?") (generation \(answer.generation ?? 0)) at \(socket.path)\n"
                )
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show what rulesd serves: revision, files, counts, last reload, connections.",
            discussion:
                "Exit status: 0 serving, 1 answered an error or serves no rule set, 3 unreachable; usable as a "
                + "readiness probe.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let answer = try await DaemonClient.request(socket: socket.path, ["op": "status"])
            guard answer.ok, let bytes = answer.resultJSON else { return try emit(answer, json: output.json) }
            if output.json {
                Console.write(String(decoding: bytes, as: UTF8.self) + "\n")
                guard answer.revision != nil || (try? JSONParser().parse(bytes))?["revision"]?.stringValue != nil
                else { throw Query.servesNoRules(socket: socket.path) }
                return
            }
            let status = (try? JSONParser().parse(bytes)) ?? .null
            Console.write(StatusPrinter(style: TextStyle.detect(for: .standardOutput)).render(status))
            guard status["revision"]?.stringValue != nil else { throw Query.servesNoRules(socket: socket.path) }
        }
    }

    /// A daemon that answers but names no revision serves no rules: a health probe must not pass. Says so on
    /// standard error and returns the exit status for "answered, but not healthy".
    static func servesNoRules(socket: String) -> ExitCode {
        Console.write("rulesctl: rulesd at \(socket) answers but serves no rule set\n", to: .standardError)
        return ExitCode.failure
    }

    struct Reload: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make rulesd rescan its rules now and wait for the outcome.",
            discussion: """
                Exit status: 0 when the rules reloaded or were unchanged, 1 when they do not load (the previous \
                rules keep serving; every problem is printed with its file and line), 3 unreachable. Suitable for \
                systemd's ExecReload=, which needs to know whether the reload worked.
                """)
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let answer = try await DaemonClient.request(socket: socket.path, ["op": "reload"])
            if output.json || !answer.ok { return try emit(answer, json: output.json) }
            let result = answer.resultJSON.flatMap { try? JSONParser().parse($0) } ?? .null
            let revision = String((result["revision"]?.stringValue ?? "").prefix(16))
            switch result["outcome"]?.stringValue {
            case "reloaded":
                let duration = result["duration_ms"]?.doubleValue.map { " in \(Int($0.rounded())) ms" } ?? ""
                Console.write(
                    "reloaded: now serving \(revision) (generation \(result["generation"]?.int64Value ?? 0))\(duration)\n"
                )
            default:
                Console.write(
                    "unchanged: still serving \(revision) (generation \(result["generation"]?.int64Value ?? 0))\n")
            }
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print every reload and failed reload as it happens, until interrupted.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let style = TextStyle.detect(for: .standardOutput)
            var acknowledged = false
            try await DaemonClient.converse(socket: socket.path, ["op": "watch"]) { answer in
                if !acknowledged {
                    acknowledged = true
                    if output.json {
                        Console.write(JSONWriter.string(answer.value) + "\n")
                    } else {
                        Console.write(
                            style.dim(
                                "watching rulesd at \(socket.path): serving \(answer.revision ?? "?") (generation \(answer.generation ?? 0))"
                            ) + "\n")
                    }
                    return true
                }
                if output.json {
                    Console.write(JSONWriter.string(answer.value) + "\n")
                } else {
                    Console.write(WatchPrinter(style: style).render(answer.value))
                }
                return true
            }
            Console.write("rulesctl: rulesd closed the connection (stopped or restarted)\n", to: .standardError)
            throw ExitCode(unreachableExitStatus)
        }
    }

    struct Metrics: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print rulesd's metrics in Prometheus text format.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let answer = try await DaemonClient.request(socket: socket.path, ["op": "metrics"])
            guard answer.ok, !output.json else { return try emit(answer, json: output.json) }
            let result = answer.resultJSON.flatMap { try? JSONParser().parse($0) }
            Console.write(result?["text"]?.stringValue ?? "")
        }
    }

    struct FlagQuery: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "flag",
            abstract: "Ask rulesd for one flag's value for a context.",
            discussion: "Prints what `rulesctl eval flag` prints for the same rules; see `rulesctl eval flag --help`.")
        @OptionGroup var socket: SocketOptions
        @Argument(help: ArgumentHelp("The flag's key, such as checkout.new-flow.", valueName: "key"))
        var key: String
        @OptionGroup var context: ContextOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let input = try context.input()
            let request = try Query.request(
                "flag", extra: [("flag", .string(key))], object: ("context", input.json), at: context.at)
            try emit(try await DaemonClient.request(socket: socket.path, request), json: output.json)
        }
    }

    struct FlagsQuery: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "flags", abstract: "Ask rulesd for every flag's value for a context.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var context: ContextOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let input = try context.input()
            let request = try Query.request("flags", extra: [], object: ("context", input.json), at: context.at)
            try emit(try await DaemonClient.request(socket: socket.path, request), json: output.json)
        }
    }

    struct RouteQuery: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "route", abstract: "Ask rulesd which route and target a request gets.")
        @OptionGroup var socket: SocketOptions
        @OptionGroup var request: RequestOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let input = try request.input()
            let body = try Query.request("route", extra: [], object: ("request", input.json), at: request.at)
            try emit(try await DaemonClient.request(socket: socket.path, body), json: output.json)
        }
    }

    struct ConfigQuery: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "config", abstract: "Ask rulesd for a config value, or every value under a prefix.")
        @OptionGroup var socket: SocketOptions
        @Argument(help: ArgumentHelp("The config key, such as http.timeout_ms.", valueName: "key"))
        var key: String?
        @Option(help: ArgumentHelp("Every value whose key starts with this prefix.", valueName: "prefix"))
        var prefix: String?
        @OptionGroup var output: OutputOptions

        func validate() throws {
            switch (key, prefix) {
            case (nil, nil): throw ValidationError("Give a config key, or --prefix <prefix>")
            case (.some, .some): throw ValidationError("Give either a config key or --prefix <prefix>, not both")
            default: break
            }
        }

        func run() async throws {
            let request: JSONValue =
                key.map { ["op": "config", "key": .string($0)] }
                ?? ["op": "config", "prefix": .string(prefix ?? "")]
            try emit(try await DaemonClient.request(socket: socket.path, request), json: output.json)
        }
    }
}

/// Renders `status` for people.
struct StatusPrinter {
    var style: TextStyle

    /// `process, pid 812, running, 1 restart (last: hung: no answer within the deadline)`: a process-isolated
    /// namespace's rule process, in yellow while it is not running.
    static func isolationLine(_ isolation: JSONValue, style: TextStyle) -> String {
        let state = isolation["state"]?.stringValue ?? "?"
        var text = "process"
        if let pid = isolation["pid"]?.int64Value { text += ", pid \(pid)" }
        text += ", " + state
        let restarts = isolation["restarts"]?.int64Value ?? 0
        text += ", \(restarts) restart" + (restarts == 1 ? "" : "s")
        if let reason = isolation["last_exit"]?["reason"]?.stringValue { text += " (last: \(reason))" }
        return state == "running" ? text : style.yellow(text)
    }

    func render(_ status: JSONValue) -> String {
        var lines: [(String, String)] = []
        let revision = status["revision"]?.stringValue ?? "none"
        var serving = "\(String(revision.prefix(16))) (generation \(status["generation"]?.int64Value ?? 0))"
        if status["origin"]?.stringValue == "last_known_good" {
            serving += style.red(" LAST KNOWN GOOD: the rules directory does not load")
        }
        if let namespace = status["namespace"]?.stringValue { lines.append(("namespace", namespace)) }
        lines.append(("serving", serving))
        if let pinned = status["pinned"]?["message"]?.stringValue { lines.append(("pinned", style.yellow(pinned))) }
        if let count = status["overrides"]?.int64Value, count > 0 {
            lines.append(("overrides", style.yellow("\(count) in force (rulesctl override list)")))
        }
        lines.append(("revision", revision))
        lines.append(("loaded at", status["loaded_at"]?.stringValue ?? "-"))
        if let counts = status["counts"] {
            lines.append(
                (
                    "rules",
                    "\(counts["files"]?.int64Value ?? 0) files, \(counts["flags"]?.int64Value ?? 0) flags, "
                        + "\(counts["routes"]?.int64Value ?? 0) routes, \(counts["configs"]?.int64Value ?? 0) configs"
                ))
        }
        lines.append(("rules dir", status["rules_dir"]?.stringValue ?? "-"))
        if let watcher = status["watcher"] {
            var mode = watcher["mode"]?.stringValue ?? "?"
            if let reason = watcher["reason"]?.stringValue { mode += " (\(reason))" }
            lines.append(("watcher", mode))
        }
        if let isolation = status["isolation"], isolation["mode"]?.stringValue == "process" {
            lines.append(("isolation", Self.isolationLine(isolation, style: style)))
        }
        if let last = status["last_reload"], last != .null {
            var text = "\(last["outcome"]?.stringValue ?? "?") at \(last["at"]?.stringValue ?? "?")"
            text +=
                " (\(last["trigger"]?.stringValue ?? "?"), \(last["duration_ms"]?.doubleValue.map { String(Int($0.rounded())) } ?? "?") ms)"
            lines.append(("last reload", last["ok"] == .bool(false) ? style.red(text) : text))
        }
        let uptime = Int(status["uptime_seconds"]?.doubleValue ?? 0)
        lines.append(("uptime", "\(uptime / 86400)d \(uptime % 86400 / 3600)h \(uptime % 3600 / 60)m \(uptime % 60)s"))
        lines.append(
            (
                "connections",
                "\(status["connections"]?.int64Value ?? 0) open, \(status["watchers"]?.int64Value ?? 0) watching"
            ))
        lines.append(
            (
                "requests",
                "\(status["requests_served"]?.int64Value ?? 0) served by \(status["workers"]?.int64Value ?? 0) workers"
            ))
        if let capture = status["capture"], capture["enabled"] == .bool(true) {
            let kib = ((capture["bytes"]?.int64Value ?? 0) + 1023) / 1024
            let limit = (capture["memory_limit"]?.int64Value ?? 0) / 1024
            lines.append(("capture", "\(capture["entries"]?.int64Value ?? 0) requests, \(kib) of \(limit) KiB"))
        }
        lines.append(("version", "\(status["version"]?.stringValue ?? "?") (pid \(status["pid"]?.int64Value ?? 0))"))
        let width = lines.map(\.0.count).max() ?? 0
        var out = lines.map { style.bold($0.0.padding(toLength: width)) + "  " + $0.1 }.joined(separator: "\n") + "\n"
        if let problems = status["last_reload"]?["error"]?["problems"]?.arrayValue, !problems.isEmpty {
            out += style.red("last reload failed:") + "\n"
            for problem in problems { out += "  " + ProblemText.line(problem) + "\n" }
        }
        if let files = status["files"]?.arrayValue, !files.isEmpty {
            out += style.bold("files") + "\n"
            for file in files {
                out +=
                    "  \(file["path"]?.stringValue ?? "?")  \(file["bytes"]?.int64Value ?? 0) bytes  "
                    + style.dim(String((file["sha256"]?.stringValue ?? "").prefix(16))) + "\n"
            }
        }
        if let namespaces = status["namespaces"]?.arrayValue, !namespaces.isEmpty {
            out += style.bold("namespaces") + " (rulesctl --namespace NAME status)\n"
            let width = namespaces.map { ($0["name"]?.stringValue ?? "?").count }.max() ?? 0
            for namespace in namespaces {
                let name = (namespace["name"]?.stringValue ?? "?").padding(toLength: width)
                var text: String
                if let revision = namespace["revision"]?.stringValue {
                    text =
                        "\(String(revision.prefix(16))) (generation \(namespace["generation"]?.int64Value ?? 0)), "
                        + "\(namespace["flags"]?.int64Value ?? 0) flags"
                    if namespace["origin"]?.stringValue == "last_known_good" { text += style.red(" LAST KNOWN GOOD") }
                    if namespace["isolation"]?.stringValue == "process" { text += ", in its own process" }
                } else {
                    text = style.red("not serving")
                }
                if namespace["last_reload_ok"] == .bool(false) {
                    text += style.red("; last reload failed: \(namespace["error"]?["message"]?.stringValue ?? "?")")
                }
                out += "  \(name)  \(text)  " + style.dim(namespace["rules_dir"]?.stringValue ?? "") + "\n"
            }
        }
        return out
    }
}

/// Renders `watch` events for people: one line per event, problems indented below a failed reload.
struct WatchPrinter {
    var style: TextStyle

    func render(_ event: JSONValue) -> String {
        // A daemon serving several namespaces names each event's: shown right after the time.
        let at = (event["at"]?.stringValue ?? "") + (event["namespace"]?.stringValue.map { " [\($0)]" } ?? "")
        switch event["event"]?.stringValue {
        case "reloaded":
            let revision = String((event["revision"]?.stringValue ?? "").prefix(16))
            return "\(at) " + style.green("reloaded")
                + " \(revision) generation \(event["generation"]?.int64Value ?? 0) (\(event["trigger"]?.stringValue ?? "?"), "
                + "\(event["flags"]?.int64Value ?? 0) flags, \(event["routes"]?.int64Value ?? 0) routes, "
                + "\(event["configs"]?.int64Value ?? 0) configs)\n"
                + (event["pinned"]?["message"]?.stringValue.map { "  " + style.yellow($0) + "\n" } ?? "")
                + (event["recovered"] == .bool(true)
                    ? "  back to the serving revision: the failed reload is over\n" : "")
        case "reload_failed":
            let serving = String((event["serving_revision"]?.stringValue ?? "none").prefix(16))
            var text =
                "\(at) " + style.red("reload failed")
                + " (\(event["trigger"]?.stringValue ?? "?")); still serving \(serving)\n"
            for problem in event["error"]?["problems"]?.arrayValue ?? [] {
                text += "  " + ProblemText.line(problem) + "\n"
            }
            return text
        case let name? where name.hasPrefix("override_"):
            return OverrideCommand.render(event, name: name, style: style)
        default:
            return JSONWriter.string(event) + "\n"
        }
    }
}

/// `file:line: message` for a problem object.
enum ProblemText {
    static func line(_ problem: JSONValue) -> String {
        let file = problem["file"]?.stringValue ?? ""
        let line = problem["line"]?.int64Value ?? 0
        let message = AnswerPrinter.printable(problem["message"]?.stringValue ?? "")
        if file.isEmpty { return message }
        return line > 0 ? "\(file):\(line): \(message)" : "\(file): \(message)"
    }
}

extension String {
    fileprivate func padding(toLength width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
