"""Resolves flags through the OpenFeature Python SDK and its OFREP provider, as an application would.

Usage: ofrep_resolve.py BASE_URL < questions.json
Each question is {"type": "boolean"|"string"|"integer"|"float"|"object", "key": ..., "default": ...,
"context": {...}}; a context member "targetingKey" becomes the evaluation context's targeting key.
Prints one JSON array: per question, the SDK's evaluation details.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def resolve(client, question):
    context = dict(question.get("context") or {})
    targeting_key = context.pop("targetingKey", None)
    evaluation_context = EvaluationContext(targeting_key=targeting_key, attributes=context)
    method = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }[question["type"]]
    details = method(question["key"], question["default"], evaluation_context)
    return {
        "value": details.value,
        "variant": details.variant,
        "reason": str(details.reason.value if hasattr(details.reason, "value") else details.reason)
        if details.reason is not None
        else None,
        "error_code": details.error_code.value if details.error_code is not None else None,
        "error_message": details.error_message,
        "metadata": dict(details.flag_metadata or {}),
    }


def main():
    api.set_provider(OFREPProvider(sys.argv[1], timeout=30))
    client = api.get_client()
    questions = json.load(sys.stdin)
    print(json.dumps([resolve(client, question) for question in questions]))


if __name__ == "__main__":
    main()
