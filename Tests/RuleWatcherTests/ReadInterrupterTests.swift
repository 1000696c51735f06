import CInotifyTools
import Glibc
import Testing

@testable import RuleWatcher

@Suite("Interrupting the library's blocking read")
struct ReadInterrupterTests {
    @Test("an armed interrupter ends the library's blocking read early, with EINTR")
    func interruptsTheRead() throws {
        let holder = InotifyLibrary.newHolderID()
        // Another watcher in this process may hold the library; then there is nothing to test here.
        guard InotifyLibrary.acquire(holder) != nil else { return }
        defer {
            InotifyLibrary.cleanup()
            InotifyLibrary.release(holder, drained: true)
        }
        let started = InotifyLibrary.initialize()
        try #require(started == nil, "inotify is not available: \(String(describing: started))")
        let interrupter = try #require(ReadInterrupter.forCurrentThread())
        // No watch: nothing can arrive, so only the interrupter (or the library's one-second timeout) ends it.
        interrupter.arm(after: .milliseconds(20))
        let event = inotifytools_next_event(1)
        let error = inotifytools_error()
        interrupter.disarm()
        #expect(event == nil)
        #expect(error == EINTR, "the read ran into the library's own timeout instead")
    }
}
