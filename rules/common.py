"""Helpers shared by the rule modules: citations, evidence lines, de-duplication, suggestions.

No recommendation of its own, and nothing here decides whether a rule fires; that is in each rule's
`when`. Cards read settings and facts through the render context (`ctx.settings`, `ctx.params`,
`ctx.patient`, `ctx.facts_of`, `ctx.labs`, `ctx.conditions_in`).
"""

from __future__ import annotations

from cds_service.authoring.criteria import all_of, hook_is
from cds_service.authoring.orders import remove_draft
from cds_service.authoring.rulebook import SuggestionDraft, derivation, drug_name, escape

SEED_000 = "000_e09f97222edeabb3.txt"
SEED_001 = "001_9c4bd8494c6f1f15.txt"
SEED_002 = "002_bc010253c106cbbd.txt"
SEED_003 = "003_34900d95d68d4bde.txt"
AASM_2024 = "AASM 2024 CPG (Winkelman JW et al., J Clin Sleep Med 2024, doi:10.5664/jcsm.11390)"
AASM_2024_URL = "https://doi.org/10.5664/jcsm.11390"
CATALOG = "legmove-cds rule catalog"


def seeds(*names: str) -> str:
    return "seed " + ", ".join(names)


def review_triggers(
    *,
    view_id: str,
    order_id: str,
    produces: str,
    module: str,
    citation: str,
    titles: tuple[str, str],
    selected_drug,
    order_logic: str,
    view_extra: tuple = (),
    view_logic: str = "the hook is patient-view",
    trigger=lambda drug: "order-select",
) -> None:
    """Register the pair of findings that say "this topic is due": `view_id` on patient-view (plus
    any `view_extra` criteria) and `order_id` on order-select of the draft medication that
    `selected_drug` (a `selected_draft(..., alias="drug")`) describes. `trigger(drug)` names what
    started the order-select review."""
    if getattr(selected_drug, "alias", None) != "drug":
        raise ValueError(f"{order_id}: selected_drug must be a selected_draft(...) criterion with alias='drug'")

    def on_view(match):
        return {"trigger": "patient-view"}

    def on_order(match):
        return {"trigger": trigger(match["drug"]), "resource_ref": match["drug"]["resource_ref"]}

    for fn, suffix in ((on_view, "view"), (on_order, "order")):
        fn.__module__, fn.__name__ = module, f"{produces}_on_{suffix}"
    derivation(
        id=view_id,
        title=titles[0],
        citation=citation,
        produces=produces,
        logic=view_logic,
        when=all_of(inclusion=[hook_is("patient-view"), *view_extra]),
    )(on_view)
    derivation(
        id=order_id,
        title=titles[1],
        citation=citation,
        produces=produces,
        logic=order_logic,
        when=all_of(inclusion=[hook_is("order-select"), selected_drug]),
    )(on_order)


HOW_MATCHED = {
    "rxnorm-product": "its product code",
    "rxnorm-ingredient": "its ingredient code",
    "atc": "its ATC class",
    "text": "its name (no usable code)",
}


def unique(matches, alias: str) -> list[dict]:
    """The facts bound to `alias` across all matches, one per resource."""
    return list({match[alias]["resource_ref"]: match[alias] for match in matches if alias in match}.values())


def drug_fields(drug: dict) -> dict:
    """A drug's identity for a finding; `label` carries its name (a finding's `name` is the finding's)."""
    return {
        "resource_ref": drug["resource_ref"],
        "label": drug["name"],
        "classes": drug["classes"],
        "ingredients": drug["ingredients"],
        "matched_by": drug["matched_by"],
        "code": drug["code"],
        "origin": drug["origin"],
        "selected": drug["selected"],
        "since": drug["since"],
    }


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
    """How a drug was recognised, in clinical words ("sertraline 50 MG Oral Tablet: an SSRI, recognised by its
    product code"); the codes themselves and the resource reference are in the card's extension."""
    return (
        f"**{escape(drug['name'])}**: {article(class_title)} {class_title}, recognised by "
        f"{HOW_MATCHED.get(drug['matched_by'], 'its coding')}"
    )


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" or word[:2] in ("SS", "SN", "NS") else "a"


def condition_names(conditions: list[dict], limit: int = 2, width: int = 40) -> str:
    """'PAD and neuropathy', or 'PAD and 2 other conditions': whole names only, within `width` when it can."""
    names = list(dict.fromkeys(c["display"] for c in conditions))
    for shown in range(min(limit, len(names)), 0, -1):
        rest = len(names) - shown
        text = (
            " and ".join(names[:shown])
            if not rest
            else (f"{', '.join(names[:shown])} and {rest} other condition{'s' if rest > 1 else ''}")
        )
        if len(text) <= width or shown == 1:
            return text
    return names[0] if names else ""


def removal_suggestions(drafts: list[dict]) -> tuple[list[SuggestionDraft], str]:
    """'Remove this order' for each offending draft (never recommended), and the selection behaviour."""
    suggestions = [
        SuggestionDraft(
            label=f"Remove this order ({drug_name(d['name'])})", actions=[remove_draft(d["resource_ref"], d["name"])]
        )
        for d in drafts
    ]
    return suggestions, "at-most-one" if len(drafts) == 1 else "any"
