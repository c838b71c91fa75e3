"""Rendering: rule matches -> CDS Hooks 2.0 cards, in two layers.

What a clinician reads (`summary`, `detail`, suggestion labels) is short clinical prose: a lead of
at most two sentences, the evidence as a list in clinical words (values with unit and date as
reported), and the source by its human title. It never carries rule ids, FHIR ids, profile names
or file names. Everything an integrator or governance needs (rule id, codes and how each drug
matched, raw and converted values, thresholds in use, resource references, findings, citation
keys, seed file names) is in the card's `extension`, a dict other modules may add keys to.
`source` follows CDS Hooks 2.0 (section Source): a label a clinician trusts, a `url` that matches
it (the guideline's DOI, else the rule's public page) and the rule id as `topic`.
Suggested resources are validated against the FHIR R4 models (R4B package, R4-compatible) before
they leave. Nothing empty or null is ever emitted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid

from fhir.resources.R4B import get_fhir_model_class

from cds_service.authoring.rulebook import CardDraft, RenderContext, RuleSpec, clip, escape
from cds_service.knowledge.codesets import SYSTEM_LABELS
from cds_service.knowledge.sources import AASM_2024, cited, human_citation, seed_files

log = logging.getLogger(__name__)

INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}
OVERRIDE_SYSTEM = "urn:legmove-cds:override-reason"
EXTENSION_KEY = "org.legmove-cds.explanation"
MAX_SUMMARY = 139
RULE_TOPIC_SYSTEM = "urn:legmove-cds:rule"


class SuggestionInvalid(Exception):
    """A rule built a resource that is not valid FHIR R4: a bug, surfaced as a 500."""


def render_cards(
    specs: dict[str, RuleSpec], card_matches: dict, facts_by_id: dict[str, dict], ctx: RenderContext
) -> list[dict]:
    drafts: dict[str, CardDraft] = {}
    for rule_id, matches in card_matches.items():
        render = specs[rule_id].render
        assert render is not None  # the start-up lint refuses a card rule without one
        draft = render(matches, ctx)
        if draft is not None:
            drafts[rule_id] = draft
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


def rule_page_url(base_url: str, rule_id: str) -> str:
    return f"{base_url.rstrip('/')}/rules/{rule_id}"


def _card(spec: RuleSpec, draft: CardDraft, facts_by_id: dict[str, dict], ctx: RenderContext) -> dict:
    evidence = _expand(draft.evidence, facts_by_id)
    findings = sorted({f["name"] for f in draft.evidence if f.get("kind") == "finding"})
    page = rule_page_url(ctx.base_url, spec.id)
    label, url = source_of(spec, page)
    found = ctx.facts_of("params")
    params = found[0] if found else {}
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": guard_summary(draft.summary),
        "indicator": draft.indicator,
        "detail": _detail(spec, draft, evidence),
        "source": {
            "label": label,
            "url": url,
            "topic": {"system": RULE_TOPIC_SYSTEM, "code": spec.id, "display": spec.title},
        },
        "overrideReasons": [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in draft.override_reasons
        ],
        "links": [{"label": "Why this card", "url": page, "type": "absolute"}],
        "extension": {
            EXTENSION_KEY: {
                "rule": spec.id,
                "ruleTitle": spec.title,
                "rulePage": page,
                "citation": spec.citation,
                "citationKeys": [s.key for s in cited(spec.citation)],
                "seedFiles": seed_files(spec.citation),
                "findings": findings,
                "resources": sorted({f["resource_ref"] for f in [*evidence, *draft.evidence] if "resource_ref" in f}),
                "evidence": [machine_fact(f) for f in evidence],
                "profile": {
                    "name": params.get("profile"),
                    "title": params.get("profile_title"),
                    "source": params.get("profile_source"),
                }
                if params
                else None,
                "thresholds": draft.thresholds,
                "ruleVersion": spec.version,
                "knowledgeVersion": ctx.knowledge_version,
                "evidenceFingerprint": evidence_fingerprint(evidence),
            }
        },
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
    order-select -> order-sign de-duplication compare these (cds_service.store.governance)."""
    stable = sorted(
        json.dumps(
            {k: v for k, v in fact.items() if k not in _UNSTABLE_FIELDS and not k.endswith("days_ago")},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        for fact in evidence
    )
    return hashlib.sha256("\n".join(stable).encode("utf-8")).hexdigest()[:32]


def source_of(spec: RuleSpec, page: str) -> tuple[str, str]:
    """The label a clinician trusts and the URL that matches it: the AASM 2024 guideline's DOI for the
    rules whose advice is that guideline's, otherwise this service's public page for the rule."""
    if spec.source_url and spec.source_url == AASM_2024.url:
        return "AASM 2024 RLS guideline (Winkelman et al.)", AASM_2024.url
    return f"Leg-movement CDS: {spec.title}", page


_MACHINE_SKIP = {"id", "sid", "sets_display"}  # engine bookkeeping, not evidence


def machine_fact(fact: dict) -> dict:
    """A fact as the extension carries it: every field, the resource reference and codes included."""
    return {k: v for k, v in fact.items() if k not in _MACHINE_SKIP and v is not None}


_REFERENCE = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


def _actionable(draft) -> bool:
    """A delete needs the draft's `Type/id`; a draft sent without an id cannot be removed by
    the EHR, so the card keeps its advice and drops that suggestion."""
    return all(
        a.type != "delete" or (isinstance(a.resource_id, str) and _REFERENCE.match(a.resource_id))
        for a in draft.actions
    )


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
    from cds_service.authoring.orders import lab_order, medication_proposal

    for action in (
        lab_order("warm-up", "2276-4", "Ferritin", "note"),
        medication_proposal("warm-up", "310325", "iron"),
    ):
        assert action.resource is not None  # the order builders always attach one
        validated(action.resource)


ANALYTE_TITLES = {
    "tsat": "Transferrin saturation",
    "hba1c": "HbA1c",
    "cbc": "CBC",
    "cmp": "CMP",
    "bmp": "BMP",
    "b12": "Vitamin B12",
    "tsh": "TSH",
    "spep": "SPEP",
    "egfr": "eGFR",
    "ast": "AST",
    "alt": "ALT",
    "gad7": "GAD-7",
    "phq9": "PHQ-9",
    "plms_index": "PLMS index",
}


def guard_summary(summary: str) -> str:
    """Fewer than 140 characters (CDS Hooks 2.0, section Card Attributes); as a last resort cut at a
    word boundary (rules keep their summaries short, a test renders every fixture)."""
    if len(summary) <= MAX_SUMMARY:
        return summary
    log.warning("summary over %d characters, shortened: %r", MAX_SUMMARY, summary)
    return clip(summary, MAX_SUMMARY)


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


_SENTENCE_END = re.compile(r"(?<=[a-z0-9)%][.!?])\s+(?=[A-Z*])")


def split_lead(why: str) -> tuple[str, list[str]]:
    """The lead a clinician reads first (the first paragraph, at most two sentences) and the rest of a
    rule's text as list items: further paragraphs, list lines, sentences past the second."""
    first, *rest = [p.strip() for p in why.split("\n\n") if p.strip()] or [""]
    sentences = _SENTENCE_END.split(first)
    lead, spill = " ".join(sentences[:2]), sentences[2:]
    items = [" ".join(spill)] if spill else []
    for paragraph in rest:
        lines = paragraph.splitlines()
        if all(line.startswith("- ") for line in lines):
            items += [line[2:] for line in lines]
        else:
            items.append(" ".join(lines))
    return lead, items


def _detail(spec: RuleSpec, draft: CardDraft, evidence: list[dict]) -> str:
    lead, items = split_lead(draft.why)
    notes = [*items, *draft.notes]
    named = " ".join(notes)  # a drug a note already names (how it was recognised) is not listed twice
    facts = [f for f in evidence if not (f.get("kind") == "medication" and f"**{escape(f['name'])}**" in named)]
    lines = [*notes, *(line for line in (describe(fact) for fact in facts) if line)]
    parts = [lead]
    if lines:
        parts.append("\n".join(f"- {line}" for line in dict.fromkeys(lines)))
    parts.append(f"*Source: {human_citation(spec.citation)}.*")  # our own titles, not chart text
    return "\n\n".join(parts)


def _number(value) -> str:
    return f"{round(float(value), 2):g}"


def lab_value(fact: dict) -> str:
    """'<10 ng/mL', or '41 ug/L (41 ng/mL)' when the unit differed: as reported, then converted."""
    comparator = "" if fact.get("comparator", "=") == "=" else escape(fact["comparator"])
    reported = f"{comparator}{_number(fact['raw_value'])} {escape(fact['raw_unit'])}".strip()
    if fact.get("unit_assumed"):
        return (
            f"{comparator}{_number(fact['value'])} {escape(fact['unit'])} (reported as text "
            f"'{comparator}{_number(fact['raw_value'])}' without a unit)"
        )
    text = " (reported as text)" if fact.get("value_source") == "text" else ""
    if (
        fact["raw_unit"] != fact["unit"]
        and _number(fact["raw_value"]) + fact["raw_unit"] != _number(fact["value"]) + fact["unit"]
    ):
        return f"{reported} ({comparator}{_number(fact['value'])} {escape(fact['unit'])}){text}"
    return reported + text


def describe(fact: dict) -> str | None:
    """One evidence line in clinical words: what, value with unit as reported, date. No FHIR ids."""
    kind = fact.get("kind")
    if kind == "condition":
        system = SYSTEM_LABELS.get(fact["system"], "code")
        status = fact["clinical_status"]
        since = f", recorded {fact['recorded']}" if fact.get("recorded") and fact["recorded"] != "unknown" else ""
        extra = "" if fact["verification_status"] in ("confirmed", "") else f", {fact['verification_status']}"
        return f"{escape(fact['display'])} ({system} {escape(fact['code'])}; {status}{extra}{since})"
    if kind == "lab":
        title = ANALYTE_TITLES.get(fact["analyte"], fact["analyte"].capitalize())
        if "raw_value" not in fact and fact.get("usable") is False and "comparator" not in fact:
            return f"{title} resulted on {fact['date']}"
        if not fact.get("usable"):
            raw = f"{_number(fact['raw_value'])} {escape(fact['raw_unit'])}" if "raw_value" in fact else "no number"
            return f"{title} {raw} on {fact['date']}: not used (unit or value not understood)"
        return f"{title} {lab_value(fact)} on {fact['date']}"
    if kind == "unreadable_result":
        title = ANALYTE_TITLES.get(fact["analyte"], fact["analyte"].capitalize())
        return (
            f"{title} of {fact['date']} could not be read: value '{escape(fact['raw_text'])}', unit "
            f"'{escape(fact['raw_unit'])}'; verify it"
        )
    if kind == "medication":
        origin = {"draft": "being ordered", "recent": "recent order, no longer active"}.get(fact["origin"], "active")
        since = f", since {fact['since']}" if fact.get("since") and fact["origin"] != "draft" else ""
        return f"{escape(fact['name'])} ({origin}{since})"
    if kind == "pending_test":
        what = "result pending" if fact["origin"] == "result" else "order pending"
        return f"{ANALYTE_TITLES.get(fact['analyte'], fact['analyte'].capitalize())}: {what}"
    if kind == "order":
        state = "being ordered" if fact["origin"] == "draft" else f"order {fact['status']}"
        return f"{escape(fact['name'])} ({state})"
    if kind == "procedure_done":
        name = fact["procedure"].upper() if fact["procedure"] == "emg" else fact["procedure"]
        return f"{name} done on {escape(fact['date'])}"
    if kind == "patient":
        return f"Age {fact['age_years']}" if fact["age_years"] >= 0 else None
    return None


def prune(value):
    """Drop None, '', [] and {} recursively: an optional field without a value is left out (CDS Hooks 2.0,
    section Use of JSON)."""
    if isinstance(value, dict):
        pruned = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if not _empty(v)}
    if isinstance(value, list):
        return [v for v in (prune(v) for v in value) if not _empty(v)]
    return value


def _empty(value) -> bool:
    """None, '', [] or {}: what `value in (None, "", [], {})` says, without four comparisons per
    value (a card has about a hundred values, and every card of every call is pruned)."""
    return value is None or (isinstance(value, (str, list, dict)) and not value)
