import Foundation
import RuleModel
import RulesTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A free loopback TCP port: bound to port 0, read back, released. Another process could take it in between;
/// on a test machine that is rare enough, and the daemon then fails loudly rather than answering wrongly.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    try #require(fd >= 0, "socket: errno \(errno)")
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
            bind(fd, generic, length) == 0 && getsockname(fd, generic, &length) == 0
        }
    }
    try #require(bound, "bind: errno \(errno)")
    return Int(UInt16(bigEndian: address.sin_port))
}

/// One HTTP/1.1 exchange over a fresh loopback connection (`Connection: close`, read to the end).
struct HTTPExchange {
    struct Response {
        var status: Int
        /// Header names lowercased.
        var headers: [String: String]
        var body: [UInt8]

        var json: JSONValue? { try? JSONParser().parse(body) }
    }

    static func send(
        port: Int, method: String = "POST", path: String, body: String? = nil, headers: [String: String] = [:]
    ) throws -> Response {
        var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        if let body {
            request += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        } else {
            request += "Content-Length: 0\r\n\r\n"
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        try #require(connected, "connect to 127.0.0.1:\(port): errno \(errno)")
        let bytes = Array(request.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            try #require(n > 0, "send: errno \(errno)")
            sent += n
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            try #require(n >= 0, "recv: errno \(errno)")
            if n == 0 { break }
            received.append(contentsOf: chunk[..<n])
        }
        return try parse(received)
    }

    private static func parse(_ bytes: [UInt8]) throws -> Response {
        let separator = Array("\r\n\r\n".utf8)
        let end = try #require(
            (0...(max(0, bytes.count - 4))).first { bytes[$0..<min($0 + 4, bytes.count)].elementsEqual(separator) },
            "no end of headers in \(String(decoding: bytes, as: UTF8.self))")
        let head = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = head[0].split(separator: " ")
        let status = try #require(statusParts.count >= 2 ? Int(statusParts[1]) : nil)
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(
                in: .whitespaces)
        }
        return Response(status: status, headers: headers, body: Array(bytes[(end + 4)...]))
    }
}

/// A Python virtual environment with pinned packages from a requirements file under Tests/OpenFeature, created
/// once per requirements content in the user's cache directory. When Python or the package index cannot be
/// used, the tests that need it are skipped with the reason.
struct PythonEnvironment: Sendable {
    let python: String

    static let ofrep = prepare(requirements: "requirements-ofrep.txt")

    /// The environment, or why there is none.
    static func prepare(requirements name: String) -> Result<PythonEnvironment, PythonUnavailable> {
        let root = RulesctlProcess.repositoryRoot.appendingPathComponent("Tests/OpenFeature")
        let requirements = root.appendingPathComponent(name).path
        guard let content = FileManager.default.contents(atPath: requirements) else {
            return .failure(PythonUnavailable("cannot read \(requirements)"))
        }
        // FNV-1a of the pinned list names the environment: a changed pin makes a new one.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in content {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        let cache =
            ProcessInfo.processInfo.environment["XDG_CACHE_HOME"]
            ?? (NSHomeDirectory() + "/.cache")
        let directory = "\(cache)/rulesd-tests/venv-\(String(hash, radix: 16))"
        let python = directory + "/bin/python"
        if FileManager.default.isExecutableFile(atPath: python) { return .success(PythonEnvironment(python: python)) }
        let staging = directory + ".staging-\(getpid())"
        try? FileManager.default.removeItem(atPath: staging)
        do {
            try FileManager.default.createDirectory(
                atPath: (directory as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        } catch {
            return .failure(PythonUnavailable("cannot create \(cache)/rulesd-tests: \(error)"))
        }
        let steps: [(String, [String])] = [
            ("python3 -m venv", ["/usr/bin/env", "python3", "-m", "venv", staging]),
            (
                "pip install -r \(name)",
                [
                    staging + "/bin/pip", "install", "--disable-pip-version-check", "--quiet", "--timeout", "30",
                    "--retries", "1", "-r", requirements,
                ]
            ),
        ]
        for (label, command) in steps {
            let (status, output) = run(command)
            if status != 0 {
                try? FileManager.default.removeItem(atPath: staging)
                let tail = output.split(separator: "\n").suffix(3).joined(separator: " | ")
                return .failure(PythonUnavailable("\(label) failed (status \(status)): \(tail)"))
            }
        }
        if rename(staging, directory) != 0 {
            // Another test process won the race: use its environment.
            try? FileManager.default.removeItem(atPath: staging)
        }
        guard FileManager.default.isExecutableFile(atPath: python) else {
            return .failure(PythonUnavailable("no \(python) after installing"))
        }
        return .success(PythonEnvironment(python: python))
    }

    /// Runs a command with output to a file; returns its status and output.
    static func run(_ command: [String], input: String? = nil) -> (Int32, String) {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("py-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: scratch.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let inputFile = FileManager.default.temporaryDirectory.appendingPathComponent("py-in-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: inputFile.path, contents: Data((input ?? "").utf8))
        defer { try? FileManager.default.removeItem(at: inputFile) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        guard let out = try? FileHandle(forWritingTo: scratch), let stdin = try? FileHandle(forReadingFrom: inputFile)
        else { return (-1, "cannot open scratch files") }
        defer {
            try? out.close()
            try? stdin.close()
        }
        process.standardInput = stdin
        process.standardOutput = out
        process.standardError = out
        do { try process.run() } catch { return (-1, "\(error)") }
        process.waitUntilExit()
        let output = (try? String(contentsOf: scratch, encoding: .utf8)) ?? ""
        return (process.terminationStatus, output)
    }

    /// Runs a script from Tests/OpenFeature with `arguments` and `input` on its standard input; returns its
    /// standard output parsed as JSON.
    func runScript(_ name: String, _ arguments: [String], input: String) throws -> JSONValue {
        let script = RulesctlProcess.repositoryRoot.appendingPathComponent("Tests/OpenFeature/\(name)").path
        let (status, output) = Self.run([python, script] + arguments, input: input)
        try #require(status == 0, "\(name) failed: \(output)")
        let lastLine = output.split(separator: "\n").last.map(String.init) ?? ""
        return try JSONParser().parse(lastLine)
    }
}

struct PythonUnavailable: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = "Python OpenFeature environment unavailable: " + description }
}

extension Result where Success == PythonEnvironment, Failure == PythonUnavailable {
    /// Whether the environment is there; when it is not, says why on standard error (the skip's comment is
    /// fixed when the test is declared, the reason is known only once preparing has been tried).
    var isUsable: Bool {
        switch self {
        case .success: return true
        case .failure(let problem):
            FileHandle.standardError.write(Data("\(problem.description)\n".utf8))
            return false
        }
    }
}

/// The skip comment of the tests that need the Python packages.
let pythonSkipComment: Comment =
    "needs python3 with venv and pip access to PyPI for the pinned OpenFeature packages (the reason is printed)"
