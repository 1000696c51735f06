"""A client for rulesd's line protocol (docs/PROTOCOL.md), using only the Python standard library.

    from rulesd_client import Client, DaemonError

    with Client("/run/rulesd/rulesd.sock") as rules:
        answer = rules.flag("checkout.new-flow", {"user_id": "u-42"})
        if answer.value is True:
            ...
        for event in rules.watch():      # blocks; one connection of its own
            print(event["event"], event.get("revision"))

One Client keeps one connection, shared by threads (a lock serialises requests). `pipeline` sends many
requests in one write and matches the answers by `id`. A lost connection is made again by the next request;
questions (flag, flags, route, config, ping, status) are asked once more on a new connection when the old one
turned out to be closed.
"""

import dataclasses
import itertools
import json
import os
import socket
import threading
import time

__all__ = [
    "Client",
    "RulesError",
    "DaemonError",
    "Unavailable",
    "ConnectionLost",
    "Timeout",
    "FlagAnswer",
    "RouteAnswer",
    "KNOWN_CODES",
    "default_socket_path",
]

# The protocol's error codes. New ones may be added; treat an unknown code like INTERNAL.
KNOWN_CODES = frozenset(
    {
        "PARSE_ERROR",
        "INVALID_REQUEST",
        "REQUEST_TOO_LARGE",
        "FLAG_NOT_FOUND",
        "CONFIG_NOT_FOUND",
        "NO_ROUTE",
        "RULE_ERROR",
        "RELOAD_FAILED",
        "FORBIDDEN",
        "REVISION_NOT_FOUND",
        "TOO_MANY_CONNECTIONS",
        "INTERNAL",
    }
)

# Questions may be asked again on a new connection; operations that change something are never repeated.
_IDEMPOTENT = frozenset({"ping", "flag", "flags", "route", "config", "status", "history", "show", "metrics"})


def default_socket_path():
    """$RULESD_SOCKET when set, else /run/rulesd/rulesd.sock (what rulesctl uses)."""
    return os.environ.get("RULESD_SOCKET") or "/run/rulesd/rulesd.sock"


class RulesError(Exception):
    """Every error this module raises."""


class DaemonError(RulesError):
    """The daemon answered ok:false. `code` is the protocol's code (see KNOWN_CODES); `details` the whole
    error object (`problems` for RELOAD_FAILED; `route`, `source`, `rule_error_code` for RULE_ERROR)."""

    def __init__(self, error):
        self.details = error if isinstance(error, dict) else {}
        self.code = str(self.details.get("code", "INTERNAL"))
        self.message = str(self.details.get("message", ""))
        super().__init__(f"{self.code}: {self.message}")

    @property
    def known(self):
        """Whether this module knows the code; treat unknown codes like INTERNAL."""
        return self.code in KNOWN_CODES


class Unavailable(RulesError):
    """No connection could be made: rulesd is not running there, or the socket refuses this user."""


class ConnectionLost(RulesError):
    """The connection closed before the answer came; the next request connects again."""


class Timeout(RulesError):
    """No answer within the client's timeout. The connection is closed (a late answer would be out of step)."""


@dataclasses.dataclass(frozen=True)
class FlagAnswer:
    key: str
    value: object
    variant: str
    reason: str
    source: str
    revision: str
    generation: int
    error_code: str = None
    error_message: str = None


