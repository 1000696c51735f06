import RuleEngine
import RulesProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// A config file as read, before its values are applied: the settings above the first section, then each
/// `[namespace NAME]` section with its lines.
///
/// Sections are applied after every other source (file, environment, command line), because a namespace
/// inherits whatever the top level has in effect then; so the file is read whole first, every name checked.
struct ConfigFile: Sendable {
    /// A top-level `name = value` line.
    struct Setting: Sendable {
        var key: DaemonSettings.Key
        var value: String
        var number: Int
    }

    /// A line of a section: a name that sections accept (``NamespaceSettings/sectionSettings``).
    struct SectionLine: Sendable {
        var name: String
        var value: String
        var number: Int
    }

    struct Section: Sendable {
        var name: String
        /// The line of the `[namespace NAME]` header.
        var line: Int
        var lines: [SectionLine] = []

        /// The line that set `name` last, which is the one in effect.
        func line(setting name: String) -> Int? { lines.last { $0.name == name }?.number }
    }

    var path: String
    var topLevel: [Setting] = []
    var sections: [Section] = []

    /// Starts the section a `[namespace NAME]` line declares.
    mutating func beginSection(_ text: String, line: Int) throws(SettingsError) {
        let location = "\(path):\(line)"
        let words =
            text.hasSuffix("]")
            ? text.dropFirst().dropLast().split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init) : []
        guard words.count == 2, words[0] == "namespace" else {
            throw SettingsError("\(location): expected a section header '[namespace NAME]', got '\(text)'")
        }
        let name = words[1]
        if name == NamespaceSettings.defaultName {
            throw SettingsError(
                "\(location): 'default' is the namespace of the top-level settings: set its keys above the first "
                    + "section")
        }
        guard NamespaceSettings.isValidName(name) else {
            throw SettingsError(
                "\(location): bad namespace name '\(name)': expected lower-case letters, digits, '_' and '-', "
                    + "starting with a letter or digit, at most 63 bytes")
        }
        if let first = sections.first(where: { $0.name == name }) {
            throw SettingsError("\(location): namespace '\(name)' is declared twice (first at line \(first.line))")
        }
        sections.append(Section(name: name, line: line))
    }

    /// Adds a `name = value` line to the current section, if sections accept the name.
    mutating func addToSection(name: String, value: String, line: Int) throws(SettingsError) {
        let section = sections[sections.count - 1].name
        guard NamespaceSettings.sectionSettings.contains(name) else {
            if DaemonSettings.Key(rawValue: name) != nil {
                throw SettingsError(
                    "\(path):\(line): '\(name)' is a daemon-wide setting, not one of a namespace: set it above the "
                        + "first section, not in [namespace \(section)]")
            }
            throw SettingsError("\(path):\(line): unknown setting '\(name)' in [namespace \(section)]")
        }
        sections[sections.count - 1].lines.append(SectionLine(name: name, value: value, number: line))
    }
}

extension NamespaceSettings {
    /// The settings a `[namespace NAME]` section may give besides `isolation`, in the order `--print-settings`
    /// writes them; every one but `rules` and `role_*` is inherited from the top level when a section omits it.
    static let sectionKeys: [DaemonSettings.Key] = [
        .rules, .historySize, .memoryLimit, .evalTimeout, .evalInstructions, .loadTimeout, .loadInstructions,
        .maxFileBytes, .maxDataBytes, .testBudget, .maxFiles, .maxFlags, .maxRulesBytes,
        .roleQuery, .roleObserve, .roleOperate, .roleAdmin,
    ]

    /// The quotas of a declared namespace when neither its section nor the top level sets one: a team's share of
    /// a shared host, with room for one data file of the largest default size (`max_data_bytes`).
    public static let sectionMaxFiles = 1_000
    public static let sectionMaxFlags = 5_000
    public static let sectionMaxRulesBytes = 64 << 20

    /// `isolation` in a section: `thread` or `process`.
    static let isolationSetting = "isolation"

    /// Every name a section accepts.
    static let sectionSettings: Set<String> = Set(sectionKeys.map(\.rawValue) + [isolationSetting])

    /// The `role_*` setting of a role.
    static func roleKey(_ role: AccessRole) -> DaemonSettings.Key {
        DaemonSettings.Key(rawValue: "role_" + role.rawValue)!
    }
}

extension AccessPolicy {
    /// A policy that grants nothing: what a section's `role_*` settings add grants to, so that a namespace
    /// without them grants exactly what the daemon-wide policy does.
    public static var noGrants: AccessPolicy {
        var policy = AccessPolicy()
        for role in AccessRole.allCases { policy[role] = [] }
        return policy
    }
}

