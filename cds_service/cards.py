"""Rendering: rule matches -> CDS Hooks 2.0 cards.

Every card says why it fired (the rule's explanation plus each resource, value, unit and date
it rests on), where its advice comes from (`source` and the citation), and which rule made it
(`extension`). Suggested resources are validated against the FHIR R4 models (R4B package,
R4-compatible) before they leave. Nothing empty or null is ever emitted (checklist section 1).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid

from fhir.resources.R4B import get_fhir_model_class

from .rulebook import CardDraft, RenderContext, RuleSpec, escape
from .terminology import SYSTEM_LABELS

log = logging.getLogger(__name__)

INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}
OVERRIDE_SYSTEM = "urn:legmove-cds:override-reason"
EXTENSION_KEY = "org.legmove-cds.explanation"
MAX_SUMMARY = 139
EXTERNAL_SOURCES = ("AASM 2024", "AAN 2016", "IRLSSG 2018", "FDA 2010")  # short names of the external sources the rules cite


class SuggestionInvalid(Exception):
    """A rule built a resource that is not valid FHIR R4: a bug, surfaced as a 500."""


def render_cards(specs: dict[str, RuleSpec], card_matches: dict, facts_by_id: dict[str, dict],
                 ctx: RenderContext) -> list[dict]:
    drafts = {rule_id: specs[rule_id].render(matches, ctx) for rule_id, matches in card_matches.items()}
    drafts = {rule_id: draft for rule_id, draft in drafts.items() if draft is not None}
    # one card per problem: a rule that reaches the same advice more strongly supersedes the weaker one
    superseded = {loser: winner for winner in drafts for loser in specs[winner].supersedes if loser in drafts}
    cards = []
    for rule_id, draft in drafts.items():
        if rule_id in superseded:
            continue
        card = _card(specs[rule_id], draft, facts_by_id, ctx)
        replaced = sorted(loser for loser, winner in superseded.items() if winner == rule_id)
        if replaced:
            card["extension"][EXTENSION_KEY]["supersedes"] = replaced
        if ctx.incomplete_keys:  # say that the card was made from part of the chart
            card["extension"][EXTENSION_KEY]["incompleteData"] = list(ctx.incomplete_keys)
        if ctx.missing_keys:  # and which data could not be read at all
            card["extension"][EXTENSION_KEY]["missingData"] = list(ctx.missing_keys)
        cards.append(card)
    cards.sort(key=lambda card: (INDICATOR_ORDER[card["indicator"]], card["extension"][EXTENSION_KEY]["rule"]))
    return [prune(card) for card in cards]


def _card(spec: RuleSpec, draft: CardDraft, facts_by_id: dict[str, dict], ctx: RenderContext) -> dict:
    evidence = _expand(draft.evidence, facts_by_id)
    findings = sorted({f["name"] for f in draft.evidence if f.get("kind") == "finding"})
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": guard_summary(draft.summary),
        "indicator": draft.indicator,
        "detail": _detail(spec, draft, evidence),
        "source": {"label": source_label(spec), "url": spec.source_url},
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": code, "display": display}
                            for code, display in draft.override_reasons],
        "extension": {EXTENSION_KEY: {
            "rule": spec.id,
            "ruleTitle": spec.title,
            "citation": spec.citation,
            "findings": findings,
            "resources": sorted({f["resource_ref"] for f in evidence if "resource_ref" in f}),
            "ruleVersion": spec.version,
            "knowledgeVersion": ctx.knowledge_version,
            "evidenceFingerprint": evidence_fingerprint(evidence),
        }},
    }
    suggestions = [s for s in draft.suggestions if _actionable(s)]
    if suggestions:
        card["selectionBehavior"] = draft.selection_behavior
        card["suggestions"] = [_suggestion(s) for s in suggestions]
    return card


# Fact fields that change without the evidence changing: per-request fact and session ids and the
# ids a finding was derived from, ages counted from the evaluation date (`*days_ago`), and whether
# a draft is the one selected (order-select) or one of all drafts (order-sign).
_UNSTABLE_FIELDS = frozenset({"id", "sid", "basis", "selected"})


def evidence_fingerprint(evidence: list[dict]) -> str:
    """What the card rests on, as a hash: each base fact with its resource, codes, values, units
    and dates. A new ferritin value, another draft order or a changed condition gives a new
    fingerprint; a new request, new uuids or a later evaluation day do not. Suppression and the
    order-select -> order-sign de-duplication compare these (cds_service.governance)."""
    stable = sorted(json.dumps({k: v for k, v in fact.items()
                                if k not in _UNSTABLE_FIELDS and not k.endswith("days_ago")}, sort_keys=True,
                               separators=(",", ":"), default=str) for fact in evidence)
    return hashlib.sha256("\n".join(stable).encode("utf-8")).hexdigest()[:32]


_REFERENCE = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


def _actionable(draft) -> bool:
    """A delete needs the draft's `Type/id`; a draft sent without an id cannot be removed by
    the EHR, so the card keeps its advice and drops that suggestion."""
    return all(a.type != "delete" or (isinstance(a.resource_id, str) and _REFERENCE.match(a.resource_id))
               for a in draft.actions)


def _suggestion(draft) -> dict:
    actions = []
    for action in draft.actions:
        rendered = {"type": action.type, "description": action.description}
        if action.type == "delete":
            rendered["resourceId"] = action.resource_id
        else:
            rendered["resource"] = validated(action.resource)
        actions.append(rendered)
    suggestion = {"label": draft.label, "uuid": str(uuid.uuid4()), "actions": actions}
    if draft.is_recommended:
        suggestion["isRecommended"] = True
    return suggestion


def validated(resource: dict) -> dict:
    """Round-trip through the R4 model: a malformed suggestion is a bug, never sent to an EHR."""
    try:
        model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception as exc:
        raise SuggestionInvalid(f"invalid suggested {resource.get('resourceType')}: {exc}") from exc
    return model.model_dump(mode="json", exclude_none=True)


def warm_up() -> None:
    """Build the R4 models (and their lazily loaded element types) at start-up, not in a
    clinician's first request; with gunicorn --preload the workers inherit them."""
    from .orders import lab_order, medication_proposal

    for action in (lab_order("warm-up", "2276-4", "Ferritin", "note"), medication_proposal("warm-up", "310325", "iron")):
        validated(action.resource)


