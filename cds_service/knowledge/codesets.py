"""Code sets: the code systems the service reads and the matcher that puts a coding or a text into named sets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"

MEMO_SIZE = 16384  # cached code and text lookups per matcher (see CodeSetMatcher._memo)

SYSTEM_LABELS = {ICD10CM: "ICD-10-CM", SNOMED: "SNOMED CT", LOINC: "LOINC", RXNORM: "RxNorm", ATC: "ATC"}


def _icd_key(code: str) -> str:
    """ICD-10-CM codes arrive with or without the dot; compare them without it."""
    return code.replace(".", "").strip().upper()


@dataclass(frozen=True)
class CodeSetMatcher:
    """Maps (system, code) to the names of the code sets that contain it."""

    exact: dict[tuple[str, str], frozenset[str]]
    icd_prefixes: tuple[tuple[str, str], ...]  # (prefix without dot, set name)
    titles: dict[str, str]
    excluded: frozenset[tuple[str, str]] = frozenset()  # (ICD key, set name) a prefix must not take
    phrases: tuple[tuple[re.Pattern, str], ...] = ()  # text fallback (set name)
    windows: tuple[tuple[str, str], ...] = ()  # (set name, settings key): counts only this many days from onset

    @classmethod
    def from_data(cls, data: dict) -> CodeSetMatcher:
        exact: dict[tuple[str, str], set[str]] = {}
        prefixes: list[tuple[str, str]] = []
        excluded: set[tuple[str, str]] = set()
        phrases: list[tuple[re.Pattern, str]] = []
        windows: list[tuple[str, str]] = []
        titles = {}
        for name, entry in data.items():
            if name.startswith("_"):
                continue
            titles[name] = entry.get("title", name)
            for code in entry.get("icd10cm", []):
                if code.endswith("*"):
                    prefixes.append((_icd_key(code[:-1]), name))
                else:
                    exact.setdefault((ICD10CM, _icd_key(code)), set()).add(name)
            excluded.update((_icd_key(code), name) for code in entry.get("exclude", []))
            for code in entry.get("snomed", []):
                exact.setdefault((SNOMED, code), set()).add(name)
            phrases += [(re.compile(rf"\b{re.escape(p.lower())}s?\b"), name) for p in entry.get("text", [])]
            if entry.get("max_days_setting"):
                windows.append((name, entry["max_days_setting"]))
        return cls(
            {k: frozenset(v) for k, v in exact.items()},
            tuple(prefixes),
            titles,
            frozenset(excluded),
            tuple(phrases),
            tuple(windows),
        )

    @cached_property
    def _prefix_index(self) -> dict[str, tuple[str, ...]]:
        """Prefix -> set names: one dict lookup per prefix length instead of a scan of every prefix."""
        index: dict[str, list[str]] = {}
        for prefix, name in self.icd_prefixes:
            index.setdefault(prefix, []).append(name)
        return {prefix: tuple(names) for prefix, names in index.items()}

    @cached_property
    def _prefix_lengths(self) -> tuple[int, ...]:
        return tuple(sorted({len(prefix) for prefix, _ in self.icd_prefixes}))

    @cached_property
    def _memo(self) -> dict[tuple, frozenset[str]]:
        """(system, code) or ("text", text) -> sets: a chart repeats the same few codes and texts
        hundreds of times (refills, yearly problem-list entries), and a code's sets never change
        within a process. Bounded: emptied when it reaches MEMO_SIZE entries."""
        return {}

    def _remember(self, key: tuple, found: frozenset[str]) -> frozenset[str]:
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = found
        return found

    def sets_for(self, system: str | None, code: str | None) -> frozenset[str]:
        if isinstance(system, str) and isinstance(code, str):
            found = self._memo.get((system, code))
            return found if found is not None else self._remember((system, code), self._sets_for(system, code))
        return self._sets_for(system, code)  # odd types: the same answer, or the same error, uncached

    def _sets_for(self, system: str | None, code: str | None) -> frozenset[str]:
        if not system or not code:
            return frozenset()
        if system == ICD10CM:
            key = _icd_key(code)
            found = set(self.exact.get((ICD10CM, key), ()))
            for length in self._prefix_lengths:
                found.update(
                    name for name in self._prefix_index.get(key[:length], ()) if (key, name) not in self.excluded
                )
            return frozenset(found)
        return self.exact.get((system, code.strip()), frozenset())

    def sets_for_text(self, text: str | None) -> frozenset[str]:
        """Only for concepts with listed phrases (e.g. "benign fasciculation"); the match is
        recorded as "text" in the card detail."""
        if not text:
            return frozenset()
        if isinstance(text, str):
            found = self._memo.get(("text", text))
            return found if found is not None else self._remember(("text", text), self._sets_for_text(text))
        return self._sets_for_text(text)

    def _sets_for_text(self, text: str) -> frozenset[str]:
        lowered = text.lower()
        return frozenset(name for pattern, name in self.phrases if pattern.search(lowered))
