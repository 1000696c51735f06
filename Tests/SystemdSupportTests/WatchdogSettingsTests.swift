import Glibc
import SystemdSupport
import Testing

@Suite("Watchdog settings")
struct WatchdogSettingsTests {
    @Test("WATCHDOG_USEC alone enables the watchdog with half the interval as ping period")
    func intervalAndPingPeriod() throws {
        let settings = try #require(WatchdogSettings.fromEnvironment(.fixed(["WATCHDOG_USEC": "30000000"])))
        #expect(settings.intervalMicroseconds == 30_000_000)
        #expect(settings.interval == .seconds(30))
        #expect(settings.pingPeriod == .seconds(15))
    }

    @Test("A WATCHDOG_PID equal to our pid enables the watchdog")
    func matchingPID() {
        let environment = SystemdEnvironment.fixed(["WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "\(getpid())"])
        #expect(WatchdogSettings.fromEnvironment(environment)?.pingPeriod == .seconds(1))
    }

    @Test("A foreign WATCHDOG_PID leaves the watchdog off")
    func foreignPID() {
        let environment = SystemdEnvironment.fixed(["WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"])
        #expect(WatchdogSettings.fromEnvironment(environment, pid: 4343) == nil)
    }

    @Test("An injected pid decides whose watchdog it is")
    func injectedPID() {
        let environment = SystemdEnvironment.fixed(["WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"])
        #expect(WatchdogSettings.fromEnvironment(environment, pid: 4242)?.intervalMicroseconds == 2_000_000)
    }

    @Test("A garbled WATCHDOG_PID leaves the watchdog off")
    func garbledPID() {
        #expect(WatchdogSettings(watchdogUSec: "2000000", watchdogPID: "abc") == nil)
        #expect(WatchdogSettings(watchdogUSec: "2000000", watchdogPID: "0") == nil)
    }

    @Test("No WATCHDOG_USEC leaves the watchdog off")
    func missingInterval() {
        #expect(WatchdogSettings.fromEnvironment(.fixed([:])) == nil)
        #expect(WatchdogSettings.fromEnvironment(.fixed(["WATCHDOG_PID": "\(getpid())"])) == nil)
    }

    @Test("A zero, negative or garbled WATCHDOG_USEC leaves the watchdog off")
    func invalidInterval() {
        for value in ["0", "-5", "30s", "", " 1"] {
            #expect(WatchdogSettings(watchdogUSec: value, watchdogPID: nil) == nil, "WATCHDOG_USEC=\(value)")
        }
    }

    @Test("The variables are removed when asked")
    func unsetsVariables() {
        let recorder = RecordingEnvironment(["WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"])
        _ = WatchdogSettings.fromEnvironment(recorder.environment, pid: 1, unsetEnvironment: true)
        #expect(recorder.values.isEmpty)
    }

    @Test("The variables stay by default")
    func keepsVariablesByDefault() {
        let recorder = RecordingEnvironment(["WATCHDOG_USEC": "1000000"])
        _ = WatchdogSettings.fromEnvironment(recorder.environment)
        #expect(recorder.removed.isEmpty)
    }
}
