"""Myoclonus: metabolic causes (R14), causative drugs (R15) and the work-up labs (R16).

Recommendations: look for the cause of myoclonus and treat it. Metabolic causes are kidney or liver
failure, electrolyte imbalance, hypoglycaemia and hyponatraemia; drug causes are levodopa,
antipsychotics, antidepressants and opioids, and alcohol withdrawal. When no recent metabolic
results are on file, check electrolytes, glucose, renal and liver function; EEG and EMG help to
localise the origin, and rhythmic jerks of the lower trunk and legs suggest spinal myoclonus (MRI of
the spine with nerve conduction studies). The exact lab screen is this service's translation of
those recommendations.

Sources: What are the causes of myoclonic jerks? and, for localisation, Differential Diagnosis of
Involuntary Lower Left Leg Jerking (Dr.Oracle Medical Advisory Board, 2025).

- R14, myoclonus with a metabolic cause. Include: myoclonus and kidney failure, liver failure,
  hyponatraemia or hypoglycaemia, coded or measured (eGFR below 30 within
  `metabolic_lookback_days`; sodium below 135 mmol/L or glucose below 70 mg/dL within
  `metabolic_value_lookback_days`). Exclude: normal values; values outside their window or in a unit
  not understood; a value reported only as a lower bound (eGFR ">60"). Its card replaces R16's.
- R15, myoclonus and a causative drug. Include: myoclonus and a systemic levodopa, antipsychotic,
  antidepressant or opioid, active on opening the chart or being ordered; or alcohol withdrawal coded.
  Exclude: topical forms; inactive medications; on order-select, drafts that are not selected.
- R16, work-up labs. Include: myoclonus and, within `metabolic_lookback_days`, neither a metabolic
  panel nor a basic panel (or sodium, glucose and creatinine or eGFR) with AST or ALT. Exclude: the
  screen complete; lab results the service could not read.
"""

from cds_service.authoring.criteria import (
    all_of,
    chart_medication,
    coded,
    data_gap,
    finding,
    hook_is,
    order_hook,
    params,
    readable_result,
    result,
    selected_draft,
    setting,
)
from cds_service.authoring.orders import lab_order, remove_draft
from cds_service.authoring.rulebook import (
    CardDraft,
    SuggestionDraft,
    card_rule,
    derivation,
    drug_name,
    drug_names,
    fill,
)

from .common import CATALOG, SEED_000, SEED_003, as_drug, class_of, drug_fields, drug_line, seeds, unique, unique_drugs

SEED = seeds(SEED_003)
CMP = ("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma")
CAUSE_ORDER = ["kidney failure", "liver failure", "hyponatraemia", "hypoglycaemia"]
LOCALISE = (
    "EEG/EMG can localise the origin of the jerks; rhythmic jerks of the lower trunk and legs "
    "suggest spinal myoclonus: MRI of the spine with nerve conduction studies."
)


# ---- R14 metabolic causes ---------------------------------------------------------------------


def _cause_coded(id: str, cause: str, code_set: str, codes: str) -> None:
    def derive(match):
        return {"cause": cause, "resource_ref": match["dx"]["resource_ref"]}

    derive.__name__ = f"metabolic_cause_{code_set.lower()}"
    derivation(
        id=id,
        title=f"Metabolic cause coded: {cause}",
        citation=f"{SEED}; {CATALOG} R14",
        produces="metabolic_cause",
        needs=("conditions",),
        logic=f"present({code_set}): {codes}",
        when=all_of(inclusion=[finding("myoclonus", alias="myo"), coded(code_set, alias="dx")]),
    )(derive)


def _cause_measured(id: str, cause: str, analyte: str, below: float, window: str, logic: str) -> None:
    """Register `id`: myoclonus and a readable `analyte` below `below` (never a lower bound such as
    '>60') within the setting `window`."""

    def derive(match):
        return {"cause": cause, "resource_ref": match["lab"]["resource_ref"]}

    derive.__name__ = f"metabolic_cause_{analyte}"
    derivation(
        id=id,
        title=f"Metabolic cause measured: {cause}",
        citation=f"{SEED}; {CATALOG} R14",
        produces="metabolic_cause",
        needs=("labs",),
        logic=logic,
        when=all_of(
            inclusion=[
                finding("myoclonus", alias="myo"),
                params(),
                readable_result(analyte, within=setting(window), below=below, alias="lab"),
            ]
        ),
    )(derive)


