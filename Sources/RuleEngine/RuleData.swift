import CRuleSandbox
import RuleModel

/// A data file that a rule set uses (`data "beta-users"`), parsed once into an immutable set or map.
///
/// The entries live in C memory outside every Lua allocator and are shared read-only by all Lua states of the
/// rule set, one per worker: nothing writes to them after parsing, and their reference count is atomic, which
/// is what makes sharing the handle across threads sound.
public final class RuleDataSet: @unchecked Sendable {
    /// The name the rules use: `beta-users`, `lists/beta`.
    public let name: String
    /// The file, relative to the rules directory: `beta-users.txt`.
    public let path: String
    /// Distinct entries: set members or map keys.
    public let entries: Int
    /// Bytes the data set holds in memory (keys, values, hash index), once per rule set.
    public let bytes: Int
    /// Whether it is a map (a JSON object) rather than a set.
    public let isMap: Bool
    let handle: OpaquePointer

    /// Takes a reference of its own to `handle`.
    init(name: String, path: String, handle: OpaquePointer) {
        rs_data_retain(handle)
        self.name = name
        self.path = path
        self.handle = handle
        entries = rs_data_entries(handle)
        bytes = Int(rs_data_bytes(handle))
        isMap = rs_data_is_map(handle) != 0
    }

    deinit { rs_data_release(handle) }

    /// Whether a path names a data file (`.txt` or `.json`) rather than a rule file.
    public static func isDataFilePath(_ path: String) -> Bool {
        path.hasSuffix(".txt") || (path.hasSuffix(".json") && !path.hasSuffix(FlagdTranslator.fileSuffix))
    }
}

extension RuleSet {
    /// The data sets as `status` and `rulesctl check --format json` report them:
    /// `{"beta-users": {"file": "beta-users.txt", "kind": "set", "entries": N, "bytes": M}}`.
    public var dataSummary: JSONValue {
        .object(
            JSONObject(
                dataSets.map { set in
                    (
                        set.name,
                        [
                            "file": .string(set.path), "kind": .string(set.isMap ? "map" : "set"),
                            "entries": .integer(Int64(set.entries)), "bytes": .integer(Int64(set.bytes)),
                        ]
                    )
                }))
    }

    /// One line per data set, for people: `data "beta-users" (beta-users.txt): set of 3 entries, 1.2 KiB`.
    public var dataSummaryLines: [String] {
        dataSets.map { set in
            let kind = set.isMap ? "map" : "set"
            let entries = set.entries == 1 ? "1 entry" : "\(set.entries) entries"
            let size =
                set.bytes >= 1 << 20
                ? String(Double(set.bytes * 10 >> 20) / 10) + " MiB"
                : set.bytes >= 1 << 10 ? String(Double(set.bytes * 10 >> 10) / 10) + " KiB" : "\(set.bytes) bytes"
            return "data \"\(set.name)\" (\(set.path)): \(kind) of \(entries), \(size)"
        }
    }
}
