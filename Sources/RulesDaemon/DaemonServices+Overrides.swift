import NIOCore
import RuleModel
import RulesProtocol
import SystemClock
import SystemdSupport

extension DaemonServices {
    /// Answers `override_set`, `override_list` and `override_clear`. Setting and clearing change what serves, so
    /// they are allowed to whoever may reload, and no one else; listing is allowed to everyone connected.
    func answerOverride(
        _ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?, into buffer: inout ByteBuffer
    ) {
        if let namespace = request.namespace, namespace != "default" {
            failure(
                id: id,
                error: ProtocolError(
                    .invalidRequest, "no namespace '\(namespace)': rulesd serves the 'default' namespace only"),
                into: &buffer)
            return
        }
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
            if refuseReload(peer) != nil {
                failure(id: id, error: forbidden(.overrideSet), into: &buffer)
                return
            }
            do throws(OverrideRefusal) {
                let (entry, replaced, problem) = try overrides.set(
                    flag: request.flagDecoded ?? "", variant: request.variant ?? "", ttl: request.ttl ?? "",
                    reason: request.reason ?? "", by: Self.setter(peer), generation: generation, now: now)
                let result: JSONValue = [
                    "override": entry.json, "replaced": replaced?.json ?? .null,
                    "state_dir_error": problem.map { .string($0) } ?? .null,
                ]
                success(id: id, generation: generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
            } catch {
                failure(id: id, error: error.error, into: &buffer)
            }
        case .overrideClear:
            if refuseReload(peer) != nil {
                failure(id: id, error: forbidden(.overrideClear), into: &buffer)
                return
            }
            let (cleared, problem) = overrides.clear(flag: request.flagDecoded ?? "", by: Self.setter(peer), now: now)
            let result: JSONValue = [
                "flag": .string(request.flagDecoded ?? ""), "cleared": cleared?.json ?? .null,
                "state_dir_error": problem.map { .string($0) } ?? .null,
            ]
            success(id: id, generation: generation, result: Array(JSONWriter.string(result).utf8), into: &buffer)
        default:
            failure(
                id: id,
                error: ProtocolError(.internal, "operation \(request.operation.rawValue) is not an override one"),
                into: &buffer)
        }
    }

    private func forbidden(_ operation: RequestOperation) -> ProtocolError {
        ProtocolError(
            .forbidden, "\(operation.rawValue) is allowed to root, rulesd's user and the socket's group only")
    }

    /// Who is asking, as overrides record it.
    static func setter(_ peer: PeerCredentials?) -> OverrideSetter {
        guard let peer else { return OverrideSetter(uid: nil, user: nil, pid: nil) }
        return OverrideSetter(uid: peer.uid, user: GroupMembership.userName(uid: peer.uid), pid: peer.pid)
    }
}
