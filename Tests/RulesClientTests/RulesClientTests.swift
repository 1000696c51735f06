import Foundation
import RuleModel
import RulesClient
import RulesTestSupport
import Testing

@Suite("RulesClient against the real daemon on the example rules")
struct RulesClientAnswerTests {
    let daemon: DaemonHarness

    init() throws {
        daemon = try DaemonHarness()
        try daemon.start(arguments: ["--rules", exampleRules, "--watch", "off"])
    }

    struct Question: Sendable, CustomTestStringConvertible {
        var flag: String
        var arguments: [String]
        var context: JSONObject
        var testDescription: String { ([flag] + arguments).joined(separator: " ") }
    }

    @Test(
        "flag answers equal rulesctl flag's",
        arguments: [
            Question(
                flag: "checkout.new-flow", arguments: ["-c", "user_id=u-42", "-c", "user.plan=pro"],
                context: ["user_id": "u-42", "user": ["plan": "pro"]]),
            Question(
                flag: "checkout.new-flow", arguments: ["-c", "user_id=u-7", "-c", "country=DE"],
                context: ["user_id": "u-7", "country": "DE"]),
            Question(
                flag: "search.semantic", arguments: ["-c", "user_id=u-9", "-c", "user.plan=enterprise"],
                context: ["user_id": "u-9", "user": ["plan": "enterprise"]]),
            Question(
                flag: "checkout.payment-page", arguments: ["-c", "user_id=u-42", "-c", "country=DE"],
                context: ["user_id": "u-42", "country": "DE"]),
            Question(flag: "support.live-chat", arguments: [], context: [:]),
            Question(flag: "checkout.kill-switch", arguments: [], context: [:]),
        ])
    func flagAnswersEqualRulesctl(question: Question) async throws {
        let socket = daemon.socketPath
        let printed = try await offPool {
            try rulesctl(["flag", question.flag, "--json"] + question.arguments, socket: socket)
        }
        #expect(printed.status == 0)
        let expected = try JSONParser().parse(printed.stdout)
        let client = makeClient(daemon)
        let answer = try await client.flag(question.flag, context: question.context)
        #expect(answer.key == question.flag)
        #expect(answer.value == expected["value"])
        #expect(answer.variant == expected["variant"]?.stringValue)
        #expect(answer.reason.rawValue == expected["reason"]?.stringValue)
        #expect(answer.source == expected["source"]?.stringValue)
        #expect(answer.ruleError == nil)
        await client.shutdown()
    }

    @Test("flags, route and config answers are typed")
    func otherAnswers() async throws {
        let client = makeClient(daemon)
        let one = try await client.flag("checkout.new-flow", context: ["user_id": "u-42"])
        let all = try await client.flags(context: ["user_id": "u-42"])
        #expect(all["checkout.new-flow"]?.value == one.value)
        #expect(all["checkout.new-flow"]?.variant == one.variant)
        #expect(all.flags.map(\.key) == all.flags.map(\.key).sorted())
        #expect(all.servedBy == one.servedBy)

        let route = try await client.route(["path": "/api/users/42", "headers": ["x-api-version": "2"]])
        #expect(route.route == "users-v2-explicit")
        #expect(route.source?.hasPrefix("routes.lua:") == true)

        #expect(try await client.config("http.timeout_ms").value == 1500)
        let http = try await client.config(prefix: "http.")
        #expect(http.values["http.retries"] == 3)
        #expect(http.values.keys == http.values.keys.sorted())

        let status = try await client.status()
        #expect(status.revision.hasPrefix(one.servedBy.revision))
        #expect(status.revision.count == 64)
        #expect(status.flagCount == all.flags.count)
        #expect(try await client.ping() == one.servedBy)
        await client.shutdown()
    }

