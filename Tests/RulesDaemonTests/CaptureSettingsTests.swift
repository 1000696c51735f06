import Foundation
import Testing

@testable import RulesDaemon

@Suite("Settings: capture")
struct CaptureSettingsTests {
    private func resolved(
        commandLine: [(DaemonSettings.Key, String)] = [], environment: [String: String] = [:], file: String? = nil
    ) throws -> DaemonSettings {
        var path: String?
        if let file {
            path = NSTemporaryDirectory() + "capture-\(UUID().uuidString).conf"
            try Data(file.utf8).write(to: URL(fileURLWithPath: path!))
        }
        defer { if let path { try? FileManager.default.removeItem(atPath: path) } }
        return try DaemonSettings.resolve(
            commandLine: commandLine, environment: environment, configFile: path,
            defaultConfigFile: "/nonexistent/rulesd.conf")
    }

    @Test("capture is off by default, 1000 requests per flag within 16 MiB, nothing redacted, hash mode")
    func defaults() {
        let capture = DaemonSettings().capture
        #expect(!capture.enabled)
        #expect(capture.size == 1000)
        #expect(capture.memory == 16 << 20)
        #expect(capture.redact.isEmpty)
        #expect(capture.redactMode == .hash)
        #expect(capture.redactKey.isEmpty)
    }

    @Test("the config file, the environment and the command line all set capture")
    func everySource() throws {
        let fromFile = try resolved(
            file: "capture = on\ncapture_size = 50\ncapture_memory = 1MiB\ncapture_redact = email, ip\n"
                + "capture_redact_mode = drop\ncapture_redact_key = \"s3cret\"\n")
        #expect(fromFile.capture.enabled)
        #expect(fromFile.capture.size == 50)
        #expect(fromFile.capture.memory == 1 << 20)
        #expect(fromFile.capture.redact == ["email", "ip"])
        #expect(fromFile.capture.redactMode == .drop)
        #expect(fromFile.capture.redactKey == "s3cret")

        let fromEnvironment = try resolved(environment: ["RULESD_CAPTURE": "on", "RULESD_CAPTURE_REDACT": "user_id"])
        #expect(fromEnvironment.capture.enabled)
        #expect(fromEnvironment.capture.redact == ["user_id"])

        let fromCommandLine = try resolved(
            commandLine: [(.captureSize, "7")], environment: ["RULESD_CAPTURE_SIZE": "9"], file: "capture_size = 8\n")
        #expect(fromCommandLine.capture.size == 7)
        #expect(DaemonSettings.Key.captureRedactMode.option == "--capture-redact-mode")
    }

    @Test(
        "bad values are refused with the setting's name",
        arguments: [
            (DaemonSettings.Key.capture, "yes"), (.captureSize, "0"), (.captureMemory, "1KiB"),
            (.captureRedact, "a,,b"),
            (.captureRedactMode, "blur"),
        ])
    func refused(_ key: DaemonSettings.Key, _ value: String) {
        let error = #expect(throws: SettingsError.self) { try resolved(commandLine: [(key, value)]) }
        #expect(error?.message.hasPrefix("option \(key.option): ") == true)
    }

    @Test("--print-settings writes capture settings that read back the same")
    func printedRoundTrip() throws {
        var changed = DaemonSettings()
        changed.capture.capture = .on
        changed.capture.size = 12
        changed.capture.memory = 2 << 20
        changed.capture.redact = ["email", "ip"]
        changed.capture.redactMode = .drop
        changed.capture.redactKey = "key with spaces"
        let text = changed.configurationText
        #expect(text.contains("capture = on\n"))
        #expect(text.contains("capture_redact = email,ip\n"))
        #expect(try resolved(file: text) == changed)
    }
}
