import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol
import SystemdSupport

extension DaemonServices {
    /// Answers `history`, `show`, `rollback` and `resume` (the last two need the `operate` role, checked by the
    /// connection like every role).
    func answerHistory(
        _ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?, into buffer: inout ByteBuffer
    ) async {
        let history = reloads.history
        switch request.operation {
        case .history:
            let serving = store.generation?.ruleSet.revision
            let result: JSONValue = [
                "capacity": .integer(Int64(history.capacity)),
                "pinned": reloads.pin?.json ?? .null,
                "revisions": .array(history.entries().map { Self.summary($0, serving: serving) }),
            ]
            success(id: id, generation: store.generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
        case .show:
            let entry: HistoryEntry
            let sources: [RuleSource]
            do throws(HistoryError) {
                entry = try history.entry(named: request.revision ?? "")
                sources = try history.sources(of: entry)
            } catch {
                failure(id: id, error: ProtocolError(.revisionNotFound, error.message), into: &buffer)
                return
            }
            var result = Self.summary(entry, serving: store.generation?.ruleSet.revision)
            if let path = request.path {
                guard let source = sources.first(where: { $0.path == path }) else {
                    failure(
                        id: id,
                        error: ProtocolError(
                            .revisionNotFound, "revision \(entry.revision.short) has no file \(path)"),
                        into: &buffer)
                    return
                }
                result = [
                    "revision": .string(entry.revision.hex), "path": .string(path),
                    "content": .string(String(decoding: source.content, as: UTF8.self)),
                ]
            }
            success(id: id, generation: store.generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
        case .rollback:
            let arguments: JSONValue = ["revision": .string(request.revision ?? "")]
            let entry: HistoryEntry
            do throws(HistoryError) {
                entry = try history.entry(named: request.revision ?? "")
            } catch {
                let refusal = ProtocolError(.revisionNotFound, error.message)
                recordOperation(.rollback, arguments: arguments, peer: peer, error: refusal)
                failure(id: id, error: refusal, into: &buffer)
                return
            }
            let previous = store.generation
            let outcome = await reloads.rollback(to: entry.revision.hex)
            recordOperation(.rollback, arguments: arguments, peer: peer, outcome: outcome, previous: previous)
            answerChange(outcome, previous: previous, id: id, into: &buffer)
        case .resume:
            let previous = store.generation
            let outcome = await reloads.reload(.resume)
            recordOperation(.resume, peer: peer, outcome: outcome, previous: previous)
            answerChange(outcome, previous: previous, id: id, into: &buffer)
        default:
            failure(
                id: id, error: ProtocolError(.internal, "operation \(request.operation.rawValue) is not a history one"),
                into: &buffer)
        }
    }

    private func answerChange(
        _ outcome: ReloadOutcome, previous: ServingGeneration?, id: [UInt8]?, into buffer: inout ByteBuffer
    ) {
        switch outcome {
        case .reloaded(let next, let duration):
            let result: JSONValue = [
                "outcome": next.origin == .history ? "rolled_back" : "reloaded",
                "revision": .string(next.ruleSet.revision.hex), "generation": .integer(Int64(next.number)),
                "previous_revision": previous.map { .string($0.ruleSet.revision.hex) } ?? .null,
                "duration_ms": .number((duration * 1000).rounded() / 1000),
                "pinned": reloads.pin?.json ?? .null,
            ]
            success(id: id, generation: next, result: Array(JSONWriter.string(result).utf8), into: &buffer)
        case .unchanged(let serving):
            let result: JSONValue = [
                "outcome": "unchanged", "revision": .string(serving.ruleSet.revision.hex),
                "generation": .integer(Int64(serving.number)), "pinned": reloads.pin?.json ?? .null,
            ]
            success(id: id, generation: serving, result: Array(JSONWriter.string(result).utf8), into: &buffer)
        case .failed(let problem, _, let serving):
            var message = WatchEvents.summary(problem)
            if let serving { message += "; still serving \(serving.shortRevision)" }
            failure(id: id, error: ProtocolError(.reloadFailed, message, problems: problem.diagnostics), into: &buffer)
        }
    }

    /// One revision of `history` (and the head of `show`'s answer).
    static func summary(_ entry: HistoryEntry, serving: RuleRevision?) -> JSONValue {
        [
            "revision": .string(entry.revision.hex), "generation": .integer(Int64(entry.generation)),
            "at": .string(Timestamp.iso8601(entry.at)), "trigger": .string(entry.trigger),
            "serving": .bool(entry.revision == serving),
            "added": .array(entry.added.map { .string($0) }), "changed": .array(entry.changed.map { .string($0) }),
            "removed": .array(entry.removed.map { .string($0) }),
            "counts": [
                "files": .integer(Int64(entry.files.count)), "flags": .integer(Int64(entry.flags)),
                "routes": .integer(Int64(entry.routes)), "configs": .integer(Int64(entry.configs)),
            ],
            "files": .array(
                entry.files.map {
                    ["path": .string($0.path), "sha256": .string($0.sha256), "bytes": .integer(Int64($0.bytes))]
                }),
        ]
    }
}