    @Test("an overridden flag answers reason override with the override's details, in flag and flags")
    func overriddenFlag() async throws {
        let set = try daemon.request(
            #"{"op":"override_set","flag":"checkout.kill-switch","variant":"on","ttl":"1h","reason":"incident 7"}"#)
        #expect(set["ok"] == true, "\(set)")
        let client = makeClient(daemon)
        let one = try await client.flag("checkout.kill-switch")
        #expect(one.reason == .override)
        #expect(one.variant == "on")
        #expect(one.override?["reason"] == "incident 7")
        #expect(one.override?["expires_at"]?.stringValue != nil)
        let all = try await client.flags()
        #expect(all["checkout.kill-switch"]?.reason == .override)
        #expect(all["checkout.kill-switch"]?.override?["reason"] == "incident 7")
        #expect(all["checkout.new-flow"]?.override == nil)
        await client.shutdown()
    }

    @Test("errors carry the protocol's codes")
    func errorCodes() async throws {
        let client = makeClient(daemon)
        let missing = await failure { try await client.flag("no.such.flag") }
        #expect(missing?.code == .flagNotFound)
        if case .daemon(let error)? = missing { #expect(error.message.contains("no.such.flag")) }
        #expect(await failure { try await client.config("no.such.key") }?.code == .configNotFound)
        #expect(await failure { try await client.config(prefix: "no.such.prefix.") }?.code == .configNotFound)
        #expect(await failure { try await client.request(["op": "frobnicate"]) }?.code == .invalidRequest)
        let unsendable = await failure {
            try await client.flag("checkout.new-flow", context: ["ratio": .number(.infinity)])
        }
        guard case .invalidArgument? = unsendable else {
            Issue.record("a context with an infinite number was not refused: \(String(describing: unsendable))")
            return
        }
        // The connection stays usable after every error.
        #expect(try await client.flag("checkout.kill-switch").reason == .static)
        await client.shutdown()
    }

    @Test("many concurrent requests share one pipelined connection")
    func pipelining() async throws {
        let client = makeClient(daemon)
        let users = (0..<400).map { "u-\($0)" }
        let answers = try await withThrowingTaskGroup(of: (String, FlagAnswer).self) { group in
            for user in users {
                group.addTask {
                    (user, try await client.flag("checkout.new-flow", context: ["user_id": .string(user)]))
                }
            }
            var answers: [String: FlagAnswer] = [:]
            for try await (user, answer) in group { answers[user] = answer }
            return answers
        }
        #expect(answers.count == users.count)
        // Each answer belongs to its own request: asked again one by one, every user gets the same variant.
        for user in users.prefix(40) {
            let again = try await client.flag("checkout.new-flow", context: ["user_id": .string(user)])
            #expect(again.variant == answers[user]?.variant)
        }
        #expect(Set(answers.values.compactMap(\.variant)) == ["on", "off"])
        // The daemon counts one connection: this client's.
        #expect(try await client.status().connections == 1)
        await client.shutdown()
    }

    @Test("after shutdown, requests fail with shutDown and watches end")
    func shutdown() async throws {
        let client = makeClient(daemon)
        var events = await client.watch().makeAsyncIterator()
        guard case .subscribed? = await events.next() else {
            Issue.record("the watch did not subscribe")
            return
        }
        _ = try await client.ping()
        await client.shutdown()
        do {
            _ = try await client.ping()
            Issue.record("a request after shutdown was answered")
        } catch {
            #expect(error == .shutDown)
        }
        while let event = await events.next() {
            guard case .disconnected = event else {
                Issue.record("unexpected event after shutdown: \(event)")
                break
            }
        }
    }
}

@Suite("RulesClient without a daemon")
struct RulesClientTransportTests {
    @Test("error codes the library does not know keep their spelling")
    func unknownCodes() {
        #expect(RulesErrorCode(rawValue: "FLAG_NOT_FOUND") == .flagNotFound)
        #expect(RulesErrorCode(rawValue: "TOO_MANY_CONNECTIONS") == .tooManyConnections)
        #expect(RulesErrorCode(rawValue: "SOMETHING_NEW") == .unknown("SOMETHING_NEW"))
        #expect(RulesErrorCode.unknown("SOMETHING_NEW").rawValue == "SOMETHING_NEW")
        #expect(RulesErrorCode.internal.rawValue == "INTERNAL")
    }

    @Test("back-off delays grow to their maximum and start again after a success")
    func backoffDelays() {
        let backoff = RulesdClientConfiguration.Backoff(
            initial: .milliseconds(50), maximum: .milliseconds(300), multiplier: 2)
        #expect(
            (1...5).map { backoff.delay(afterFailures: $0) } == [
                .milliseconds(50), .milliseconds(100), .milliseconds(200), .milliseconds(300), .milliseconds(300),
            ])
    }

    @Test("a request fails with unavailable when nothing listens on the socket")
    func unavailable() async throws {
        let client = RulesdClient(configuration: RulesdClientConfiguration(socketPath: "/tmp/rcs-none/missing.sock"))
        do {
            _ = try await client.ping()
            Issue.record("answered without a daemon")
        } catch {
            guard case .unavailable(let path, _) = error else { throw error }
            #expect(path == "/tmp/rcs-none/missing.sock")
        }
        await client.shutdown()
    }

    @Test("within the back-off delay after a failed attempt, requests fail at once without trying")
    func backoffFailsFast() async throws {
        let path = try SilentListener.temporaryDirectory() + "/s.sock"
        let client = RulesdClient(
            configuration: RulesdClientConfiguration(
                socketPath: path, requestTimeout: .milliseconds(100),
                backoff: .init(initial: .seconds(3600), maximum: .seconds(3600))))
        guard case .unavailable? = await failure({ try await client.ping() }) else {
            Issue.record("the first attempt did not fail with unavailable")
            return
        }
        // Something listens now; a client that tried would time out instead.
        let listener = try SilentListener(path: path)
        guard case .unavailable? = await failure({ try await client.ping() }) else {
            Issue.record("a request within the back-off delay tried to connect")
            return
        }
        let eager = RulesdClient(
            configuration: RulesdClientConfiguration(socketPath: listener.path, requestTimeout: .milliseconds(100)))
        #expect(await failure { try await eager.ping() } == .timedOut(.milliseconds(100)))
        await client.shutdown()
        await eager.shutdown()
    }

    @Test("a request without an answer fails with timedOut and leaves the connection open")
    func timeout() async throws {
        let listener = try SilentListener()
        let client = RulesdClient(
            configuration: RulesdClientConfiguration(socketPath: listener.path, requestTimeout: .milliseconds(200)))
        for _ in 0..<2 {
            do {
                _ = try await client.ping()
                Issue.record("a silent peer answered")
            } catch {
                #expect(error == .timedOut(.milliseconds(200)))
            }
        }
        await client.shutdown()
    }

    @Test("a cancelled request stops waiting with cancelled")
    func cancellation() async throws {
        let listener = try SilentListener()
        let client = RulesdClient(
            configuration: RulesdClientConfiguration(socketPath: listener.path, requestTimeout: nil))
        let request = Task { try await client.ping() }
        request.cancel()
        switch await request.result {
        case .success: Issue.record("a silent peer answered")
        case .failure(let error): #expect(error as? RulesdClientError == .cancelled)
        }
        await client.shutdown()
    }
}
