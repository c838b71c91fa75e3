"""Special populations: secondary RLS (R19), renal dosing (R23, off) and RLS in cognitive impairment
(R24, off).

Recommendations: restless legs are often secondary to iron deficiency; pregnancy and end-stage
renal disease are further causes, for which the AASM 2024 guideline gives separate recommendations
that this service has not verified, so its cards give no drug-specific advice for them. Renally
cleared drugs for RLS and myoclonus (gabapentinoids, pramipexole, levetiracetam) need their dose
checked when kidney function is reduced; the product labels state their cut-offs as creatinine
clearance, not eGFR, so the cut-off used here is unverified and the rule is off until it is. Patients
who cannot describe restless legs show them as leg rubbing, pacing, kicking or evening restlessness:
assess for RLS before sedating.

Sources: Differential Diagnosis of Involuntary Lower Left Leg Jerking and Differential Diagnoses for
Intractable Leg Spasms (Dr.Oracle Medical Advisory Board, 2025); AASM 2024 clinical practice
guideline on RLS and PLMD, Winkelman et al., J Clin Sleep Med 2024 (pregnancy, end-stage renal
disease); US product labels (renal dosing).

- R19, secondary RLS. Include: restless legs and pregnancy (onset, else recorded date, within
  `pregnancy_max_days`), end-stage renal disease or dialysis, or iron deficiency, on opening the chart
  or on selecting an RLS drug; the card adds the iron verdict. Exclude: none of these contexts; a
  pregnancy ended, long past or undated.
- R23, renal dosing (off by default). Include: a renally cleared drug being selected and the latest
  eGFR within `renal_lookback_days` below `renal_dose_egfr_threshold`. Exclude: an eGFR at or above
  the threshold or reported as a lower bound (">60"); no usable eGFR; drugs not listed (ropinirole is
  cleared by the liver).
- R24, RLS in cognitive impairment (off: the cues are rarely coded). Include: dementia or cognitive
  impairment with restlessness or a sleep complaint. Exclude: RLS already diagnosed; delirium, which
  points to an acute cause.
"""

from cds_service.authoring.criteria import (
    all_of,
    coded,
    finding,
    hook_is,
    params,
    readable_result,
    selected_draft,
    setting,
)
from cds_service.authoring.rulebook import CardDraft, card_rule, derivation, drug_name, fill

from .common import AASM_2024, CATALOG, SEED_000, SEED_001, as_drug, condition_names, drug_fields, seeds, unique
from .iron import iron_verdict

LABELS = "US product labels (renal dosing); thresholds unverified"


@card_rule(
    id="R19",
    title="Secondary-RLS context",
    citation=f"{seeds(SEED_000, SEED_001)}; pregnancy, ESRD: {AASM_2024}",
    hooks=("patient-view", "order-select"),
    needs=("conditions", "labs", "patient"),
    analytes=("ferritin", "tsat"),  # iron_verdict
    logic="RLS present (patient-view) or an RLS drug selected, with pregnancy (onset, else recorded date, within "
    "pregnancy_max_days), ESRD/dialysis or iron deficiency",
    when=all_of(
        inclusion=[
            finding("rls", alias="rls"),
            finding("rls_review_due", alias="due"),
            coded("PREGNANCY", "ESRD_DIALYSIS", "IRON_DEFICIENCY", alias="context"),
        ]
    ),
)
def secondary_rls(matches, ctx):
    contexts = unique(matches, "context")
    verdict = iron_verdict(ctx)
    if verdict:
        iron = {
            "indicated": "iron stores are low",
            "iv_only": "the AASM 2024 guideline suggests IV iron",
            "disagreement": "ferritin is within the AASM 2024 guideline's iron threshold only",
            "in_range": "ferritin is in range",
            "unknown": "ferritin is reported as a bound",
        }[verdict["verdict"]]
    else:
        iron = "no ferritin on file"
    why = (
        f"Restless legs syndrome with {condition_names(contexts)}: it is likely secondary. Review iron status "
        f"({iron}) and the choice of drug."
    )
    notes = [
        "The AASM 2024 guideline has separate recommendations for pregnancy, end-stage renal disease and "
        "children; they have not been verified for this service, so no drug-specific advice is given here."
    ]
    return CardDraft(
        summary=fill(
            "RLS with {context}: likely secondary RLS; review iron status and drug choice",
            context=condition_names(contexts),
        ),
        indicator="info",
        why=why,
        notes=notes,
        evidence=contexts + unique(matches, "rls"),
    )


