import NIOCore
import RuleModel
import RulesProtocol
import SystemdSupport

extension DaemonServices {
    /// `status`'s `capture` member: whether capture is on, and what it holds.
    var captureStatus: JSONValue {
        let capture = settings.capture
        guard capture.enabled else { return ["enabled": false] }
        let totals = pool.captureTotals
        return [
            "enabled": true, "entries": .integer(Int64(totals.entries)), "bytes": .integer(Int64(totals.bytes)),
            "size": .integer(Int64(capture.size)), "memory_limit": .integer(Int64(capture.memory)),
            "redacted_fields": .array(capture.redact.map { .string($0) }),
            "redact_mode": .string(capture.redactMode.rawValue),
        ]
    }

    /// Answers `capture`: every worker's rings, copied on its own thread and merged, as
    /// `{"entries":N,"requests":[{"flag":"KEY","context":{...},"at":T} | {"route":{...},"at":T}, ...]}`.
    ///
    /// The export needs the `observe` role, checked by the connection like every role.
    func answerCapture(
        _ request: DecodedRequest, id: [UInt8]?, peer: PeerCredentials?, into buffer: inout ByteBuffer
    ) async {
        guard settings.capture.enabled else {
            failure(
                id: id,
                error: ProtocolError(
                    .invalidRequest, "capture is off; start rulesd with capture = on to record requests"),
                into: &buffer)
            return
        }
        let filter: CaptureFilter =
            request.routesOnly ? .routes : request.flagDecoded.map { .flag($0) } ?? .all
        let merged = CaptureExport.merge(await pool.captureSnapshots(filter), size: settings.capture.size)
        var result: [UInt8] = []
        let count = merged.reduce(0) { $0 + $1.1.count }
        result.append(contentsOf: #"{"entries":"#.utf8)
        JSONWriter.appendInteger(Int64(count), to: &result)
        result.append(contentsOf: #","requests":["#.utf8)
        var first = true
        for (subject, entries) in merged {
            for entry in entries {
                if !first { result.append(UInt8(ascii: ",")) }
                first = false
                CaptureExport.appendLine(subject, entry, to: &result)
            }
        }
        result.append(contentsOf: "]}".utf8)
        buffer.reserveCapacity(result.count + 256)
        success(id: id, generation: store.generation, result: result, into: &buffer)
    }
}