ANALYTE_TITLES = {"tsat": "Transferrin saturation", "hba1c": "HbA1c", "cbc": "CBC", "cmp": "CMP", "bmp": "BMP",
                  "b12": "Vitamin B12", "tsh": "TSH", "spep": "SPEP", "egfr": "eGFR", "ast": "AST", "alt": "ALT",
                  "gad7": "GAD-7", "phq9": "PHQ-9", "plms_index": "PLMS index"}


def guard_summary(summary: str) -> str:
    """Catalog 2.3: fewer than 140 characters, cut to 136 plus '...' as a last resort."""
    return summary if len(summary) <= MAX_SUMMARY else summary[:136] + "..."


def source_label(spec: RuleSpec) -> str:
    seeds = re.findall(r"\b(\d{3})_[0-9a-f]+\.txt", spec.citation)
    basis = [f"seed {', '.join(dict.fromkeys(seeds))}"] if seeds else []
    basis += [name for name in EXTERNAL_SOURCES if name in spec.citation]
    return f"legmove-cds {spec.id}" + (f" ({'; '.join(basis)})" if basis else "")


# ---- detail ------------------------------------------------------------------------------

def _expand(evidence: list[dict], facts_by_id: dict[str, dict]) -> list[dict]:
    """Base facts behind the evidence, findings replaced by what they were derived from."""
    out, seen, stack = [], set(), list(evidence)
    while stack:
        fact = stack.pop(0)
        if fact.get("kind") == "finding":
            stack[:0] = [facts_by_id[i] for i in fact.get("basis", []) if i in facts_by_id]
            continue
        key = fact.get("resource_ref") or fact.get("id")
        if fact.get("kind") in ("context", "params") or key in seen:
            continue
        seen.add(key)
        out.append(fact)
    return out


