import Foundation
import RuleEngine
import Testing

@testable import RulesDaemon

#if canImport(Glibc)
    import Glibc
#endif

/// Resolves a config file's text with no default config file.
private func resolve(
    _ text: String, in scratch: ScratchDirectory, commandLine: [(DaemonSettings.Key, String)] = [],
    environment: [String: String] = [:]
) throws(SettingsError) -> DaemonSettings {
    let file: String
    do { file = try scratch.write("rulesd.conf", text) } catch { throw SettingsError("cannot write: \(error)") }
    return try DaemonSettings.resolve(
        commandLine: commandLine, environment: environment, configFile: file,
        defaultConfigFile: "/nonexistent/rulesd.conf")
}

/// The message of the error resolving `text` throws, or nil when it is accepted.
private func rejection(_ text: String, in scratch: ScratchDirectory) -> String? {
    do {
        _ = try resolve(text, in: scratch)
        return nil
    } catch {
        return error.message
    }
}

@Suite("Settings: [namespace NAME] sections")
struct NamespaceSectionTests {
    @Test("a file without sections declares no namespace, as before")
    func noSections() throws {
        let scratch = try ScratchDirectory()
        let settings = try resolve("rules = /srv/rules\nworkers = 2\n", in: scratch)
        #expect(settings.namespaces.isEmpty)
        #expect(settings.allNamespaces.map(\.name) == ["default"])
    }

    @Test("each section declares a namespace, in the file's order, with its rules, isolation and keys")
    func sectionsDeclareNamespaces() throws {
        let scratch = try ScratchDirectory()
        let settings = try resolve(
            """
            rules = /srv/rules/default
            workers = 2

            [namespace payments]   # the payments team
            rules = /srv/rules/payments
            isolation = process
            history_size = 5
            max-files = 200

            [ namespace search ]
            rules = "/srv/rules/search"
            max_flags = 50
            max_rules_bytes = 2MiB
            eval_instructions = 5000
            """, in: scratch)
        #expect(settings.workers == 2)
        #expect(settings.rulesDirectory == "/srv/rules/default")
        #expect(settings.namespaces.map(\.name) == ["payments", "search"])
        let payments = settings.namespaces[0]
        #expect(payments.rulesDirectory == "/srv/rules/payments")
        #expect(payments.isolation == .process)
        #expect(payments.historySize == 5)
        #expect(payments.limits.maxFiles == 200)
        #expect(payments.limits.maxFlags == NamespaceSettings.sectionMaxFlags)
        let search = settings.namespaces[1]
        #expect(search.rulesDirectory == "/srv/rules/search")
        #expect(search.isolation == .thread)
        #expect(search.limits.maxFlags == 50)
        #expect(search.limits.maxRulesBytes == 2 << 20)
        #expect(search.limits.evaluationInstructionLimit == 5000)
        #expect(search.stateDirectory(under: "/var/lib/rulesd") == "/var/lib/rulesd/namespaces/search")
    }

    @Test("a section inherits what it does not set from the top level in effect after every source")
    func inheritance() throws {
        let scratch = try ScratchDirectory()
        let settings = try resolve(
            // Lines after a section header belong to the section: the top level comes from other sources here.
            """
            [namespace payments]
            rules = /srv/payments
            eval_timeout = 20ms
            max_files = 300

            """, in: scratch,
            commandLine: [(.memoryLimit, "32MiB"), (.evalTimeout, "90ms"), (.maxFlags, "70")],
            environment: ["RULESD_HISTORY_SIZE": "9", "RULESD_MAX_FILES": "4000"])
        let payments = try #require(settings.namespaces.first)
        #expect(payments.limits.memoryLimit == 32 << 20)
        #expect(payments.limits.maxFlags == 70)
        #expect(payments.historySize == 9)
        // What the section sets stays its own.
        #expect(payments.limits.evaluationTimeout == .milliseconds(20))
        #expect(payments.limits.maxFiles == 300)
        #expect(settings.limits.evaluationTimeout == .milliseconds(90))
        #expect(settings.limits.maxFiles == 4000)
        // No source limits the top level's bytes: the section gets a team's share.
        #expect(settings.limits.maxRulesBytes == .max)
        #expect(payments.limits.maxRulesBytes == NamespaceSettings.sectionMaxRulesBytes)
    }

