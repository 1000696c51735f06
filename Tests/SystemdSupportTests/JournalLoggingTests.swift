import Glibc
import SystemdSupport
import Testing

@Suite("Journal logging")
struct JournalLoggingTests {
    @Test("Syslog prefixes run from <7> for debug to <2> for critical")
    func prefixes() {
        let prefixes = [SyslogLevel.debug, .info, .notice, .warning, .error, .critical].map { syslogPrefix(for: $0) }
        #expect(prefixes == ["<7>", "<6>", "<5>", "<4>", "<3>", "<2>"])
    }

    @Test("Trace logs at debug priority")
    func traceIsDebug() {
        #expect(SyslogLevel.trace.prefix == "<7>")
    }

    @Test("swift-log level names map onto syslog levels")
    func levelNames() {
        let names = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        #expect(names.compactMap(SyslogLevel.init(rawValue:)) == SyslogLevel.allCases)
    }

    /// A scratch file's descriptor and its "device:inode" string.
    private func scratchFile(_ scratch: ScratchDirectory, _ name: String) -> (Int32, String) {
        let fd = open(scratch.file(name), O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        var info = stat()
        precondition(fd >= 0 && fstat(fd, &info) == 0)
        return (fd, "\(info.st_dev):\(info.st_ino)")
    }

    @Test("A descriptor matching JOURNAL_STREAM is the journal")
    func matchingStream() {
        let scratch = ScratchDirectory()
        let (fd, identity) = scratchFile(scratch, "journal")
        defer { close(fd) }
        #expect(JournalStream.isConnected(fd: fd, environment: .fixed(["JOURNAL_STREAM": identity])))
    }

    @Test("A descriptor that is some other file is not the journal")
    func otherStream() {
        let scratch = ScratchDirectory()
        let (journal, identity) = scratchFile(scratch, "journal")
        let (other, _) = scratchFile(scratch, "other")
        defer { close(journal); close(other) }
        #expect(!JournalStream.isConnected(fd: other, environment: .fixed(["JOURNAL_STREAM": identity])))
    }

    @Test("Without JOURNAL_STREAM nothing is the journal")
    func noVariable() {
        #expect(!JournalStream.isConnected(fd: STDERR_FILENO, environment: .fixed([:])))
    }

    @Test("A garbled JOURNAL_STREAM is ignored")
    func garbledVariable() {
        for value in ["", "12", "a:b", "1:2:3", ":"] {
            #expect(!JournalStream.isConnected(fd: STDERR_FILENO, environment: .fixed(["JOURNAL_STREAM": value])))
        }
    }
}
