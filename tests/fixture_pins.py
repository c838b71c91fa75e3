"""What a fixture pins about its answer, and a spy on the findings the engine derives.

`expect.cards` lists every card a fixture's request must give, each as
`{"rule", "indicator", "variant", "suggestions"}`; the comparison is order-insensitive and exact
(no unlisted card, none missing). Text is never compared: summaries and details are rewritten
without any card changing. The card extension has no variant field of its own, so `variant` is
built from the machine fields that tell one rule's cards apart:

- the findings the card rests on (`findings` in the extension, only names the rulebook derives:
  a drug finding carries the drug's display text there, which is text);
- the measured analytes among its evidence (`evidence[].analyte` of its lab facts: a metabolic
  cause that was measured, not coded; a PLMS index, not a PLMD code without one);
- the iron verdict the card states (`thresholds.verdict`, or `thresholds.iron.verdict` for R20);
- the rules whose cards it replaced (`supersedes`).

e.g. `"fasciculation+red_flag replaces=R11+R13"`, `"iron_stores labs=ferritin verdict=disagreement"`, `""`.

A silent fixture (one whose file name starts with `silent-`) also says which near-miss it is:
`near_miss: {"varies": "<firing fixture in the same folder>", "derived": ["<finding>", ...]}`;
each finding named in `derived` must really have been derived for the request, which
`DerivedFindings` records from the engine without changing what it does.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

EXTENSION = "org.legmove-cds.explanation"
HOOK_ONLY = frozenset({"context", "params", None})  # fact kinds that are not chart data


def finding_names() -> frozenset[str]:
    """Every finding name a derivation in the rulebook can produce (the shipped rule modules)."""
    import rules
    from cds_service.authoring.rulebook import DERIVE, REGISTRY

    rules.load_all([])

    return frozenset(spec.produces for spec in REGISTRY.values() if spec.stratum == DERIVE and spec.produces)


def variant(extension: dict, findings: frozenset[str] | None = None) -> str:
    findings = finding_names() if findings is None else findings
    parts = ["+".join(sorted(name for name in extension.get("findings", []) if name in findings))]
    analytes = sorted(
        {fact["analyte"] for fact in extension.get("evidence", []) if fact.get("kind") == "lab" and fact.get("analyte")}
    )
    if analytes:
        parts.append("labs=" + "+".join(analytes))
    thresholds = extension.get("thresholds") or {}
    verdict = thresholds.get("verdict") or (thresholds.get("iron") or {}).get("verdict")
    if verdict:
        parts.append(f"verdict={verdict}")
    if extension.get("supersedes"):
        parts.append("replaces=" + "+".join(extension["supersedes"]))
    return " ".join(part for part in parts if part)


def card_key(card: dict, findings: frozenset[str] | None = None) -> dict:
    extension = card["extension"][EXTENSION]
    return {
        "rule": extension["rule"],
        "indicator": card["indicator"],
        "variant": variant(extension, findings),
        "suggestions": len(card.get("suggestions") or []),
    }


def _order(key: dict) -> tuple:
    rule = key["rule"]
    return (int(rule[1:]) if rule[1:].isdigit() else 0, rule, key["indicator"], key["variant"], key["suggestions"])


def sorted_cards(keys: list[dict]) -> list[dict]:
    """Card keys in one canonical order (by rule number), so two lists compare as multisets."""
    return sorted(keys, key=_order)


def card_keys(body: dict) -> list[dict]:
    findings = finding_names()
    return sorted_cards([card_key(card, findings) for card in body["cards"]])


def is_silent_fixture(stem: str) -> bool:
    return stem.startswith("silent-")


def rule_of(card_keys_: list[dict]) -> set[str]:
    return {key["rule"] for key in card_keys_}


class DerivedFindings:
    """Records the findings the engine derives, per evaluation, in whichever thread runs it.

    Installed with `recording()` (the `derived_findings` test fixture): it wraps `RuleEngine.evaluate`
    (to open one record per evaluation) and the module function `_assert_derived` (every finding a
    derivation asserts, including those no rule's condition then matches, with the kinds of the facts
    it was derived from); both call the originals unchanged, and `paused()` puts them back."""

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self.evaluations: list[list[dict]] = []

    def clear(self) -> None:
        with self._lock:
            self.evaluations = []

    def names(self) -> set[str]:
        """Every finding derived since `clear()`."""
        with self._lock:
            return {finding["name"] for evaluation in self.evaluations for finding in evaluation}

    def from_chart(self) -> set[str]:
        """The findings derived from chart data, not from the hook alone (a review that is due on
        patient-view rests only on the context fact and derives for every chart)."""
        with self._lock:
            return {
                finding["name"]
                for evaluation in self.evaluations
                for finding in evaluation
                if set(finding["basis"]) - HOOK_ONLY
            }

    @contextmanager
    def recording(self):
        """Record while the block runs; the engine's own functions are back afterwards."""
        self._install()
        try:
            yield self
        finally:
            self._uninstall()

    @contextmanager
    def paused(self):
        """The engine exactly as shipped for the block (to compare answers with and without the spy)."""
        self._uninstall()
        try:
            yield self
        finally:
            self._install()

    def _install(self) -> None:
        from cds_service.engine import wrapper

        original_evaluate, original_assert = wrapper.RuleEngine.evaluate, wrapper._assert_derived
        self._originals = (original_evaluate, original_assert)
        spy = self

        def evaluate(engine, facts):
            record: list[dict] = []
            with spy._lock:
                spy.evaluations.append(record)
            spy._local.record = record
            try:
                return original_evaluate(engine, facts)
            finally:
                spy._local.record = None

        def assert_derived(closure, evaluation, finding):
            record = getattr(spy._local, "record", None)
            if record is not None:
                basis = [evaluation.facts_by_id.get(fid, {}).get("kind") for fid in finding.get("basis", [])]
                record.append({"name": finding.get("name"), "rule": finding.get("rule"), "basis": basis})
            return original_assert(closure, evaluation, finding)

        wrapper.RuleEngine.evaluate, wrapper._assert_derived = evaluate, assert_derived

    def _uninstall(self) -> None:
        from cds_service.engine import wrapper

        wrapper.RuleEngine.evaluate, wrapper._assert_derived = self._originals
