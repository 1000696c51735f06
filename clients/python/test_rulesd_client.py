"""Tests of rulesd_client: a unit part against a small fake server, and an end-to-end part against the real
daemon when RULESD_BIN names its binary (skipped otherwise)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rulesd_client  # noqa: E402
from rulesd_client import Client, ConnectionLost, DaemonError, RulesError, Timeout, Unavailable  # noqa: E402

REPOSITORY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def served(request, result):
    return {"id": request.get("id"), "ok": True, "revision": "0123456789abcdef", "generation": 1, "result": result}


def failed(request, code, message):
    return {"id": request.get("id"), "ok": False, "error": {"code": code, "message": message}}


class FakeServer:
    """A Unix socket server speaking the line protocol's framing, answering with `respond(request)`: a list of
    answer objects (none: stay silent). With `reverse`, requests that arrive together are answered in reverse
    order; with `close_after`, every connection is closed after that many answers."""

    def __init__(self, respond, reverse=False, close_after=None):
        self.respond, self.reverse, self.close_after = respond, reverse, close_after
        self.directory = tempfile.mkdtemp(prefix="rcp.")
        self.path = os.path.join(self.directory, "s.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.connections = 0
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection):
        buffer, answered = b"", 0
        try:
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                requests = [json.loads(line) for line in lines if line]
                if self.reverse:
                    requests.reverse()
                for request in requests:
                    for answer in self.respond(request):
                        connection.sendall(json.dumps(answer).encode() + b"\n")
                    answered += 1
                    if self.close_after is not None and answered >= self.close_after:
                        connection.close()
                        return
        except OSError:
            return

    def close(self):
        self.listener.close()
        for connection in self.open:
            connection.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def echo_flag(request):
    if request["op"] == "flag":
        if request["flag"] == "missing":
            return [failed(request, "FLAG_NOT_FOUND", "no flag named 'missing'")]
        if request["flag"] == "future":
            return [failed(request, "SOMETHING_NEW", "a code from a newer daemon")]
        return [
            served(
                request,
                {
                    "key": request["flag"],
                    "value": request["context"].get("v", True),
                    "variant": "on",
                    "reason": "TARGETING_MATCH",
                    "source": "f.lua:1",
                },
            )
        ]
    if request["op"] == "watch":
        return [
            served(request, {"watching": True}),
            {"event": "reloaded", "revision": "f" * 64, "generation": 2, "trigger": "watcher"},
        ]
    return [served(request, {})]


class FakeServerTests(unittest.TestCase):
    def serve(self, respond, **options):
        server = FakeServer(respond, **options)
        self.addCleanup(server.close)
        client = Client(server.path, timeout=5)
        self.addCleanup(client.close)
        return server, client

    def test_flag_answer_is_typed(self):
        _, client = self.serve(echo_flag)
        answer = client.flag("beta", {"v": {"n": 1}})
        self.assertEqual(answer.key, "beta")
        self.assertEqual(answer.value, {"n": 1})
        self.assertEqual((answer.variant, answer.reason, answer.source), ("on", "TARGETING_MATCH", "f.lua:1"))
        self.assertEqual((answer.revision, answer.generation), ("0123456789abcdef", 1))
        self.assertIsNone(answer.error_code)

    def test_errors_carry_the_code_and_unknown_codes_are_kept(self):
        _, client = self.serve(echo_flag)
        with self.assertRaises(DaemonError) as raised:
            client.flag("missing")
        self.assertEqual(raised.exception.code, "FLAG_NOT_FOUND")
        self.assertTrue(raised.exception.known)
        with self.assertRaises(DaemonError) as raised:
            client.flag("future")
        self.assertEqual(raised.exception.code, "SOMETHING_NEW")
        self.assertFalse(raised.exception.known)

    def test_pipelined_answers_are_matched_by_id(self):
        server, client = self.serve(echo_flag, reverse=True)
        answers = client.pipeline([{"op": "flag", "flag": "f", "context": {"v": n}} for n in range(50)])
        self.assertEqual([answer["result"]["value"] for answer in answers], list(range(50)))
        self.assertEqual(server.connections, 1)

    def test_a_silent_daemon_times_out(self):
        _, client = self.serve(lambda request: [])
        client.timeout = 0.2
        with self.assertRaises(Timeout):
            client.ping()

    def test_no_daemon_is_unavailable(self):
        with self.assertRaises(Unavailable):
            Client("/tmp/rcp-none/missing.sock").ping()

    def test_a_question_is_asked_again_after_the_connection_closed(self):
        server, client = self.serve(echo_flag, close_after=1)
        self.assertEqual(client.flag("a").key, "a")
        # The server closed that connection; the next question goes out on a new one.
        self.assertEqual(client.flag("b").key, "b")
        self.assertEqual(server.connections, 2)

    def test_a_change_is_not_repeated_after_the_connection_closed(self):
        server, client = self.serve(echo_flag, close_after=1)
        client.ping()
        with self.assertRaises(ConnectionLost):
            client.reload()
        self.assertEqual(server.connections, 1)

    def test_non_finite_numbers_are_refused_before_sending(self):
        server, client = self.serve(echo_flag)
        with self.assertRaises(RulesError):
            client.flag("beta", {"ratio": float("inf")})
        # No connection was made: the client never opened one (the server's count could lag behind).
        self.assertIsNone(client._connection)
        self.assertEqual(server.connections, 0)

    def test_watch_yields_subscribed_then_events(self):
        _, client = self.serve(echo_flag)
        events = client.watch()
        self.addCleanup(events.close)
        self.assertEqual(next(events)["event"], "subscribed")
        event = next(events)
        self.assertEqual((event["event"], event["generation"]), ("reloaded", 2))

    def test_watch_resubscribes_after_the_connection_closed(self):
        server, client = self.serve(echo_flag, close_after=1)
        events = client.watch(backoff=(0.01, 0.05))
        self.addCleanup(events.close)
        names = [next(events)["event"] for _ in range(5)]
        self.assertEqual(names, ["subscribed", "reloaded", "disconnected", "subscribed", "reloaded"])
        self.assertEqual(server.connections, 2)


BETA_OFF = 'flag "beta" { variants = { on = true, off = false }, default = "off" }\n'
BETA_ON = 'flag "beta" { variants = { on = true, off = false }, default = "on" }\n'


@unittest.skipUnless(os.environ.get("RULESD_BIN"), "RULESD_BIN is not set (the path of a built rulesd)")
class RealDaemonTests(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="rcd.")
        self.rules = os.path.join(self.directory, "rules")
        os.mkdir(self.rules)
        self.write("flags.lua", BETA_OFF + 'config "http.retries" (3)\nroute "web" { target = "www" }\n')
        self.socket = os.path.join(self.directory, "s.sock")
        self.log = open(os.path.join(self.directory, "rulesd.log"), "wb")
        arguments = ["--rules", self.rules, "--socket", self.socket, "--state-dir", self.directory + "/state"]
        # rulesd reads RULESD_* variables as settings, and refuses names it does not know (RULESD_BIN).
        self.environment = {key: value for key, value in os.environ.items() if not key.startswith("RULESD_")}
        self.daemon = subprocess.Popen(
            [os.environ["RULESD_BIN"], *arguments, "--quiet-window", "1s"],
            stdout=self.log,
            stderr=self.log,
            env=self.environment,
        )
        self.addCleanup(self.stop)
        self.client = Client(self.socket)
        self.addCleanup(self.client.close)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.ping()
                break
            except (Unavailable, ConnectionLost):
                if time.monotonic() > deadline or self.daemon.poll() is not None:
                    with open(self.log.name) as log:
                        raise AssertionError("rulesd did not start serving:\n" + log.read()) from None
                time.sleep(0.02)

    def stop(self):
        self.daemon.terminate()
        self.daemon.wait()
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def write(self, name, content):
        temporary = os.path.join(self.rules, ".tmp-" + name)
        with open(temporary, "w") as file:
            file.write(content)
        os.rename(temporary, os.path.join(self.rules, name))

    def test_answers_and_errors(self):
        answer = self.client.flag("beta", {"user_id": "u-1"})
        self.assertEqual((answer.value, answer.variant, answer.reason), (False, "off", "STATIC"))
        self.assertEqual(answer.source, "flags.lua:1")
        self.assertEqual(self.client.flags()["beta"].variant, "off")
        self.assertEqual(self.client.config("http.retries"), 3)
        self.assertEqual(self.client.config(prefix="http."), {"http.retries": 3})
        self.assertEqual(self.client.route({"path": "/"}).target, "www")
        with self.assertRaises(DaemonError) as raised:
            self.client.flag("nope")
        self.assertEqual(raised.exception.code, "FLAG_NOT_FOUND")
        with self.assertRaises(DaemonError) as raised:
            self.client.config("nope")
        self.assertEqual(raised.exception.code, "CONFIG_NOT_FOUND")
        self.assertEqual(self.client.status()["counts"]["flags"], 1)

    def test_watch_sees_an_edit(self):
        events = self.client.watch()
        self.addCleanup(events.close)
        subscribed = next(events)
        self.assertEqual(subscribed["event"], "subscribed")
        self.write("flags.lua", BETA_ON)
        event = next(event for event in events if event["event"] == "reloaded")
        self.assertTrue(event["previous_revision"].startswith(subscribed["revision"]))
        self.assertEqual(self.client.flag("beta").variant, "on")

    def test_reconnects_after_a_restart(self):
        self.client.ping()
        self.daemon.terminate()
        self.daemon.wait()
        with self.assertRaises((Unavailable, ConnectionLost)):
            self.client.ping()
        self.daemon = subprocess.Popen(self.daemon.args, stdout=self.log, stderr=self.log, env=self.environment)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.assertEqual(self.client.flag("beta").variant, "off")
                break
            except Unavailable:
                self.assertLess(time.monotonic(), deadline, "rulesd did not come back")
                time.sleep(0.02)

    @unittest.skipUnless(shutil.which("node"), "node is not installed")
    def test_node_recipe_in_the_documentation(self):
        with open(os.path.join(REPOSITORY, "docs", "CLIENTS.md")) as file:
            recipe = re.search(r"```js\n(.*?)```", file.read(), re.S).group(1)
        script = os.path.join(self.directory, "recipe.js")
        with open(script, "w") as file:
            file.write(recipe)
        run = subprocess.run(
            ["node", script, "beta"],
            env=dict(self.environment, RULESD_SOCKET=self.socket),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        answers = [json.loads(line) for line in run.stdout.splitlines()]
        self.assertEqual(answers[0]["result"]["variant"], "off")
        self.assertEqual(answers[1]["error"]["code"], "FLAG_NOT_FOUND")


if __name__ == "__main__":
    unittest.main()
