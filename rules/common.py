"""Helpers shared by the rule modules: citations, evidence lines, de-duplication, suggestions.

Nothing here decides whether a rule fires; that is in each rule's `when`.
"""
from __future__ import annotations

from cds_service.orders import remove_draft
from cds_service.rulebook import SuggestionDraft, escape, fill

SEED_000 = "000_e09f97222edeabb3.txt"
SEED_001 = "001_9c4bd8494c6f1f15.txt"
SEED_002 = "002_bc010253c106cbbd.txt"
SEED_003 = "003_34900d95d68d4bde.txt"
AASM_2024 = "AASM 2024 CPG (Winkelman JW et al., J Clin Sleep Med 2024, doi:10.5664/jcsm.11390)"
AASM_2024_URL = "https://doi.org/10.5664/jcsm.11390"
CATALOG = "shared/reference/clinical-rules.md"


def seeds(*names: str) -> str:
    return "seed " + ", ".join(names)


HOW_MATCHED = {"rxnorm-product": "RxNorm product code", "rxnorm-ingredient": "RxNorm ingredient code",
               "atc": "ATC code", "text": "name (no usable code)"}


def unique(matches, alias: str) -> list[dict]:
    """The facts bound to `alias` across all matches, one per resource."""
    return list({match[alias]["resource_ref"]: match[alias] for match in matches if alias in match}.values())


def drug_fields(drug: dict) -> dict:
    """A drug's identity for a finding; `label` carries its name (a finding's `name` is the finding's)."""
    return {"resource_ref": drug["resource_ref"], "label": drug["name"], "classes": drug["classes"],
            "ingredients": drug["ingredients"], "matched_by": drug["matched_by"], "code": drug["code"],
            "origin": drug["origin"], "selected": drug["selected"], "since": drug["since"]}


def as_drug(finding: dict) -> dict:
    """The drug a finding carries, in the shape of a medication fact (for drug_line and suggestions)."""
    return dict(finding, name=finding["label"])


def unique_drugs(matches, alias: str) -> list[dict]:
    """One entry per ingredient set, across MedicationRequest and MedicationStatement."""
    seen, drugs = set(), []
    for match in matches:
        drug = match[alias]
        key = tuple(sorted(drug["ingredients"]))
        if key not in seen:
            seen.add(key)
            drugs.append(drug)
    return drugs


def class_of(drug: dict, wanted, ctx) -> str:
    """Name a drug in two classes (promethazine) once, under the class the rule is about."""
    classes = [cls for cls in drug["classes"] if cls in wanted]
    return ctx.class_title(classes[0]) if classes else ctx.class_title(drug["classes"][0])


def drug_line(drug: dict, class_title: str) -> str:
    code = f" {drug['code']}" if drug.get("code") not in (None, "none") else ""
    return (f"- **{escape(drug['name'])}** ({class_title}), {escape(drug['resource_ref'])}; "
            f"matched by {HOW_MATCHED.get(drug['matched_by'], drug['matched_by'])}{code}")


def condition_names(conditions: list[dict], limit: int = 2) -> str:
    names = list(dict.fromkeys(c["display"] for c in conditions))
    return ", ".join(names[:limit]) + (f" +{len(names) - limit} more" if len(names) > limit else "")


def removal_suggestions(drafts: list[dict]) -> tuple[list[SuggestionDraft], str]:
    """'Remove this order' for each offending draft (never recommended), and the selection behaviour."""
    suggestions = [SuggestionDraft(label=fill("Remove this order ({name})", name=d["name"]),
                                   actions=[remove_draft(d["resource_ref"], d["name"])]) for d in drafts]
    return suggestions, "at-most-one" if len(drafts) == 1 else "any"


def facts_of(ctx, kind: str, **where) -> list[dict]:
    """Base facts of one kind, for describing context in a card (never for deciding to fire)."""
    return [f for f in ctx.facts if f.get("kind") == kind and all(f.get(k) == v for k, v in where.items())]


def conditions_in(ctx, *code_sets: str) -> list[dict]:
    return [f for f in facts_of(ctx, "condition") if set(f["sets"]) & set(code_sets)]
