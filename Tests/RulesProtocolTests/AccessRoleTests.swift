import RulesProtocol
import Testing

@Suite("Roles of the protocol's operations")
struct OperationRoleTests {
    /// The table of docs/OPERATIONS.md ("Access"). An operation added to the protocol fails this test until it is
    /// classified here (and there).
    static let documented: [String: AccessRole] = [
        "ping": .query, "flag": .query, "flags": .query, "route": .query, "config": .query, "explain": .query,
        "watch": .query,
        "status": .observe, "metrics": .observe, "history": .observe, "show": .observe, "capture": .observe,
        "override_list": .observe, "override_set": .operate, "override_clear": .operate,
        "reload": .operate, "rollback": .operate, "resume": .operate,
    ]

    @Test("every operation needs the role the documentation gives it, and none is left out")
    func everyOperationIsClassified() {
        for operation in RequestOperation.allCases {
            #expect(Self.documented[operation.rawValue] == operation.requiredRole, "\(operation.rawValue)")
        }
        #expect(Set(Self.documented.keys) == Set(RequestOperation.allCases.map(\.rawValue)))
    }

    @Test("a role allows its own operations only; admin allows them all")
    func rolesAllowTheirOperations() {
        for operation in RequestOperation.allCases {
            for role in AccessRole.allCases where role != .admin {
                #expect(AccessRoles(role).permits(operation) == (operation.requiredRole == role))
            }
            #expect(AccessRoles(.admin).permits(operation))
            #expect(!AccessRoles().permits(operation))
        }
    }

    @Test("FORBIDDEN names the operation and the role it needs")
    func forbiddenNamesOperationAndRole() {
        let error = ProtocolError.forbidden(.rollback, held: [.query, .observe])
        #expect(error.code == .forbidden)
        #expect(error.message.hasPrefix("rollback needs the operate role; this peer has query, observe"))
        #expect(error.details == ["operation": "rollback", "required_role": "operate"])
        #expect(ProtocolError.forbidden(.flag, held: []).message.contains("this peer has none"))
    }
}
