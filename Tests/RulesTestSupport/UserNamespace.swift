import Foundation
import Glibc

/// Tests that need a user namespace of their own (`unshare --user --map-root-user`), to lower the kernel's
/// inotify limits for that namespace alone.
///
/// Root can always create one, so a run as root (CI) runs these tests, and a failure to create the namespace is
/// then the test's failure, never a skip. Other users need unprivileged user namespaces; where the kernel refuses
/// them, the tests are skipped, and the skip says why.
public enum UserNamespace {
    /// The `unshare` program from util-linux.
    public static let unshare = "/usr/bin/unshare"

    /// Whether the tests that need a user namespace run here.
    public static var isUsable: Bool { skipReason == nil }

    /// Why they are skipped here, or `nil` when they run.
    public static let skipReason: String? = {
        if geteuid() == 0 { return nil }
        guard FileManager.default.isExecutableFile(atPath: unshare) else {
            return "needs \(unshare) (util-linux) or a run as root"
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: unshare)
        process.arguments = ["--user", "--map-root-user", "/bin/true"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return "could not run \(unshare)" }
        process.waitUntilExit()
        return process.terminationStatus == 0
            ? nil : "needs unprivileged user namespaces, which this kernel refuses; run as root to run it"
    }()
}
