#if canImport(Glibc)
    import Glibc
#endif

/// A cgroup of its own for each rule process, where systemd delegates the service's cgroup subtree
/// (`Delegate=yes`): `memory.max` and `cpu.max` then bound the process as a whole, whatever it maps or runs.
///
/// cgroup v2 allows controllers to be enabled for child groups only while the parent group holds no processes,
/// so rulesd first moves itself into a `daemon` child group of its service's cgroup, enables `memory` and `cpu`
/// below the service's cgroup, and then puts each rule process into `rules-NAME` beside it.
struct RuleProcessCgroup: Sendable {
    /// The service's cgroup directory (e.g. `/sys/fs/cgroup/system.slice/rulesd.service`).
    let directory: String

    /// What a rule process's cgroup is limited to.
    struct Limits: Sendable, Equatable {
        /// `memory.max`, in bytes.
        var memoryMax: Int
        /// `cpu.max`: microseconds of CPU time per period, and the period.
        var cpuQuota: Int
        var cpuPeriod: Int

        /// Twice the rule set's memory limit (the serving Lua state and the next one during a reload) plus
        /// 256 MiB for the process's own runtime and data sets; at most one CPU.
        init(memoryLimit: Int) {
            memoryMax = 2 * memoryLimit + (256 << 20)
            cpuQuota = 100_000
            cpuPeriod = 100_000
        }
    }

    /// Prepares the delegated subtree; the reason cgroup limits are unavailable when they are.
    /// - Parameters:
    ///   - root: where the unified cgroup hierarchy is mounted.
    ///   - membership: the text of `/proc/self/cgroup`.
    ///   - pid: the daemon's process, moved into the `daemon` group.
    static func prepare(root: String, membership: String, pid: pid_t) -> Result<RuleProcessCgroup, Unavailable> {
        guard
            let line = membership.split(separator: "\n").first(where: { $0.hasPrefix("0::") }),
            access(root + "/cgroup.controllers", F_OK) == 0
        else {
            return .failure(Unavailable("the unified cgroup hierarchy (cgroup v2) is not mounted at \(root)"))
        }
        let path = String(line.dropFirst(3))
        guard path != "/", !path.isEmpty else {
            return .failure(Unavailable("rulesd runs in the root cgroup"))
        }
        let directory = root + path
        guard access(directory, W_OK) == 0, access(directory + "/cgroup.procs", W_OK) == 0 else {
            return .failure(
                Unavailable("the cgroup \(path) is not writable by rulesd (systemd delegates it with Delegate=yes)"))
        }
        let cgroup = RuleProcessCgroup(directory: directory)
        if let problem = cgroup.makeGroup("daemon") { return .failure(problem) }
        if let problem = write("\(pid)", to: directory + "/daemon/cgroup.procs") { return .failure(problem) }
        if let problem = write("+memory +cpu", to: directory + "/cgroup.subtree_control") {
            return .failure(problem)
        }
        return .success(cgroup)
    }

    /// Puts `pid` into the group `rules-NAME`, limited by `limits`; what failed, or nil.
    func place(_ pid: pid_t, namespace: String, limits: Limits) -> Unavailable? {
        let group = "rules-" + namespace
        if let problem = makeGroup(group) { return problem }
        let path = directory + "/" + group
        if let problem = Self.write("\(limits.memoryMax)", to: path + "/memory.max") { return problem }
        if let problem = Self.write("\(limits.cpuQuota) \(limits.cpuPeriod)", to: path + "/cpu.max") { return problem }
        return Self.write("\(pid)", to: path + "/cgroup.procs")
    }

    /// The group of the rule process of `namespace`.
    func groupDirectory(namespace: String) -> String { directory + "/rules-" + namespace }

    private func makeGroup(_ name: String) -> Unavailable? {
        if mkdir(directory + "/" + name, 0o755) == 0 || errno == EEXIST { return nil }
        return Unavailable("cannot create the cgroup \(directory)/\(name): \(String(cString: strerror(errno)))")
    }

    private static func write(_ text: String, to path: String) -> Unavailable? {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            return Unavailable("cannot open \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            return Unavailable("cannot write '\(text)' to \(path): \(String(cString: strerror(errno)))")
        }
        return nil
    }

    /// Why cgroup limits cannot be used.
    struct Unavailable: Error, Sendable, Equatable, CustomStringConvertible {
        var reason: String
        init(_ reason: String) { self.reason = reason }
        var description: String { reason }
    }
}