@derivation(
    id="F-RENAL-DOSED-CLASS",
    title="A renally cleared gabapentinoid is selected",
    citation=f"{LABELS}; {CATALOG} R23",
    when=all_of(inclusion=[selected_draft(drug_class="gabapentinoid", alias="drug")]),
    produces="renally_cleared_draft",
    logic="a selected draft gabapentin, gabapentin enacarbil or pregabalin",
)
def renally_cleared_class(match):
    return drug_fields(match["drug"])


@derivation(
    id="F-RENAL-DOSED-INGREDIENT",
    title="Pramipexole or levetiracetam is selected",
    citation=f"{LABELS}; {CATALOG} R23",
    when=all_of(inclusion=[selected_draft(ingredient=("746741", "114477"), alias="drug")]),
    produces="renally_cleared_draft",
    logic="a selected draft pramipexole (746741) or levetiracetam (114477)",
)
def renally_cleared_ingredient(match):
    return renally_cleared_class(match)


@card_rule(
    id="R23",
    title="Renal dosing of RLS and myoclonus drugs",
    citation=LABELS,
    hooks=("order-select",),
    needs=("labs",),
    enabled_by_default=False,
    logic="a selected renally cleared drug (gabapentinoid, pramipexole, levetiracetam) and the latest eGFR within "
    "12 months below renal_dose_egfr_threshold (default 60, unverified)",
    when=all_of(
        inclusion=[
            params(),
            readable_result("egfr", below=setting("renal_dose_egfr_threshold"), alias="egfr"),
            finding("renally_cleared_draft", alias="drug"),
        ]
    ),
)
def renal_dosing(matches, ctx):
    drug, egfr = as_drug(matches[0]["drug"]), matches[0]["egfr"]
    limit = ctx.settings.renal_dose_egfr_threshold
    why = (
        f"The latest eGFR is {egfr['value']:g} mL/min/1.73m2, below {limit:g}, and a renally cleared drug is being "
        "ordered. Check the dose against the product label."
    )
    notes = ["Labels state creatinine clearance by Cockcroft-Gault, not eGFR; the cut-off used here is unverified."]
    return CardDraft(
        summary=fill(
            "{drug} is renally cleared; eGFR {egfr} mL/min/1.73m2: check dose",
            drug=drug_name(drug["name"]),
            egfr=f"{egfr['value']:g}",
        ),
        indicator="info",
        why=why,
        notes=notes,
        evidence=unique(matches, "drug") + [egfr],
        thresholds={"renal_dose_egfr_threshold": limit},
    )


@card_rule(
    id="R24",
    title="RLS in cognitive impairment",
    citation=seeds(SEED_001),
    hooks=("patient-view",),
    needs=("conditions",),
    enabled_by_default=False,
    logic="dementia or cognitive impairment with restlessness or a sleep complaint, and no RLS and no delirium",
    when=all_of(
        inclusion=[
            hook_is("patient-view"),
            coded("DEMENTIA_CI", alias="dementia"),
            coded("RESTLESSNESS", "SLEEP_COMPLAINT", alias="cue"),
        ],
        exclusion=[coded("RLS", "DELIRIUM")],
    ),
)
def rls_in_cognitive_impairment(matches, ctx):
    why = (
        "Cognitive impairment with restlessness or disturbed sleep, and no restless legs syndrome or delirium coded. "
        "Assess for restless legs (and check ferritin) before sedating."
    )
    notes = [
        "Patients who cannot describe restless legs show them as leg rubbing, pacing, kicking or evening restlessness."
    ]
    return CardDraft(
        summary="Cognitive impairment with evening agitation or leg rubbing: assess for RLS",
        indicator="info",
        why=why,
        notes=notes,
        evidence=unique(matches, "dementia") + unique(matches, "cue"),
    )
