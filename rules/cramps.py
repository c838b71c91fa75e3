"""Leg cramps and the treatments and tests they should not get (R5, R6, R22).

Recommendations: simple leg cramps (a sudden painful contraction that stretching the muscle
relieves, unlike the urge to move of restless legs) need neither dopaminergic drugs nor a sleep
study; stretching is the first measure, and polysomnography is kept for suspected periodic limb
movement disorder with a sleep complaint. Quinine must not be used for leg cramps: in 2010 the FDA
warned of serious and life-threatening haematological reactions, and quinine is approved only for
malaria.

Sources: Differential Diagnosis of Involuntary Lower Left Leg Jerking (Dr.Oracle Medical Advisory
Board, 2025); FDA Drug Safety Communication on quinine (Qualaquin) for leg cramps, 2010, and the
Qualaquin boxed warning.

- R5, dopaminergic drug for simple cramps. Include: leg cramps on the problem list and a dopamine
  agonist or levodopa being ordered. Exclude: RLS, PLMD or parkinsonism, coded or given as the
  order's reason; cabergoline or bromocriptine with hyperprolactinaemia.
- R6, polysomnography for simple nocturnal cramps. Include: leg cramps and a polysomnography order.
  Exclude: RLS or PLMD (suspected or confirmed), sleep-disordered breathing or another sleep
  disorder, or an order reason other than cramps.
- R22, quinine for leg cramps. Include: quinine being ordered (never quinidine, a different drug).
  Exclude: malaria, coded or given as the order's reason. When cramps are coded the card says so.
"""

from cds_service.authoring.criteria import (
    all_of,
    coded,
    finding,
    order_hook,
    order_reason_other_than,
    selected_draft,
    selected_draft_order,
)
from cds_service.authoring.rulebook import CardDraft, card_rule

from .common import SEED_000, as_drug, drug_line, removal_suggestions, seeds, unique

FDA_2010 = "FDA 2010 Drug Safety Communication on quinine (Qualaquin) for leg cramps; Qualaquin boxed warning"


@card_rule(
    id="R5",
    title="Dopaminergic drug for simple leg cramps",
    citation=seeds(SEED_000),
    hooks=("order-select", "order-sign"),
    needs=("conditions",),
    logic="a selected/any draft dopamine agonist or levodopa, leg cramps present, and no RLS, PLMD, "
    "parkinsonism or (cabergoline/bromocriptine only) hyperprolactinaemia, also as the order's reason",
    when=all_of(
        inclusion=[
            order_hook(),
            finding("dopaminergic_draft", alias="draft", selected=True),
            finding("leg_cramp", alias="cramp"),
        ],
        exclusion=[coded("RLS", "PLMD", "PARKINSONISM")],
    ),
)
def dopaminergic_for_cramps(matches, ctx):
    drafts = [as_drug(d) for d in unique(matches, "draft")]
    cramps = ctx.conditions_in("LEG_CRAMP")
    why = (
        "Leg cramps are on the problem list, with no restless legs syndrome, PLMD or parkinsonism, and a dopaminergic "
        "drug is being ordered. Dopaminergic therapy is not indicated for simple leg cramps; calf stretching is the "
        "first step."
    )
    notes = [drug_line(d, ctx.class_title(d["classes"][0])) for d in drafts]
    suggestions, behavior = removal_suggestions(drafts)
    return CardDraft(
        summary="Dopaminergic therapy is not indicated for simple leg cramps; try calf stretching instead",
        indicator="warning",
        why=why,
        notes=notes,
        evidence=drafts + cramps,
        suggestions=suggestions,
        selection_behavior=behavior,
        override_reasons=[
            ("other-indication", "Prescribed for another indication"),
            ("rls-suspected", "Restless legs suspected, not yet coded"),
        ],
    )


@card_rule(
    id="R6",
    title="Polysomnography for simple nocturnal cramps",
    citation=seeds(SEED_000),
    hooks=("order-select", "order-sign"),
    needs=("conditions",),
    logic="a selected/any draft polysomnography order, leg cramps present, no RLS, PLMD, sleep-disordered "
    "breathing or other sleep disorder, and no order reason other than a cramp code",
    when=all_of(
        inclusion=[
            order_hook(),
            selected_draft_order("psg", alias="psg", only_known_reasons=True),
            finding("leg_cramp", alias="cramp"),
        ],
        exclusion=[
            coded("RLS", "PLMD", "SLEEP_DISORDERED_BREATHING", "OTHER_SLEEP_DISORDER"),
            # any coded order reason that is not a cramp code points to another indication
            order_reason_other_than("LEG_CRAMP"),
        ],
    ),
)
def psg_for_cramps(matches, ctx):
    orders = unique(matches, "psg")
    why = (
        "Polysomnography is being ordered for a patient with leg cramps and no sleep disorder coded. It is not "
        "indicated for simple nocturnal leg cramps; it is for suspected PLMD with a sleep complaint or daytime fatigue."
    )
    notes = [
        "No restless legs syndrome, PLMD, sleep-disordered breathing or other sleep disorder is coded, and the "
        "order gives no other reason."
    ]
    suggestions, behavior = removal_suggestions(orders)
    return CardDraft(
        summary="Polysomnography is not indicated for simple nocturnal leg cramps",
        indicator="warning",
        why=why,
        notes=notes,
        evidence=orders + ctx.conditions_in("LEG_CRAMP"),
        suggestions=suggestions,
        selection_behavior=behavior,
        override_reasons=[
            ("other-sleep-indication", "Ordered for another sleep indication"),
            ("plmd-suspected", "PLMD suspected, not yet coded"),
        ],
    )


@card_rule(
    id="R22",
    title="Quinine for leg cramps",
    citation=FDA_2010,
    hooks=("order-select", "order-sign"),
    needs=("conditions",),
    logic="a selected (order-select) or any (order-sign) draft of quinine, with no malaria coded as a "
    "condition or as the order's reason",
    when=all_of(
        inclusion=[order_hook(), selected_draft(drug_class="quinine", alias="drug")],
        exclusion=[coded("MALARIA")],
    ),
)
def quinine_for_cramps(matches, ctx):
    drugs = unique(matches, "drug")
    cramps = ctx.conditions_in("LEG_CRAMP")
    why = (
        "Quinine is being ordered and no malaria is coded. The FDA (2010) warns against quinine for leg cramps: "
        "serious and life-threatening haematologic reactions (thrombocytopenia, HUS/TTP) have been reported."
    )
    notes = ["Quinine (Qualaquin) is approved only for malaria."]
    if cramps:
        notes.append("Leg cramps are on the problem list, the likely reason for this order.")
    suggestions, behavior = removal_suggestions(drugs)
    return CardDraft(
        summary="Quinine is not recommended for leg cramps (FDA warning: serious hematologic reactions)",
        indicator="warning",
        why=why,
        notes=notes,
        evidence=drugs + cramps,
        suggestions=suggestions,
        selection_behavior=behavior,
        override_reasons=[
            ("malaria-treatment", "Prescribed for malaria"),
            ("benefit-outweighs-risk", "Benefit outweighs the risk; patient informed"),
        ],
    )
