/// What a peer may do, by operation: each operation of the protocol needs exactly one role.
///
/// Roles are granted, never implied by one another, except ``admin``, which holds every role: a peer allowed to
/// `reload` is not thereby allowed to read `status`, unless the policy grants it `observe` too (which the
/// default does for everyone who can connect).
public enum AccessRole: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Answers from the rules: `ping`, `flag`, `flags`, `route`, `config`, `explain`, `watch`.
    case query
    /// The daemon's state: `status`, `metrics`, `history`, `show`, `capture`.
    case observe
    /// Changes to what serves: `reload`, `rollback`, `resume` (and overrides).
    case operate
    /// Every role.
    case admin

    public var description: String { rawValue }
}

/// A set of roles, small enough to check on every request for the price of an AND.
public struct AccessRoles: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let query = AccessRoles(rawValue: 1 << 0)
    public static let observe = AccessRoles(rawValue: 1 << 1)
    public static let operate = AccessRoles(rawValue: 1 << 2)
    public static let admin = AccessRoles(rawValue: 1 << 3)
    /// Every role: what ``AccessRole/admin`` grants.
    public static let all: AccessRoles = [.query, .observe, .operate, .admin]

    /// The set holding `role` (all roles for `admin`).
    public init(_ role: AccessRole) {
        switch role {
        case .query: self = .query
        case .observe: self = .observe
        case .operate: self = .operate
        case .admin: self = .all
        }
    }

    /// Whether these roles allow `operation`.
    @inline(__always)
    public func permits(_ operation: RequestOperation) -> Bool {
        contains(AccessRoles(operation.requiredRole))
    }

    /// The roles held, by name, in the order of ``AccessRole``; `admin` alone when it is held.
    public var names: [String] {
        if contains(.admin) { return [AccessRole.admin.rawValue] }
        return AccessRole.allCases.filter { $0 != .admin && contains(AccessRoles($0)) }.map(\.rawValue)
    }

    public var description: String { names.isEmpty ? "none" : names.joined(separator: ", ") }
}

extension RequestOperation {
    /// The role a peer needs for this operation. The switch has no default: a new operation does not compile
    /// until it is classified here.
    public var requiredRole: AccessRole {
        switch self {
        case .ping, .flag, .flags, .route, .config, .explain, .watch: .query
        case .status, .metrics, .history, .show, .capture, .overrideList: .observe
        case .reload, .rollback, .resume, .overrideSet, .overrideClear: .operate
        }
    }
}

extension ProtocolError {
    /// The `FORBIDDEN` answer to an operation the peer's roles do not allow: it names the operation and the role
    /// it needs, in the message and as `error.operation` and `error.required_role`.
    /// - Parameters:
    ///   - operation: the refused operation.
    ///   - held: the roles the peer holds, for the message.
    public static func forbidden(_ operation: RequestOperation, held: AccessRoles) -> ProtocolError {
        let role = operation.requiredRole
        return ProtocolError(
            .forbidden,
            "\(operation.rawValue) needs the \(role.rawValue) role; this peer has \(held.description) "
                + "(see role_\(role.rawValue) in the daemon's configuration)",
            details: ["operation": operation.rawValue, "required_role": role.rawValue])
    }
}
