"""Laboratory analytes: which codes and names an analyte has, and its units converted to one canonical unit."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Analyte:
    name: str
    title: str
    loinc: tuple[str, ...]
    unit: str | None  # None for panels and questionnaires: a final result means "done"
    factors: dict[str, float]
    lookback_setting: str
    panel: bool = False
    text: tuple[re.Pattern, ...] = ()  # fallback for tests without a standard code (PLMS index)
    text_exclude: tuple[str, ...] = ()

    def named_in(self, text: str) -> bool:
        lowered = text.lower()
        return any(p.search(lowered) for p in self.text) and not any(x in lowered for x in self.text_exclude)

    def to_canonical(self, value: float, unit: str | None) -> float | None:
        """Converted value, or None when the unit is not one we know for this analyte."""
        if unit is None:
            return None
        factor = self.factors.get(unit.strip())
        return None if factor is None else value * factor
