import Glibc
import Synchronization
import SystemdSupport

/// A scratch directory under /tmp, removed with its files when the value goes away.
final class ScratchDirectory {
    let path: String

    init() {
        var template = Array("/tmp/rulesd-sd-test.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { fatalError("mkdtemp failed: errno \(errno)") }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A path inside the directory (kept short: sun_path holds 107 bytes).
    func file(_ name: String) -> String { path + "/" + name }

    deinit {
        // Only flat files are created here, so one level of cleanup is enough.
        if let directory = opendir(path) {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { unlink(path + "/" + name) }
            }
            closedir(directory)
        }
        rmdir(path)
    }
}

/// An abstract socket name no other test (or test run) uses.
func uniqueAbstractName(_ purpose: String) -> String {
    "rulesd-test-\(purpose)-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
}

/// Fills a `sockaddr_un` the way systemd does for its own notify socket, independently of the code
/// under test: a path with its NUL, or a leading NUL and the name with nothing after it.
func withTestAddress<Result>(
    path: String? = nil, abstract: String? = nil,
    _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result
) -> Result {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
    let length: Int
    if let path {
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
        length = offset + bytes.count + 1
    } else {
        let bytes = Array(abstract!.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: [0] + bytes) }
        length = offset + 1 + bytes.count
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
    }
}

/// One datagram as the fake service manager received it.
struct ReceivedDatagram: Equatable {
    /// The payload exactly as sent.
    var payload: String
    /// The sender's pid from SCM_CREDENTIALS, as systemd uses it for NotifyAccess=main.
    var senderPID: pid_t?
}

/// Plays PID 1's side of sd_notify: a datagram socket with SO_PASSCRED at a path or abstract name.
final class FakeNotifySocket {
    let descriptor: Int32
    /// The value to put into NOTIFY_SOCKET.
    let notifySocket: String
    private let path: String?

    init(path: String) {
        self.path = path
        notifySocket = path
        descriptor = Self.bound(path: path, abstract: nil)
    }

    init(abstractName: String) {
        path = nil
        notifySocket = "@" + abstractName
        descriptor = Self.bound(path: nil, abstract: abstractName)
    }

    private static func bound(path: String?, abstract: String?) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        precondition(fd >= 0, "socket: errno \(errno)")
        var on: Int32 = 1
        precondition(setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size)) == 0)
        // A test that fails must not hang the suite.
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        precondition(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) == 0)
        let result = withTestAddress(path: path, abstract: abstract) { bind(fd, $0, $1) }
        precondition(result == 0, "bind: errno \(errno)")
        return fd
    }

    /// The next datagram, or nil after the timeout (or at once with `wait: false`).
    func receive(wait: Bool = true) -> ReceivedDatagram? {
        var data = [UInt8](repeating: 0, count: 8192)
        // cmsghdr (16 bytes on 64-bit Linux) followed by struct ucred (12 bytes, padded to 16).
        var control = [UInt8](repeating: 0, count: 64)
        let received = data.withUnsafeMutableBytes { dataBuffer in
            control.withUnsafeMutableBytes { controlBuffer in
                var vector = iovec(iov_base: dataBuffer.baseAddress, iov_len: dataBuffer.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr()
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    message.msg_control = controlBuffer.baseAddress
                    message.msg_controllen = controlBuffer.count
                    let count = recvmsg(descriptor, &message, wait ? 0 : Int32(MSG_DONTWAIT))
                    return (count, Int(message.msg_controllen))
                }
            }
        }
        guard received.0 >= 0 else { return nil }
        return ReceivedDatagram(
            payload: String(decoding: data.prefix(received.0), as: UTF8.self),
            senderPID: Self.credentialsPID(control: control.prefix(received.1))
        )
    }

    /// Reads the pid out of an SCM_CREDENTIALS control message.
    private static func credentialsPID(control: ArraySlice<UInt8>) -> pid_t? {
        let header = MemoryLayout<cmsghdr>.size
        let bytes = Array(control)
        guard bytes.count >= header + 12 else { return nil }
        let (level, type): (Int32, Int32) = bytes.withUnsafeBytes { raw in
            let cmsg = raw.loadUnaligned(as: cmsghdr.self)
            return (cmsg.cmsg_level, cmsg.cmsg_type)
        }
        // SCM_CREDENTIALS is 2; Swift's Glibc does not import it (it needs _GNU_SOURCE).
        guard level == SOL_SOCKET, type == 2 else { return nil }
        return bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: header, as: Int32.self) }
    }

    /// Every datagram already queued, without waiting.
    func drain() -> [ReceivedDatagram] {
        var all: [ReceivedDatagram] = []
        while let datagram = receive(wait: false) { all.append(datagram) }
        return all
    }

    deinit {
        close(descriptor)
        if let path { unlink(path) }
    }
}

/// An environment backed by a table that records which variables were removed.
final class RecordingEnvironment: Sendable {
    private let state: Mutex<(values: [String: String], removed: [String])>

    init(_ values: [String: String]) {
        state = Mutex((values, []))
    }

    var environment: SystemdEnvironment {
        SystemdEnvironment(
            value: { name in self.state.withLock { $0.values[name] } },
            unset: { name in
                self.state.withLock {
                    $0.values[name] = nil
                    $0.removed.append(name)
                }
            }
        )
    }

    var removed: [String] { state.withLock { $0.removed } }
    var values: [String: String] { state.withLock { $0.values } }
}

/// A listening AF_UNIX stream socket bound to `path`.
func listeningUnixSocket(at path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0)
    precondition(withTestAddress(path: path) { bind(fd, $0, $1) } == 0, "bind: errno \(errno)")
    precondition(listen(fd, 8) == 0)
    return fd
}

/// A socket of any kind, bound to `path` when given, listening only when asked.
func unixSocket(type: __socket_type, boundTo path: String?, listening: Bool = false) -> Int32 {
    let fd = socket(AF_UNIX, Int32(type.rawValue), 0)
    precondition(fd >= 0)
    if let path { precondition(withTestAddress(path: path) { bind(fd, $0, $1) } == 0) }
    if listening { precondition(listen(fd, 8) == 0) }
    return fd
}

/// Duplicates `descriptors` onto consecutive free numbers (without FD_CLOEXEC, as systemd passes
/// them) and closes the originals, the way PID 1 lines up LISTEN_FDS from fd 3.
/// - Returns: The first of the consecutive descriptors.
func placeConsecutively(_ descriptors: [Int32], from minimum: Int32 = 300) -> Int32 {
    var start = minimum
    while true {
        let base = fcntl(descriptors[0], F_DUPFD, start)
        precondition(base >= 0)
        var placed: [Int32] = [base]
        for (offset, fd) in descriptors.enumerated().dropFirst() {
            let target = base + Int32(offset)
            // Only take a number nobody else in this process is using.
            guard fcntl(target, F_GETFD) < 0, dup2(fd, target) == target else { break }
            placed.append(target)
        }
        if placed.count == descriptors.count {
            descriptors.forEach { close($0) }
            return base
        }
        placed.forEach { close($0) }
        start = base + 1
    }
}

/// Whether FD_CLOEXEC is set on a descriptor.
func hasCloseOnExec(_ fd: Int32) -> Bool {
    fcntl(fd, F_GETFD) & FD_CLOEXEC != 0
}
