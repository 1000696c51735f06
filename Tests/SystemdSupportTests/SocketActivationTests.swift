import Glibc
import SystemdSupport
import Testing

/// The variables PID 1 would set for descriptors starting at `base`, for our own pid.
private func activation(count: Int, names: String? = nil, pid: pid_t = getpid()) -> [String: String] {
    var table = ["LISTEN_PID": "\(pid)", "LISTEN_FDS": "\(count)"]
    table["LISTEN_FDNAMES"] = names
    return table
}

/// Runs the parser over descriptors placed consecutively, then closes them.
private func parse(
    _ descriptors: [Int32],
    names: String? = nil,
    body: (Int32, Result<[ActivatedSocket], SocketActivationError>) -> Void
) {
    let base = placeConsecutively(descriptors)
    defer { (0..<Int32(descriptors.count)).forEach { close(base + $0) } }
    let environment = SystemdEnvironment.fixed(activation(count: descriptors.count, names: names))
    let result = Result { () throws(SocketActivationError) in
        try SocketActivation.listeningSockets(environment: environment, fdBase: base)
    }
    body(base, result)
}

@Suite("Socket activation")
struct SocketActivationTests {
    @Test("Passed listening Unix sockets come back in order with their names")
    func namedSockets() {
        let scratch = ScratchDirectory()
        let sockets = [listeningUnixSocket(at: scratch.file("a")), listeningUnixSocket(at: scratch.file("q"))]
        parse(sockets, names: "admin:query") { base, result in
            let expected = [ActivatedSocket(fd: base, name: "admin"), ActivatedSocket(fd: base + 1, name: "query")]
            #expect(result == .success(expected))
        }
    }

    @Test("Passed descriptors get FD_CLOEXEC")
    func setsCloseOnExec() throws {
        let scratch = ScratchDirectory()
        let base = placeConsecutively([listeningUnixSocket(at: scratch.file("q"))])
        defer { close(base) }
        #expect(!hasCloseOnExec(base))
        _ = try SocketActivation.listeningSockets(environment: .fixed(activation(count: 1)), fdBase: base)
        #expect(hasCloseOnExec(base))
    }

    @Test("Without LISTEN_FDNAMES the sockets have no names")
    func unnamedSockets() {
        let scratch = ScratchDirectory()
        parse([listeningUnixSocket(at: scratch.file("q"))]) { base, result in
            #expect(result == .success([ActivatedSocket(fd: base, name: nil)]))
        }
    }

    @Test("LISTEN_PID of another process means not socket-activated")
    func foreignPID() throws {
        let environment = SystemdEnvironment.fixed(activation(count: 1, pid: getpid() + 1))
        #expect(try SocketActivation.listeningSockets(environment: environment).isEmpty)
    }

    @Test("An injected pid decides whose sockets they are")
    func injectedPID() throws {
        let environment = SystemdEnvironment.fixed(activation(count: 1, pid: 4242))
        #expect(try SocketActivation.listeningSockets(environment: environment, pid: 4243).isEmpty)
    }

    @Test("No LISTEN_PID or no LISTEN_FDS means not socket-activated")
    func missingVariables() throws {
        #expect(try SocketActivation.listeningSockets(environment: .fixed([:])).isEmpty)
        #expect(try SocketActivation.listeningSockets(environment: .fixed(["LISTEN_PID": "\(getpid())"])).isEmpty)
        #expect(try SocketActivation.listeningSockets(environment: .fixed(["LISTEN_FDS": "1"])).isEmpty)
    }

    @Test("LISTEN_FDS=0 means no sockets")
    func zeroDescriptors() throws {
        #expect(try SocketActivation.listeningSockets(environment: .fixed(activation(count: 0))).isEmpty)
    }

