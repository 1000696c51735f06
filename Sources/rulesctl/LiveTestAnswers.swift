import ArgumentParser
import Glibc
import NIOCore
import RuleEngine
import RuleModel
import RulesProtocol

/// Rule tests' answers from the serving daemon (`rulesctl test --live`): each question is one request over one
/// connection kept open for the whole run, asked and answered in turn.
final class LiveTestAnswers: RuleTestRemoteAnswers {
    private let socket: String
    private let descriptor: Int32
    private var pending: [UInt8] = []

    /// Connects to rulesd.
    /// - Throws: `ExitCode(3)` after printing why, when the daemon cannot be reached.
    init(socket: String) throws {
        self.socket = socket
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socket.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.count < capacity else {
            Console.write("rulesctl: the socket path \(socket) is too long\n", to: .standardError)
            throw ExitCode(unreachableExitStatus)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.enumerated() { raw[index] = byte }
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            Console.write("rulesctl: cannot create a socket: \(String(cString: strerror(errno)))\n", to: .standardError)
            throw ExitCode(unreachableExitStatus)
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let error = IOError(errnoCode: errno, reason: "connect")
            close(fd)
            Console.write(DaemonClient.unreachableMessage(socket: socket, error: error), to: .standardError)
            throw ExitCode(unreachableExitStatus)
        }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Sends one request and reads its answer; a connection that fails midway ends rulesctl with status 3.
    func ask(_ request: JSONValue) -> ProtocolAnswer {
        let line = answerLine(to: Array(JSONWriter.string(request).utf8))
        guard let line, let answer = try? ProtocolAnswer(line: line) else {
            lost("rulesd sent a line that is not JSON")
        }
        return answer
    }

    /// Sends one request line (a function test's question) and returns the answer line.
    func answerLine(to request: [UInt8]) -> [UInt8]? {
        let line = request + [UInt8(ascii: "\n")]
        var sent = 0
        while sent < line.count {
            let written = line[sent...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { lost("cannot send: \(String(cString: strerror(errno)))") }
            sent += written
        }
        while true {
            if let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let answer = Array(pending[..<end])
                pending.removeSubrange(...end)
                return answer
            }
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { lost("rulesd closed the connection") }
            pending.append(contentsOf: chunk[..<count])
        }
    }

    private func lost(_ why: String) -> Never {
        Console.write("rulesctl: lost rulesd at \(socket): \(why)\n", to: .standardError)
        exit(unreachableExitStatus)
    }

    private func result(_ answer: ProtocolAnswer) -> JSONObject {
        guard let bytes = answer.resultJSON, let value = try? JSONParser().parse(bytes), let object = value.objectValue
        else { return JSONObject() }
        return object
    }

    private static func request(_ members: [(String, JSONValue)], at: Double?) -> JSONValue {
        var members = members
        if let at { members.append(("at", .number(at))) }
        return .object(JSONObject(members))
    }

    private func problem(_ error: ProtocolError?) -> RuleTestQueryProblem {
        guard let error else { return RuleTestQueryProblem("rulesd answered an error without saying which") }
        return RuleTestQueryProblem("rulesd answered \(error.code.rawValue): \(error.message)")
    }

    func flag(_ key: String, context: JSONObject, at: Double?) -> Result<RuleTestFlagAnswer, RuleTestQueryProblem> {
        let answer = ask(Self.request([("op", "flag"), ("flag", .string(key)), ("context", .object(context))], at: at))
        guard answer.ok else {
            if answer.error?.code == .flagNotFound {
                return .failure(RuleTestQueryProblem("no flag '\(key)' in the rule set"))
            }
            return .failure(problem(answer.error))
        }
        let fields = result(answer)
        var failure: String?
        if let code = fields["error_code"]?.stringValue {
            failure = "\(code): \(fields["error_message"]?.stringValue ?? "")"
        }
        return .success(
            RuleTestFlagAnswer(
                variant: fields["variant"]?.stringValue ?? "", value: fields["value"] ?? .null,
                reason: fields["reason"]?.stringValue ?? "", failure: failure))
    }

    /// The daemon does not list a flag's variants; a share test then names the variants it saw.
    func variants(ofFlag key: String) -> [String]? { nil }

    func route(_ request: JSONObject, at: Double?) -> Result<RuleTestRouteAnswer, RuleTestQueryProblem> {
        let answer = ask(Self.request([("op", "route"), ("request", .object(request))], at: at))
        if answer.ok {
            let fields = result(answer)
            return .success(
                .matched(
                    route: fields["route"]?.stringValue ?? "", target: fields["target"]?.stringValue ?? ""))
        }
        switch answer.error?.code {
        case .noRoute?: return .success(.noRoute)
        case .ruleError?:
            let error = answer.error!
            let code = error.details["rule_error_code"].map { "\($0): " } ?? ""
            return .success(.failed(route: error.details["route"], message: code + error.message))
        default: return .failure(problem(answer.error))
        }
    }

    func config(_ key: String) -> Result<JSONValue, RuleTestQueryProblem> {
        let answer = ask(.object(JSONObject([("op", "config"), ("key", .string(key))])))
        guard answer.ok else {
            if answer.error?.code == .configNotFound {
                return .failure(RuleTestQueryProblem("no config '\(key)' in the rule set"))
            }
            return .failure(problem(answer.error))
        }
        return .success(result(answer)["value"] ?? .null)
    }

    /// The rules directory the daemon serves (`status`), for `rulesctl test --live` without a directory.
    func rulesDirectory() -> String? {
        let answer = ask(.object(JSONObject([("op", "status")])))
        return answer.ok ? result(answer)["rules_dir"]?.stringValue : nil
    }
}
