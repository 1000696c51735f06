import ArgumentParser
import Glibc
import NIOCore
import NIOPosix
import RuleModel
import RulesProtocol
import Synchronization

/// `--socket`: where rulesd listens; `--namespace`: the namespace every request addresses.
struct SocketOptions: ParsableArguments {
    @Option(
        name: .customLong("socket"),
        help: ArgumentHelp(
            "rulesd's socket (default: $RULESD_SOCKET, else \(SocketOptions.defaultPath)).", valueName: "path"))
    var socket: String?

    @Option(
        name: .customLong("namespace"),
        help: ArgumentHelp(
            "The namespace every request addresses (default: $RULESD_NAMESPACE, else rulesd's default namespace).",
            valueName: "name"))
    var namespace: String?

    static let defaultPath = "/run/rulesd/rulesd.sock"

    /// Makes `--namespace` (else `$RULESD_NAMESPACE`) the namespace of every request this run sends.
    func validate() throws {
        if let namespace { DaemonClient.namespaceOption.withLock { $0 = namespace } }
        let chosen = namespace ?? getenv("RULESD_NAMESPACE").map { String(cString: $0) }
        guard let chosen, !chosen.isEmpty else { return }
        DaemonClient.namespace.withLock { $0 = chosen }
    }

    /// The socket to use: `--socket`, then `$RULESD_SOCKET`, then the default path.
    var path: String {
        if let socket { return socket }
        if let fromEnvironment = getenv("RULESD_SOCKET").map({ String(cString: $0) }), !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        return Self.defaultPath
    }
}

/// Exit status when the daemon cannot be reached.
let unreachableExitStatus: Int32 = 3

/// A connection to rulesd, over SwiftNIO, speaking the line protocol.
enum DaemonClient {
    /// The namespace requests address (`--namespace`, `$RULESD_NAMESPACE`); nil for rulesd's default.
    static let namespace = Mutex<String?>(nil)
    /// `--namespace` as given on the command line (commands that send no request, such as `audit`, read it:
    /// the option is parsed once for the whole command line).
    static let namespaceOption = Mutex<String?>(nil)

    /// `request` with the chosen namespace added, unless it names one already or is daemon-wide (`ping`,
    /// `metrics`).
    static func addressed(_ request: JSONValue) -> JSONValue {
        guard let namespace = namespace.withLock({ $0 }), case .object(var members) = request,
            members["namespace"] == nil, let op = members["op"]?.stringValue, op != "ping", op != "metrics"
        else { return request }
        members["namespace"] = .string(namespace)
        return .object(members)
    }

    /// Sends one request and returns its answer.
    /// - Throws: `ExitCode(3)` after printing why, when the daemon cannot be reached.
    static func request(socket: String, _ request: JSONValue) async throws -> ProtocolAnswer {
        var answer: ProtocolAnswer?
        try await converse(socket: socket, request) { line in
            answer = line
            return false
        }
        guard let answer else {
            Console.write("rulesctl: rulesd at \(socket) closed the connection without answering\n", to: .standardError)
            throw ExitCode(unreachableExitStatus)
        }
        return answer
    }

    /// Sends one request, then hands every line received to `body` until it returns false or the daemon
    /// closes the connection.
    static func converse(socket: String, _ request: JSONValue, _ body: (ProtocolAnswer) throws -> Bool) async throws {
        let channel: NIOAsyncChannel<RequestFrame, ByteBuffer>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: socket) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(LineFrameDecoder(maxLineBytes: 512 << 20)))
                        return try NIOAsyncChannel<RequestFrame, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            Console.write(unreachableMessage(socket: socket, error: error), to: .standardError)
            throw ExitCode(unreachableExitStatus)
        }
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: JSONWriter.string(addressed(request)) + "\n"))
            for try await frame in inbound {
                var lines: [[UInt8]] = []
                switch frame {
                case .lines(let buffer):
                    RequestFrame.forEachLine(buffer) { bytes, _ in
                        lines.append(Array(bytes))
                        return true
                    }
                case .line(let buffer):
                    lines.append(Array(buffer.readableBytesView))
                case .tooLarge:
                    continue
                }
                for line in lines {
                    let answer: ProtocolAnswer
                    do { answer = try ProtocolAnswer(line: line) } catch {
                        Console.write("rulesctl: rulesd sent a line that is not JSON: \(error)\n", to: .standardError)
                        throw ExitCode(unreachableExitStatus)
                    }
                    if try !body(answer) { return }
                }
            }
        }
    }

    /// What to tell a user whose daemon cannot be reached, with what to check.
    static func unreachableMessage(socket: String, error: Error) -> String {
        var reason = "\(error)"
        var hint = "is rulesd running? (systemctl status rulesd; or give the socket with --socket or RULESD_SOCKET)"
        if let io = error as? IOError {
            reason = String(cString: strerror(io.errnoCode))
            switch io.errnoCode {
            case EACCES, EPERM:
                hint = "the socket's permissions refuse you: ask to join its group (usually rulesd), then log in again"
            case ECONNREFUSED:
                hint = "nothing accepts connections there: rulesd stopped or crashed (systemctl status rulesd)"
            default:
                break
            }
        }
        return "rulesctl: cannot reach rulesd at \(socket): \(reason)\nrulesctl: \(hint)\n"
    }
}