    @Test("the default namespace has no quota unless set; a section then gets 1,000 files, 5,000 flags, 64 MiB")
    func quotaDefaults() throws {
        #expect(DaemonSettings.descriptor(.maxFiles).defaultValue == "unlimited")
        #expect(DaemonSettings.descriptor(.maxRulesBytes).defaultValue == "unlimited")
        let scratch = try ScratchDirectory()
        let settings = try resolve(
            "[namespace a]\nrules = /srv/a\n[namespace b]\nrules = /srv/b\nmax_files = unlimited\nmax_flags = 9\n",
            in: scratch)
        #expect(settings.limits.maxFiles == .max && settings.limits.maxFlags == .max)
        let a = settings.namespaces[0].limits
        #expect(a.maxFiles == 1_000 && a.maxFlags == 5_000 && a.maxRulesBytes == 64 << 20)
        let b = settings.namespaces[1].limits
        #expect(b.maxFiles == .max && b.maxFlags == 9 && b.maxRulesBytes == 64 << 20)
    }

    @Test("a section's isolation is inherited from the top level when it sets none")
    func isolationInherited() throws {
        let scratch = try ScratchDirectory()
        let file = try scratch.write(
            "rulesd.conf", "[namespace a]\nrules = /srv/a\n[namespace b]\nrules = /srv/b\nisolation = thread\n")
        var settings = DaemonSettings()
        settings.isolation = .process
        try settings.apply(configFile: file)
        #expect(settings.namespaces.map(\.isolation) == [.process, .thread])
    }

    @Test("role_* in a section grants in that namespace only, on top of nothing else")
    func sectionRoles() throws {
        let scratch = try ScratchDirectory()
        let settings = try resolve(
            """
            role_operate = group:ops
            [namespace payments]
            rules = /srv/payments
            role_operate = group:payments-oncall uid:1234
            [namespace search]
            rules = /srv/search
            """, in: scratch)
        #expect(settings.accessPolicy[.operate] == [.group("ops")])
        let payments = settings.namespaces[0].accessPolicy
        #expect(payments[.operate] == [.group("payments-oncall"), .uid(1234)])
        #expect(payments[.query].isEmpty && payments[.observe].isEmpty && payments[.admin].isEmpty)
        #expect(settings.namespaces[1].accessPolicy == AccessPolicy.noGrants)
    }

