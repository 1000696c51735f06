import RuleEngine
import RuleModel

#if canImport(Glibc)
    import Glibc
#endif

extension AuditEvent {
    /// Most changed paths a reload line lists; the counts cover them all.
    static let maxListedChanges = 1000
    /// Most problems a failed reload's line lists.
    static let maxListedProblems = 20

    /// A reload, rollback or resume that changed what serves (`reloaded`, `rolled_back`) or failed.
    /// - Parameters:
    ///   - trigger: what asked for it.
    ///   - previous: what served before (its sources give the changes).
    ///   - sources: the candidate's files.
    ///   - revision: the candidate's revision.
    ///   - generation: the generation that went live, or nil when the reload failed.
    ///   - failure: why it failed.
    ///   - rulesDirectory: where the files' owners are looked up; nil when they came from the history.
    static func reload(
        trigger: ReloadTrigger, previous: ServingGeneration?, sources: [RuleSource], revision: RuleRevision,
        generation: ServingGeneration?, failure: RuleLoadFailure?, rulesDirectory: String?
    ) -> AuditEvent {
        let outcome = failure != nil ? "failed" : trigger == .rollback ? "rolled_back" : "reloaded"
        let old = Dictionary(
            (previous?.ruleSet.sources ?? []).map { ($0.path, $0.content) }, uniquingKeysWith: { first, _ in first })
        var changes: [JSONValue] = []
        var counts = (added: 0, changed: 0, removed: 0)
        func note(_ path: String, _ change: String) {
            guard changes.count < maxListedChanges else { return }
            let owner = rulesDirectory.flatMap { Self.owner(of: $0 + "/" + path) }
            changes.append(
                ["path": .string(path), "change": .string(change), "uid": owner.map { .integer(Int64($0)) } ?? .null])
        }
        var seen = Set<String>()
        for source in sources {
            seen.insert(source.path)
            switch old[source.path] {
            case nil:
                counts.added += 1
                note(source.path, "added")
            case let content? where content != source.content:
                counts.changed += 1
                note(source.path, "changed")
            default: break
            }
        }
        for path in old.keys.sorted() where !seen.contains(path) {
            counts.removed += 1
            note(path, "removed")
        }
        var members: [(String, JSONValue)] = [
            ("trigger", .string(trigger.rawValue)), ("outcome", .string(outcome)),
            ("old_revision", previous.map { .string($0.ruleSet.revision.hex) } ?? .null),
            ("new_revision", .string(revision.hex)),
            ("generation", generation.map { .integer(Int64($0.number)) } ?? .null),
            (
                "counts",
                [
                    "added": .integer(Int64(counts.added)), "changed": .integer(Int64(counts.changed)),
                    "removed": .integer(Int64(counts.removed)),
                ]
            ),
            ("changes", .array(changes)),
        ]
        if let generation {
            // A reload whose rule tests fail does not go live, so the tests of a live rule set all passed.
            members.append(
                ("tests", ["count": .integer(Int64(generation.ruleSet.tests.count)), "failed": .integer(0)]))
        } else if let failure {
            members.append(
                ("problems", .array(failure.diagnostics.prefix(maxListedProblems).map { .string($0.description) })))
            members.append(("problem_count", .integer(Int64(failure.diagnostics.count))))
        }
        let short = String(revision.hex.prefix(8))
        let was = previous?.shortRevision ?? "nothing"
        let message =
            failure == nil
            ? "\(outcome == "rolled_back" ? "rolled back" : "reloaded") \(was) -> \(short) (\(trigger.rawValue)): "
                + "\(counts.added) added, \(counts.changed) changed, \(counts.removed) removed"
            : "reload of \(short) failed (\(trigger.rawValue)), \(was) keeps serving: "
                + "\(failure?.diagnostics.first?.description ?? "")"
        return AuditEvent(kind: .reload, members: members, message: message, isFailure: failure != nil)
    }

    /// The uid owning a file (not following a final symlink: who placed the link is who changed the rules).
    static func owner(of path: String) -> uid_t? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return info.st_uid
    }
}
