"""Nocturnal leg cramps and the drugs that should not treat them.

R22 (Addition): the FDA Drug Safety Communication of 2010-07-08 and the Qualaquin boxed warning:
quinine is approved only for malaria and is not to be used for leg cramps (serious and
life-threatening haematologic reactions).
"""
from durable.lang import c, item, m, none, when_all

from cds_service.orders import remove_draft
from cds_service.rulebook import CardDraft, SuggestionDraft, card_rule, escape

FDA_2010 = "FDA 2010 Drug Safety Communication on quinine (Qualaquin) for leg cramps; Qualaquin boxed warning"


@card_rule(id="R22", title="Quinine for leg cramps", citation=FDA_2010,
           hooks=("order-select", "order-sign"),
           logic="a selected (order-select) or any (order-sign) draft of quinine, with no malaria coded as a "
                 "condition or as the order's reason",
           when=when_all(
               c.ctx << ((m.kind == "context") & ((m.hook == "order-select") | (m.hook == "order-sign"))),
               c.drug << ((m.kind == "medication") & (m.origin == "draft") & (m.selected == True)
                          & m.classes.anyItem(item == "quinine")),
               none((m.kind == "condition") & m.sets.anyItem(item == "MALARIA")),
           ))
def quinine_for_cramps(matches, ctx):
    drugs = list({match["drug"]["resource_ref"]: match["drug"] for match in matches}.values())
    cramps = [f for f in ctx.facts if f.get("kind") == "condition" and "LEG_CRAMP" in f.get("sets", [])]
    why = ("Quinine is being ordered and no malaria is coded. The FDA (2010) warns against quinine for leg cramps: "
           "serious and life-threatening haematologic reactions (thrombocytopenia, HUS/TTP) have been reported, and "
           "Qualaquin is approved only for malaria.")
    if cramps:
        why += " Leg cramps are on the problem list, the likely reason for this order."
    why += "\n\n" + "\n".join(f"- **{escape(d['name'])}**, {escape(d['resource_ref'])}" for d in drugs)
    return CardDraft(
        summary="Quinine is not recommended for leg cramps (FDA warning: serious hematologic reactions)",
        indicator="warning",
        why=why,
        evidence=drugs + cramps,
        suggestions=[SuggestionDraft(label=f"Remove this order ({d['name'][:40]})",
                                     actions=[remove_draft(d["resource_ref"], d["name"])]) for d in drugs],
        selection_behavior="at-most-one" if len(drugs) == 1 else "any",
        override_reasons=[("malaria-treatment", "Prescribed for malaria"),
                          ("benefit-outweighs-risk", "Benefit outweighs the risk; patient informed")],
    )
