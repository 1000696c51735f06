import SystemdSupport
import Testing

@Suite("Journal native protocol")
struct JournalSenderTests {
    @Test("a field is NAME=value and a line; a value with a newline is NAME, its 64-bit length, the bytes")
    func encodesFields() {
        let datagram = JournalSender.encode([("MESSAGE", "one line"), ("DETAIL", "two\nlines")])
        var expected = Array("MESSAGE=one line\nDETAIL\n".utf8)
        expected += [9, 0, 0, 0, 0, 0, 0, 0]
        expected += Array("two\nlines\n".utf8)
        #expect(datagram == expected)
    }

    @Test("sending where no journal listens reports the error instead of failing")
    func noJournal() throws {
        let sender = try #require(JournalSender(path: "/nonexistent/journal.sock"))
        #expect(sender.send([("MESSAGE", "x")]) != 0)
    }
}
