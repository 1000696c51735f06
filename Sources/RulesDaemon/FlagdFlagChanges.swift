import RuleEngine
import RuleModel

/// What each flag of a rule set depends on, as one digest per flag key, so that a reload can name the flags it
/// added, changed and removed (flagd's `configuration_change` event).
///
/// Providers cache `STATIC` answers until an event names the flag, so a change must never go unnamed: a flag's
/// digest covers its definition, every byte of the file that declares it (a helper function anywhere in the file
/// can change its rule) and, for a flag with a rule, every data file (rules read data sets by name). An edit
/// therefore names every flag of the edited file, and a data file's edit names every flag with a rule; naming a
/// flag that did not change costs a client one extra evaluation.
struct FlagDigests: Sendable, Equatable {
    /// flag key → digest.
    let digests: [String: String]

    init(_ ruleSet: RuleSet) {
        var fileDigests: [String: String] = [:]
        for file in ruleSet.files { fileDigests[file.path] = file.sha256 }
        let dataPaths = Set(ruleSet.dataSets.map(\.path))
        let dataDigest = ruleSet.files.filter { dataPaths.contains($0.path) }.map { "\($0.path)=\($0.sha256)" }
            .joined(separator: ",")
        var digests: [String: String] = [:]
        for flag in ruleSet.flags {
            var parts: [String] = [
                flag.key, String(flag.defaultVariant), String(flag.enabled), String(flag.hasRule),
                flag.location.file, fileDigests[flag.location.file] ?? "",
            ]
            for variant in flag.variants {
                parts.append(variant.name)
                parts.append(String(decoding: variant.json, as: UTF8.self))
            }
            parts.append(flag.metadata.map { JSONWriter.string($0) } ?? "")
            if flag.hasRule { parts.append(dataDigest) }
            digests[flag.key] = RuleRevision.digest(of: Array(parts.joined(separator: "\u{0}").utf8))
        }
        self.digests = digests
    }

    init(digests: [String: String]) {
        self.digests = digests
    }

    /// How a flag changed between two rule sets, in flagd's words.
    enum Change: String, Sendable {
        case write
        case update
        case delete
    }

    /// Every flag added (`write`), changed (`update`) or removed (`delete`) from `previous` to `self`.
    func changes(since previous: FlagDigests) -> [String: Change] {
        var changes: [String: Change] = [:]
        for (key, digest) in digests {
            switch previous.digests[key] {
            case nil: changes[key] = .write
            case digest?: break
            default: changes[key] = .update
            }
        }
        for key in previous.digests.keys where digests[key] == nil { changes[key] = .delete }
        return changes
    }
}
