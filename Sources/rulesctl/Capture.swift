import ArgumentParser
import Glibc
import RuleModel
import RuleReplay
import RulesProtocol

/// `rulesctl capture`: the daemon's captured requests, as JSON Lines.
struct CaptureCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Export the recent distinct requests rulesd captured (capture = on), as JSON Lines.",
        discussion: """
            One request a line: {"flag":"KEY","context":{...},"at":T} or {"route":{...},"at":T}, with fields named \
            in capture_redact already dropped or hashed. rulesd keeps them in memory only; this is the one way \
            they reach a disk. Replay them with 'rulesctl diff --replay FILE OLD NEW'. Exit status: 0 exported, \
            1 refused (capture off, not allowed), 3 unreachable.
            """)

    @OptionGroup var socket: SocketOptions

    @Option(help: ArgumentHelp("Write the lines to this file instead of standard output.", valueName: "file"))
    var out: String?

    @Option(help: ArgumentHelp("Only the requests of this flag.", valueName: "key"))
    var flag: String?

    @Flag(help: "Only the routed requests.")
    var routes = false

    func validate() throws {
        if flag != nil && routes { throw ValidationError("Give --flag or --routes, not both") }
    }

    func run() async throws {
        let lines = try await Self.fetch(socket: socket.path, flag: flag, routes: routes)
        var bytes: [UInt8] = []
        for line in lines {
            bytes.append(contentsOf: line)
            bytes.append(UInt8(ascii: "\n"))
        }
        guard let out, out != "-" else {
            Console.write(String(decoding: bytes, as: UTF8.self))
            return
        }
        try ReplayFiles.write(bytes, to: out)
        Console.write("\(lines.count) requests written to \(out)\n", to: .standardError)
    }

    /// The captured requests as lines (without newlines).
    /// - Throws: `ExitCode.failure` after printing the daemon's error; `ExitCode(3)` when it is unreachable.
    static func fetch(socket: String, flag: String?, routes: Bool) async throws -> [[UInt8]] {
        var request: [(String, JSONValue)] = [("op", "capture")]
        if let flag { request.append(("flag", .string(flag))) }
        if routes { request.append(("route", true)) }
        let answer = try await DaemonClient.request(socket: socket, .object(JSONObject(request)))
        guard answer.ok, let result = answer.value["result"] else {
            try Query.emit(answer, json: false)
            throw ExitCode.failure
        }
        return (result["requests"]?.arrayValue ?? []).map { Array(JSONWriter.string($0).utf8) }
    }
}

/// Reading and writing whole files, with messages that name them.
enum ReplayFiles {
    static func write(_ bytes: [UInt8], to path: String) throws {
        guard let file = fopen(path, "w") else {
            Console.write("rulesctl: cannot write \(path): \(String(cString: strerror(errno)))\n", to: .standardError)
            throw ExitCode.failure
        }
        let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        if fclose(file) != 0 || written != bytes.count {
            Console.write("rulesctl: cannot write \(path)\n", to: .standardError)
            throw ExitCode.failure
        }
    }

    static func read(_ path: String) throws -> [UInt8] {
        guard let file = fopen(path, "r") else {
            Console.write("rulesctl: cannot read \(path): \(String(cString: strerror(errno)))\n", to: .standardError)
            throw ExitCode.failure
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        if ferror(file) != 0 {
            Console.write("rulesctl: cannot read \(path)\n", to: .standardError)
            throw ExitCode.failure
        }
        return bytes
    }
}