    @Test("a bad value in a section names the file, the line and the setting")
    func badValue() throws {
        let scratch = try ScratchDirectory()
        let file = scratch.path + "/rulesd.conf"
        #expect(
            rejection("[namespace a]\nrules = /srv/a\nmax_flags = lots\n", in: scratch)
                == "\(file):3: max_flags: expected unlimited or an integer from 1 to 1000000, got 'lots'")
        #expect(
            rejection("[namespace a]\nrules = /srv/a\nisolation = container\n", in: scratch)
                == "\(file):3: isolation: expected thread or process, got 'container'")
        #expect(
            rejection("[namespace a]\nrules = /srv/a\nrole_query = everyone\n", in: scratch)?.hasPrefix(
                "\(file):3: role_query: expected *") == true)
    }

    @Test(
        "every mistake in a section is refused with the file and line",
        arguments: [
            ("[namespace a]\nrules = /srv/a\ncolour = blue\n", "3: unknown setting 'colour' in [namespace a]"),
            (
                "[namespace a]\nrules = /srv/a\nsocket = /tmp/x.sock\n",
                "3: 'socket' is a daemon-wide setting, not one of a namespace: set it above the first section, "
                    + "not in [namespace a]"
            ),
            (
                "workers = 2\n[namespace a]\nhistory_size = 3\n",
                "2: [namespace a] has no 'rules' setting: every namespace needs a rules directory of its own"
            ),
            (
                "[namespace Payments]\nrules = /srv/a\n",
                "1: bad namespace name 'Payments': expected lower-case letters, digits, '_' and '-', starting with "
                    + "a letter or digit, at most 63 bytes"
            ),
            ("[namespace -a]\nrules = /srv/a\n", "1: bad namespace name '-a'"),
            (
                "[namespace a]\nrules = /srv/a\n\n[namespace a]\nrules = /srv/b\n",
                "4: namespace 'a' is declared twice (first at line 1)"
            ),
            (
                "[namespace default]\nrules = /srv/a\n",
                "1: 'default' is the namespace of the top-level settings: set its keys above the first section"
            ),
            ("[payments]\nrules = /srv/a\n", "1: expected a section header '[namespace NAME]', got '[payments]'"),
            ("[namespace a b]\n", "1: expected a section header '[namespace NAME]'"),
            ("[namespace a\n", "1: expected a section header '[namespace NAME]'"),
        ])
    func sectionMistakes(_ text: String, _ expected: String) throws {
        let scratch = try ScratchDirectory()
        let message = rejection(text, in: scratch)
        #expect(message?.hasPrefix(scratch.path + "/rulesd.conf:" + expected) == true, "\(message ?? "accepted")")
    }

    @Test(
        "a rules directory equal to, inside or containing another namespace's is refused at its rules line",
        arguments: [
            ("/srv/rules", "/srv/rules", "is also namespace 'default''s rules directory /srv/rules"),
            ("/srv/rules", "/srv/rules/payments", "is inside namespace 'default''s rules directory /srv/rules"),
            ("/srv/rules", "/srv/other/../rules//payments/", "is inside namespace 'default''s rules directory"),
            ("/srv/rules/all/default", "/srv/rules", "contains namespace 'default''s rules directory"),
        ])
    func overlappingDefault(_ defaultRules: String, _ rules: String, _ expected: String) throws {
        let scratch = try ScratchDirectory()
        let message = rejection(
            "rules = \(defaultRules)\n[namespace a]\nhistory_size = 2\nrules = \(rules)\n", in: scratch)
        #expect(
            message?.hasPrefix("\(scratch.path)/rulesd.conf:4: rules: the rules directory \(rules) of [namespace a] ")
                == true, "\(message ?? "accepted")")
        #expect(message?.contains(expected) == true, "\(message ?? "accepted")")
    }

    @Test("two sections may not share a rules directory or nest theirs; siblings are fine")
    func overlappingSections() throws {
        let scratch = try ScratchDirectory()
        let file = scratch.path + "/rulesd.conf"
        #expect(
            rejection("[namespace a]\nrules = /srv/a\n[namespace b]\nrules = /srv/a/b\n", in: scratch)
                == "\(file):4: rules: the rules directory /srv/a/b of [namespace b] is inside namespace 'a''s rules "
                + "directory /srv/a, whose scan would load its files too")
        #expect(
            rejection("[namespace a]\nrules = /srv/a/b\n[namespace b]\nrules = /srv/a\n", in: scratch)
                == "\(file):4: rules: the rules directory /srv/a of [namespace b] contains namespace 'a''s rules "
                + "directory /srv/a/b, and would load its files too")
        #expect(rejection("[namespace a]\nrules = /srv/ab\n[namespace b]\nrules = /srv/a\n", in: scratch) == nil)
    }

    @Test("the rules directory given on the command line is the one sections are checked against")
    func overlapAfterEverySource() throws {
        let scratch = try ScratchDirectory()
        #expect(throws: SettingsError.self) {
            try resolve(
                "rules = /srv/default\n[namespace a]\nrules = /srv/a\n", in: scratch,
                commandLine: [(.rules, "/srv")])
        }
    }

    @Test("a symlink to another namespace's rules directory is that directory")
    func symlinkedRules() throws {
        let scratch = try ScratchDirectory()
        let real = try scratch.directory("rules")
        #expect(symlink(real, scratch.path + "/alias") == 0)
        let message = rejection("rules = \(real)\n[namespace a]\nrules = \(scratch.path)/alias\n", in: scratch)
        #expect(message?.contains("is also namespace 'default''s rules directory") == true, "\(message ?? "")")
    }

    @Test("the printed configuration, sections included, reads back as the same settings")
    func printedSectionsRoundTrip() throws {
        var changed = DaemonSettings()
        changed.rulesDirectory = "/srv/rules/default"
        changed.limits.memoryLimit = 48 << 20
        changed.limits.maxFiles = 2000
        var limits = changed.limits
        limits.evaluationTimeout = .milliseconds(15)
        limits.maxFlags = 321
        limits.maxRulesBytes = 3 << 20
        var policy = AccessPolicy.noGrants
        policy[.operate] = [.group("payments"), .uid(1001)]
        changed.namespaces = [
            NamespaceSettings(
                name: "payments", rulesDirectory: "/srv/rules/pay #1", limits: limits, historySize: 4,
                isolation: .process, accessPolicy: policy),
            NamespaceSettings(name: "search", rulesDirectory: "/srv/rules/search", accessPolicy: .noGrants),
        ]
        let text = changed.configurationText
        #expect(text.contains("\n\n[namespace payments]\nrules = \"/srv/rules/pay #1\"\nisolation = process\n"))
        #expect(text.contains("role_operate = group:payments uid:1001\n"))
        let scratch = try ScratchDirectory()
        var read = DaemonSettings()
        try read.apply(configFile: try scratch.write("printed.conf", text))
        #expect(read == changed)
    }
}

