import Logging
import NIOCore
import RuleModel
import RulesProtocol
import Testing

@testable import RulesDaemon

/// A worker asked before any rule set is published (a state the daemon never serves in, since it starts
/// answering only after its first load) answers `INTERNAL`, the code docs/PROTOCOL.md gives bugs, instead of
/// crashing or answering from nothing.
@Suite("a worker without a rule set")
struct WorkerWithoutRulesTests {
    func answer(_ worker: Worker, _ line: String) throws -> JSONValue {
        var decoder = RequestDecoder()
        var out = ByteBuffer()
        let bytes = Array(line.utf8)
        try bytes.withUnsafeBytes { raw in
            let request = try decoder.decode(raw).get()
            worker.answer(request, line: raw, into: &out)
        }
        return try JSONParser().parse(Array(out.readableBytesView))
    }

    @Test("flag, route, config and ping answer INTERNAL, echoing the request's id")
    func internalWithoutRules() throws {
        let worker = Worker(
            index: 0, store: GenerationStore(), counters: WorkerCounters(), metrics: WorkerMetrics(),
            logger: Logger(label: "test"))
        for line in [
            #"{"id":7,"op":"flag","flag":"a","context":{}}"#, #"{"id":7,"op":"route","request":{"path":"/"}}"#,
            #"{"id":7,"op":"config","key":"k"}"#, #"{"id":7,"op":"ping"}"#,
        ] {
            let answer = try answer(worker, line)
            #expect(answer["ok"] == .bool(false), "\(line)")
            #expect(answer["id"]?.int64Value == 7, "\(line)")
            #expect(answer["error"]?["code"]?.stringValue == "INTERNAL", "\(line)")
            #expect(answer["error"]?["message"]?.stringValue == "no rule set is loaded", "\(line)")
        }
    }
}