_cause_coded(
    "F-CAUSE-RENAL_FAILURE",
    "kidney failure",
    "RENAL_FAILURE",
    "N18.4, N18.5, N18.6, Z99.2; SNOMED 46177005, 431857002, 236435004",
)
_cause_coded("F-CAUSE-LIVER_FAILURE", "liver failure", "LIVER_FAILURE", "K72.*, K70.4*; SNOMED 59927004")
_cause_coded("F-CAUSE-HYPONATRAEMIA", "hyponatraemia", "HYPONATRAEMIA", "E87.1; SNOMED 89627008")
_cause_coded("F-CAUSE-HYPOGLYCAEMIA", "hypoglycaemia", "HYPOGLYCAEMIA", "E16.1, E16.2; SNOMED 302866003")
_cause_measured(
    "F-CAUSE-LOW-EGFR",
    "kidney failure",
    "egfr",
    30,
    "metabolic_lookback_days",
    "eGFR < 30 mL/min/1.73m2 within 3 months",
)
_cause_measured(
    "F-CAUSE-LOW-SODIUM",
    "hyponatraemia",
    "sodium",
    135,
    "metabolic_value_lookback_days",
    "sodium < 135 mmol/L within 30 days",
)
_cause_measured(
    "F-CAUSE-LOW-GLUCOSE",
    "hypoglycaemia",
    "glucose",
    70,
    "metabolic_value_lookback_days",
    "glucose < 70 mg/dL (3.9 mmol/L) within 30 days",
)


@card_rule(
    id="R14",
    title="Myoclonus with a metabolic cause",
    citation=SEED,
    hooks=("patient-view",),
    needs=("conditions", "labs"),
    supersedes=("R16",),
    analytes=("cmp",),  # a recent CMP
    logic="myoclonus and kidney failure, liver failure, hyponatraemia or hypoglycaemia, coded or measured "
    "(eGFR < 30 in 3 months, sodium < 135 or glucose < 70 mg/dL in 30 days)",
    when=all_of(inclusion=[finding("myoclonus", alias="myo"), finding("metabolic_cause", alias="cause")]),
)
def myoclonus_metabolic_cause(matches, ctx):
    causes = [cause for cause in CAUSE_ORDER if cause in {match["cause"]["cause"] for match in matches}]
    why = [
        f"Myoclonus is on the problem list together with {', '.join(causes)}. Metabolic disturbances "
        "(kidney or liver failure, electrolyte imbalance, hypoglycaemia, hyponatraemia) cause myoclonus; treat the "
        "cause."
    ]
    recent_cmp = [f for f in ctx.labs("cmp") if f["days_ago"] <= ctx.settings.metabolic_lookback_days]
    suggestions = []
    if not recent_cmp:
        suggestions.append(
            SuggestionDraft(label="Order a comprehensive metabolic panel", actions=[lab_order(ctx.patient_id, *CMP)])
        )
        why += ["No CMP in the last 3 months.", LOCALISE]
    return CardDraft(
        summary=fill("Myoclonus with {cause}: consider a metabolic cause", cause=" and ".join(causes[:2])),
        indicator="warning",
        why="\n\n".join(why),
        evidence=unique(matches, "myo") + unique(matches, "cause"),
        suggestions=suggestions,
    )


# ---- R15 drugs and alcohol withdrawal -----------------------------------------------------------


@derivation(
    id="F-MYOCLONUS-DRUG-CHART",
    title="A myoclonus-causing drug is active",
    citation=f"{SEED}; {CATALOG} R15",
    when=all_of(
        inclusion=[
            finding("myoclonus", alias="myo"),
            hook_is("patient-view"),
            chart_medication(group="myoclonus_causing", alias="drug"),
        ]
    ),
    produces="myoclonus_cause",
    needs=("medication_requests", "medication_statements"),
    logic="patient-view: an active systemic levodopa, antipsychotic, antidepressant or opioid",
)
def myoclonus_drug_on_chart(match):
    return _drug_cause(match["drug"])


@derivation(
    id="F-MYOCLONUS-DRUG-DRAFT",
    title="A myoclonus-causing drug is being ordered",
    citation=f"{SEED}; {CATALOG} R15",
    when=all_of(
        inclusion=[
            finding("myoclonus", alias="myo"),
            order_hook(),
            selected_draft(group="myoclonus_causing", alias="drug"),
        ]
    ),
    produces="myoclonus_cause",
    logic="order hooks: a selected/any draft of those classes",
)
def myoclonus_drug_ordered(match):
    return _drug_cause(match["drug"])


def _drug_cause(drug: dict) -> dict:
    return dict(drug_fields(drug), cause="drug")


@derivation(
    id="F-MYOCLONUS-ALCOHOL",
    title="Alcohol withdrawal coded",
    citation=f"{SEED}; {CATALOG} R15",
    when=all_of(
        inclusion=[finding("myoclonus", alias="myo"), hook_is("patient-view"), coded("ALCOHOL_WITHDRAWAL", alias="dx")]
    ),
    produces="myoclonus_cause",
    logic="patient-view: present(ALCOHOL_WITHDRAWAL) F10.13*, F10.23*, F10.93* (alcohol abuse, dependence or use "
    "with withdrawal, including delirium and perceptual disturbance), SNOMED 8635005",
)
def myoclonus_alcohol(match):
    return {"cause": "alcohol", "resource_ref": match["dx"]["resource_ref"]}