@dataclasses.dataclass(frozen=True)
class RouteAnswer:
    route: str
    target: object
    source: str
    revision: str
    generation: int


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _encode(request):
    # allow_nan=False: rulesd, like JSON itself, has no NaN or Infinity.
    try:
        return json.dumps(request, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"
    except ValueError as error:
        raise RulesError(f"cannot send the request: {error}") from None


class _Connection:
    """One socket with a line buffer."""

    def __init__(self, path, timeout, connect_timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(connect_timeout)
            self.sock.connect(path)
        except OSError as error:
            self.sock.close()
            raise Unavailable(f"cannot reach rulesd at {path}: {error.strerror or error}") from None
        self.sock.settimeout(timeout)
        self.buffer = b""

    def send(self, data):
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Timeout("rulesd did not take the request in time") from None
        except OSError as error:
            raise ConnectionLost(f"sending failed: {error}") from None

    def read_line(self):
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout("rulesd did not answer in time") from None
            except OSError as error:
                raise ConnectionLost(f"reading failed: {error}") from None
            if not chunk:
                raise ConnectionLost("rulesd closed the connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise RulesError("rulesd sent a line that is not JSON") from None

    def close(self):
        self.sock.close()


class Client:
    """A connection to rulesd, made on the first request and again after it is lost."""

    def __init__(self, path=None, timeout=30.0, connect_timeout=5.0):
        self.path = path or default_socket_path()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._connection = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # --- requests ---------------------------------------------------------------------------------------

    def request(self, op, **members):
        """Sends one request and returns the whole answer line (a dict with ok, revision, generation, result).
        Raises DaemonError for ok:false."""
        return self.pipeline([dict(members, op=op)])[0]

    def pipeline(self, requests):
        """Sends every request in one write, then reads every answer; returns the answers in request order.
        An answer that is ok:false is returned as a DaemonError in its place, not raised."""
        with self._lock:
            retry = all(request.get("op") in _IDEMPOTENT for request in requests)
            # Encoded before any connection is made: a request that cannot be sent never reaches the daemon.
            ids, data = self._encode_all(requests)
            while True:
                connection = self._connection
                fresh = connection is None
                if fresh:
                    connection = self._connection = _Connection(self.path, self.timeout, self.connect_timeout)
                try:
                    answers = self._exchange(connection, ids, data)
                    break
                except (ConnectionLost, Timeout) as error:
                    connection.close()
                    self._connection = None
                    # A kept connection may have been closed by a daemon restart before these requests went
                    # out: questions are asked once more, on a new connection.
                    if retry and not fresh and isinstance(error, ConnectionLost):
                        retry = False
                        continue
                    raise
        if len(answers) == 1 and isinstance(answers[0], DaemonError):
            raise answers[0]
        return answers

    def _encode_all(self, requests):
        ids = []
        data = b""
        for request in requests:
            request_id = next(self._ids)
            ids.append(request_id)
            data += _encode(dict({k: v for k, v in request.items() if k != "id"}, id=request_id))
        return ids, data

    def _exchange(self, connection, ids, data):
        connection.send(data)
        by_id = {}
        while len(by_id) < len(ids):
            line = connection.read_line()
            if "event" in line and "ok" not in line:
                continue  # an event line; this connection does not watch
            if line.get("id") in ids:
                by_id[line["id"]] = line
            elif line.get("ok") is False:
                # A refusal of the connection itself (TOO_MANY_CONNECTIONS), sent without an id.
                raise DaemonError(line.get("error"))
        return [by_id[i] if by_id[i].get("ok") else DaemonError(by_id[i].get("error")) for i in ids]

    # --- typed operations ---------------------------------------------------------------------------------

    def ping(self):
        """Returns (revision, generation) of the rule set that serves."""
        answer = self.request("ping")
        return answer["revision"], answer["generation"]

    def flag(self, key, context=None, at=None):
        """Evaluates one flag. A failed rule still answers (reason ERROR, error_code set); an unknown flag
        raises DaemonError with code FLAG_NOT_FOUND."""
        answer = self.request("flag", flag=key, context=context or {}, **({"at": at} if at is not None else {}))
        return _flag_answer(answer["result"].get("key", key), answer["result"], answer)

    def flags(self, context=None, at=None):
        """Evaluates every flag; returns {key: FlagAnswer}."""
        answer = self.request("flags", context=context or {}, **({"at": at} if at is not None else {}))
        return {key: _flag_answer(key, entry, answer) for key, entry in answer["result"]["flags"].items()}

    def route(self, request, at=None):
        """Picks a route; raises DaemonError NO_ROUTE or RULE_ERROR."""
        answer = self.request("route", request=request, **({"at": at} if at is not None else {}))
        result = answer["result"]
        return RouteAnswer(
            result["route"], result.get("target"), result.get("source"), answer["revision"], answer["generation"]
        )

    def config(self, key=None, prefix=None):
        """One value by key, or {key: value} for a prefix; raises DaemonError CONFIG_NOT_FOUND."""
        if (key is None) == (prefix is None):
            raise ValueError("give exactly one of key or prefix")
        if key is not None:
            return self.request("config", key=key)["result"]["value"]
        return self.request("config", prefix=prefix)["result"]["values"]

    def status(self):
        return self.request("status")["result"]

    def reload(self):
        """Rescans the rules; raises DaemonError RELOAD_FAILED (details["problems"]) when they do not load."""
        return self.request("reload")["result"]

    # --- watching -------------------------------------------------------------------------------------------

    def watch(self, reconnect=True, backoff=(0.05, 5.0)):
        """Yields events as dicts, on a connection of its own. The first is {"event": "subscribed",
        "revision": ..., "generation": ...}. When the connection is lost: one {"event": "disconnected",
        "error": ...}, then (if reconnect) new attempts with growing delays and "subscribed" again; reloads in
        between were missed, so re-read anything cached. Close the generator to stop."""
        delay, maximum = backoff
        failures = 0
        reported = False
        while True:
            connection = None
            try:
                connection = _Connection(self.path, None, self.connect_timeout)
                connection.send(_encode({"op": "watch", "id": "watch"}))
                answer = connection.read_line()
                while "event" in answer and "ok" not in answer:
                    answer = connection.read_line()
                if not answer.get("ok"):
                    raise DaemonError(answer.get("error"))
                failures, reported = 0, False
                yield {"event": "subscribed", "revision": answer["revision"], "generation": answer["generation"]}
                while True:
                    line = connection.read_line()
                    if "event" in line and "ok" not in line:
                        yield line
            except (Unavailable, ConnectionLost) as error:
                if not reported:
                    reported = True
                    yield {"event": "disconnected", "error": str(error)}
                if not reconnect:
                    return
            finally:
                if connection is not None:
                    connection.close()
            failures += 1
            time.sleep(min(delay * 2 ** (failures - 1), maximum))


def _flag_answer(key, entry, answer):
    return FlagAnswer(
        key=key,
        value=entry.get("value"),
        variant=entry.get("variant"),
        reason=entry.get("reason"),
        source=entry.get("source"),
        revision=answer["revision"],
        generation=answer["generation"],
        error_code=entry.get("error_code"),
        error_message=entry.get("error_message"),
    )
