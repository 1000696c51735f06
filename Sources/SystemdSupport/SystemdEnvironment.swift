import Glibc

/// Where the systemd helpers read their variables from and how they remove them.
///
/// The daemon uses ``process``. Tests pass a fixed table (and, if they want to see what was
/// removed, their own `unset` closure), so they never have to touch the real process environment,
/// which other tests and child processes share.
public struct SystemdEnvironment: Sendable {
    /// Returns the value of a variable, or nil when it is not set.
    public let value: @Sendable (String) -> String?
    /// Removes a variable. Does nothing for variables that are not set.
    public let unset: @Sendable (String) -> Void

    /// Creates an environment from two closures.
    /// - Parameters:
    ///   - value: Returns the value of a variable, or nil when it is not set.
    ///   - unset: Removes a variable.
    public init(value: @escaping @Sendable (String) -> String?, unset: @escaping @Sendable (String) -> Void) {
        self.value = value
        self.unset = unset
    }

    /// The real process environment (`getenv`/`unsetenv`).
    ///
    /// `unsetenv` is not safe against concurrent `getenv` in other threads, so the helpers that
    /// remove variables are meant to run once, early at start-up, before any threads are started.
    public static let process = SystemdEnvironment(
        value: { name in getenv(name).map { String(cString: $0) } },
        unset: { name in _ = unsetenv(name) }
    )

    /// A fixed table; removing a variable does nothing.
    /// - Parameters:
    ///   - table: The variables and their values.
    /// - Returns: An environment that reads from `table`.
    public static func fixed(_ table: [String: String]) -> SystemdEnvironment {
        SystemdEnvironment(value: { table[$0] }, unset: { _ in })
    }

    /// Returns the value of a variable, treating an empty value as unset (as libsystemd does).
    func nonEmpty(_ name: String) -> String? {
        guard let text = value(name), !text.isEmpty else { return nil }
        return text
    }
}
