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

from sdk_questions import resolve


def main():
    api.set_provider(OFREPProvider(sys.argv[1], timeout=30))
    client = api.get_client()
    questions = json.load(sys.stdin)
    print(json.dumps([resolve(client, question) for question in questions]))


if __name__ == "__main__":
    main()
