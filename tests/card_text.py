"""What clinician text on a card may not contain (the two-layer rule: machine detail belongs in the
card's extension). Shared by the tests that render every fixture and by ad-hoc checks."""

from __future__ import annotations

import re

_FHIR_TYPES = (
    "Condition|Observation|MedicationRequest|MedicationStatement|Medication|ServiceRequest|Procedure|"
    "Patient|Encounter|DiagnosticReport|Practitioner|AllergyIntolerance|Bundle"
)
CHECKS = (
    ("a file name", re.compile(r"\b\w+\.(txt|json|csv|md|py)\b|\b\d{3}_[0-9a-f]{6,}")),
    (
        "a FHIR resource id",
        re.compile(rf"\b(?:{_FHIR_TYPES})/[A-Za-z0-9\-.\\]+|\b[A-Z][A-Za-z]+/[A-Za-z0-9\-.]*\d[A-Za-z0-9\-.]*\b"),
    ),
    ("a rule id as prose", re.compile(r"\bRules? R\d+|\(R\d+\)|\bsee R\d+|\bR\d{1,2}\b(?![.\d])")),
    ("a word cut before an ellipsis", re.compile(r"\w(…|\.\.\.)")),
    ("a profile or seed name", re.compile(r"\bseed\b|\bprofile\b", re.IGNORECASE)),
    ("a repeated value", re.compile(r"(\d[\d.]*\s?[^\s=]+) = \1")),
)
SENTENCE_END = re.compile(r"(?<![A-Z][a-z]\.)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)(?<!\bDr)[.!?](?=\s+[A-Z(*])")


def lead(detail: str) -> str:
    return detail.split("\n\n", 1)[0]


def sentences(text: str) -> int:
    return len(SENTENCE_END.findall(text.rstrip(".!? "))) + 1


def problems(card: dict) -> list[str]:
    """Every reason this card's clinician text is not fit to show, as 'where: what (text)'."""
    found = []
    texts = [("summary", card["summary"]), ("detail", card["detail"])]
    texts += [(f"suggestion '{s['label']}'", s["label"]) for s in card.get("suggestions", [])]
    texts += [
        (f"action '{a['description']}'", a["description"]) for s in card.get("suggestions", []) for a in s["actions"]
    ]
    for where, text in texts:
        for what, pattern in CHECKS:
            hit = pattern.search(text)
            if hit:
                found.append(f"{where}: {what} ({hit.group(0)!r})")
    if len(card["summary"]) >= 140:
        found.append(f"summary: {len(card['summary'])} characters")
    first = lead(card["detail"])
    if sentences(first) > 2:
        found.append(f"detail: lead of {sentences(first)} sentences ({first[:80]!r})")
    if len(first) > 300:  # about 280 characters: two sentences a clinician reads at a glance
        found.append(f"detail: lead of {len(first)} characters")
    return found
