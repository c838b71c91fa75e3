"""Medications: the drug table's rows, the classification of one medication, and name and route helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DrugRow:
    rxcui: str
    name: str
    ingredient_key: str
    ingredient_name: str
    drug_class: str
    atc: str
    systemic: bool


@dataclass
class MedicationMatch:
    """How one medication was classified, kept for the card's explanation."""

    name: str
    classes: tuple[str, ...]
    ingredients: tuple[str, ...]
    matched_by: str  # rxnorm-product | rxnorm-ingredient | atc | text
    code: str | None = None
    notes: list[str] = field(default_factory=list)


def normalise_name(text: str, salt_words: frozenset[str]) -> str:
    """Lower-case, strip punctuation, salts and strengths, so whole-word matching works."""
    text = re.sub(r"[^a-z0-9 ]+", " ", text.lower())
    words = [
        w for w in text.split() if w not in salt_words and not re.fullmatch(r"\d+(\.\d+)?|mg|mcg|ml|g|hr|\d+mg", w)
    ]
    return " ".join(words)


def route_is_non_systemic(texts: list[str], words: list[str]) -> bool:
    joined = " ".join(t.lower() for t in texts if t)
    return any(re.search(rf"\b{re.escape(w)}\b", joined) for w in words)