    @Test("The three variables are removed, even when they were meant for another process")
    func unsetsVariables() throws {
        let recorder = RecordingEnvironment(
            ["LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "query", "OTHER": "kept"]
        )
        _ = try SocketActivation.listeningSockets(environment: recorder.environment, pid: 2)
        #expect(Set(recorder.removed) == ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"])
        #expect(recorder.values == ["OTHER": "kept"])
    }

    @Test("The variables can be left in place")
    func keepsVariablesWhenAsked() throws {
        let recorder = RecordingEnvironment(["LISTEN_PID": "1", "LISTEN_FDS": "1"])
        _ = try SocketActivation.listeningSockets(environment: recorder.environment, pid: 2, unsetEnvironment: false)
        #expect(recorder.removed.isEmpty)
    }

    @Test("A Unix datagram socket is rejected as the wrong type")
    func unixDatagramRejected() {
        let scratch = ScratchDirectory()
        parse([unixSocket(type: SOCK_DGRAM, boundTo: scratch.file("d"))], names: "query") { base, result in
            let dgram = Int32(SOCK_DGRAM.rawValue)
            #expect(throws: SocketActivationError.wrongType(fd: base, name: "query", type: dgram)) { try result.get() }
        }
    }

    @Test("A UDP socket is rejected with a message that names the problem")
    func udpRejected() {
        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        parse([udp]) { base, result in
            guard case .failure(let error) = result else {
                Issue.record("a UDP socket was accepted")
                return
            }
            #expect(error == .wrongType(fd: base, name: nil, type: Int32(SOCK_DGRAM.rawValue)))
            #expect(error.description.contains("datagram"))
            #expect(error.description.contains("ListenStream="))
        }
    }

    @Test("A Unix stream socket that is not listening is rejected")
    func notListeningRejected() {
        let scratch = ScratchDirectory()
        parse([unixSocket(type: SOCK_STREAM, boundTo: scratch.file("s"))], names: "query") { base, result in
            #expect(throws: SocketActivationError.notListening(fd: base, name: "query")) { try result.get() }
        }
    }

    @Test("A listening TCP socket is rejected for its address family")
    func tcpRejected() throws {
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = in_addr_t(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(tcp, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        try #require(bound == 0 && listen(tcp, 1) == 0)
        parse([tcp]) { base, result in
            let expected = SocketActivationError.wrongFamily(fd: base, name: nil, family: AF_INET)
            #expect(throws: expected) { try result.get() }
        }
    }

    @Test("A regular file is rejected as not a socket")
    func fileRejected() {
        let scratch = ScratchDirectory()
        let file = open(scratch.file("plain"), O_CREAT | O_RDWR, 0o600)
        parse([file]) { base, result in
            #expect(throws: SocketActivationError.notASocket(fd: base, name: nil)) { try result.get() }
        }
    }

    @Test("A descriptor that is not open is rejected")
    func closedDescriptorRejected() throws {
        // A number far above anything this process opens.
        let environment = SystemdEnvironment.fixed(activation(count: 1))
        #expect(throws: SocketActivationError.badDescriptor(fd: 4000, name: nil)) {
            try SocketActivation.listeningSockets(environment: environment, fdBase: 4000)
        }
    }

    @Test("LISTEN_FDNAMES with the wrong number of names is an error")
    func nameCountMismatch() {
        let environment = SystemdEnvironment.fixed(activation(count: 2, names: "query"))
        #expect(throws: SocketActivationError.nameCountMismatch(descriptors: 2, names: ["query"])) {
            try SocketActivation.listeningSockets(environment: environment)
        }
    }

    @Test("A garbled LISTEN_FDS or LISTEN_PID is an error")
    func garbledNumbers() {
        let pid = "\(getpid())"
        #expect(throws: SocketActivationError.invalidVariable(name: "LISTEN_FDS", value: "one")) {
            try SocketActivation.listeningSockets(environment: .fixed(["LISTEN_PID": pid, "LISTEN_FDS": "one"]))
        }
        #expect(throws: SocketActivationError.invalidVariable(name: "LISTEN_PID", value: "me")) {
            try SocketActivation.listeningSockets(environment: .fixed(["LISTEN_PID": "me", "LISTEN_FDS": "1"]))
        }
    }

    @Test("The socket named query is picked among several")
    func picksQuery() throws {
        let sockets = [ActivatedSocket(fd: 3, name: "metrics"), ActivatedSocket(fd: 4, name: "query")]
        #expect(try SocketActivation.querySocket(in: sockets) == ActivatedSocket(fd: 4, name: "query"))
    }

    @Test("A single socket is picked whatever its name")
    func picksOnlySocket() throws {
        let sockets = [ActivatedSocket(fd: 3, name: "rulesd.socket")]
        #expect(try SocketActivation.querySocket(in: sockets) == sockets[0])
    }

    @Test("Several sockets without a query socket are an error")
    func ambiguousSockets() {
        let sockets = [ActivatedSocket(fd: 3, name: "a"), ActivatedSocket(fd: 4, name: nil)]
        #expect(throws: SocketActivationError.noSocketNamed("query", available: ["a", nil])) {
            try SocketActivation.querySocket(in: sockets)
        }
    }

    @Test("No sockets means no query socket")
    func noQuerySocket() throws {
        #expect(try SocketActivation.querySocket(in: []) == nil)
        #expect(try SocketActivation.querySocket(environment: .fixed([:])) == nil)
    }

    @Test("The one-call form takes over and picks the query socket")
    func oneCallQuerySocket() throws {
        let scratch = ScratchDirectory()
        let base = placeConsecutively(
            [listeningUnixSocket(at: scratch.file("m")), listeningUnixSocket(at: scratch.file("q"))]
        )
        defer { close(base); close(base + 1) }
        let environment = SystemdEnvironment.fixed(activation(count: 2, names: "metrics:query"))
        let chosen = try SocketActivation.querySocket(environment: environment, fdBase: base)
        #expect(chosen == ActivatedSocket(fd: base + 1, name: "query"))
    }

    @Test("The bound path of a listening socket is reported")
    func boundPath() {
        let scratch = ScratchDirectory()
        let path = scratch.file("rulesd.sock")
        let fd = listeningUnixSocket(at: path)
        defer { close(fd) }
        #expect(SocketActivation.boundPath(of: fd) == path)
    }

    @Test("An abstract socket is reported as @name, an unbound one as nil")
    func boundAbstractAndUnbound() {
        let name = uniqueAbstractName("bound")
        let abstract = unixSocket(type: SOCK_STREAM, boundTo: nil)
        let unbound = unixSocket(type: SOCK_STREAM, boundTo: nil)
        defer { close(abstract); close(unbound) }
        _ = withTestAddress(abstract: name) { bind(abstract, $0, $1) }
        #expect(SocketActivation.boundPath(of: abstract) == "@" + name)
        #expect(SocketActivation.boundPath(of: unbound) == nil)
    }

    @Test("The group of the socket node is reported")
    func socketFileGroup() throws {
        let scratch = ScratchDirectory()
        let path = scratch.file("rulesd.sock")
        let fd = listeningUnixSocket(at: path)
        defer { close(fd) }
        var info = stat()
        try #require(stat(path, &info) == 0)
        #expect(SocketActivation.socketFileGroup(of: fd) == info.st_gid)
    }

    @Test("A socket of our own passes the check once it listens, and not before")
    func checkAcceptsListener() throws {
        let scratch = ScratchDirectory()
        let fd = unixSocket(type: SOCK_STREAM, boundTo: scratch.file("own"))
        defer { close(fd) }
        #expect(throws: SocketActivationError.notListening(fd: fd, name: nil)) {
            try SocketActivation.checkListeningUnixStream(fd: fd)
        }
        try #require(listen(fd, 8) == 0)
        #expect(throws: Never.self) { try SocketActivation.checkListeningUnixStream(fd: fd) }
    }
}
