"""Terminology: code sets, lab units and medication classes, loaded once from `knowledge/`.

Everything clinical that is a *list* (codes, units, drug classes) lives in data files so a
clinical informaticist can review it without reading Python. This module only knows how to
match against those lists, and it never guesses: an unknown code, unit or drug matches nothing.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

KNOWLEDGE_DIR = Path(__file__).parent / "knowledge"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"

SYSTEM_LABELS = {ICD10CM: "ICD-10-CM", SNOMED: "SNOMED CT", LOINC: "LOINC", RXNORM: "RxNorm", ATC: "ATC"}


def _load_json(name: str) -> dict:
    with open(KNOWLEDGE_DIR / name, encoding="utf-8") as handle:
        return json.load(handle)


def _icd_key(code: str) -> str:
    """ICD-10-CM codes arrive with or without the dot; compare them without it."""
    return code.replace(".", "").strip().upper()


@dataclass(frozen=True)
class CodeSetMatcher:
    """Maps (system, code) to the names of the code sets that contain it."""

    exact: dict[tuple[str, str], frozenset[str]]
    icd_prefixes: tuple[tuple[str, str], ...]  # (prefix without dot, set name)
    titles: dict[str, str]

    @classmethod
    def from_data(cls, data: dict) -> "CodeSetMatcher":
        exact: dict[tuple[str, str], set[str]] = {}
        prefixes: list[tuple[str, str]] = []
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
            for code in entry.get("snomed", []):
                exact.setdefault((SNOMED, code), set()).add(name)
        return cls({k: frozenset(v) for k, v in exact.items()}, tuple(prefixes), titles)

    def sets_for(self, system: str | None, code: str | None) -> frozenset[str]:
        if not system or not code:
            return frozenset()
        if system == ICD10CM:
            key = _icd_key(code)
            found = set(self.exact.get((ICD10CM, key), ()))
            found.update(name for prefix, name in self.icd_prefixes if key.startswith(prefix))
            return frozenset(found)
        return self.exact.get((system, code.strip()), frozenset())


@dataclass(frozen=True)
class Analyte:
    name: str
    title: str
    loinc: tuple[str, ...]
    unit: str
    factors: dict[str, float]
    lookback_setting: str

    def to_canonical(self, value: float, unit: str | None) -> float | None:
        """Converted value, or None when the unit is not one we know for this analyte."""
        if unit is None:
            return None
        factor = self.factors.get(unit.strip())
        return None if factor is None else value * factor


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


class Terminology:
    """All bundled knowledge, loaded once per process (in `create_app`)."""

    def __init__(self, settings_overrides: dict | None = None):
        self.codesets = CodeSetMatcher.from_data(_load_json("codesets.json"))
        self.analytes = self._load_analytes(_load_json("labs.json"))
        self.loinc_to_analyte = {code: a for a in self.analytes.values() for code in a.loinc}
        self.drugs = _load_json("drugs.json")
        self.settings = {k: v for k, v in _load_json("settings.json").items() if not k.startswith("_")}
        self.settings.update(settings_overrides or {})
        self._rows_by_rxcui, self._rows_by_ingredient = self._load_drug_table()
        self.groups = self._groups()

    @staticmethod
    def _load_analytes(data: dict) -> dict[str, Analyte]:
        return {
            name: Analyte(name, e["title"], tuple(e["loinc"]), e["unit"], dict(e["factors"]), e["lookback"])
            for name, e in data.items()
            if not name.startswith("_")
        }

    @staticmethod
    def _load_drug_table() -> tuple[dict[str, list[DrugRow]], dict[str, list[DrugRow]]]:
        by_rxcui: dict[str, list[DrugRow]] = {}
        by_ingredient: dict[str, list[DrugRow]] = {}
        with open(KNOWLEDGE_DIR / "rxnorm_leg_movement_drug_products.csv", encoding="utf-8", newline="") as fh:
            for rec in csv.DictReader(fh):
                ingredient_name = rec["ingredient_name"].strip()
                row = DrugRow(
                    rxcui=rec["rxcui"].strip(),
                    name=rec["name"].strip(),
                    # Rows without an ingredient code (asenapine, aripiprazole lauroxil) key on the name.
                    ingredient_key=rec["ingredient_rxcui"].strip() or ingredient_name,
                    ingredient_name=ingredient_name,
                    drug_class=rec["drug_class"].strip(),
                    atc=rec["atc"].strip(),
                    systemic=rec["systemic"].strip().lower() != "no",
                )
                by_rxcui.setdefault(row.rxcui, []).append(row)
                if rec["ingredient_rxcui"].strip():
                    by_ingredient.setdefault(rec["ingredient_rxcui"].strip(), []).append(row)
        return by_rxcui, by_ingredient

    def _groups(self) -> dict[str, frozenset[str]]:
        groups = {name: set(classes) for name, classes in self.drugs["groups"].items()}
        groups["rls_worsening"].update(self.settings.get("rls_worsening_additions", []))
        return {name: frozenset(classes) for name, classes in groups.items()}

    def class_title(self, drug_class: str) -> str:
        return self.drugs["class_titles"].get(drug_class, drug_class)

    # ---- medication matching (clinical-rules.md section 9) -------------------------------

    @cached_property
    def _name_index(self) -> dict[str, list[DrugRow]]:
        """Whole-word names (ingredients, WHO synonyms, bracketed brands) to table rows."""
        index: dict[str, list[DrugRow]] = {}
        for rows in self._rows_by_rxcui.values():
            for row in rows:
                if row.ingredient_name:
                    index.setdefault(normalise_name(row.ingredient_name, self.salt_words), []).append(row)
                brand = re.search(r"\[([^\]]+)\]", row.name)
                if brand:
                    index.setdefault(normalise_name(brand.group(1), self.salt_words), []).append(row)
        for synonym, canonical in self.drugs["name_synonyms"].items():
            index.setdefault(synonym, []).extend(index.get(canonical, []))
        return index

    @cached_property
    def salt_words(self) -> frozenset[str]:
        return frozenset(self.drugs["salt_words"])

    def match_medication(self, codings: list[dict], texts: list[str], route_texts: list[str]) -> MedicationMatch | None:
        """Classify one medication; the first step that matches wins (section 9, steps 1-5)."""
        rx_codes = [c.get("code") for c in codings if c.get("system") == RXNORM and isinstance(c.get("code"), str)]
        display = next((t for t in texts if t), None)
        for code in rx_codes:
            rows = self._rows_by_rxcui.get(code.strip())
            if rows:
                return self._from_rows(rows, "rxnorm-product", code, display or rows[0].name, route_texts, table_route=True)
        for code in rx_codes:
            rows = self._rows_by_ingredient.get(code.strip())
            if rows:
                return self._from_rows(rows, "rxnorm-ingredient", code, display or rows[0].ingredient_name, route_texts)
        atc_codes = [c.get("code") for c in codings if c.get("system") == ATC and isinstance(c.get("code"), str)]
        for code in atc_codes:
            match = self._match_atc(code.strip().upper(), display)
            if match:
                return self._checked_route(match, route_texts + texts)
        for text in texts:
            rows = self._match_text(text)
            if rows:
                return self._from_rows(rows, "text", None, text, route_texts + texts)
        return None

    def _from_rows(self, rows, matched_by, code, name, route_texts, table_route=False) -> MedicationMatch | None:
        systemic_rows = [r for r in rows if r.systemic]
        if not systemic_rows:
            return None  # every matching row is topical/ophthalmic/otic
        match = MedicationMatch(
            name=name,
            classes=tuple(dict.fromkeys(r.drug_class for r in systemic_rows)),
            ingredients=tuple(dict.fromkeys(r.ingredient_key for r in systemic_rows)),
            matched_by=matched_by,
            code=code,
        )
        if table_route:
            if route_is_non_systemic(route_texts, self.drugs["non_systemic_route_words"]):
                match.notes.append("the order's route looks non-systemic, but the product code is systemic; the code wins")
            return match
        return self._checked_route(match, route_texts)

    def _checked_route(self, match: MedicationMatch, route_texts: list[str]) -> MedicationMatch | None:
        if route_is_non_systemic(route_texts, self.drugs["non_systemic_route_words"]):
            return None
        return match

    def _match_atc(self, code: str, display: str | None) -> MedicationMatch | None:
        classes = [cls for cls, prefixes in self.drugs["atc_prefixes"].items() if any(code.startswith(p) for p in prefixes)]
        if any(code.startswith(prefix) for prefix in self.drugs["atc_not_antipsychotic"]):
            classes = [cls for cls in classes if cls != "antipsychotic"]  # lithium, pimavanserin, xanomeline
        if "antipsychotic" in classes:
            specific = [c for c, codes in self.drugs["atc_antipsychotic_by_substance"].items() if code in codes]
            classes = [c for c in classes if c != "antipsychotic"] + (specific or ["antipsychotic"])
        if not classes:
            return None
        return MedicationMatch(name=display or f"ATC {code}", classes=tuple(classes), ingredients=(f"atc:{code}",), matched_by="atc", code=code)

    def _match_text(self, text: str) -> list[DrugRow]:
        words = normalise_name(text, self.salt_words).split()
        found: list[DrugRow] = []
        index = self._name_index
        for size in (3, 2, 1):  # multi-word names first ("ferrous sulfate" is reduced to "ferrous")
            for i in range(len(words) - size + 1):
                found.extend(index.get(" ".join(words[i : i + size]), []))
        return found


def normalise_name(text: str, salt_words: frozenset[str]) -> str:
    """Lower-case, strip punctuation, salts and strengths, so whole-word matching works."""
    text = re.sub(r"[^a-z0-9 ]+", " ", text.lower())
    words = [w for w in text.split() if w not in salt_words and not re.fullmatch(r"\d+(\.\d+)?|mg|mcg|ml|g|hr|\d+mg", w)]
    return " ".join(words)


def route_is_non_systemic(texts: list[str], words: list[str]) -> bool:
    joined = " ".join(t.lower() for t in texts if t)
    return any(re.search(rf"\b{re.escape(w)}\b", joined) for w in words)
