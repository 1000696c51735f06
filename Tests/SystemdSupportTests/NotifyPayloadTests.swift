import Glibc
import Testing

@testable import SystemdSupport

@Suite("Notify payloads")
struct NotifyPayloadTests {
    @Test("READY without a status is READY=1 alone")
    func readyAlone() {
        #expect(NotifyPayload.ready() == "READY=1")
    }

    @Test("READY with a status adds one STATUS line")
    func readyWithStatus() {
        #expect(NotifyPayload.ready(status: "serving 12 rules") == "READY=1\nSTATUS=serving 12 rules")
    }

    @Test("RELOADING carries MONOTONIC_USEC and then STATUS")
    func reloadingFields() {
        let payload = NotifyPayload.reloading(status: "reloading", monotonicMicroseconds: 690_020_160)
        #expect(payload == "RELOADING=1\nMONOTONIC_USEC=690020160\nSTATUS=reloading")
    }

    @Test("RELOADING without a status still carries MONOTONIC_USEC")
    func reloadingWithoutStatus() {
        #expect(NotifyPayload.reloading(monotonicMicroseconds: 5) == "RELOADING=1\nMONOTONIC_USEC=5")
    }

    @Test("STOPPING with a status")
    func stopping() {
        #expect(NotifyPayload.stopping(status: "stopping") == "STOPPING=1\nSTATUS=stopping")
    }

    @Test("A status update is a single STATUS field")
    func statusOnly() {
        #expect(NotifyPayload.status("idle") == "STATUS=idle")
    }

    @Test("The watchdog ping is WATCHDOG=1")
    func watchdogPing() {
        #expect(NotifyPayload.watchdog == "WATCHDOG=1")
    }

    @Test("A timeout extension is given in microseconds")
    func extendTimeout() {
        #expect(NotifyPayload.extendTimeout(.seconds(90)) == "EXTEND_TIMEOUT_USEC=90000000")
        #expect(NotifyPayload.extendTimeout(.milliseconds(1500)) == "EXTEND_TIMEOUT_USEC=1500000")
    }

    @Test("A negative timeout extension counts as zero")
    func negativeExtension() {
        #expect(NotifyPayload.extendTimeout(.seconds(-3)) == "EXTEND_TIMEOUT_USEC=0")
        #expect(NotifyPayload.extendTimeout(.microseconds(-1)) == "EXTEND_TIMEOUT_USEC=0")
    }

    @Test("ERRNO carries the number and an optional status")
    func errnoPayload() {
        #expect(NotifyPayload.errno(13) == "ERRNO=13")
        #expect(NotifyPayload.errno(2, status: "no rules") == "ERRNO=2\nSTATUS=no rules")
    }

    @Test("Newlines and other control characters in a status become spaces")
    func statusIsOneLine() {
        let line = NotifyPayload.statusLine("bad rule:\n  line 3\r\n\tREADY=1\u{0}\u{85}\u{2028}end")
        #expect(line == "bad rule:   line 3   READY=1   end")
        #expect(NotifyPayload.status("a\nREADY=1") == "STATUS=a READY=1")
    }

    @Test("A short status is left alone, non-ASCII included")
    func shortStatusUnchanged() {
        #expect(NotifyPayload.statusLine("règles chargées ✓") == "règles chargées ✓")
    }

    @Test("A long status is cut to the byte limit at a character boundary with an ellipsis")
    func longStatusIsCut() {
        // Two-byte characters, so a cut at an odd byte would split one.
        let line = NotifyPayload.statusLine(String(repeating: "é", count: 1000))
        #expect(line.utf8.count <= NotifyPayload.maxStatusBytes)
        #expect(line.hasSuffix("…"))
        #expect(line.dropLast().allSatisfy { $0 == "é" })
        #expect(line.utf8.count >= NotifyPayload.maxStatusBytes - 4)
    }

    @Test("A status of exactly the limit is not cut")
    func statusAtLimit() {
        let text = String(repeating: "x", count: NotifyPayload.maxStatusBytes)
        #expect(NotifyPayload.statusLine(text) == text)
    }

    @Test("CLOCK_MONOTONIC is read in microseconds")
    func monotonicNowMatchesClock() {
        var before = timespec()
        clock_gettime(CLOCK_MONOTONIC, &before)
        let now = NotifyPayload.monotonicNow()
        var after = timespec()
        clock_gettime(CLOCK_MONOTONIC, &after)
        #expect(now >= UInt64(before.tv_sec) * 1_000_000 + UInt64(before.tv_nsec) / 1_000)
        #expect(now <= UInt64(after.tv_sec) * 1_000_000 + UInt64(after.tv_nsec) / 1_000)
    }
}

@Suite("NOTIFY_SOCKET addresses")
struct NotifySocketAddressTests {
    @Test("A path value is a filesystem address")
    func pathValue() throws {
        #expect(try NotifySocketAddress(parsing: "/run/systemd/notify") == .path("/run/systemd/notify"))
    }

    @Test("An @ value is an abstract name without the @")
    func abstractValue() throws {
        #expect(try NotifySocketAddress(parsing: "@rulesd-notify") == .abstract("rulesd-notify"))
    }

    @Test("A path address is the path plus one NUL")
    func pathAddressLength() throws {
        let address = try #require(UnixSocketAddress(path: "/run/systemd/notify"))
        #expect(Int(address.length) == UnixSocketAddress.pathOffset + 19 + 1)
    }

    @Test("An abstract address is a NUL plus the name, with no trailing NULs")
    func abstractAddressLength() throws {
        let address = try #require(UnixSocketAddress(abstractName: "rulesd-notify"))
        #expect(Int(address.length) == UnixSocketAddress.pathOffset + 1 + 13)
        let bytes = withUnsafeBytes(of: address.storage.sun_path) { Array($0.prefix(14)) }
        #expect(bytes == [0] + Array("rulesd-notify".utf8))
    }

    @Test("vsock, bare @ and over-long values are rejected")
    func invalidValues() {
        #expect(throws: NotifyError.invalidAddress("vsock:2:1234")) { try NotifySocketAddress(parsing: "vsock:2:1234") }
        #expect(throws: NotifyError.invalidAddress("@")) { try NotifySocketAddress(parsing: "@") }
        let long = "/" + String(repeating: "n", count: 200)
        #expect(throws: NotifyError.invalidAddress(long)) { try NotifySocketAddress(parsing: long) }
    }

    @Test("The address prints as it appears in NOTIFY_SOCKET")
    func description() {
        #expect(NotifySocketAddress.abstract("x").description == "@x")
        #expect(NotifySocketAddress.path("/run/n").description == "/run/n")
    }
}
