import ArgumentParser
import FlagdEvaluationAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import RuleModel
import SwiftProtobuf
import Synchronization
import SystemClock

#if canImport(Glibc)
    import Glibc
#endif

/// One flag through the three front doors of one rulesd, in the same run: the line protocol, flagd's gRPC API
/// (Unix socket) and OFREP (HTTP on loopback). Each is asked the same flag with the same contexts by clients
/// that wait for each answer before the next question (as applications ask), first one client for latency,
/// then several at once for throughput.
struct OpenFeatureBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "openfeature",
        abstract: "Latency and throughput of the gRPC (flagd) and OFREP paths beside the line protocol.")

    @Option(help: "The rulesd binary to start (default: next to this program).")
    var rulesd: String?
    @Option(help: "Questions per client and measurement.")
    var requests = 2000
    @Option(help: "Clients asking at once for the throughput figure.")
    var clients = 8
    @Option(help: "The flag to ask for (a boolean flag of the benchmark rules).")
    var flag = "new-checkout"

    func run() throws {
        let work = NSTemporaryDirectory() + "rulesbench-of-\(getpid())"
        try FileManager.default.createDirectory(atPath: work + "/rules", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        for source in BenchmarkRules.sources {
            try Data(source.content).write(to: URL(fileURLWithPath: work + "/rules/" + source.path))
        }
        let socket = work + "/q.sock"
        let grpcSocket = work + "/f.sock"
        let port = try Self.freePort()
        let process = Process()
        process.executableURL = URL(
            fileURLWithPath: rulesd
                ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                .appendingPathComponent("rulesd").path)
        process.arguments = [
            "--rules", work + "/rules", "--socket", socket, "--state-dir", work + "/state", "--watch", "off",
            "--log-level", "warning", "--flagd-socket", grpcSocket, "--ofrep-listen", "127.0.0.1:\(port)",
        ]
        try process.run()
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let contexts = BenchmarkRules.contexts(count: 1024)
        try Self.waitFor { access(socket, F_OK) == 0 && access(grpcSocket, F_OK) == 0 && Self.canConnect(port: port) }

        print(
            "rulesd \(ProcessInfo.processInfo.activeProcessorCount) cores, flag \(flag), \(requests) questions per client"
        )
        print("path              clients   p50 µs   p99 µs   answers/s")
        let lineRequests = contexts.map {
            Array(#"{"op":"flag","flag":"\#(flag)","context":"#.utf8) + $0 + Array("}\n".utf8)
        }
        let ofrepRequests = contexts.map { context -> [UInt8] in
            let body = Array(#"{"context":"#.utf8) + context + Array("}".utf8)
            let head =
                "POST /ofrep/v1/evaluate/flags/\(flag) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
            return Array(head.utf8) + body
        }
        let grpcContexts = try contexts.map { try Self.protobufStruct(JSONParser().parse($0)) }

        for count in [1, clients] {
            report(
                "line protocol", count, try Self.threads(count) { try Self.lineClient(socket, lineRequests, requests) })
            report(
                "OFREP (HTTP)", count, try Self.threads(count) { try Self.ofrepClient(port, ofrepRequests, requests) })
            report(
                "flagd gRPC (v2)", count,
                try blocking { try await grpc(count, socket: grpcSocket, contexts: grpcContexts) })
        }
    }

    /// Runs async work to its end from this synchronous command (the main thread waits; the work runs on the
    /// concurrency pool).
    private func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let result = Mutex<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            let outcome: Result<T, any Error>
            do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
            result.withLock { $0 = outcome }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }

    /// Latencies (ns) of every question of every client, and the wall time of the whole measurement.
    struct Measurement {
        var latencies: [UInt64]
        var seconds: Double
    }

    func report(_ name: String, _ clients: Int, _ measurement: Measurement) {
        let sorted = measurement.latencies.sorted()
        func percentile(_ p: Double) -> Double {
            Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
        }
        let rate = Double(sorted.count) / measurement.seconds
        print(
            name.padding(toLength: 18, withPad: " ", startingAt: 0)
                + String(format: "%7d %8.1f %8.1f %11.0f", clients, percentile(0.5), percentile(0.99), rate))
    }

    /// Runs `count` blocking clients on threads of their own, all at once.
    static func threads(_ count: Int, _ body: @escaping @Sendable () throws -> [UInt64]) throws -> Measurement {
        let results = Mutex<[Result<[UInt64], any Error>]>([])
        let started = SystemClock.monotonicNanoseconds()
        let group = DispatchGroup()
        for _ in 0..<count {
            group.enter()
            Thread {
                let result = Result { try body() }
                results.withLock { $0.append(result) }
                group.leave()
            }.start()
        }
        group.wait()
        let seconds = Double(SystemClock.monotonicNanoseconds() - started) / 1e9
        return Measurement(latencies: try results.withLock { try $0.flatMap { try $0.get() } }, seconds: seconds)
    }

    private func grpc(_ count: Int, socket: String, contexts: [Google_Protobuf_Struct]) async throws -> Measurement {
        let flag = self.flag
        let requests = self.requests
        return try await withGRPCClient(
            transport: .http2NIOPosix(target: .unixDomainSocket(path: socket), transportSecurity: .plaintext)
        ) { client in
            let service = Flagd_Evaluation_V2_Service.Client(wrapping: client)
            var warm = Flagd_Evaluation_V2_ResolveBooleanRequest()
            warm.flagKey = flag
            _ = try await service.resolveBoolean(warm)
            let started = SystemClock.monotonicNanoseconds()
            let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
                for index in 0..<count {
                    group.addTask {
                        var latencies: [UInt64] = []
                        latencies.reserveCapacity(requests)
                        for question in 0..<requests {
                            var request = Flagd_Evaluation_V2_ResolveBooleanRequest()
                            request.flagKey = flag
                            request.context = contexts[(index * 131 + question) % contexts.count]
                            let before = SystemClock.monotonicNanoseconds()
                            _ = try await service.resolveBoolean(request)
                            latencies.append(SystemClock.monotonicNanoseconds() - before)
                        }
                        return latencies
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            return Measurement(
                latencies: latencies, seconds: Double(SystemClock.monotonicNanoseconds() - started) / 1e9)
        }
    }

    /// One line-protocol connection asking `count` questions, one at a time.
    static func lineClient(_ path: String, _ requests: [[UInt8]], _ count: Int) throws -> [UInt64] {
        let fd = try connectUnix(path)
        defer { close(fd) }
        var latencies: [UInt64] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        for question in 0..<count + 10 {
            let before = SystemClock.monotonicNanoseconds()
            try send(fd, requests[question % requests.count])
            var received = 0
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + received, $0.count - received, 0) }
                guard n > 0 else { throw BenchError("line protocol: connection closed") }
                received += n
                if buffer[received - 1] == UInt8(ascii: "\n") { break }
            }
            if question >= 10 { latencies.append(SystemClock.monotonicNanoseconds() - before) }
        }
        return latencies
    }

    /// One kept-alive HTTP/1.1 connection asking `count` OFREP questions, one at a time.
    static func ofrepClient(_ port: Int, _ requests: [[UInt8]], _ count: Int) throws -> [UInt64] {
        let fd = try connectTCP(port)
        defer { close(fd) }
        var latencies: [UInt64] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        for question in 0..<count + 10 {
            let before = SystemClock.monotonicNanoseconds()
            try send(fd, requests[question % requests.count])
            var received = 0
            var expected: Int?
            while expected.map({ received < $0 }) ?? true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + received, $0.count - received, 0) }
                guard n > 0 else { throw BenchError("OFREP: connection closed") }
                received += n
                if expected == nil { expected = responseLength(buffer[..<received]) }
            }
            if question >= 10 { latencies.append(SystemClock.monotonicNanoseconds() - before) }
        }
        return latencies
    }

    /// The whole response's length once its head is in: head, blank line and Content-Length bytes.
    private static func responseLength(_ bytes: ArraySlice<UInt8>) -> Int? {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let end = text.range(of: "\r\n\r\n") else { return nil }
        let head = text[..<end.lowerBound].lowercased()
        guard let line = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
            let length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces))
        else { return nil }
        return text.utf8.distance(from: text.utf8.startIndex, to: end.upperBound) + length
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw BenchError("send: errno \(errno)") }
            sent += n
        }
    }

    static func connectUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
        }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard status == 0 else { throw BenchError("connect \(path): errno \(errno)") }
        return fd
    }

    private static func connectTCP(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard status == 0 else {
            close(fd)
            throw BenchError("connect 127.0.0.1:\(port): errno \(errno)")
        }
        return fd
    }

    private static func canConnect(port: Int) -> Bool {
        guard let fd = try? connectTCP(port) else { return false }
        close(fd)
        return true
    }

    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw BenchError("bind: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func waitFor(_ condition: () -> Bool) throws {
        for _ in 0..<3000 {
            if condition() { return }
            usleep(10_000)
        }
        throw BenchError("rulesd did not start listening")
    }

    /// A JSON object as protobuf's `Struct`.
    static func protobufStruct(_ value: JSONValue) -> Google_Protobuf_Struct {
        var object = Google_Protobuf_Struct()
        if case .object(let members) = value {
            for (key, member) in members { object.fields[key] = protobufValue(member) }
        }
        return object
    }

    private static func protobufValue(_ value: JSONValue) -> Google_Protobuf_Value {
        switch value {
        case .null: Google_Protobuf_Value(nilLiteral: ())
        case .bool(let flag): Google_Protobuf_Value(boolValue: flag)
        case .integer(let integer): Google_Protobuf_Value(numberValue: Double(integer))
        case .number(let number): Google_Protobuf_Value(numberValue: number)
        case .string(let text): Google_Protobuf_Value(stringValue: text)
        case .array(let values):
            Google_Protobuf_Value(listValue: Google_Protobuf_ListValue(values: values.map(protobufValue)))
        case .object: Google_Protobuf_Value(structValue: protobufStruct(value))
        }
    }
}
