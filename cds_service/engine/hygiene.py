"""Fact hygiene: the checks and the compact JSON that keep bad facts away from the durable-rules C core."""

from __future__ import annotations

import json
import math

MAX_PROPERTIES = 50
RESERVED_FIELDS = {"id", "sid", "alias", "define", "matches", "imatches", "anyItem", "allItems", "items"}


class EngineError(Exception):
    """The engine rejected input or failed internally; no cards may be returned."""


# ---- fact hygiene (R4) ------------------------------------------------------------------


def validate_fact(fact: dict) -> None:
    """Crash prevention, not tidiness: the C core segfaults on some inputs (nested objects, huge lists)."""
    count = 0
    for key, value in fact.items():
        if (
            not isinstance(key, str)
            or key.startswith(("$", "_"))
            or (key in RESERVED_FIELDS and key not in ("id", "sid"))
        ):
            raise EngineError(f"reserved or invalid field name {key!r}")
        count += 1
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise EngineError(f"non-finite number in field {key!r}")
            if not isinstance(item, (str, int, float, bool)) and item is not None:
                raise EngineError(f"field {key!r} holds {type(item).__name__}, not a JSON scalar")
        if isinstance(value, list) and len(value) > 40:
            raise EngineError(f"field {key!r} holds more than 40 items")
    if count > MAX_PROPERTIES:
        raise EngineError(f"fact has {count} properties; the limit is {MAX_PROPERTIES}")


def _format_number(value: float) -> str:
    text = repr(value)
    if "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"  # the engine's parser needs a fraction before an exponent
    return text


def fact_json(fact: dict) -> str:
    """JSON text for the engine, with every float written in a form its parser accepts.

    One `json.dumps` of the whole fact when no float needs rewriting (the usual case: it writes
    floats with `repr`, as `_format_number` does); field by field only for a float in exponent
    form without a fraction, which the engine's parser rejects."""
    validate_fact(fact)
    if not any(_needs_rewrite(value) for value in fact.values()):
        return json.dumps(fact, ensure_ascii=False, separators=(",", ":"))
    parts = []
    for key, value in fact.items():
        parts.append(f"{json.dumps(key, ensure_ascii=False)}:{_value_json(value)}")
    return "{" + ",".join(parts) + "}"


def _needs_rewrite(value) -> bool:
    if isinstance(value, float):
        return _format_number(value) != repr(value)
    return isinstance(value, list) and any(isinstance(v, float) and _format_number(v) != repr(v) for v in value)


def _value_json(value) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return _format_number(value)
    return "[" + ",".join(_value_json(v) for v in value) + "]"
