"""What looks like restless legs but is not, or not only: akathisia (R17) and the mimics (R18).

Recommendations: before treating restless legs, rule out what imitates it. Akathisia, an inner
restlessness of the whole body without an evening pattern, follows dopamine antagonists
(antipsychotics and antiemetics). Peripheral arterial disease (pain on walking; check the four
distal pulses), venous disease, neuropathy (which can also cause secondary RLS), lumbar spinal
stenosis (relief on bending forward), radiculopathy and leg cramps all produce leg symptoms; the four
RLS criteria alone misclassify about one patient in six without RLS. The review also lists other
drug classes as causes of akathisia; clinically it is chiefly the dopamine antagonists, so only they
are used here (the others are RLS-worsening drugs, R3 and R4).

Sources: Differential Diagnoses for Intractable Leg Spasms and Differential Diagnosis of Involuntary
Lower Left Leg Jerking (Dr.Oracle Medical Advisory Board, 2025).

- R17, akathisia rather than RLS. Include: RLS or restlessness whose onset comes at most
  `akathisia_window_days` after a systemic dopamine antagonist was started (an unknown onset counts
  from today), on opening the chart or on selecting an RLS drug. Exclude: akathisia already coded;
  restless legs recorded before the drug was started; topical or inactive products.
- R18, mimics before RLS treatment. Include: a mimic on the problem list (peripheral arterial
  disease, venous disease, neuropathy, lumbar stenosis, radiculopathy, leg cramps), on opening the
  chart of a patient with RLS or on selecting an RLS drug. Exclude: no mimic, or only inactive or
  resolved ones.
"""

from cds_service.authoring.criteria import all_of, chart_medication, coded, finding, params, selected_draft
from cds_service.authoring.rulebook import CardDraft, card_rule, derivation, drug_name, escape, fill

from .common import (
    CATALOG,
    SEED_000,
    SEED_001,
    as_drug,
    class_of,
    condition_names,
    drug_fields,
    drug_line,
    review_triggers,
    seeds,
    unique,
)

MIMIC_FEATURES = {
    "PAD": "peripheral arterial disease: pain with walking, not relieved by it; check the four distal pulses",
    "LUMBAR_STENOSIS": "spinal stenosis: relief with lumbar flexion",
    "RADICULOPATHY": "radiculopathy: dermatomal pain, not an urge to move",
    "NEUROPATHY": "neuropathy: sensory deficits, not relieved by movement (it can also cause secondary RLS)",
    "VENOUS": "venous disease: oedema and varicosities, no evening pattern",
    "LEG_CRAMP": "cramps: a painful contraction relieved by stretching that muscle",
}


review_triggers(
    view_id="F-RLS-REVIEW-VIEW",
    order_id="F-RLS-REVIEW-ORDER",
    produces="rls_review_due",
    module=__name__,
    citation=f"{CATALOG} R17-R19 (hooks)",
    titles=("RLS review on opening the chart", "RLS review when an RLS drug is selected"),
    view_extra=(finding("rls", alias="rls"),),
    view_logic="patient-view with RLS present",
    selected_drug=selected_draft(group="rls_drug", alias="drug"),
    order_logic="order-select of a dopamine agonist, levodopa or gabapentinoid",
)


# ---- R17 ------------------------------------------------------------------------------------

review_triggers(
    view_id="F-AKATHISIA-REVIEW-VIEW",
    order_id="F-AKATHISIA-REVIEW-ORDER",
    produces="akathisia_review_due",
    module=__name__,
    citation=f"{CATALOG} R17 (hooks)",
    titles=("Akathisia review on opening the chart", "Akathisia review when an RLS drug is selected"),
    selected_drug=selected_draft(group="rls_drug", alias="drug"),
    order_logic="order-select of a dopamine agonist, levodopa or gabapentinoid",
)