extension DaemonSettings {
    /// Declares the namespaces of a config file's sections, each inheriting what it does not set from these
    /// (top-level) settings.
    /// - Throws: ``SettingsError`` with the file and line of a bad value, a section without `rules`, or a rules
    ///   directory that is, contains or lies inside another namespace's.
    mutating func declareNamespaces(of file: ConfigFile) throws(SettingsError) {
        var declared: [NamespaceSettings] = []
        for section in file.sections {
            declared.append(try namespace(declaredBy: section, in: file.path))
        }
        try Self.checkRulesDirectories(defaultDirectory: rulesDirectory, declared: declared, file: file)
        namespaces = declared
    }

    private func namespace(declaredBy section: ConfigFile.Section, in path: String) throws(SettingsError)
        -> NamespaceSettings
    {
        // Starting from the top-level settings is what makes a section inherit every budget it does not set;
        // the descriptors parse the section's values exactly as they parse the top level's.
        var scratch = self
        scratch.accessPolicy = .noGrants
        var isolation = self.isolation
        for line in section.lines {
            if line.name == NamespaceSettings.isolationSetting {
                guard let value = NamespaceSettings.Isolation(rawValue: line.value) else {
                    let names = NamespaceSettings.Isolation.allCases.map(\.rawValue).joined(separator: " or ")
                    throw SettingsError("\(path):\(line.number): isolation: expected \(names), got '\(line.value)'")
                }
                isolation = value
            } else if let key = Key(rawValue: line.name) {
                try scratch.apply(key, value: line.value, from: .configFile(path: path, line: line.number))
            }
        }
        // The top level's quotas are unlimited unless set (the default namespace is the single tree of old); a
        // declared namespace then gets a team's share instead.
        let quotas: [(Key, WritableKeyPath<RuleEngineLimits, Int>, Int)] = [
            (.maxFiles, \.maxFiles, NamespaceSettings.sectionMaxFiles),
            (.maxFlags, \.maxFlags, NamespaceSettings.sectionMaxFlags),
            (.maxRulesBytes, \.maxRulesBytes, NamespaceSettings.sectionMaxRulesBytes),
        ]
        for (key, path, share) in quotas
        where section.line(setting: key.rawValue) == nil && scratch.limits[keyPath: path] == .max {
            scratch.limits[keyPath: path] = share
        }
        guard section.line(setting: Key.rules.rawValue) != nil else {
            throw SettingsError(
                "\(path):\(section.line): [namespace \(section.name)] has no 'rules' setting: every namespace needs "
                    + "a rules directory of its own")
        }
        return NamespaceSettings(
            name: section.name, rulesDirectory: scratch.rulesDirectory, limits: scratch.limits,
            historySize: scratch.historySize, isolation: isolation, accessPolicy: scratch.accessPolicy)
    }

    /// Every namespace's files are its own: a rules directory inside another's would be read by both scans.
    private static func checkRulesDirectories(
        defaultDirectory: String, declared: [NamespaceSettings], file: ConfigFile
    ) throws(SettingsError) {
        var seen: [(name: String, path: String, canonical: String)] = [
            (NamespaceSettings.defaultName, defaultDirectory, canonicalPath(defaultDirectory))
        ]
        for (namespace, section) in zip(declared, file.sections) {
            let canonical = canonicalPath(namespace.rulesDirectory)
            let line = section.line(setting: Key.rules.rawValue) ?? section.line
            let what =
                "\(file.path):\(line): rules: the rules directory \(namespace.rulesDirectory) "
                + "of [namespace \(namespace.name)]"
            for other in seen {
                let theirs = "namespace '\(other.name)''s rules directory \(other.path)"
                if canonical == other.canonical {
                    throw SettingsError("\(what) is also \(theirs)")
                } else if isInside(canonical, other.canonical) {
                    throw SettingsError("\(what) is inside \(theirs), whose scan would load its files too")
                } else if isInside(other.canonical, canonical) {
                    throw SettingsError("\(what) contains \(theirs), and would load its files too")
                }
            }
            seen.append((namespace.name, namespace.rulesDirectory, canonical))
        }
    }