def _detail(spec: RuleSpec, draft: CardDraft, evidence: list[dict]) -> str:
    lines = [line for line in (describe(fact) for fact in evidence) if line]
    parts = [draft.why]
    if lines:
        parts.append("**Based on:**\n" + "\n".join(f"- {line}" for line in lines))
    parts.append(f"*Rule {spec.id}: {escape(spec.title)}. Source: {escape(spec.citation)}.*")
    return "\n\n".join(parts)


def describe(fact: dict) -> str | None:
    """One evidence line: resource, code, value with units, date."""
    ref = escape(fact.get("resource_ref", ""))
    kind = fact.get("kind")
    if kind == "condition":
        system = SYSTEM_LABELS.get(fact["system"], fact["system"])
        return (f"{ref}: {system} {escape(fact['code'])} *{escape(fact['display'])}* "
                f"({fact['clinical_status']}, {fact['verification_status']}, recorded {fact['recorded']})")
    if kind == "lab":
        title = ANALYTE_TITLES.get(fact["analyte"], fact["analyte"].capitalize())
        code = f"LOINC {fact['loinc']}" if fact.get("matched_by") != "text" else "matched by name"
        if fact.get("matched_by") == "code" and not re.match(r"^\d+-\d$", fact["loinc"]):
            code = f"local code {escape(fact['loinc'])}"
        if "raw_value" not in fact and fact.get("usable") is False and "comparator" not in fact:
            return f"{ref}: {title} ({code}) resulted on {fact['date']} ({fact['days_ago']} days ago)"
        if not fact.get("usable"):
            raw = f"{fact['raw_value']:g} {escape(fact['raw_unit'])}" if "raw_value" in fact else "no numeric value"
            return f"{ref}: {title} ({code}) {raw} on {fact['date']}: not usable (unit or value not understood)"
        comparator = "" if fact["comparator"] == "=" else escape(fact["comparator"])
        reported = f"{comparator}{fact['raw_value']:g} {escape(fact['raw_unit'])}"
        if fact.get("unit_assumed"):
            reported = f"reported as text '{comparator}{fact['raw_value']:g}' without a unit, read as {reported}"
        elif fact.get("value_source") == "text":
            reported = f"reported as text '{reported}'"
        converted = "" if fact["raw_unit"] == fact["unit"] else f" = {comparator}{fact['value']:g} {fact['unit']}"
        return f"{ref}: {title} ({code}) {reported}{converted} on {fact['date']} ({fact['days_ago']} days ago)"
    if kind == "unreadable_result":
        title = ANALYTE_TITLES.get(fact["analyte"], fact["analyte"].capitalize())
        return (f"{ref}: {title} of {fact['date']} could not be read: value '{escape(fact['raw_text'])}', unit "
                f"'{escape(fact['raw_unit'])}' ({escape(fact['reason'])}); not used")
    if kind == "medication":
        origin = {"draft": "draft order", "recent": "recent order, no longer active"}.get(fact["origin"], "active medication")
        return f"{ref}: {escape(fact['name'])} ({origin}, since {fact['since']})"
    if kind == "pending_test":
        what = "result pending" if fact["origin"] == "result" else "order pending"
        return f"{ref}: {ANALYTE_TITLES.get(fact['analyte'], fact['analyte'].capitalize())} {what} ({fact['status']})"
    if kind == "order":
        state = "draft order" if fact["origin"] == "draft" else f"order {fact['status']}"
        how = "" if fact["matched_by"] == "code" else ", recognised by its text"
        return f"{ref}: {escape(fact['name'])} ({state}{how})"
    if kind == "procedure_done":
        return f"{ref}: {fact['procedure'].upper() if fact['procedure'] == 'emg' else fact['procedure']} done on {escape(fact['date'])}"
    if kind == "patient":
        return f"age {fact['age_years']}" if fact["age_years"] >= 0 else None
    return None


def prune(value):
    """Drop None, '', [] and {} recursively (checklist section 1)."""
    if isinstance(value, dict):
        pruned = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (prune(v) for v in value) if v not in (None, "", [], {})]
    return value
