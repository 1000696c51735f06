import Glibc
import Logging
import RuleModel
import Synchronization
import SystemClock

/// Writes log lines to stderr, one line per event, as text or JSON.
///
/// Under systemd (stderr connected to the journal) each line starts with the syslog `<N>` priority so that
/// journald records the level, and the timestamp is left to journald. Messages and metadata are escaped
/// and length-limited: text that a rule supplies can never start a new line or impersonate a field.
///
/// As swift-log's `StreamLogHandler` does, each line carries the handler's metadata, then the metadata
/// provider's, then the event's own (each overriding the one before), and an error logged with the event as
/// `error.message` and `error.type`.
public struct DaemonLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case text
        case json
    }

    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: Format
    private let journal: Bool
    private let output: @Sendable ([UInt8]) -> Void

    /// - Parameters:
    ///   - label: the logger's label, printed with each line.
    ///   - level: the lowest level written.
    ///   - format: text or JSON lines.
    ///   - journal: whether to prefix `<N>` priorities and leave timestamps out.
    ///   - metadataProvider: adds metadata to every line, e.g. from task-local values.
    public init(
        label: String, level: Logger.Level, format: Format, journal: Bool,
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider
    ) {
        self.init(
            label: label, level: level, format: format, journal: journal, metadataProvider: metadataProvider,
            output: StandardError.write)
    }

    /// - Parameter output: receives each complete line, newline included.
    init(
        label: String, level: Logger.Level, format: Format, journal: Bool,
        metadataProvider: Logger.MetadataProvider?, output: @escaping @Sendable ([UInt8]) -> Void
    ) {
        self.label = label
        self.logLevel = level
        self.format = format
        self.journal = journal
        self.metadataProvider = metadataProvider
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty {
            merged.merge(provided) { $1 }
        }
        if let explicit = event.metadata {
            merged.merge(explicit) { $1 }
        }
        if let error = event.error {
            merged["error.message"] = "\(error)"
            merged["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        write(level: event.level, message: event.message, metadata: merged)
    }

    private func write(level: Logger.Level, message: Logger.Message, metadata merged: Logger.Metadata) {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        if journal {
            out.append(contentsOf: "<\(Self.priority(level))>".utf8)
        }
        switch format {
        case .text:
            if !journal {
                out.append(contentsOf: Self.timestamp().utf8)
                out.append(UInt8(ascii: " "))
            }
            out.append(contentsOf: level.rawValue.utf8)
            out.append(UInt8(ascii: " "))
            Self.appendTextValue(message.description, to: &out, quoteIfNeeded: false)
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
                out.append(UInt8(ascii: " "))
                Self.appendTextValue(key, to: &out, quoteIfNeeded: true)
                out.append(UInt8(ascii: "="))
                Self.appendTextValue(value.description, to: &out, quoteIfNeeded: true)
            }
        case .json:
            out.append(contentsOf: #"{"ts":""#.utf8)
            out.append(contentsOf: Self.timestamp().utf8)
            out.append(contentsOf: #"","level":""#.utf8)
            out.append(contentsOf: level.rawValue.utf8)
            out.append(contentsOf: #"","logger":"#.utf8)
            JSONWriter.appendEscapedString(label, to: &out)
            out.append(contentsOf: #","msg":"#.utf8)
            JSONWriter.appendEscapedString(Self.clip(message.description), to: &out)
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
                out.append(UInt8(ascii: ","))
                JSONWriter.appendEscapedString(Self.clip(key), to: &out)
                out.append(UInt8(ascii: ":"))
                JSONWriter.appendEscapedString(Self.clip(value.description), to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
        out.append(UInt8(ascii: "\n"))
        output(out)
    }

    /// syslog priority for journald: debug 7 … critical 2.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    static let maxValueBytes = 2048

    static func clip(_ text: String) -> String {
        text.utf8.count > maxValueBytes
            ? String(decoding: Array(text.utf8.prefix(maxValueBytes)), as: UTF8.self) + "..." : text
    }

    /// Escapes control characters (a newline can never end the record early), quotes values with spaces,
    /// quotes or `=` so a value cannot pose as another field.
    static func appendTextValue(_ text: String, to out: inout [UInt8], quoteIfNeeded: Bool) {
        let bytes = Array(clip(text).utf8)
        let needsQuotes =
            quoteIfNeeded && (bytes.isEmpty || bytes.contains { $0 <= 0x20 || $0 == 0x22 || $0 == 0x3D || $0 == 0x5C })
        if needsQuotes { out.append(0x22) }
        let hex = Array("0123456789abcdef".utf8)
        for byte in bytes {
            switch byte {
            case 0x0A: out.append(contentsOf: [0x5C, 0x6E])
            case 0x0D: out.append(contentsOf: [0x5C, 0x72])
            case 0x09: out.append(contentsOf: [0x5C, 0x74])
            case 0x22 where needsQuotes: out.append(contentsOf: [0x5C, 0x22])
            case 0x5C where needsQuotes: out.append(contentsOf: [0x5C, 0x5C])
            case 0..<0x20, 0x7F: out.append(contentsOf: [0x5C, 0x78, hex[Int(byte >> 4)], hex[Int(byte & 15)]])
            default: out.append(byte)
            }
        }
        if needsQuotes { out.append(0x22) }
    }

    static func timestamp() -> String { Timestamp.iso8601(SystemClock.epochSeconds()) }
}

/// Serialises writes to stderr so that lines from different threads never interleave.
enum StandardError {
    private static let lock = Mutex(())

    static func write(_ bytes: [UInt8]) {
        lock.withLock { _ in
            bytes.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(2, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        return
                    }
                    offset += n
                }
            }
        }
    }
}

enum Timestamp {
    /// `2026-11-30T16:15:21.123Z`.
    static func iso8601(_ epoch: Double) -> String {
        var seconds = time_t(epoch.rounded(.down))
        let millis = Int((epoch - Double(seconds)) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }
}
