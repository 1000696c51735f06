"""What the OpenFeature end-to-end scripts share: one question asked through the SDK's client, and its evaluation
details as JSON. The scripts run from this folder, so Python finds this module beside them."""

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
