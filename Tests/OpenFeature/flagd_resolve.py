"""Resolves flags through the OpenFeature Python SDK and its flagd provider (RPC resolver), as an application would.

Usage: flagd_resolve.py SOCKET < script.json
The provider has no socket-path option: a host of "unix://SOCKET?" reaches the Unix socket, because the port it
appends (host:port) lands in the URI's query.

The script is {"questions": [...], "edit": {...}}. Each question is {"type": "boolean"|"string"|"integer"|"float"|
"object", "key": ..., "default": ..., "context": {...}}; a context member "targetingKey" becomes the evaluation
context's targeting key. The edit is {"path": FILE, "content": TEXT, "question": QUESTION}: the question is asked
(its answer cached by the provider when STATIC), FILE is replaced by TEXT, the script waits for a
configuration_change event that names the question's flag, and asks again.
Prints one JSON object: {"answers": [...], "before": ..., "changed": [...], "after": ...}.
"""

import json
import os
import sys
import threading

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.event import ProviderEvent

from sdk_questions import resolve


def main():
    script = json.load(sys.stdin)
    ready = threading.Event()
    changes = []
    changed = threading.Condition()

    def on_ready(_details):
        ready.set()

    def on_change(details):
        with changed:
            changes.extend(details.flags_changed or [])
            changed.notify_all()

    provider = FlagdProvider(
        resolver_type=ResolverType.RPC, host=f"unix://{sys.argv[1]}?", port=8013, tls=False, deadline_ms=30000
    )
    api.set_provider(provider)
    client = api.get_client()
    # Handlers on the client: the API's would also hear the default provider's readiness. A handler added once
    # the provider is ready runs at once.
    client.add_handler(ProviderEvent.PROVIDER_READY, on_ready)
    client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    if not ready.wait(60):
        raise SystemExit("the provider never became ready")
    result = {"answers": [resolve(client, question) for question in script["questions"]]}

    edit = script.get("edit")
    if edit:
        key = edit["question"]["key"]
        result["before"] = resolve(client, edit["question"])
        temporary = edit["path"] + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(edit["content"])
        os.rename(temporary, edit["path"])
        with changed:
            if not changed.wait_for(lambda: key in changes, 60):
                raise SystemExit(f"no configuration_change named {key}; saw {changes}")
            result["changed"] = sorted(set(changes))
        result["after"] = resolve(client, edit["question"])

    api.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
