import Foundation
import RulesTestSupport
import Testing

/// How the rulesd binary is linked, where it decides its resident memory (docs/OPERATIONS.md, "Memory").
@Suite("rulesd binary layout")
struct BinaryLayoutTests {
    /// The tags of the binary's dynamic section (ELF64, little-endian), read from its program headers.
    static func dynamicTags(of path: String) throws -> [UInt64] {
        let file = try #require(FileHandle(forReadingAtPath: path))
        defer { try? file.close() }
        func read(_ offset: UInt64, _ count: Int) throws -> [UInt8] {
            try file.seek(toOffset: offset)
            return [UInt8](try file.read(upToCount: count) ?? Data())
        }
        func integer(_ bytes: [UInt8], _ at: Int, _ size: Int) -> UInt64 {
            (0..<size).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
        }
        let header = try read(0, 64)
        try #require(header.count == 64 && header[0..<4] == [0x7F, 0x45, 0x4C, 0x46] && header[4] == 2)
        let programHeaders = integer(header, 0x20, 8)
        let entrySize = Int(integer(header, 0x36, 2))
        let entries = Int(integer(header, 0x38, 2))
        let table = try read(programHeaders, entrySize * entries)
        for index in 0..<entries where integer(table, index * entrySize, 4) == 2 {  // PT_DYNAMIC
            let offset = integer(table, index * entrySize + 8, 8)
            let size = Int(integer(table, index * entrySize + 32, 8))
            let dynamic = try read(offset, size)
            return stride(from: 0, to: dynamic.count - 15, by: 16).map { integer(dynamic, $0, 8) }
        }
        return []
    }

    @Test("rulesd packs its relative relocations (DT_RELR) instead of 64,000 records the loader reads at start")
    func relativeRelocationsArePacked() throws {
        let tags = try Self.dynamicTags(of: DaemonHarness.binary("rulesd"))
        #expect(tags.contains(1))  // DT_NEEDED: the reading found the dynamic section
        #expect(tags.contains(36))  // DT_RELR
    }
}