@Suite("Settings: checking a configuration without starting")
struct ConfigurationCheckTests {
    private func check(
        _ text: String, in scratch: ScratchDirectory, environment: [String: String] = [:]
    ) throws -> ConfigurationCheck {
        let file = try scratch.write("rulesd.conf", text)
        return DaemonSettings.checkConfiguration(
            commandLine: [], environment: environment, configFile: file, defaultConfigFile: "/nonexistent/x.conf")
    }

    @Test("a good configuration has no problems and names its file and every namespace")
    func good() throws {
        let scratch = try ScratchDirectory()
        let rules = try scratch.directory("rules.d")
        let payments = try scratch.directory("namespaces/payments")
        let result = try check("rules = \(rules)\n[namespace payments]\nrules = \(payments)\n", in: scratch)
        #expect(result.problems == [])
        #expect(result.configFile == scratch.path + "/rulesd.conf")
        #expect(result.settings?.allNamespaces.map(\.rulesDirectory) == [rules, payments])
    }

    @Test("a setting that cannot be read is the one problem")
    func unreadable() throws {
        let scratch = try ScratchDirectory()
        let result = try check("workers = 2\ncolour = blue\n", in: scratch)
        #expect(result.problems == ["\(scratch.path)/rulesd.conf:2: unknown setting 'colour'"])
        #expect(result.settings == nil)
    }

    @Test("every missing rules directory is reported where it was given")
    func missingDirectories() throws {
        let scratch = try ScratchDirectory()
        let file = scratch.path + "/rulesd.conf"
        let notDirectory = try scratch.write("plain", "")
        let result = try check(
            "rules = \(scratch.path)/none\n[namespace a]\nrules = \(scratch.path)/missing\n[namespace b]\n"
                + "rules = \(notDirectory)\n", in: scratch)
        #expect(
            result.problems == [
                "\(file):1: rules: the rules directory \(scratch.path)/none of namespace 'default' does not exist",
                "\(file):3: rules: the rules directory \(scratch.path)/missing of namespace 'a' does not exist",
                "\(file):5: rules: the rules directory \(notDirectory) of namespace 'b' is not a directory",
            ])
    }

    @Test("a role naming an unknown user or group is reported where it was given")
    func unknownPrincipals() throws {
        let scratch = try ScratchDirectory()
        let rules = try scratch.directory("rules.d")
        let payments = try scratch.directory("payments")
        let file = scratch.path + "/rulesd.conf"
        let result = try check(
            "rules = \(rules)\nrole_admin = user:root\n[namespace payments]\nrules = \(payments)\n"
                + "role_operate = user:root user:no-such-user-rdn\n",
            in: scratch, environment: ["RULESD_ROLE_OBSERVE": "group:no-such-group-rdn"])
        #expect(
            result.problems == [
                "environment variable RULESD_ROLE_OBSERVE: no group named 'no-such-group-rdn'",
                "\(file):5: role_operate: no user named 'no-such-user-rdn'",
            ])
    }
}

@Suite("Settings: the example namespaces")
struct ExampleNamespaceTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("config/rulesd.conf's commented example section, uncommented, declares a namespace")
    func sampleSection() throws {
        let text = try String(
            contentsOf: Self.repositoryRoot.appendingPathComponent("config/rulesd.conf"), encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let start = try #require(lines.firstIndex { $0 == "# [namespace payments]" })
        let section = lines[start...].prefix { $0.hasPrefix("# ") }.map { $0.dropFirst(2) + "\n" }.joined()
        let scratch = try ScratchDirectory()
        var settings = DaemonSettings()
        try settings.apply(configFile: try scratch.write("section.conf", section))
        let payments = try #require(settings.namespaces.first)
        #expect(settings.namespaces.count == 1)
        #expect(payments.name == "payments")
        #expect(payments.limits.maxFiles == 500)
        #expect(payments.accessPolicy[.operate] == [.group("payments-oncall")])
    }

    @Test("config/rulesd-run.conf declares the payments namespace of `make run`, with quotas of its own")
    func runConfiguration() throws {
        var settings = DaemonSettings()
        try settings.apply(configFile: Self.repositoryRoot.appendingPathComponent("config/rulesd-run.conf").path)
        #expect(settings.rulesDirectory == "config/rules.d")
        #expect(settings.namespaces.map(\.name) == ["payments"])
        #expect(settings.namespaces.first?.rulesDirectory == "config/namespaces/payments")
        #expect(settings.namespaces.first?.limits.maxFlags == 500)
    }
}
