import NIOCore
import RuleModel
import RulesProtocol
import SystemClock
import SystemdSupport

extension DaemonServices {
    /// Answers `override_set`, `override_list` and `override_clear`. The connection has checked the peer's role
    /// already (`operate` to set and clear, `observe` to list); setting and clearing are recorded in the audit log
    /// as operations, with their outcome.
    func answerOverride(
        _ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?, into buffer: inout ByteBuffer
    ) {
        let now = SystemClock.epochSeconds()
        let generation = store.generation
        switch request.operation {
        case .overrideList:
            let result: JSONValue = [
                "overrides": .array(overrides.list(now: now).map(\.json)),
                "max_ttl": .string(formatDuration(overrides.maxTTL)),
            ]
            success(id: id, generation: generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
        case .overrideSet:
            let arguments: JSONValue = [
                "flag": .string(request.flagDecoded ?? ""), "variant": .string(request.variant ?? ""),
                "ttl": .string(request.ttl ?? ""), "reason": .string(request.reason ?? ""),
            ]
            do throws(OverrideRefusal) {
                let (entry, replaced, problem) = try overrides.set(
                    flag: request.flagDecoded ?? "", variant: request.variant ?? "", ttl: request.ttl ?? "",
                    reason: request.reason ?? "", by: Self.setter(peer), generation: generation, now: now)
                let result: JSONValue = [
                    "override": entry.json, "replaced": replaced?.json ?? .null,
                    "state_dir_error": problem.map { .string($0) } ?? .null,
                ]
                success(id: id, generation: generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
                audit?.record(
                    .operation(
                        "override_set", arguments: arguments, peer: AuditPeer(peer), outcome: "ok",
                        detail: "\(entry.flag) forced to \(entry.variant) until \(Timestamp.iso8601(entry.expiresAt))"))
            } catch {
                failure(id: id, error: error.error, into: &buffer)
                recordOperation(.overrideSet, arguments: arguments, peer: peer, error: error.error)
            }
        case .overrideClear:
            let (cleared, problem) = overrides.clear(flag: request.flagDecoded ?? "", by: Self.setter(peer), now: now)
            let result: JSONValue = [
                "flag": .string(request.flagDecoded ?? ""), "cleared": cleared?.json ?? .null,
                "state_dir_error": problem.map { .string($0) } ?? .null,
            ]
            success(id: id, generation: generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
            audit?.record(
                .operation(
                    "override_clear", arguments: ["flag": .string(request.flagDecoded ?? "")], peer: AuditPeer(peer),
                    outcome: "ok", detail: cleared.map { "\($0.flag) no longer forced to \($0.variant)" } ?? "none set")
            )
        default:
            failure(
                id: id,
                error: ProtocolError(.internal, "operation \(request.operation.rawValue) is not an override one"),
                into: &buffer)
        }
    }

    /// Who is asking, as overrides record it.
    static func setter(_ peer: PeerCredentials?) -> OverrideSetter {
        guard let peer else { return OverrideSetter(uid: nil, user: nil, pid: nil) }
        return OverrideSetter(uid: peer.uid, user: GroupMembership.userName(uid: peer.uid), pid: peer.pid)
    }
}
