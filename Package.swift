// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "rulesd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "rulesd", targets: ["rulesd"]),
        .executable(name: "rulesctl", targets: ["rulesctl"]),
        .library(name: "RulesClient", targets: ["RulesClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.0"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.0"),
    ],
    targets: [
        // Lua 5.4 from Debian's liblua5.4-dev.
        .systemLibrary(name: "CLua", pkgConfig: "lua5.4", providers: [.apt(["liblua5.4-dev"])]),
        // libinotifytools from Debian's libinotifytools0-dev (no pkg-config file is shipped).
        .systemLibrary(name: "CInotifyTools", providers: [.apt(["libinotifytools0-dev"])]),
        // Every use of the Lua C API: sandboxed states, budgets, bounded library functions,
        // rule registration and evaluation, each entered from Swift through one protected call.
        .target(name: "CRuleSandbox", dependencies: ["CLua"]),
        // epoll and eventfd from the C library, for the query socket's event loops.
        .systemLibrary(name: "CEventPoll"),
        // The one reader of the system's clocks, for every target.
        .target(name: "SystemClock"),
        // statfs(2) from the C library, for the rule tree scanner.
        .systemLibrary(name: "CFileSystemInfo"),
        // Value types of the rule model and JSON; no C, no I/O.
        .target(name: "RuleModel"),
        // Loads rule directories into sandboxed Lua states and evaluates them.
        .target(
            name: "RuleEngine",
            dependencies: [
                "CFileSystemInfo",
                "CRuleSandbox",
                "RuleModel",
                "SystemClock",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Watches the rules directory (inotify through libinotifytools, or polling) and says when to rescan.
        .target(
            name: "RuleWatcher",
            dependencies: [
                "CInotifyTools",
                "RuleEngine",
                "RuleModel",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // systemd's notify, socket-activation and watchdog protocols, spoken without libsystemd.
        .target(name: "SystemdSupport", dependencies: ["SystemClock"]),
        // The socket protocol: line framing, request decoding, answer encoding.
        .target(
            name: "RulesProtocol",
            dependencies: [
                "RuleEngine",
                "RuleModel",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The query-serving core: the workers' epoll event loops, the listener, and each connection's state
        // machine. Knows nothing of rules or reloads beyond the QueryBackend protocol the daemon implements.
        .target(
            name: "QueryServing",
            dependencies: [
                "CEventPoll",
                "RuleEngine",
                "RulesProtocol",
                "SystemdSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The daemon: workers, generations, reloads, settings, metrics, systemd glue; serves through QueryServing.
        .target(
            name: "RulesDaemon",
            dependencies: [
                "RuleEngine",
                "RuleModel",
                "RuleWatcher",
                "RulesProtocol",
                "SystemdSupport",
                "SystemClock",
                "QueryServing",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // A client library for applications: async/await over the line protocol, one pipelined connection.
        .target(
            name: "RulesClient",
            dependencies: [
                "RuleModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Replays captured requests against two rule sets and says what changed (`rulesctl diff --replay`).
        .target(name: "RuleReplay", dependencies: ["RuleEngine", "RuleModel"]),
        .executableTarget(
            name: "rulesd",
            dependencies: [
                "RulesDaemon",
                "SystemdSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "rulesctl",
            dependencies: [
                "RuleEngine",
                "RuleReplay",
                "RuleModel",
                "RulesProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Shared by the test targets: file-system edit sequences, a harness that runs the real daemon.
        .target(name: "RulesTestSupport", dependencies: ["RuleModel"], path: "Tests/RulesTestSupport"),
        // Benchmarks that print figures (`make bench`): the engine in process, the socket under load, reloads.
        .executableTarget(
            name: "rulesbench",
            dependencies: [
                "CLua",
                "RuleEngine",
                "RuleReplay",
                "RuleModel",
                "RulesProtocol",
                "SystemdSupport",
                "SystemClock",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "RuleModelTests", dependencies: ["RuleModel", "RulesTestSupport"]),
        .testTarget(name: "RuleReplayTests", dependencies: ["RuleReplay", "RuleEngine", "RuleModel"]),
        .testTarget(
            name: "RuleEngineTests", dependencies: ["RuleEngine", "RuleModel", "RulesTestSupport"],
            exclude: ["Fixtures"]),
        .testTarget(
            name: "RuleWatcherTests",
            dependencies: [
                "RuleWatcher", "RuleEngine", "RuleModel", "RulesTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "SystemdSupportTests", dependencies: ["SystemdSupport", "RulesTestSupport"]),
        .testTarget(
            name: "RulesProtocolTests",
            dependencies: [
                "RulesProtocol",
                "RuleEngine",
                "RuleModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        // The serving core over socketpairs: the event loop, the connection state machine, the registry.
        .testTarget(
            name: "QueryServingTests",
            dependencies: [
                "QueryServing",
                "RulesProtocol",
                "RuleModel",
                "RulesTestSupport",
                "SystemdSupport",
                "CEventPoll",
                "CInotifyTools",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "RulesDaemonTests",
            dependencies: [
                "RulesDaemon",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // End to end: starts the real binaries on temporary sockets and rules directories.
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["rulesd", "rulesctl", "rulesbench", "RuleModel", "SystemdSupport", "RulesTestSupport"]
        ),
        // The client library against the real daemon.
        .testTarget(
            name: "RulesClientTests",
            dependencies: [
                "RulesClient", "RuleModel", "RulesTestSupport", "rulesd", "rulesctl",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ]
)
