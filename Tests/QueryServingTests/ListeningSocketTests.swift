import CInotifyTools
import Foundation
import Testing

@testable import QueryServing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("The listening socket file")
struct ListeningSocketTests {
    @Test("the socket appears under its name only by a rename, with its final mode, whatever the umask")
    func socketAppearsWithFinalMode() throws {
        var template = Array("/tmp/rls.XXXXXX".utf8CString)
        let directory = String(cString: template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!)! })
        defer { rmdir(directory) }
        let path = directory + "/rulesd.sock"
        let watch = inotify_init1(Int32(IN_NONBLOCK))
        #expect(watch >= 0)
        defer { close(watch) }
        #expect(inotify_add_watch(watch, directory, UInt32(IN_CREATE | IN_MOVED_TO)) >= 0)

        let previous = umask(0)
        let descriptor = try UnixListeningSocket.bind(path: path, mode: 0o600, group: nil)
        umask(previous)
        defer {
            close(descriptor)
            unlink(path)
        }
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)

        // Read what happened in the directory: the final name must never have been created in place.
        var events: [(mask: UInt32, name: String)] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { read(watch, $0.baseAddress, $0.count) }
        var offset = 0
        while offset < count {
            let (mask, length) = buffer.withUnsafeBytes { raw -> (UInt32, Int) in
                let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                return (event.mask, Int(event.len))
            }
            let nameStart = offset + MemoryLayout<inotify_event>.size
            let nameBytes = buffer[nameStart..<nameStart + length].prefix { $0 != 0 }
            events.append((mask, String(decoding: nameBytes, as: UTF8.self)))
            offset = nameStart + length
        }
        let forFinalName = events.filter { $0.name == "rulesd.sock" }
        #expect(forFinalName.count == 1)
        #expect(forFinalName.allSatisfy { $0.mask & UInt32(IN_MOVED_TO) != 0 })
        // The private directory it was bound in is gone.
        let left = try FileManager.default.contentsOfDirectory(atPath: directory)
        #expect(left == ["rulesd.sock"])
    }
}
