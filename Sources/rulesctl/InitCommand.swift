import ArgumentParser
import Glibc

/// `rulesctl init DIR`: a new rules directory with editor support, an example flag and its tests.
struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a rules directory with an example flag, its tests and editor support.",
        discussion: """
            Writes DIR/example.lua (a flag), DIR/example_test.lua (its tests, declarative and function form) and \
            DIR/.luarc.json, which points lua-language-server at the rule API's annotations so that editors \
            complete and check flag, route, config, test, expect and the helpers. The annotations are looked for \
            where this rulesctl is installed (PREFIX/share/rulesd/lua/rulesd.lua, /usr/share/rulesd/lua/rulesd.lua \
            with the .deb) and then in the source checkout it was built in (share/lua-annotations/rulesd.lua); \
            --annotations names another file. The directory passes 'rulesctl check' and 'rulesctl test' as \
            created. A directory that is not empty is refused unless --force is given (files of the same name are \
            then replaced).
            """
    )

    @Argument(help: ArgumentHelp("The rules directory to create.", valueName: "dir"))
    var directory: String

    @Flag(help: "Write into a directory that is not empty, replacing files of the same name.")
    var force = false

    @Option(help: ArgumentHelp("The LuaLS annotation file .luarc.json points at.", valueName: "file"))
    var annotations: String?

    func run() throws {
        if let entries = Self.entries(of: directory), !entries.isEmpty, !force {
            Console.write(
                "rulesctl: \(directory) is not empty (\(entries.count) entries); use --force to write into it anyway\n",
                to: .standardError)
            throw ExitCode.failure
        }
        try Self.makeDirectories(directory)
        let library = annotations.map(Self.absolute) ?? Self.findAnnotations()
        let files: [(String, String)] = [
            (".luarc.json", Self.luarc(library: library)), ("example.lua", Self.exampleFlag),
            ("example_test.lua", Self.exampleTests),
        ]
        for (name, content) in files { try Self.write(content, to: directory + "/" + name) }
        Console.writeLines(files.map { "created \(directory)/\($0.0)" })
        if access(library, R_OK) != 0 {
            Console.write(
                "rulesctl: note: \(library) does not exist here; install rulesd's package or point --annotations "
                    + "at share/lua-annotations/rulesd.lua of a source checkout\n", to: .standardError)
        }
    }

    /// The installed path of the annotations in the Debian package.
    static let packagedAnnotations = "/usr/share/rulesd/lua/rulesd.lua"

    /// Where the annotations are: beside this program's installation, then the package's path, then the source
    /// checkout this program was built in (`.build/<triple>/<configuration>/rulesctl`). The package's path when
    /// none exists.
    static func findAnnotations() -> String {
        var candidates: [String] = []
        if let program = realpath("/proc/self/exe", nil) {
            let path = String(cString: program)
            free(program)
            let bin = parent(path)
            candidates.append(parent(bin) + "/share/rulesd/lua/rulesd.lua")
            candidates.append(packagedAnnotations)
            candidates.append(parent(parent(parent(bin))) + "/share/lua-annotations/rulesd.lua")
        }
        return candidates.first { access($0, R_OK) == 0 } ?? packagedAnnotations
    }

    static func luarc(library: String) -> String {
        var escaped = ""
        for character in library {
            if character == "\"" || character == "\\" { escaped.append("\\") }
            escaped.append(character)
        }
        // The sandbox has no io, os, debug or package: LuaLS should not offer them either.
        return """
            {
              "$schema": "https://raw.githubusercontent.com/LuaLS/vscode-lua/master/setting/schema.json",
              "runtime.version": "Lua 5.4",
              "runtime.builtin": { "io": "disable", "os": "disable", "debug": "disable", "package": "disable" },
              "workspace.library": ["\(escaped)"],
              "workspace.checkThirdParty": false
            }

            """
    }

    static let exampleFlag = """
        -- An example flag: on for everyone in Germany and for 10% of other users (sticky per user_id).
        -- Ask it with: rulesctl eval flag example.new-checkout -c user_id=u-42 -c country=FR
        flag "example.new-checkout" {
            description = "The new checkout flow",
            rule = function(ctx)
                if ctx.country == "DE" then return "on" end
                if rollout(ctx.user_id, 10) then return "on" end
                return "off"
            end,
        }

        """

    static let exampleTests = """
        -- Tests of example.lua. rulesd runs them before any edit goes live: a failing test keeps the serving rules.
        -- Run them with: rulesctl test DIR

        test "Germany gets the new checkout" {
            flag = "example.new-checkout",
            context = { country = "DE" },
            expect = "on",
        }

        test "about 10% of other users get it" {
            flag = "example.new-checkout",
            context = { country = "FR" },
            sample = { field = "user_id", count = 2000 },
            expect_share = { on = { 0.07, 0.13 } },
        }

        test "a context without user_id gets the old checkout" (function()
            local answer = flag("example.new-checkout", { country = "FR" })
            expect(answer.variant).to_be("off")
            expect(answer.value).to_be(false)
            expect(answer.reason).to_be("TARGETING_MATCH")
        end)

        """

    /// The names in `path`, nil when it is not a directory (or does not exist).
    private static func entries(of path: String) -> [String]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    private static func makeDirectories(_ path: String) throws {
        var built = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            built += "/" + component
            if mkdir(built, 0o755) != 0 && errno != EEXIST {
                Console.write(
                    "rulesctl: cannot create \(built): \(String(cString: strerror(errno)))\n", to: .standardError)
                throw ExitCode.failure
            }
        }
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            Console.write("rulesctl: \(path) is not a directory\n", to: .standardError)
            throw ExitCode.failure
        }
    }

    private static func write(_ content: String, to path: String) throws {
        guard let file = fopen(path, "w") else {
            Console.write("rulesctl: cannot write \(path): \(String(cString: strerror(errno)))\n", to: .standardError)
            throw ExitCode.failure
        }
        let written = Array(content.utf8).withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        if fclose(file) != 0 || written != content.utf8.count {
            Console.write("rulesctl: cannot write \(path)\n", to: .standardError)
            throw ExitCode.failure
        }
    }

    private static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    private static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        guard let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        return String(cString: cwd) + "/" + path
    }
}
