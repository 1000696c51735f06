import CLua
import Glibc
import RuleModel

/// The floor under building a rule set: the same files loaded into a plain Lua 5.4 state with the standard
/// libraries, no sandbox, no budgets and no validation, where `flag "key" { ... }` only stores its table.
enum BareLua {
    /// Every rule set function a file calls at load time, reduced to storing its definition.
    static let prelude = """
        local defined = {}
        local function define(name) return function(definition) defined[name] = definition end end
        flag, route = define, define
        function config(name) return function(value) defined[name] = value end end
        """

    /// Loads `sources` (each file one chunk, after the prelude) into a new plain state.
    /// - Returns: milliseconds from creating the state to the last file run, and the bytes the state holds
    ///   (counted by its allocator), or nil when a file does not load there.
    static func load(_ sources: [RuleSource]) -> (milliseconds: Double, bytes: Int)? {
        let counter = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        counter.pointee = 0
        defer { counter.deallocate() }
        let start = LoadClient.now()
        let allocate: lua_Alloc = { userData, pointer, oldSize, newSize in
            let counter = userData!.assumingMemoryBound(to: Int.self)
            // For a new block `oldSize` is the kind of object, not a size.
            let previous = pointer == nil ? 0 : oldSize
            if newSize == 0 {
                free(pointer)
                counter.pointee -= previous
                return nil
            }
            guard let block = realloc(pointer, newSize) else { return nil }
            counter.pointee += newSize - previous
            return block
        }
        guard let state = lua_newstate(allocate, counter) else { return nil }
        defer { lua_close(state) }
        luaL_openlibs(state)
        guard run(state, Array(prelude.utf8), name: "prelude") else { return nil }
        for source in sources where source.path.hasSuffix(".lua") {
            guard run(state, source.content, name: source.path) else { return nil }
        }
        let elapsed = Double(LoadClient.now() - start) / 1e6
        return (elapsed, counter.pointee)
    }

    private static func run(_ state: OpaquePointer, _ chunk: [UInt8], name: String) -> Bool {
        let loaded = chunk.withUnsafeBytes {
            luaL_loadbufferx(state, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count, "=" + name, "t")
        }
        guard loaded == LUA_OK else { return false }
        return lua_pcallk(state, 0, 0, 0, 0, nil) == LUA_OK
    }
}
