import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Daemon logs")
struct DaemonLogTests {
    @Test("text a rule logs is escaped and length-limited: it cannot start a line or forge a field")
    func ruleTextCannotForgeLines() throws {
        let daemon = try DaemonHarness(rules: [
            "a.lua": """
            flag "chatty" {
              rule = function(ctx)
                log("warn", "evil\\n2026-01-01T00:00:00.000Z error forged rules.revision=0000 " .. string.rep("x", 5000))
                return "on"
              end,
            }
            """
        ])
        try daemon.start()
        #expect(try daemon.request(#"{"op":"flag","flag":"chatty"}"#)["result"]?["variant"] == "on")
        #expect(daemon.waitForLog("evil"))
        let lines = daemon.logs.split(separator: "\n")
        let ruleLines = lines.filter { $0.contains("evil") }
        #expect(ruleLines.count == 1)
        #expect(ruleLines.first?.contains("evil\\n2026") == true)
        #expect(!lines.contains { $0.hasPrefix("2026-01-01T00:00:00.000Z") })
        #expect((ruleLines.first?.count ?? 0) < 1500)
    }

    @Test("JSON log lines are one JSON object each")
    func jsonFormat() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--log-format", "json"])
        try daemon.stop()
        let lines = daemon.logs.split(separator: "\n")
        #expect(!lines.isEmpty)
        for line in lines {
            let value = try JSONParser().parse(String(line))
            #expect(value["level"]?.stringValue != nil)
            #expect(value["msg"]?.stringValue != nil)
        }
        #expect(lines.contains { $0.contains(#""msg":"rules loaded""#) })
    }

    @Test("under journald each line starts with its syslog priority and no timestamp")
    func journalPriorities() throws {
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        // JOURNAL_STREAM names the device and inode of stderr when it is connected to the journal; pointing
        // it at the harness's log file makes rulesd believe exactly that.
        var st = stat()
        stat(daemon.directory + "/rulesd.log", &st)
        try daemon.start(environment: ["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino)"])
        try daemon.stop()
        let lines = daemon.logs.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("<6>info rules loaded") })
        #expect(lines.allSatisfy { $0.hasPrefix("<") })
    }
}

@Suite("The metrics HTTP listener")
struct MetricsListenerTests {
    /// A free loopback port, found by binding port 0.
    private func freePort() -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// A plain HTTP/1.1 GET over a TCP socket; the whole response, or "" when nothing answers.
    private func httpGet(port: Int, path: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard status == 0 else { return "" }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: response, as: UTF8.self)
    }

    @Test("GET /metrics answers the Prometheus text")
    func servesMetrics() throws {
        let (fd, port) = freePort()
        close(fd)
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--metrics-listen", "127.0.0.1:\(port)"])
        _ = try daemon.request(#"{"op":"flag","flag":"x"}"#)
        var text = ""
        _ = eventually {
            text = httpGet(port: port, path: "/metrics")
            return !text.isEmpty
        }
        #expect(text.hasPrefix("HTTP/1.1 200"))
        #expect(httpGet(port: port, path: "/nope").hasPrefix("HTTP/1.1 404"))
        #expect(text.contains("rulesd_requests_total{op=\"flag\",outcome=\"ok\"} 1"))
        #expect(text.contains("rulesd_request_duration_seconds_bucket"))
    }

    @Test("a listener that cannot bind stops rulesd with a message naming the address, and removes the socket")
    func busyPort() throws {
        let (fd, port) = freePort()
        listen(fd, 1)
        defer { close(fd) }
        let daemon = try DaemonHarness(rules: ["a.lua": "flag \"x\" {}\n"])
        try daemon.start(arguments: ["--metrics-listen", "127.0.0.1:\(port)"], waitForSocket: false)
        #expect(try daemon.waitForExit() != 0)
        #expect(daemon.logs.contains("cannot serve metrics over HTTP on 127.0.0.1:\(port)"))
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
    }
}
