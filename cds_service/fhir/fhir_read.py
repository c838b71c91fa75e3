"""Lenient readers for FHIR R4 JSON as real EHRs send it: arrays that arrive as single objects,
primitives of the wrong type, partial dates, values with comparators. Each returns None (or an
empty list) for anything it cannot read with confidence; callers skip and log such data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from cds_service.knowledge.codesets import UCUM

MAX_TEXT = 120  # longest free text copied into a fact (card detail escapes it later)


def as_list(value) -> list:
    """FHIR arrays sometimes arrive as single objects (the sandbox's category, reasonCode)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def mapping(value) -> dict:
    """`value` when it is a JSON object, else an empty one: a lenient read of an optional object field."""
    return value if isinstance(value, dict) else {}


def codings_of(concept) -> list[dict]:
    if not isinstance(concept, dict):
        return []
    return [c for c in as_list(concept.get("coding")) if isinstance(c, dict) and isinstance(c.get("code"), str)]


def text_of(concept) -> str | None:
    text = concept.get("text") if isinstance(concept, dict) else None
    return text if isinstance(text, str) and text.strip() else None


def string(value) -> str | None:
    """A FHIR primitive that must be a string, or None: a status sent as a list is not a status."""
    return value if isinstance(value, str) else None


def first_code(concept) -> str | None:
    codes = codings_of(concept)
    return codes[0]["code"] if codes else None


def reference_of(res: dict) -> str:
    rid = res.get("id")
    return f"{res.get('resourceType')}/{rid if isinstance(rid, str) else '(no id)'}"


def refers_to_patient(reference, patient_id: str) -> bool:
    if not isinstance(reference, str):
        return False
    return reference == f"Patient/{patient_id}" or reference.endswith(f"/Patient/{patient_id}")


def clip(text: str, limit: int = MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_fhir_date(value) -> date | None:
    """A full date or dateTime; partial dates (year, year-month) are too vague to compare."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", value):
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC)
        return parsed.date()
    except ValueError:
        return None


def fhir_date_range(value) -> tuple[date, date] | None:
    """The first and last day a FHIR date may mean: "2016" is 2016-01-01..2016-12-31, "2016-05"
    is May 2016, a full date or dateTime is one day. None for anything else."""
    full = parse_fhir_date(value)
    if full:
        return full, full
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", value)
    if not match:
        return None
    year, month = int(match.group(1)), match.group(2)
    try:
        if month is None:
            return date(year, 1, 1), date(year, 12, 31)
        first = date(year, int(month), 1)
    except ValueError:
        return None
    following = date(year + (first.month == 12), first.month % 12 + 1, 1)
    return first, date.fromordinal(following.toordinal() - 1)


def observation_date(res: dict) -> date | None:
    period = res.get("effectivePeriod")
    for candidate in (
        res.get("effectiveDateTime"),
        period.get("end") if isinstance(period, dict) else None,
        res.get("issued"),
    ):
        parsed = parse_fhir_date(candidate)
        if parsed:
            return parsed
    return None


_MAX_ABS_VALUE = 1e9  # every analyte we read is a non-negative amount far below this
COMPARATORS = ("<", "<=", ">", ">=")
_TEXT_VALUE = re.compile(r"\s*(<=|>=|<|>|≤|≥)?\s*(\d{1,9}(?:\.\d+)?)\s*([^\s\d<>=≤≥][^\s<>=≤≥]*)?\s*")


@dataclass(frozen=True)
class Value:
    """A numeric result as reported: the number, its comparator ('=' when exact), its unit (None
    when the result gave none) and where it came from ('quantity' or 'text')."""

    number: float
    comparator: str
    unit: str | None
    source: str


def quantity_of(res: dict) -> Value | None:
    """The value of `valueQuantity`, or of a `valueString` that holds a number with an optional
    comparator and unit ("<10", "< 10 ng/mL", ">1000"); None when neither can be read with
    confidence (no number, an unknown comparator, NaN, a negative or absurd amount)."""
    quantity = res.get("valueQuantity")
    if isinstance(quantity, dict):
        value = quantity.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not (0 <= value <= _MAX_ABS_VALUE):  # NaN, inf, huge ints and negative amounts are misreads
            return None
        comparator = quantity.get("comparator", "=")
        if comparator not in (*COMPARATORS, "="):
            return None  # a comparator we do not know could turn a bound into its opposite
        unit = (
            quantity.get("code") if quantity.get("system") == UCUM and isinstance(quantity.get("code"), str) else None
        )
        if unit is None and isinstance(quantity.get("unit"), str):
            unit = quantity["unit"]
        return Value(float(value), comparator, unit, "quantity")
    text = res.get("valueString")
    match = _TEXT_VALUE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    comparator = {"≤": "<=", "≥": ">="}.get(match.group(1), match.group(1)) or "="
    return Value(float(match.group(2)), comparator, match.group(3), "text")
