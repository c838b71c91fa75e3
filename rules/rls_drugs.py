"""Drugs that worsen restless legs: R3 (on ordering) and R4 (chart review).

Seeds 000 and 001 name tricyclics, SSRIs, lithium and dopamine antagonists; 001 adds centrally
acting antihistamines. SNRIs and mirtazapine are an Addition (AASM 2024 lists antidepressants
among exacerbating factors), switchable with `rls_worsening_additions`. Which classes count is
the `rls_worsening` drug group in `knowledge/drugs.json`; the facts layer tags each medication.
"""
from durable.lang import c, item, m, when_all

from cds_service.orders import medication_proposal, remove_draft
from cds_service.rulebook import CardDraft, SuggestionDraft, card_rule, escape, fill, name_list

SEEDS_DRUGS = "seed 000_e09f97222edeabb3.txt, 001_9c4bd8494c6f1f15.txt (SNRI, mirtazapine: AASM 2024 addition)"
CETIRIZINE_10 = ("1014678", "cetirizine hydrochloride 10 MG Oral Tablet")
HOW_MATCHED = {"rxnorm-product": "RxNorm product code", "rxnorm-ingredient": "RxNorm ingredient code",
               "atc": "ATC code", "text": "name (no usable code)"}


def _worsening_class(drug: dict, ctx) -> str:
    """Name a drug in two classes (promethazine) once, under the class this rule is about."""
    classes = [cls for cls in drug["classes"] if cls in ctx.groups["rls_worsening"]]
    return ctx.class_title(classes[0]) if classes else "RLS-worsening drug"


def _drug_line(drug: dict, ctx) -> str:
    code = f" {drug['code']}" if drug.get("code") not in (None, "none") else ""
    return (f"- **{escape(drug['name'])}** ({_worsening_class(drug, ctx)}), {escape(drug['resource_ref'])}; "
            f"matched by {HOW_MATCHED.get(drug['matched_by'], drug['matched_by'])}{code}")


def _unique_drugs(matches, alias: str) -> list[dict]:
    """One entry per ingredient set, across MedicationRequest and MedicationStatement."""
    seen, drugs = set(), []
    for match in matches:
        drug = match[alias]
        key = tuple(sorted(drug["ingredients"]))
        if key not in seen:
            seen.add(key)
            drugs.append(drug)
    return drugs


def _diagnoses(matches) -> list[dict]:
    return list({m_["dx"]["resource_ref"]: m_["dx"] for m_ in matches}.values())


@card_rule(id="R3", title="RLS-worsening drug ordered", citation=SEEDS_DRUGS,
           hooks=("order-select", "order-sign"),
           logic="present(RLS or PLMD) and a selected (order-select) or any (order-sign) draft MedicationRequest "
                 "is a systemic drug of an RLS-worsening class",
           when=when_all(
               c.dx << ((m.kind == "finding") & ((m.name == "rls") | (m.name == "plmd"))),
               c.ctx << ((m.kind == "context") & ((m.hook == "order-select") | (m.hook == "order-sign"))),
               c.drug << ((m.kind == "medication") & (m.origin == "draft") & (m.selected == True)
                          & m.groups.anyItem(item == "rls_worsening")),
           ))
def worsening_drug_ordered(matches, ctx):
    drugs = _unique_drugs(matches, "drug")
    first = drugs[0]
    why = ("Restless legs syndrome or periodic limb movement disorder is on the problem list, and the order being "
           "placed is a drug that can worsen it (seeds 000 and 001: tricyclics, SSRIs, lithium, dopamine "
           "antagonists; 001: centrally acting antihistamines; SNRIs and mirtazapine are an AASM 2024 addition).\n\n"
           + "\n".join(_drug_line(d, ctx) for d in drugs))
    if len(drugs) == 1:
        suggestions = [SuggestionDraft(label=f"Remove this order ({fill('{d}', d=first['name'])})",
                                       actions=[remove_draft(first["resource_ref"], first["name"])])]
        if "sedating_antihistamine" in first["classes"] and first["resource_type"] == "MedicationRequest":
            suggestions.append(SuggestionDraft(
                label="Replace with a non-sedating antihistamine (cetirizine 10 mg)",
                actions=[remove_draft(first["resource_ref"], first["name"]),
                         medication_proposal(ctx.patient_id, *CETIRIZINE_10)]))
        behavior = "at-most-one"
        drug_text = first["name"]
        class_text = _worsening_class(first, ctx)
    else:
        suggestions = [SuggestionDraft(label=fill("Remove the order for {d}", d=d["name"]),
                                       actions=[remove_draft(d["resource_ref"], d["name"])]) for d in drugs]
        behavior = "any"
        drug_text = name_list([d["name"] for d in drugs], shown=2)
        class_text = f"{len(drugs)} drugs"
    return CardDraft(
        summary=fill("{drug} ({cls}) can worsen restless legs; consider an alternative", drug=drug_text, cls=class_text),
        indicator="warning",
        why=why,
        evidence=drugs + _diagnoses(matches),
        suggestions=suggestions,
        selection_behavior=behavior,
        override_reasons=[("benefit-outweighs-risk", "Benefit outweighs the risk of worsening RLS"),
                          ("rls-controlled", "RLS well controlled; will monitor")],
    )


@card_rule(id="R4", title="Active RLS-worsening medications (chart review)", citation=SEEDS_DRUGS,
           hooks=("patient-view",), needs=("medication_requests", "medication_statements"),
           logic="present(RLS, PLMD or a leg-movement complaint) and an active systemic medication of an "
                 "RLS-worsening class, deduplicated by ingredient",
           when=when_all(
               c.dx << ((m.kind == "finding") & ((m.name == "rls") | (m.name == "plmd")
                                                 | (m.name == "leg_movement_complaint"))),
               c.ctx << ((m.kind == "context") & (m.hook == "patient-view")),
               c.drug << ((m.kind == "medication") & (m.origin == "chart") & m.groups.anyItem(item == "rls_worsening")),
           ))
def worsening_drugs_review(matches, ctx):
    drugs = _unique_drugs(matches, "drug")
    names = [d["name"] for d in drugs]
    why = ("A leg-movement diagnosis or complaint is on the problem list and the patient takes medication that can "
           "cause or worsen restless legs (seeds 000 and 001). Review whether each is still needed.\n\n"
           + "\n".join(_drug_line(d, ctx) for d in drugs))
    return CardDraft(
        summary=fill("Review {n} active medication(s) that can worsen RLS: {drugs}", limit=60,
                     n=str(len(drugs)), drugs=name_list(names)),
        indicator="info",
        why=why,
        evidence=[m_["drug"] for m_ in matches] + _diagnoses(matches),
    )
