import ArgumentParser
import Glibc

/// `rulesctl`: the command-line client of rulesd.
///
/// Every subcommand is its own type in its own file; adding one means adding it to `subcommands` below. Commands
/// that print answers share ``AnswerPrinter`` so that an answer looks the same whether it came from the daemon or
/// from an offline evaluation.
@main
struct RulesCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rulesctl",
        abstract: "Check rule sets, evaluate them offline, and query rulesd.",
        discussion: """
            Offline commands work on a rules directory without a running daemon: 'check' validates it the way \
            rulesd loads it, 'eval' answers flag, route and config questions exactly as rulesd would.

            Online commands ask a running rulesd over its socket (--socket, else $RULESD_SOCKET, else \
            /run/rulesd/rulesd.sock) and print exactly what 'eval' prints for the same rules. With --namespace NAME \
            (else $RULESD_NAMESPACE) every request addresses that namespace of rulesd rather than the default one.

            Exit status: 0 on success, 1 when the answer is an error (FLAG_NOT_FOUND, CONFIG_NOT_FOUND, NO_ROUTE, \
            RULE_ERROR, RELOAD_FAILED, INVALID_RULES, ...), 2 on a usage error, 3 when rulesd cannot be reached.
            """,
        subcommands: [
            Query.Ping.self, Query.Status.self, Query.Watch.self, Query.Reload.self, Query.FlagQuery.self,
            Query.FlagsQuery.self, Query.RouteQuery.self, Query.ConfigQuery.self, Query.Metrics.self,
            History.List.self, History.Show.self, History.Diff.self, History.Rollback.self, History.Resume.self,
            CaptureCommand.self, OverrideCommand.self, AuditCommand.self,
            Check.self, Eval.self, TestCommand.self, Import.self,
            Explain.self,
            InitCommand.self,
        ]
    )

    // Lets `--socket` stand before the subcommand's name (`rulesctl --socket PATH status`); each online
    // subcommand declares it too and sees the same value.
    @OptionGroup var socket: SocketOptions

    /// Exit status for command-line mistakes: 2, as grep, diff and most shells' builtins use, rather than
    /// ArgumentParser's EX_USAGE (64), so that scripts can tell "you called it wrong" from "the answer is an error"
    /// with the usual convention.
    static let usageExitStatus: Int32 = 2

    /// ArgumentParser's own entry point, except for the exit status of usage errors.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                Console.write(fullMessage(for: error) + "\n", to: .standardError)
                terminate(usageExitStatus)
            }
            exit(withError: error)
        }
    }
}

/// The C library's `exit`, which the command types' own `exit(withError:)` hides inside them.
private func terminate(_ status: Int32) -> Never {
    exit(status)
}
