import RuleModel
import RulesProtocol
import SystemdSupport

extension DaemonServices {
    func roles(for peer: PeerCredentials?, lookingUpGroups: Bool) -> AccessRoles {
        access.roles(for: peer, lookingUpGroups: lookingUpGroups)
    }

    func roles(for peer: PeerCredentials?, namespace: String, lookingUpGroups: Bool) -> AccessRoles {
        let daemonWide = access.roles(for: peer, lookingUpGroups: lookingUpGroups)
        guard let granted = namespaceAccess[namespace] else { return daemonWide }
        return daemonWide.union(granted.roles(for: peer, lookingUpGroups: lookingUpGroups))
    }

    func refused(_ operation: RequestOperation, peer: PeerCredentials?, held: AccessRoles) {
        audit?.refused(operation, peer: peer, held: held)
    }

    /// Records an operation that changed (or tried to change) what serves, with its outcome.
    func recordOperation(
        _ operation: RequestOperation, arguments: JSONValue = .object(JSONObject()), peer: PeerCredentials?,
        outcome: ReloadOutcome, previous: ServingGeneration?
    ) {
        guard let audit else { return }
        let code: String
        let detail: String
        switch outcome {
        case .reloaded(let next, _):
            code = "ok"
            let verb = next.origin == .history ? "rolled back" : "reloaded"
            detail = "\(verb) \(previous?.shortRevision ?? "nothing") -> \(next.shortRevision)"
        case .unchanged(let serving):
            code = "ok"
            detail = "unchanged at \(serving.shortRevision)"
        case .failed(let problem, _, let serving):
            code = ProtocolErrorCode.reloadFailed.rawValue
            detail = WatchEvents.summary(problem) + (serving.map { "; still serving \($0.shortRevision)" } ?? "")
        }
        audit.record(
            .operation(operation.rawValue, arguments: arguments, peer: AuditPeer(peer), outcome: code, detail: detail))
    }

    /// Records an operation answered with an error before it could change anything.
    func recordOperation(
        _ operation: RequestOperation, arguments: JSONValue = .object(JSONObject()), peer: PeerCredentials?,
        error: ProtocolError
    ) {
        audit?.record(
            .operation(
                operation.rawValue, arguments: arguments, peer: AuditPeer(peer), outcome: error.code.rawValue,
                detail: error.message))
    }
}
