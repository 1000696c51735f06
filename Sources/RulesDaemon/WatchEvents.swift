import RuleEngine
import RuleModel
import RulesProtocol
import SystemClock

/// The lines pushed to `watch` connections.
enum WatchEvents {
    /// `{"event":"reloaded","revision",…}`.
    static func reloaded(
        _ generation: ServingGeneration, previous: ServingGeneration?, duration: Double, trigger: ReloadTrigger,
        stateDirectoryError: String? = nil, pin: RulePin? = nil, recovered: Bool = false
    ) -> [UInt8] {
        let ruleSet = generation.ruleSet
        var object: [(String, JSONValue)] = [
            ("event", "reloaded"),
            ("revision", .string(ruleSet.revision.hex)),
            ("generation", .integer(Int64(generation.number))),
            ("trigger", .string(trigger.rawValue)),
            ("duration_ms", .number((duration * 1000).rounded() / 1000)),
            ("files", .integer(Int64(ruleSet.files.count))),
            ("flags", .integer(Int64(ruleSet.flags.count))),
            ("routes", .integer(Int64(ruleSet.routes.count))),
            ("configs", .integer(Int64(ruleSet.configs.count))),
            // A recovery happens now; the generation it keeps serving was loaded earlier.
            ("at", .string(Timestamp.iso8601(recovered ? SystemClock.epochSeconds() : generation.loadedAt))),
        ]
        if let previous { object.append(("previous_revision", .string(previous.ruleSet.revision.hex))) }
        object.append(("state_dir_error", stateDirectoryError.map { .string($0) } ?? .null))
        if let pin { object.append(("pinned", pin.json)) }
        if recovered { object.append(("recovered", true)) }
        return Array(JSONWriter.string(.object(JSONObject(object))).utf8)
    }

    /// `{"event":"reload_failed","error":{…}}`, naming every problem with its file and line.
    static func reloadFailed(
        _ failure: RuleLoadFailure, candidate: RuleRevision, serving: ServingGeneration?, trigger: ReloadTrigger
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.append(contentsOf: #"{"event":"reload_failed","revision":"#.utf8)
        JSONWriter.appendEscapedString(candidate.hex, to: &out)
        out.append(contentsOf: #","serving_revision":"#.utf8)
        if let serving {
            JSONWriter.appendEscapedString(serving.ruleSet.revision.hex, to: &out)
        } else {
            out.append(contentsOf: "null".utf8)
        }
        out.append(contentsOf: #","trigger":"#.utf8)
        JSONWriter.appendEscapedString(trigger.rawValue, to: &out)
        out.append(contentsOf: #","at":"#.utf8)
        JSONWriter.appendEscapedString(Timestamp.iso8601(SystemClock.epochSeconds()), to: &out)
        out.append(contentsOf: #","error":"#.utf8)
        ResponseWriter.appendError(reloadFailure(failure), to: &out)
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// The `RELOAD_FAILED` error of a failed reload, as events and `status` report it: the summary and every
    /// problem.
    static func reloadFailure(_ failure: RuleLoadFailure) -> ProtocolError {
        ProtocolError(.reloadFailed, summary(failure), problems: failure.diagnostics)
    }

    /// `2 problems, first: a.lua:3: unexpected symbol near 'x'`.
    static func summary(_ failure: RuleLoadFailure) -> String {
        let count = failure.diagnostics.count
        guard let first = failure.diagnostics.first else { return "the rules do not load" }
        return count == 1 ? "\(first)" : "\(count) problems, first: \(first)"
    }
}
