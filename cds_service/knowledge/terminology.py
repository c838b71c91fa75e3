"""Terminology: code sets, lab units and medication classes, loaded once from `knowledge/`.

Everything clinical that is a *list* (codes, units, drug classes) lives in data files so a
clinical informaticist can review it without reading Python. This module only knows how to
match against those lists, and it never guesses: an unknown code, unit or drug matches nothing.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

from cds_service.knowledge.codesets import ATC, LOINC, RXNORM, CodeSetMatcher
from cds_service.knowledge.labs import Analyte
from cds_service.knowledge.medications import DrugRow, MedicationMatch, normalise_name, route_is_non_systemic
from cds_service.knowledge.procedures import ProcedureMatcher
from cds_service.knowledge.settings import Settings, SettingsError
from cds_service.knowledge.settings import load as load_settings

KNOWLEDGE_DIR = Path(__file__).parent


def _load_json(name: str) -> dict:
    with open(KNOWLEDGE_DIR / name, encoding="utf-8") as handle:
        return json.load(handle)


class Terminology:
    """All bundled knowledge, loaded once per process (in `create_app`)."""

    def __init__(self, settings_overrides: dict | str | None = None):
        self.codesets = CodeSetMatcher.from_data(_load_json("codesets.json"))
        self.procedures = ProcedureMatcher(_load_json("procedures.json"))
        self.drugs = _load_json("drugs.json")
        # defaults + the deployment's overrides, checked once: a bad key or type stops start-up (SettingsError)
        self.settings: Settings = load_settings(settings_overrides)
        labs = _load_json("labs.json")
        self._lab_texts = {name: tuple(e.get("text", [])) for name, e in labs.items() if not name.startswith("_")}
        self.analytes = self._load_analytes(labs)
        for window in [a.lookback_setting for a in self.analytes.values()] + [w for _, w in self.codesets.windows]:
            self.settings.days(window)  # a data file naming a window that is not a setting in days stops start-up
        self.loinc_to_analyte = {code: a for a in self.analytes.values() for code in a.loinc}
        self.observation_codes = {(LOINC, code): a for code, a in self.loinc_to_analyte.items()}
        for name, entry in labs.items():  # local codes (PLMS index) are deployment settings, not data
            local = (
                getattr(self.settings, entry.get("local_code_setting", ""), None) if isinstance(entry, dict) else None
            )
            if local:
                self.observation_codes[(local.system, local.code)] = self.analytes[name]
        self._rows_by_rxcui, self._rows_by_ingredient = self._load_drug_table()
        for rxcui, extra in self.drugs["extra_ingredients"].items():
            if not rxcui.startswith("_"):
                row = DrugRow(
                    rxcui=rxcui,
                    name=extra["name"],
                    ingredient_key=rxcui,
                    ingredient_name=extra["name"],
                    drug_class=extra["class"],
                    atc=extra["atc"],
                    systemic=True,
                )
                self._rows_by_ingredient.setdefault(rxcui, []).append(row)
        self._rows_by_name = [
            DrugRow(
                rxcui="",
                name=name,
                ingredient_key=name,
                ingredient_name=name,
                drug_class=extra["class"],
                atc=extra["atc"],
                systemic=True,
            )
            for name, extra in self.drugs["name_only_ingredients"].items()
            if not name.startswith("_")
        ]
        self.groups = self._groups()

    @staticmethod
    def _load_analytes(data: dict) -> dict[str, Analyte]:
        return {
            name: Analyte(
                name,
                e["title"],
                tuple(e["loinc"]),
                e["unit"],
                dict(e["factors"]),
                e["lookback"],
                panel=bool(e.get("panel")),
                text=tuple(re.compile(rf"\b{re.escape(t)}\b") for t in e.get("text", [])),
                text_exclude=tuple(e.get("text_exclude", [])),
            )
            for name, e in data.items()
            if not name.startswith("_")
        }

    def text_query(self, analyte: str) -> str:
        """The analyte's names as one `code:text` search value (comma = or, URL-encoded). FHIR
        servers match `:text` like a string search, so a name must start the code's text or
        display ("PLM index (PSG)"); the matcher then checks every result (never "arousal")."""
        return ",".join(quote(phrase) for phrase in self._lab_texts[analyte])

    def observation_analyte(self, codings: list[dict], texts: list[str]) -> tuple[Analyte, str, str] | None:
        """(analyte, code or text, how) for an Observation or a lab order; None if not ours."""
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            analyte = (
                self.observation_codes.get((system, code))
                if isinstance(system, str) and isinstance(code, str)
                else None
            )
            if analyte:
                return analyte, coding["code"], "code"
        for text in texts:
            analyte = self._analyte_named_in(text)
            if analyte is not None:
                return analyte, text, "text"
        return None

    @functools.lru_cache(maxsize=8192)  # noqa: B019 - one terminology per process, texts repeat across charts
    def _analyte_named_in(self, text: str) -> Analyte | None:
        """The first analyte whose names a text contains. Cached: every result of a long chart
        without a code we know ("Body height", "Blood pressure") is tried on every pattern."""
        for analyte in self.analytes.values():
            if analyte.text and analyte.named_in(text):
                return analyte
        return None

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
        unknown = sorted(set(self.settings.rls_worsening_additions) - set(self.drugs["class_titles"]))
        if unknown:  # a misspelt class would add nothing, silently
            raise SettingsError(
                f"knowledge setting rls_worsening_additions names unknown drug classes {unknown} "
                f"(known: {', '.join(sorted(self.drugs['class_titles']))})"
            )
        groups["rls_worsening"].update(self.settings.rls_worsening_additions)
        return {name: frozenset(classes) for name, classes in groups.items()}

    def class_title(self, drug_class: str) -> str:
        return self.drugs["class_titles"].get(drug_class, drug_class)

    # ---- medication matching (product code, ingredient, ATC, name; systemic only) -------------------------------

    @cached_property
    def _name_index(self) -> dict[str, list[DrugRow]]:
        """Whole-word names (ingredients, WHO synonyms, bracketed brands) to table rows."""
        index: dict[str, list[DrugRow]] = {}
        for rows in [*self._rows_by_rxcui.values(), *self._rows_by_ingredient.values(), self._rows_by_name]:
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
        """Classify one medication (in the order of `_match_steps`), then add the finer classes rules need."""
        match = self._match_steps(codings, texts, route_texts)
        if match is not None and match.matched_by != "text":
            self._add_name_only_ingredients(match, texts)
        if match is None or not match.classes:
            return match
        atc_codes = [
            c["code"].strip().upper() for c in codings if c.get("system") == ATC and isinstance(c.get("code"), str)
        ]
        words = {
            w for t in [*texts, match.name, *match.ingredients] for w in normalise_name(str(t), self.salt_words).split()
        }
        for name, spec in self.drugs["subclasses"].items():
            if name.startswith("_"):
                continue
            if words & set(spec["ingredients"]) or any(a.startswith(tuple(spec["atc"])) for a in atc_codes):
                match.classes = (*match.classes, name)
        return match

    def may_match_medication(self, codings: list[dict], texts: list[str]) -> bool:
        """False only when `match_medication(codings, texts, routes)` is None for every route: the
        fact builder's cheap test for the many orders of drugs no rule knows (metformin refills),
        before their full classification. It runs the same matching steps without route texts;
        routes can only take a match away (a non-systemic route), never add one, so no match here
        means no match with any route. Texts must be strings (callers keep anything else for the
        full path)."""
        return self._match_steps(codings, texts, []) is not None

    def _add_name_only_ingredients(self, match: MedicationMatch, texts: list[str]) -> None:
        """A product matched by code whose table rows omit an ingredient the table lacks (codeine /
        dexchlorpheniramine is listed under codeine only): the ingredient named in the product's
        own text adds its class. Whole words, so chlorpheniramine is never dexchlorpheniramine."""
        words = {w for t in texts for w in normalise_name(t, self.salt_words).split()}
        for row in self._rows_by_name:
            if row.ingredient_name in words and row.ingredient_key not in match.ingredients:
                match.classes = tuple(dict.fromkeys((*match.classes, row.drug_class)))
                match.ingredients = (*match.ingredients, row.ingredient_key)

    def _match_steps(self, codings: list[dict], texts: list[str], route_texts: list[str]) -> MedicationMatch | None:
        """The first step that matches wins: RxNorm product, RxNorm ingredient, ATC class, then name."""
        rx_codes = [c["code"] for c in codings if c.get("system") == RXNORM and isinstance(c.get("code"), str)]
        display = next((t for t in texts if t), None)
        for code in rx_codes:
            rows = self._rows_by_rxcui.get(code.strip())
            if rows:
                return self._from_rows(
                    rows, "rxnorm-product", code, display or rows[0].name, route_texts, table_route=True
                )
        for code in rx_codes:
            rows = self._rows_by_ingredient.get(code.strip())
            if rows:
                return self._from_rows(rows, "rxnorm-ingredient", code, display or rows[0].ingredient_name, route_texts)
        atc_codes = [c["code"] for c in codings if c.get("system") == ATC and isinstance(c.get("code"), str)]
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
                match.notes.append(
                    "the order's route looks non-systemic, but the product code is systemic; the code wins"
                )
            return match
        return self._checked_route(match, route_texts)

    def _checked_route(self, match: MedicationMatch, route_texts: list[str]) -> MedicationMatch | None:
        if route_is_non_systemic(route_texts, self.drugs["non_systemic_route_words"]):
            return None
        return match

    def _match_atc(self, code: str, display: str | None) -> MedicationMatch | None:
        classes = [
            cls for cls, prefixes in self.drugs["atc_prefixes"].items() if any(code.startswith(p) for p in prefixes)
        ]
        if any(code.startswith(prefix) for prefix in self.drugs["atc_not_antipsychotic"]):
            classes = [cls for cls in classes if cls != "antipsychotic"]  # lithium, pimavanserin, xanomeline
        if "antipsychotic" in classes:
            specific = [c for c, codes in self.drugs["atc_antipsychotic_by_substance"].items() if code in codes]
            classes = [c for c in classes if c != "antipsychotic"] + (specific or ["antipsychotic"])
        if not classes:
            return None
        return MedicationMatch(
            name=display or f"ATC {code}",
            classes=tuple(classes),
            ingredients=(f"atc:{code}",),
            matched_by="atc",
            code=code,
        )

    def _match_text(self, text: str) -> list[DrugRow]:
        words = normalise_name(text, self.salt_words).split()
        found: list[DrugRow] = []
        index = self._name_index
        for size in (3, 2, 1):  # multi-word names first ("ferrous sulfate" is reduced to "ferrous")
            for i in range(len(words) - size + 1):
                found.extend(index.get(" ".join(words[i : i + size]), []))
        return found