    /// The path with symlinks resolved when it exists; else absolute, without `.`, `..` and repeated slashes.
    static func canonicalPath(_ path: String) -> String {
        if let resolved = realpath(path, nil) {
            defer { free(resolved) }
            return String(cString: resolved)
        }
        var absolute = path
        if !path.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            if getcwd(&buffer, buffer.count) != nil {
                absolute = String(cString: buffer) + "/" + path
            }
        }
        var parts: [Substring] = []
        for part in absolute.split(separator: "/") {
            switch part {
            case ".": continue
            case "..": _ = parts.popLast()
            default: parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }

    private static func isInside(_ path: String, _ directory: String) -> Bool {
        directory == "/" ? path != "/" : path.hasPrefix(directory + "/")
    }

    /// One namespace as a `[namespace NAME]` section: its rules directory, its isolation, and every inheritable
    /// value written out (so the section means the same whatever the top level says), then its grants.
    func sectionText(_ namespace: NamespaceSettings) -> String {
        var scratch = self
        scratch.rulesDirectory = namespace.rulesDirectory
        scratch.limits = namespace.limits
        scratch.historySize = namespace.historySize
        scratch.accessPolicy = namespace.accessPolicy
        var text = "[namespace \(namespace.name)]\n"
        text += "\(Key.rules.rawValue) = \(Self.quotedIfNeeded(namespace.rulesDirectory))\n"
        text += "\(NamespaceSettings.isolationSetting) = \(namespace.isolation.rawValue)\n"
        let roles = Set(AccessRole.allCases.map(NamespaceSettings.roleKey))
        for key in NamespaceSettings.sectionKeys where key != .rules {
            let value = Self.descriptor(key).render(scratch)
            // An empty grant adds nothing; leaving it out keeps the section short.
            if roles.contains(key) && value.isEmpty { continue }
            text += "\(key.rawValue) = \(Self.quotedIfNeeded(value))\n"
        }
        return text
    }
}

/// What `rulesd --check-config` found.
public struct ConfigurationCheck: Sendable {
    /// The config file read, if any.
    public var configFile: String?
    /// The settings, when they could be read.
    public var settings: DaemonSettings?
    /// Every problem, each naming where it was given (`file:line`, variable or option).
    public var problems: [String]
}

extension DaemonSettings {
    /// Reads the settings as a start would (config file, environment, command line), then checks what a start
    /// would only find out later: that every namespace's rules directory exists, and that every user and group
    /// the `role_*` settings name exists.
    /// - Returns: the settings and every problem found; a setting that cannot be read is the only problem.
    public static func checkConfiguration(
        commandLine: [(Key, String)], environment: [String: String], configFile: String?,
        defaultConfigFile: String = DaemonSettings.defaultConfigFile
    ) -> ConfigurationCheck {
        let named = configFile ?? environment[configFileVariable]
        let path = named ?? (access(defaultConfigFile, F_OK) == 0 ? defaultConfigFile : nil)
        let resolved: (settings: DaemonSettings, file: ConfigFile?)
        do {
            resolved = try resolveReadingFile(
                commandLine: commandLine, environment: environment, configFile: configFile,
                defaultConfigFile: defaultConfigFile)
        } catch {
            return ConfigurationCheck(configFile: path, settings: nil, problems: [error.message])
        }
        let (settings, file) = resolved
        // Where a top-level setting in effect was given: the command line wins, then the environment, the file.
        func source(of key: Key) -> SettingSource? {
            if commandLine.contains(where: { $0.0 == key }) { return .commandLine }
            if environment[key.environmentVariable] != nil { return .environment }
            if let file, let line = file.topLevel.last(where: { $0.key == key }) {
                return .configFile(path: file.path, line: line.number)
            }
            return nil
        }
        var problems: [String] = []
        for namespace in settings.allNamespaces {
            let section = file?.sections.first { $0.name == namespace.name }
            let rulesSource =
                section.map { section in
                    SettingSource.configFile(
                        path: file!.path, line: section.line(setting: Key.rules.rawValue) ?? section.line)
                } ?? source(of: .rules)
            if let problem = directoryProblem(namespace.rulesDirectory) {
                let place = rulesSource?.naming(.rules) ?? "rules (built-in default)"
                problems.append(
                    "\(place): the rules directory \(namespace.rulesDirectory) of namespace '\(namespace.name)' "
                        + problem)
            }
            // The default namespace's grants are the daemon-wide ones.
            let policy = section == nil ? settings.accessPolicy : namespace.accessPolicy
            for role in AccessRole.allCases {
                var single = AccessPolicy.noGrants
                single[role] = policy[role]
                do {
                    _ = try single.resolved()
                } catch {
                    let key = NamespaceSettings.roleKey(role)
                    let roleSource =
                        section.map { section in
                            SettingSource.configFile(
                                path: file!.path, line: section.line(setting: key.rawValue) ?? section.line)
                        } ?? source(of: key)
                    let reason =
                        error.message.hasPrefix(key.rawValue + ": ")
                        ? String(error.message.dropFirst(key.rawValue.count + 2)) : error.message
                    problems.append((roleSource?.naming(key) ?? key.rawValue) + ": " + reason)
                }
            }
        }
        return ConfigurationCheck(configFile: path, settings: settings, problems: problems)
    }

    /// Why `path` cannot be a rules directory, or nil when it can.
    private static func directoryProblem(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let error = errno
            return error == ENOENT ? "does not exist" : "cannot be read: \(String(cString: strerror(error)))"
        }
        return (st.st_mode & S_IFMT) == S_IFDIR ? nil : "is not a directory"
    }
}
