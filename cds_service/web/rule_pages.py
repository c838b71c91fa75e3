"""Public pages about the rules: `GET /rules` (index) and `GET /rules/<id>` (one rule).

Every card links here ("Why this card", and `source.url` when its source is not a guideline with a
DOI), so a clinician is one click from what the rule checks, the numbers it uses and where they come
from. The pages hold no patient data: only the rule's metadata, the settings in force in this
process (overrides included, so the page shows the numbers the cards print) and the descriptions of
the rule's test examples. They live on their own blueprint, outside the CDS blueprint's client-JWT
check, so they are open like discovery even when client auth is on.
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from flask import Blueprint, abort, current_app, render_template

from cds_service.knowledge.settings import Settings
from cds_service.knowledge.sources import BY_KEY, cited

log = logging.getLogger(__name__)

pages = Blueprint("rule_pages", __name__, template_folder="templates")

# Which settings each card rule evaluates, and the source of each number ("service" = this service's
# configurable default, no external source). Values are read from the running configuration.
RULE_SETTINGS: dict[str, tuple[str, ...]] = {
    "R1": ("ferritin_lookback_days",),
    "R2": (
        "ferritin_lookback_days",
        "iron_profile",
        "seed.ferritin_iron_indicated_below",
        "aasm2024.ferritin_iron_indicated_at_or_below",
        "aasm2024.tsat_iron_indicated_below",
        "aasm2024.iv_only_up_to",
        "aasm2024.child_ferritin_iron_indicated_below",
        "show_guideline_disagreement",
    ),
    "R3": ("rls_worsening_additions",),
    "R4": ("rls_worsening_additions",),
    "R7": ("plms_index_threshold_adult", "plms_index_threshold_child", "plms_index_lookback_days"),
    "R9": ("gbs_onset_window_days",),
    "R10": ("acute_deficit_window_days",),
    "R11": ("fasciculation_lab_lookback_days",),
    "R12": ("prior_emg_window_days",),
    "R13": ("screening_lookback_days",),
    "R14": ("metabolic_lookback_days", "metabolic_value_lookback_days"),
    "R16": ("metabolic_lookback_days", "metabolic_value_lookback_days"),
    "R17": ("akathisia_window_days",),
    "R19": ("ferritin_lookback_days", "pregnancy_max_days"),
    "R20": ("new_start_window_days", "pregnancy_max_days", "iron_profile"),
    "R23": ("renal_dose_egfr_threshold",),
}
SETTING_SOURCES = {
    "seed.ferritin_iron_indicated_below": "seed-000",
    "plms_index_threshold_adult": "seed-000",
    "aasm2024.ferritin_iron_indicated_at_or_below": "aasm-2024",
    "aasm2024.tsat_iron_indicated_below": "aasm-2024",
    "aasm2024.iv_only_up_to": "aasm-2024",
    "aasm2024.child_ferritin_iron_indicated_below": "aasm-2024",
    "plms_index_threshold_child": "aasm-2024",
    "rls_worsening_additions": "aasm-2024",
    "renal_dose_egfr_threshold": "us-labels",
}


def _setting(settings: Settings, key: str):
    """`ferritin_lookback_days`, or a profile's number as `aasm2024.iv_only_up_to`."""
    if "." in key:
        profile, name = key.split(".", 1)
        return getattr(getattr(settings.profiles, profile), name)
    return getattr(settings, key)


def _thresholds(rule_id: str, settings: Settings) -> list[dict]:
    rows = []
    for key in RULE_SETTINGS.get(rule_id, ()):
        value = _setting(settings, key)
        if value is None:
            continue
        source = BY_KEY.get(SETTING_SOURCES.get(key, ""))
        rows.append(
            {
                "key": key,
                "value": ", ".join(map(str, value)) if isinstance(value, tuple) else value,
                "source": source.title if source else "Service default (configurable)",
                "url": source.url if source else None,
            }
        )
    return rows


def _fixtures_root() -> Path | None:
    """The rule examples: the packaged `legmove_examples` data when installed that way, else the
    repository's `fhir_fixtures/` beside the package (a source checkout)."""
    try:
        root = Path(str(resources.files("legmove_examples")))
        if root.is_dir():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    root = Path(__file__).resolve().parents[2] / "fhir_fixtures"
    return root if root.is_dir() else None


_NAME = re.compile(r"^(fires|silent)-(.+)$")


@lru_cache(maxsize=1)
def examples() -> dict[str, dict[str, list[str]]]:
    """rule id -> {"fires": [description], "silent": [description]} from the example fixtures."""
    root = _fixtures_root()
    found: dict[str, dict[str, list[str]]] = {}
    if root is None:
        log.info("no rule examples found (neither legmove_examples nor fhir_fixtures/)")
        return found
    for path in sorted(root.glob("R*/*.json")):
        kind = _NAME.match(path.stem)
        if not kind:
            continue
        try:
            description = json.loads(path.read_text(encoding="utf-8"))["description"]
        except (OSError, ValueError, KeyError):
            log.warning("rule example %s is unreadable; skipped", path.name)
            continue
        found.setdefault(path.parent.name, {"fires": [], "silent": []})[kind.group(1)].append(description)
    return found


_PRESENT = re.compile(r"present\(([^()]*)\)")


def plain(logic: str) -> str:
    """The catalog one-liner in words: 'present(RLS)' reads 'RLS is on the problem list'."""
    return _PRESENT.sub(lambda m: f"{m.group(1)} is on the problem list", logic)


def _natural(rule_id: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", rule_id))


def _card_specs() -> dict:
    from cds_service.authoring.rulebook import REGISTRY

    return {spec.id: spec for spec in REGISTRY.values() if spec.stratum == "card"}


def _enabled() -> set[str]:
    return {spec.id for spec in current_app.extensions["legmove"].specs.values() if spec.stratum == "card"}


@pages.get("/rules")
def index():
    specs = sorted(_card_specs().values(), key=lambda s: _natural(s.id))
    return _html(render_template("rules_index.html", specs=specs, enabled=_enabled()))


@pages.get("/rules/<rule_id>")
def rule_page(rule_id: str):
    spec = _card_specs().get(rule_id)
    if spec is None:
        abort(404, f"no rule {rule_id!r}")
    settings = current_app.extensions["legmove"].terminology.settings
    page = render_template(
        "rule_page.html",
        spec=spec,
        enabled=spec.id in _enabled(),
        checks=plain(spec.logic),
        sources=cited(spec.citation),
        thresholds=_thresholds(spec.id, settings),
        examples=examples().get(spec.id, {"fires": [], "silent": []}),
        version=getattr(spec, "version", None),
        supersedes=spec.supersedes,
    )
    return _html(page)


def _html(body: str):
    return body, 200, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "public, max-age=300"}