@derivation(
    id="F-AKATHISIA-PATTERN",
    title="A dopamine antagonist started shortly before the restlessness",
    citation=f"{seeds(SEED_001)}; {CATALOG} R17",
    when=all_of(
        inclusion=[
            params(),
            coded("RLS", "RESTLESSNESS", alias="symptom"),
            chart_medication(group="dopamine_antagonist", start_dated=True, alias="drug"),
        ],
        exclusion=[coded("AKATHISIA")],
    ),
    produces="akathisia_suspected",
    needs=("conditions", "medication_requests", "medication_statements"),
    logic="a systemic dopamine antagonist started 0-90 days before the onset of RLS or restlessness (unknown "
    "onset: today), no akathisia coded",
)
def akathisia_pattern(match):
    onset = max(match["symptom"]["onset_days_ago"], 0)  # unknown onset: measure from today
    lead = match["drug"]["started_days_ago"] - onset
    if not 0 <= lead <= match["params"]["akathisia_window_days"]:
        return None  # started after the symptoms, or long before them
    return dict(drug_fields(match["drug"]), lead_days=lead, symptom_ref=match["symptom"]["resource_ref"])


@card_rule(
    id="R17",
    title="Akathisia rather than RLS",
    citation=seeds(SEED_001),
    hooks=("patient-view", "order-select"),
    needs=("conditions", "medication_requests", "medication_statements"),
    logic="RLS or restlessness whose onset follows the start of a dopamine antagonist by at most 90 days, with "
    "no akathisia coded",
    when=all_of(inclusion=[finding("akathisia_review_due", alias="due"), finding("akathisia_suspected", alias="drug")]),
)
def akathisia_rather_than_rls(matches, ctx):
    drugs = [as_drug(d) for d in unique(matches, "drug")]
    wanted = ctx.groups["dopamine_antagonist"]
    first = drugs[0]
    why = (
        f"Restlessness or RLS began {first['lead_days']} days after {escape(first['name'])} was started. "
        "Consider drug-induced akathisia, which mimics restless legs."
    )
    notes = [
        "Akathisia is an inner, whole-body restlessness without an evening pattern; restless legs are limb-focused, "
        "worse at rest and in the evening, and relieved by movement."
    ]
    notes += [drug_line(d, class_of(d, wanted, ctx)) for d in drugs]
    return CardDraft(
        summary=fill(
            "Restlessness on {drug} (dopamine antagonist): consider drug-induced akathisia rather than RLS",
            drug=drug_name(first["name"]),
        ),
        indicator="info",
        why=why,
        notes=notes,
        evidence=drugs,
        thresholds={"akathisia_window_days": ctx.settings.akathisia_window_days},
    )


# ---- R18 ------------------------------------------------------------------------------------


@card_rule(
    id="R18",
    title="Mimics before RLS treatment",
    citation=seeds(SEED_000, SEED_001),
    hooks=("order-select", "patient-view"),
    needs=("conditions",),
    logic="patient-view with RLS present, or order-select of an RLS drug, and a mimic present (PAD, venous "
    "disease, neuropathy, lumbar stenosis, radiculopathy, leg cramps)",
    when=all_of(inclusion=[finding("rls_review_due", alias="due"), coded("MIMIC", alias="mimic")]),
)
def rls_mimics(matches, ctx):
    mimics = unique(matches, "mimic")
    kinds = [k for k in MIMIC_FEATURES if any(k in f["sets"] for f in mimics)]
    why = (
        "A condition that mimics restless legs syndrome, or contributes to it, is on the problem list. Rule it out "
        "before treating restless legs."
    )
    notes = ["The four symptom criteria alone misclassify 16 % of patients without restless legs."]
    notes += [f"Telling feature of {MIMIC_FEATURES[k]}" for k in kinds]
    return CardDraft(
        summary=fill(
            "Leg symptoms with {mimic}: rule out an RLS mimic before starting RLS treatment",
            limit=60,
            mimic=condition_names(mimics, width=60),
        ),
        indicator="info",
        why=why,
        notes=notes,
        evidence=mimics,
    )