@card_rule(
    id="R15",
    title="Myoclonus and a causative drug",
    citation=SEED,
    hooks=("patient-view", "order-select", "order-sign"),
    needs=("conditions",),
    logic="myoclonus with an active (patient-view) or drafted (order hooks) systemic levodopa, antipsychotic, "
    "antidepressant or opioid, or with alcohol withdrawal coded (patient-view)",
    when=all_of(inclusion=[finding("myoclonus", alias="myo"), finding("myoclonus_cause", alias="cause")]),
)
def myoclonus_drug(matches, ctx):
    drugs = [
        as_drug(d) for d in unique_drugs([match for match in matches if match["cause"]["cause"] == "drug"], "cause")
    ]
    alcohol = [match["cause"] for match in matches if match["cause"]["cause"] == "alcohol"]
    wanted = ctx.groups["myoclonus_causing"]
    why = [
        "Myoclonus is on the problem list with a recognised cause (levodopa, antipsychotics, antidepressants, "
        "opioids or alcohol withdrawal). Review whether the cause can be removed."
    ]
    if drugs:
        why.append("\n".join(drug_line(d, class_of(d, wanted, ctx)) for d in drugs))
    if alcohol:
        why.append("Alcohol withdrawal is coded.")
    drafts = [d for d in drugs if d["origin"] == "draft"]
    suggestions = [
        SuggestionDraft(
            label=f"Remove this order ({drug_name(d['name'])})", actions=[remove_draft(d["resource_ref"], d["name"])]
        )
        for d in drafts
    ]
    summary = (
        fill(
            "Myoclonus: {drug} is a recognised cause of drug-induced myoclonus; review",
            drug=drug_names([d["name"] for d in drugs], 40),
        )
        if drugs
        else "Myoclonus with alcohol withdrawal coded: withdrawal is a recognised cause of myoclonus; review"
    )
    return CardDraft(
        summary=summary,
        indicator="warning",
        why="\n\n".join(why),
        evidence=unique(matches, "myo") + drugs + alcohol,
        suggestions=suggestions,
        selection_behavior="at-most-one" if len(drafts) == 1 else "any",
        override_reasons=[("benefit-outweighs-risk", "Benefit outweighs the risk")] if drafts else [],
    )


# ---- R16 work-up labs --------------------------------------------------------------------------


def _recent(analyte: str):
    return result(analyte, within=setting("metabolic_lookback_days"))


def _screen_gap(id: str, suffix: str, logic: str, *missing) -> None:
    """Register `id`: myoclonus, no CMP, and the named parts missing (3 months)."""

    def derive(match):
        return {"gap": suffix.lower()}

    derive.__name__ = f"metabolic_screen_gap_{suffix.lower()}"
    derivation(
        id=id,
        title=f"Metabolic screen incomplete: {logic}",
        citation=f"{SEED_003}, {SEED_000}; {CATALOG} R16",
        produces="metabolic_screen_incomplete",
        needs=("labs",),
        logic=f"no CMP and {logic} within metabolic_lookback_days",
        when=all_of(
            inclusion=[finding("myoclonus", alias="myo"), params()],
            exclusion=[_recent("cmp"), data_gap("labs"), *(_recent(a) for a in missing)],
        ),
    )(derive)


_screen_gap("F-SCREEN-GAP-LIVER", "LIVER", "no AST and no ALT", "ast", "alt")
_screen_gap("F-SCREEN-GAP-SODIUM", "SODIUM", "no BMP and no sodium", "bmp", "sodium")
_screen_gap("F-SCREEN-GAP-GLUCOSE", "GLUCOSE", "no BMP and no glucose", "bmp", "glucose")
_screen_gap("F-SCREEN-GAP-RENAL", "RENAL", "no BMP, no creatinine and no eGFR", "bmp", "creatinine", "egfr")


@card_rule(
    id="R16",
    title="Myoclonus work-up labs",
    citation=f"{seeds(SEED_003, SEED_000)} (seed-derived lab set)",
    hooks=("patient-view",),
    needs=("labs",),
    logic="myoclonus and, within 3 months, neither a CMP nor (a BMP or sodium + glucose + creatinine/eGFR) "
    "with AST or ALT",
    when=all_of(inclusion=[finding("myoclonus", alias="myo"), finding("metabolic_screen_incomplete", alias="gap")]),
)
def myoclonus_workup(matches, ctx):
    why = (
        "Myoclonus is on the problem list and the metabolic screen of the last 3 months is incomplete. "
        "Look for kidney or liver failure, electrolyte imbalance and hypoglycaemia.\n\n"
        "A complete screen is a CMP, or electrolytes, glucose and renal function together with AST or ALT.\n\n"
        + LOCALISE
    )
    return CardDraft(
        summary="Myoclonus without recent metabolic labs: check electrolytes, glucose, renal and liver function",
        indicator="info",
        why=why,
        evidence=unique(matches, "myo"),
        suggestions=[
            SuggestionDraft(label="Order a comprehensive metabolic panel", actions=[lab_order(ctx.patient_id, *CMP)])
        ],
    )
