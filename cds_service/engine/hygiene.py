"""Fact hygiene: the checks and the compact JSON that keep bad facts away from the durable-rules C core."""

from __future__ import annotations

import json
import math

import orjson

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

    This runs for every fact of every evaluation (the parameters fact alone has dozens of fields),
    so the usual case takes one pass over plain str/int/bool/None/float fields and one orjson call.
    Anything else (a str subclass, a list, a float that Python writes in exponent form, an int beyond
    64 bits) goes through `validate_fact` and the standard library writer, which were the only path
    before: both paths accept and reject the same facts and write the same text."""
    if _plain(fact):
        try:
            return orjson.dumps(fact).decode()
        except orjson.JSONEncodeError:  # an int beyond 64 bits, a lone surrogate: the general path decides
            pass
    return general_fact_json(fact)


def general_fact_json(fact: dict) -> str:
    """Validate, then write with the standard library, rewriting the floats the engine would reject."""
    validate_fact(fact)
    if not any(_needs_rewrite(value) for value in fact.values()):
        return json.dumps(fact, ensure_ascii=False, separators=(",", ":"))
    parts = []
    for key, value in fact.items():
        parts.append(f"{json.dumps(key, ensure_ascii=False)}:{_value_json(value)}")
    return "{" + ",".join(parts) + "}"


_REJECTED_NAMES = frozenset(RESERVED_FIELDS - {"id", "sid"})
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def _plain(fact: dict) -> bool:
    """True when `validate_fact` would accept the fact and no float needs rewriting, judged by exact
    types (in lists too): floats from 1e-4 to 1e16 (and zero) are written by Python and orjson alike,
    the shortest round-trip digits without an exponent (tests/test_engine.py compares the two paths)."""
    if len(fact) > MAX_PROPERTIES:
        return False
    for key, value in fact.items():
        if type(key) is not str or key[:1] in ("$", "_") or key in _REJECTED_NAMES:
            return False
        kind = type(value)
        if kind in _PLAIN_TYPES or (kind is float and _plain_float(value)):
            continue
        if kind is not list or len(value) > 40:
            return False  # other types, non-finite and exponent-form floats, long lists: the general path
        for item in value:
            if type(item) not in _PLAIN_TYPES and not (type(item) is float and _plain_float(item)):
                return False
    return True


def _plain_float(value: float) -> bool:
    return value == 0.0 or 1e-4 <= abs(value) < 1e16


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
