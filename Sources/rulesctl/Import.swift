import ArgumentParser
import Glibc
import RuleEngine

/// `rulesctl import flagd FILE`: prints rule files equivalent to flag definitions of other systems.
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print Lua rules equivalent to another system's flag definitions.",
        subcommands: [Flagd.self]
    )

    /// `rulesctl import flagd FILE`.
    struct Flagd: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the Lua rule file equivalent to a flagd flag file.",
            discussion: """
                Translates a flagd flag file (JSON: flags with state, variants, defaultVariant, JSONLogic \
                targeting and metadata, and shared $evaluators) into one Lua rule file on standard output, the \
                same translation rulesd applies when it loads a *.flagd.json file from its rules directory: the \
                printed rules give the same answers (only the source lines in answers differ). Save the output as \
                a .lua file in place of the JSON file to go on with Lua.

                A file that is not a flagd flag file is reported as FILE:LINE: message, with exit status 1.
                """
        )

        @Argument(help: ArgumentHelp("The flagd flag file (JSON).", valueName: "file"))
        var file: String

        func run() throws {
            guard let bytes = Self.read(file) else {
                Console.write(
                    "rulesctl: cannot read \(file): \(String(cString: strerror(errno)))\n", to: .standardError)
                throw ExitCode.failure
            }
            do {
                Console.write(try FlagdTranslator.translate(bytes, layout: .readable))
            } catch {
                Console.write("\(file):\(error.line): \(error.message)\n", to: .standardError)
                throw ExitCode.failure
            }
        }

        /// The whole file, or nil with `errno` set.
        static func read(_ path: String) -> [UInt8]? {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    return nil
                }
                if n == 0 { return bytes }
                bytes.append(contentsOf: chunk[0..<n])
            }
        }
    }
}
