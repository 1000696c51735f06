import Foundation
import Logging
import RuleModel
import RulesProtocol
import SystemdSupport
import Testing

@testable import RulesDaemon

@Suite("Audit log")
struct AuditLogTests {
    private func scratch() throws -> String {
        let path = NSTemporaryDirectory() + "rulesd-audit-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    private func event(_ n: Int) -> AuditEvent {
        .operation(
            "reload", peer: AuditPeer(PeerCredentials(pid: getpid(), uid: 0, gid: 0)), outcome: "ok",
            detail: "event \(n) " + String(repeating: "x", count: 200))
    }

    @Test("events are whole JSON lines with the time, the kind and the peer, in a directory only its owner reads")
    func writesJSONLines() async throws {
        let directory = try scratch() + "/audit"
        let log = AuditLog(directory: directory, maxBytes: 1 << 20, journal: nil, logger: Logger(label: "test"))
        log.record(event(1))
        log.record(
            .operation(
                "rollback", arguments: ["revision": "6cae"], peer: AuditPeer(nil), outcome: "REVISION_NOT_FOUND",
                detail: "revision 6cae is not in the history"))
        await log.close()
        let written = lines(log.path).map { try? JSONParser().parse(Array($0.utf8)) }
        #expect(written.count == 2)
        let first = try #require(written.first ?? nil)
        #expect(first.objectValue?.keys.prefix(2) == ["at", "event"])
        #expect(first["event"] == "operation")
        #expect(first["operation"] == "reload")
        #expect(first["peer"]?["uid"] == 0)
        #expect(first["peer"]?["user"] == "root")
        // This test process is the peer: its executable is readable.
        #expect(first["peer"]?["exe"]?.stringValue?.isEmpty == false)
        let second = try #require(written.last ?? nil)
        #expect(second["arguments"]?["revision"] == "6cae")
        #expect(second["outcome"] == "REVISION_NOT_FOUND")
        #expect(second["peer"]?["uid"] == .null)
        var info = stat()
        #expect(stat(directory, &info) == 0 && info.st_mode & 0o777 == 0o700)
        #expect(stat(log.path, &info) == 0 && info.st_mode & 0o777 == 0o600)
    }

    @Test("at its size limit the file is rotated, and three older files are kept")
    func rotates() async throws {
        let directory = try scratch() + "/audit"
        let log = AuditLog(directory: directory, maxBytes: 1000, journal: nil, logger: Logger(label: "test"))
        for n in 0..<40 { log.record(event(n)) }
        await log.close()
        let files = [log.path, log.path + ".1", log.path + ".2", log.path + ".3"]
        for file in files {
            let content = lines(file)
            #expect(!content.isEmpty, "\(file)")
            #expect(content.joined(separator: "\n").utf8.count + 1 <= 1000, "\(file)")
            #expect(content.allSatisfy { (try? JSONParser().parse(Array($0.utf8))) != nil }, "\(file)")
        }
        #expect(!FileManager.default.fileExists(atPath: log.path + ".4"))
        // The newest event is last in the current file.
        #expect(lines(log.path).last?.contains("event 39 ") == true)
    }

    @Test("refusals of one user and operation are written once, then counted on one line")
    func refusalsAreRateLimited() async throws {
        let log = AuditLog(
            directory: try scratch() + "/audit", maxBytes: 1 << 20, journal: nil, logger: Logger(label: "test"))
        let peer = PeerCredentials(pid: 1, uid: 3_999_999, gid: 3_999_998)
        for _ in 0..<5 { log.refused(.reload, peer: peer, held: [.query, .observe]) }
        log.refused(.status, peer: peer, held: [.query])
        await log.close()
        let written = lines(log.path).compactMap { try? JSONParser().parse(Array($0.utf8)) }
        let reloads = written.filter { $0["operation"] == "reload" }
        #expect(reloads.map { $0["count"] } == [1, 4])
        #expect(reloads.first?["required_role"] == "operate")
        #expect(reloads.first?["roles"] == ["query", "observe"])
        #expect(reloads.last?["first_at"] == reloads.first?["at"])
        #expect(written.filter { $0["operation"] == "status" }.map { $0["count"] } == [1])
    }

    @Test("under systemd, each event also goes to the journal's native socket with its stable MESSAGE_ID")
    func sendsToJournal() async throws {
        let directory = try scratch()
        let socketPath = directory + "/journal.sock"
        let receiver = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(receiver) }
        let address = try #require(UnixSocketAddress(path: socketPath))
        let bound = address.withSockaddr { bind(receiver, $0, $1) }
        try #require(bound == 0)
        let journal = try #require(JournalSender(path: socketPath))
        let log = AuditLog(
            directory: directory + "/audit", maxBytes: 1 << 20, journal: journal, logger: Logger(label: "t"))
        log.record(event(1))
        await log.close()
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = recv(receiver, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        try #require(count > 0)
        let fields = String(decoding: buffer[0..<count], as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(fields.contains("MESSAGE_ID=\(AuditEvent.Kind.operation.messageID)"))
        #expect(fields.contains("RULESD_AUDIT_EVENT=operation"))
        #expect(fields.contains("RULESD_OPERATION=reload"))
        #expect(fields.contains("RULESD_PEER_UID=0"))
        #expect(fields.contains("SYSLOG_IDENTIFIER=rulesd"))
        #expect(fields.contains { $0.hasPrefix("MESSAGE=reload by uid 0 (root)") })
        #expect(fields.contains { $0.hasPrefix("RULESD_AUDIT={\"at\":") })
    }

    @Test("MESSAGE_IDs are distinct 128-bit ids")
    func messageIDs() {
        let ids = AuditEvent.Kind.allCases.map(\.messageID)
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.count == 32 && $0.allSatisfy(\.isHexDigit) })
    }
}
