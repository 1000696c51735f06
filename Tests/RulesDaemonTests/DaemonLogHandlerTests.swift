import Logging
import RuleModel
import Synchronization
import Testing

@testable import RulesDaemon

/// Collects the lines a handler writes.
private final class LineSink: Sendable {
    private let bytes = Mutex<[UInt8]>([])

    var lines: [String] {
        bytes.withLock { String(decoding: $0, as: UTF8.self) }.split(separator: "\n").map(String.init)
    }

    /// A logger whose handler writes into this sink, under systemd's conventions (no timestamp) for text.
    func logger(format: DaemonLogHandler.Format = .text, provider: Logger.MetadataProvider? = nil) -> Logger {
        Logger(label: "test") { label in
            DaemonLogHandler(
                label: label, level: .trace, format: format, journal: format == .text, metadataProvider: provider
            ) { line in self.bytes.withLock { $0.append(contentsOf: line) } }
        }
    }
}

private enum RequestContext {
    @TaskLocal static var requestID: String?
}

/// Internal rather than private, so that its reflected name is stable: `RulesDaemonTests.ReloadFailure`.
struct ReloadFailure: Error, CustomStringConvertible {
    var description: String
}

@Suite("The daemon's log handler")
struct DaemonLogHandlerTests {
    @Test("metadata from the provider appears on every line")
    func providerMetadata() {
        let sink = LineSink()
        let provider = Logger.MetadataProvider {
            RequestContext.requestID.map { ["request.id": "\($0)"] } ?? [:]
        }
        let logger = sink.logger(provider: provider)
        RequestContext.$requestID.withValue("r-17") {
            logger.info("answered")
        }
        logger.info("idle")
        #expect(sink.lines == ["<6>info answered request.id=r-17", "<6>info idle"])
    }

    @Test("the event's metadata overrides the provider's, which overrides the logger's")
    func metadataPrecedence() {
        let sink = LineSink()
        var logger = sink.logger(provider: Logger.MetadataProvider { ["a": "provided", "b": "provided"] })
        logger[metadataKey: "a"] = "logger"
        logger[metadataKey: "c"] = "logger"
        logger.info("merged", metadata: ["b": "explicit"])
        #expect(sink.lines == ["<6>info merged a=provided b=explicit c=logger"])
    }

    @Test("a provider set on the handler after creation is used")
    func providerSetLater() {
        let sink = LineSink()
        var logger = sink.logger()
        logger.handler.metadataProvider = Logger.MetadataProvider { ["worker": "3"] }
        logger.notice("started")
        #expect(sink.lines == ["<5>notice started worker=3"])
    }

    @Test("a logged error is recorded as error.message and error.type, in text")
    func errorInText() {
        let sink = LineSink()
        sink.logger().error("reload failed", error: ReloadFailure(description: "a.lua:3: syntax error"))
        #expect(
            sink.lines == [
                #"<3>error reload failed error.message="a.lua:3: syntax error" error.type=RulesDaemonTests.ReloadFailure"#
            ])
    }

    @Test("a logged error is recorded as error.message and error.type, in JSON")
    func errorInJSON() throws {
        let sink = LineSink()
        sink.logger(format: .json).critical("cannot start", error: SettingsError("workers: expected an integer"))
        let line = try #require(sink.lines.first)
        let value = try JSONParser().parse(line)
        #expect(value["msg"]?.stringValue == "cannot start")
        #expect(value["error.message"]?.stringValue == "workers: expected an integer")
        #expect(value["error.type"]?.stringValue == "RulesDaemon.SettingsError")
    }

    @Test("an error's text cannot start a new line")
    func errorTextIsEscaped() {
        let sink = LineSink()
        sink.logger().warning("odd", error: ReloadFailure(description: "x\n<2>critical forged"))
        #expect(sink.lines.count == 1)
        #expect(sink.lines.first?.contains(#"error.message="x\n<2>critical forged""#) == true)
    }
}
