import ArgumentParser
import Glibc
import NIOCore
import NIOPosix
import RuleModel
import RulesProtocol

/// `--socket`: where rulesd listens.
struct SocketOptions: ParsableArguments {
    @Option(
        name: .customLong("socket"),
        help: ArgumentHelp(
            "rulesd's socket (default: $RULESD_SOCKET, else \(SocketOptions.defaultPath)).", valueName: "path"))
    var socket: String?

    static let defaultPath = "/run/rulesd/rulesd.sock"

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
            try await outbound.write(ByteBuffer(string: JSONWriter.string(request) + "\n"))
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
