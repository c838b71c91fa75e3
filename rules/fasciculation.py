"""Fasciculations: red flags (R8), emergencies (R9, R10, off by default), the first work-up (R11,
R13) and tests that add nothing in stable benign fasciculation syndrome (R12, R21).

Recommendations: new fasciculations without weakness are usually benign, but fasciculations with
weakness, muscle atrophy, brisk reflexes or a Babinski sign, or with difficulty swallowing or
speaking (bulbar signs), suggest motor neuron disease and need an urgent EMG with nerve conduction
studies and a neurology referral. Sudden fasciculations with a new neurological deficit need
emergent brain imaging to exclude a stroke; ascending weakness with lost reflexes suggests
Guillain-Barre syndrome and admission with respiratory monitoring. Without red flags the work-up is
first-tier labs (fasting glucose or HbA1c, blood count, metabolic panel, vitamin B12, TSH, serum
protein electrophoresis) and screening for anxiety and depression (GAD-7, PHQ-9). A repeat EMG is
not needed in stable benign fasciculation syndrome without new deficits; a lumbar MRI only with
radicular pain or upper motor neuron signs; brain imaging not routinely.

Source: New Involuntary Leg Fasciculation: Evaluation and Management (Dr.Oracle Medical Advisory
Board, 2025).

- R8, fasciculations with red flags. Include: fasciculations and at least one red flag coded
  (weakness, muscle atrophy, abnormal reflexes, dysphagia, dysarthria; the nonspecific codes for an
  abnormal reflex and for weakness count while `r8_weak_red_flags` is on), on opening the chart or on
  selecting an SSRI or SNRI (the drugs the review gives for anxiety in benign fasciculations).
  Exclude: ALS or another motor neuron disease already diagnosed. With an EMG and a neurology
  referral both on file after the latest red flag, an info card replaces the critical one. Its card
  replaces the work-up cards (R11, R13): one card for the problem.
- R9, ascending weakness with areflexia (off: codes cannot say "ascending" or "areflexia").
  Include: Guillain-Barre syndrome coded, or weakness together with an abnormal reflex, with onset
  within `gbs_onset_window_days`. Exclude: older onsets; an abnormal reflex or weakness alone.
- R10, sudden fasciculations with a new deficit (off by default). Include: fasciculations and a new
  focal deficit (facial weakness, dysarthria, weakness, other nervous-system signs), both starting
  within `acute_deficit_window_days`, the deficit not before the fasciculations. Exclude: a stroke
  already coded; head imaging already ordered in that window; older onsets.
- R11, first-tier labs. Include: fasciculations and at least one first-tier test neither resulted
  within `fasciculation_lab_lookback_days` nor pending. Exclude: ALS or motor neuron disease (the
  patient is under specialist care); lab results or orders the service could not read. An HbA1c
  counts for glycaemia; a haemoglobin alone does not count as a blood count.
- R12, no routine repeat EMG. Include: an EMG or nerve conduction study being ordered, fasciculations,
  and a prior EMG within `prior_emg_window_days`. Exclude: a red flag recorded since that EMG; ALS or
  motor neuron disease; another indication for the EMG (radiculopathy, carpal tunnel syndrome,
  polyneuropathy), coded or given as the order's reason.
- R13, anxiety and depression screening. Include: fasciculations and no GAD-7 or no PHQ-9 within
  `screening_lookback_days`. Exclude: ALS or motor neuron disease; with `r13_skip_if_diagnosed`, a
  coded anxiety disorder stands in for the GAD-7 and a coded depression for the PHQ-9. It never
  suggests a drug (an SSRI would worsen restless legs, see R3).
- R21, imaging for isolated fasciculations. Include: fasciculations and a lumbar MRI ordered without
  radicular pain (radiculopathy, sciatica) or an abnormal reflex, or brain imaging ordered without
  any other neurological finding. Exclude: those findings; an order reason naming another indication.
"""

from cds_service.authoring.criteria import (
    all_of,
    coded,
    data_gap,
    finding,
    order_hook,
    order_reason_other_than,
    ordered,
    params,
    pending,
    procedure_done,
    result,
    selected_draft,
    selected_draft_order,
    setting,
    value_of,
)
from cds_service.authoring.orders import lab_order, procedure_order
from cds_service.authoring.rulebook import CardDraft, SuggestionDraft, card_rule, derivation, escape, fill

from .common import CATALOG, SEED_002, condition_names, removal_suggestions, review_triggers, seeds, unique

SEED = seeds(SEED_002)
FIRST_TIER = {  # test -> (analytes that satisfy it, order code, order display)
    "glucose/HbA1c": (("glucose", "hba1c"), "1558-6", "Fasting glucose [Mass/volume] in Serum or Plasma"),
    "CBC": (("cbc",), "58410-2", "CBC panel - Blood by Automated count"),
    "CMP": (("cmp",), "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
    "B12": (("b12",), "2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma"),
    "TSH": (("tsh",), "3016-3", "Thyrotropin [Units/volume] in Serum or Plasma"),
    "SPEP": (("spep",), "24351-9", "Protein electrophoresis panel - Serum or Plasma"),
}


# ---- red flags and when to look ------------------------------------------------------------

# how the R8 summary names each red flag (dysphagia and dysarthria: signs of bulbar involvement)
RED_FLAG_WORDS = {
    "WEAKNESS": "weakness",
    "ATROPHY": "muscle atrophy",
    "ABNORMAL_REFLEX": "abnormal reflexes",
    "DYSPHAGIA": "dysphagia",
    "DYSARTHRIA": "dysarthria",
}


def red_flag_phrase(flags: list[dict], limit: int = 50) -> str:
    """'dysphagia', 'weakness and dysarthria', 'weakness, muscle atrophy and dysphagia'; past
    `limit` characters, the first flag 'and other red flags'."""
    words = [w for w in RED_FLAG_WORDS.values() if any(w in f["flags"] for f in flags)] or ["red flags"]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return text if len(text) <= limit else f"{words[0]} and other red flags"


@derivation(
    id="F-RED-FLAG",
    title="An ALS red flag is present",
    citation=f"{SEED}; {CATALOG} R8",
    when=all_of(inclusion=[coded("RED_FLAG", excluding="WEAK_RED_FLAG", alias="flag")]),
    produces="red_flag",
    logic="present(WEAKNESS M62.81/26544005, ATROPHY M62.5*, DYSPHAGIA R13.1*, DYSARTHRIA R47.1)",
)
def red_flag(match):
    return {
        "resource_ref": match["flag"]["resource_ref"],
        "display": match["flag"]["display"],
        "recorded_days_ago": match["flag"]["recorded_days_ago"],
        "flags": [word for name, word in RED_FLAG_WORDS.items() if name in match["flag"]["sets"]],
    }


@derivation(
    id="F-RED-FLAG-WEAK",
    title="A nonspecific red flag is present (R29.2, R53.1)",
    citation=f"{CATALOG} R8",
    when=all_of(inclusion=[coded("WEAK_RED_FLAG", alias="flag"), params(r8_weak_red_flags=True)]),
    produces="red_flag",
    logic="present(R29.2 abnormal reflex or R53.1 weakness) while r8_weak_red_flags is on",
)
def weak_red_flag(match):
    return red_flag(match)


review_triggers(
    view_id="F-FASC-REVIEW-VIEW",
    order_id="F-FASC-REVIEW-ORDER",
    produces="fasciculation_review_due",
    module=__name__,
    citation=f"{SEED}; {CATALOG} R8",
    titles=("Fasciculation review due on opening the chart", "Fasciculation review due when an SSRI/SNRI is selected"),
    selected_drug=selected_draft(drug_class=("ssri", "snri"), alias="drug"),
    order_logic="order-select of an SSRI or SNRI (002 treats anxiety in benign fasciculation syndrome with these)",
)


# ---- R8 -------------------------------------------------------------------------------------


@card_rule(
    id="R8",
    title="Fasciculations with ALS red flags",
    citation=SEED,
    hooks=("patient-view", "order-select"),
    needs=("conditions", "service_requests", "procedures", "reports"),
    supersedes=("R11", "R13"),
    analytes=tuple(a for analytes, _, _ in FIRST_TIER.values() for a in analytes),  # first-tier labs on file
    logic="fasciculations and a red flag (weakness, atrophy, abnormal reflex, dysphagia, dysarthria) and no "
    "ALS/MND coded; info instead of critical when an EMG and a neurology referral follow the latest flag",
    when=all_of(
        inclusion=[
            finding("fasciculation", alias="fasc"),
            finding("fasciculation_review_due", alias="due"),
            finding("red_flag", alias="flag"),
        ],
        exclusion=[coded("ALS_MND")],
    ),
)
def fasciculation_red_flags(matches, ctx):
    flags = unique(matches, "flag")
    latest = min((f["recorded_days_ago"] for f in flags), default=-1)
    emg, referral = _done_since(ctx, "emg", latest), _done_since(ctx, "neurology_referral", latest)
    why = [
        f"Fasciculations with {escape(condition_names(flags, 3))} on the problem list, and no ALS or motor neuron "
        "disease coded. Weakness, atrophy, hyperreflexia or a Babinski sign next to fasciculations need "
        "an urgent EMG/NCS and a neurology referral.",
        "Abnormal reflexes (R29.2) may be brisk or reduced, and "
        "weakness (R53.1) is nonspecific: confirm at the examination.",
    ]
    if any(word in f["flags"] for f in flags for word in ("dysphagia", "dysarthria")):
        why.append(
            "Dysphagia and dysarthria are signs of bulbar involvement, which the review article treats as progression."
        )
    missing = [
        test
        for test, (analytes, _, _) in FIRST_TIER.items()
        if not any(f["analyte"] in analytes for f in ctx.facts_of("lab") + ctx.facts_of("pending_test"))
    ]
    if missing:
        why.append("First-tier labs not yet on file: " + ", ".join(missing) + " (they can go with the referral).")
    if emg and referral:
        why.append("An EMG/NCS and a neurology referral are already on file after the latest red flag.")
        return CardDraft(
            summary=f"Fasciculations with {red_flag_phrase(flags)}: EMG/NCS and neurology referral already on file",
            indicator="info",
            why="\n\n".join(why),
            evidence=unique(matches, "fasc") + flags + emg + referral,
        )
    order = SuggestionDraft(
        label="Order urgent EMG/NCS and neurology referral",
        is_recommended=True,
        actions=[
            procedure_order(ctx.patient_id, ctx.settings.emg_order_code, "urgent", "Fasciculations with red flags"),
            procedure_order(
                ctx.patient_id, ctx.settings.neurology_referral_code, "urgent", "Fasciculations with red flags"
            ),
        ],
    )
    return CardDraft(
        summary=f"Fasciculations with {red_flag_phrase(flags)}: urgent EMG/NCS and neurology referral",
        indicator="critical",
        why="\n\n".join(why),
        evidence=unique(matches, "fasc") + flags,
        suggestions=[order],
        override_reasons=[
            ("already-arranged", "EMG or neurology review already arranged elsewhere"),
            ("known-cause", "Red flag has a known other cause"),
        ],
    )


def _done_since(ctx, procedure: str, flag_days_ago: int) -> list[dict]:
    """Orders or results for `procedure` dated on or after the latest red flag (unknown dates do not count)."""
    if flag_days_ago < 0:
        return []
    found = ctx.facts_of("order", procedure=procedure) + ctx.facts_of("procedure_done", procedure=procedure)
    return [f for f in found if 0 <= f["days_ago"] <= flag_days_ago]


# ---- R9 and R10 (off by default: coded data cannot say "ascending" or "new") ----------------


@derivation(
    id="F-GBS-CODED",
    title="Recent Guillain-Barre syndrome coded",
    citation=f"{SEED}; {CATALOG} R9",
    when=all_of(inclusion=[params(), coded("GBS", onset_within=setting("gbs_onset_window_days"), alias="gbs")]),
    produces="gbs_suspected",
    logic="GBS (G61.0) with onset within gbs_onset_window_days",
)
def gbs_coded(match):
    return {"resource_ref": match["gbs"]["resource_ref"], "basis_text": "Guillain-Barre syndrome coded"}


@derivation(
    id="F-GBS-PATTERN",
    title="Recent weakness with an abnormal reflex",
    citation=f"{SEED}; {CATALOG} R9",
    when=all_of(
        inclusion=[
            params(),
            coded("WEAKNESS", onset_within=setting("gbs_onset_window_days"), alias="weak"),
            coded("ABNORMAL_REFLEX", onset_within=setting("gbs_onset_window_days"), alias="reflex"),
        ]
    ),
    produces="gbs_suspected",
    logic="WEAKNESS and ABNORMAL_REFLEX both with onset within gbs_onset_window_days",
)
def gbs_pattern(match):
    return {"resource_ref": match["weak"]["resource_ref"], "basis_text": "recent weakness with an abnormal reflex"}


@card_rule(
    id="R9",
    title="Ascending weakness with areflexia (GBS)",
    citation=SEED,
    hooks=("patient-view",),
    needs=("conditions",),
    enabled_by_default=False,
    logic="recent GBS, or recent weakness together with an abnormal reflex (onset within 14 days)",
    when=all_of(inclusion=[finding("gbs_suspected", alias="gbs")]),
)
def ascending_weakness(matches, ctx):
    found = unique(matches, "gbs")
    why = (
        f"Basis: {', '.join(sorted({f['basis_text'] for f in found}))}, with onset within "
        f"{ctx.settings.gbs_onset_window_days} days. Ascending weakness with areflexia suggests "
        "Guillain-Barre syndrome: admit, with respiratory monitoring (vital capacity). Coded data cannot express "
        "'ascending' or 'areflexia' (R29.2 covers brisk and reduced reflexes): confirm at the bedside."
    )
    return CardDraft(
        summary="Ascending weakness with areflexia: consider Guillain-Barre syndrome; admit with "
        "respiratory monitoring",
        indicator="critical",
        why=why,
        evidence=found,
    )


@card_rule(
    id="R10",
    title="Sudden fasciculations with a new deficit",
    citation=SEED,
    hooks=("patient-view",),
    supersedes=("R11", "R13"),
    needs=("conditions", "service_requests"),
    enabled_by_default=False,
    logic="fasciculation and a new focal deficit, both with onset within 48 h, the deficit not before the "
    "fasciculation, no stroke coded and no head imaging ordered in the window",
    when=all_of(
        inclusion=[
            params(),
            coded("FASCICULATION", onset_within=setting("acute_deficit_window_days"), alias="fasc"),
            # the deficit began with or after the fasciculation
            coded("NEW_FOCAL_DEFICIT", onset_within=value_of("fasc", "onset_days_ago"), alias="deficit"),
        ],
        exclusion=[coded("STROKE"), ordered("brain_imaging", within=2)],
    ),
)
def sudden_fasciculation_with_deficit(matches, ctx):
    found = unique(matches, "fasc") + unique(matches, "deficit")
    why = (
        f"{escape(condition_names(unique(matches, 'deficit')))} began within 48 hours together with new "
        "fasciculations, no stroke is coded and no head imaging is ordered. Sudden onset with a new "
        "deficit needs emergent CT/MRI to exclude a stroke."
    )
    order = SuggestionDraft(
        label="Order emergent head imaging",
        is_recommended=True,
        actions=[
            procedure_order(
                ctx.patient_id, ctx.settings.head_imaging_order_code, "stat", "New deficit with fasciculations"
            )
        ],
    )
    return CardDraft(
        summary="New fasciculations with a new neurological deficit: emergent CT/MRI to exclude stroke",
        indicator="critical",
        why=why,
        evidence=found,
        suggestions=[order],
    )


# ---- R11 first-tier labs -------------------------------------------------------------------


def _missing_test(id: str, test: str) -> None:
    """Register `id`: fasciculation present and no result, pending result or order of `test`."""
    analytes = FIRST_TIER[test][0]

    def derive(match):
        return {"test": test}

    derive.__name__ = f"first_tier_missing_{analytes[0]}"
    derivation(
        id=id,
        title=f"First-tier test missing: {test}",
        citation=f"{SEED}; {CATALOG} R11",
        produces="first_tier_missing",
        needs=("labs", "service_requests"),
        logic=f"fasciculation and no {test} result, pending result or order within the lookback",
        when=all_of(
            inclusion=[finding("fasciculation", alias="fasc")],
            exclusion=[result(*analytes), pending(*analytes), data_gap("labs", "service_requests")],
        ),
    )(derive)


_missing_test("F-FIRST-TIER-GLUCOSE", "glucose/HbA1c")
_missing_test("F-FIRST-TIER-CBC", "CBC")
_missing_test("F-FIRST-TIER-CMP", "CMP")
_missing_test("F-FIRST-TIER-B12", "B12")
_missing_test("F-FIRST-TIER-TSH", "TSH")
_missing_test("F-FIRST-TIER-SPEP", "SPEP")


@card_rule(
    id="R11",
    title="First-tier labs for fasciculations",
    citation=SEED,
    hooks=("patient-view",),
    needs=("labs", "service_requests"),
    logic="fasciculation present, no ALS/MND coded (a patient with known ALS is under specialist care), and at "
    "least one first-tier test (glucose/HbA1c, CBC, CMP, B12, TSH, SPEP) neither resulted within 12 months "
    "nor pending",
    when=all_of(
        inclusion=[finding("fasciculation", alias="fasc"), finding("first_tier_missing", alias="missing")],
        exclusion=[coded("ALS_MND")],
    ),
)
def first_tier_labs(matches, ctx):
    missing = [test for test in FIRST_TIER if test in {match["missing"]["test"] for match in matches}]
    months = round(ctx.settings.fasciculation_lab_lookback_days / 30.4)
    why = (
        f"Fasciculations are on the problem list and these first-tier tests have no result in the last {months} "
        f"months and are not pending: {', '.join(missing)}. Order the missing tests.\n\n"
        "The first tier is fasting glucose or HbA1c, CBC, CMP, B12, TSH and serum protein electrophoresis; a "
        "haemoglobin alone does not count as a CBC."
    )
    order = SuggestionDraft(
        label="Order missing first-tier labs",
        actions=[lab_order(ctx.patient_id, FIRST_TIER[test][1], FIRST_TIER[test][2]) for test in missing],
    )
    return CardDraft(
        summary=fill("Fasciculations: first-tier labs missing ({missing})", limit=60, missing=", ".join(missing)),
        indicator="info",
        why=why,
        evidence=unique(matches, "fasc"),
        suggestions=[order],
        override_reasons=[("done-elsewhere", "Done at another laboratory")],
    )


# ---- R12 repeat EMG ---------------------------------------------------------------------------


@card_rule(
    id="R12",
    title="No routine repeat EMG in stable benign fasciculation syndrome",
    citation=SEED,
    hooks=("order-select", "order-sign"),
    needs=("conditions", "procedures", "reports"),
    logic="a selected/any draft EMG/NCS, fasciculation present, a prior EMG within 24 months, no red flag "
    "recorded since, no ALS/MND and no other EMG indication (radiculopathy, carpal tunnel, polyneuropathy)",
    when=all_of(
        inclusion=[
            order_hook(),
            finding("fasciculation", alias="fasc"),
            params(),
            procedure_done("emg", within=setting("prior_emg_window_days"), alias="prior"),
            selected_draft_order("emg", only_known_reasons=True, alias="emg"),
        ],
        exclusion=[
            coded("RED_FLAG", recorded_since=value_of("prior", "days_ago")),
            coded("EMG_OTHER_INDICATION"),
            coded("ALS_MND"),
        ],
    ),
)
def repeat_emg(matches, ctx):
    orders, priors = unique(matches, "emg"), unique(matches, "prior")
    why = (
        "Fasciculations are on the problem list, an EMG was done within the last "
        f"{round(ctx.settings.prior_emg_window_days / 30.4)} months, and no weakness, atrophy, abnormal "
        "reflex, dysphagia or dysarthria has been recorded since. No routine repeat EMG in stable benign "
        "fasciculation syndrome; repeat it when new deficits appear."
    )
    suggestions, behavior = removal_suggestions(orders)
    return CardDraft(
        summary="Repeat EMG is not indicated in stable benign fasciculation syndrome without new deficits",
        indicator="warning",
        why=why,
        evidence=orders + priors + unique(matches, "fasc"),
        suggestions=suggestions,
        selection_behavior=behavior,
        override_reasons=[
            ("new-symptoms", "New symptoms not yet coded"),
            ("other-indication", "Ordered for another indication"),
        ],
    )


# ---- R13 anxiety and depression screening -------------------------------------------------


def _missing_screen(id: str, id_if_diagnosed: str, test: str, analyte: str, diagnosis: str) -> None:
    """Register `id` (no `test` on file) and `id_if_diagnosed` (nor `diagnosis` coded, when
    r13_skip_if_diagnosed is on)."""

    def derive(match):
        return {"test": test}

    derive.__name__ = f"screen_missing_{analyte}"
    derivation(
        id=id,
        title=f"{test} not on file",
        citation=f"{SEED}; {CATALOG} R13",
        produces="screen_missing",
        needs=("labs",),
        logic=f"fasciculation and no {test} within 12 months",
        when=all_of(
            inclusion=[finding("fasciculation", alias="fasc"), params(r13_skip_if_diagnosed=False)],
            exclusion=[result(analyte), data_gap("labs")],
        ),
    )(derive)
    derivation(
        id=id_if_diagnosed,
        title=f"{test} not on file and no {diagnosis.lower()} coded",
        citation=f"{SEED}; {CATALOG} R13",
        produces="screen_missing",
        needs=("labs",),
        logic=f"as {id}, when r13_skip_if_diagnosed is on and no {diagnosis} is coded",
        when=all_of(
            inclusion=[finding("fasciculation", alias="fasc"), params(r13_skip_if_diagnosed=True)],
            exclusion=[result(analyte), data_gap("labs"), coded(diagnosis)],
        ),
    )(derive)


_missing_screen("F-SCREEN-GAD7", "F-SCREEN-GAD7-DX", "GAD-7", "gad7", "ANXIETY")
_missing_screen("F-SCREEN-PHQ9", "F-SCREEN-PHQ9-DX", "PHQ-9", "phq9", "DEPRESSION")


@card_rule(
    id="R13",
    title="Anxiety and depression screening in fasciculations",
    citation=SEED,
    hooks=("patient-view",),
    needs=("labs", "conditions"),
    logic="fasciculation present, no ALS/MND coded, and no GAD-7 or no PHQ-9 within 12 months (a coded "
    "anxiety/depression stands in when r13_skip_if_diagnosed is on); never suggests a drug",
    when=all_of(
        inclusion=[finding("fasciculation", alias="fasc"), finding("screen_missing", alias="missing")],
        exclusion=[coded("ALS_MND")],
    ),
)
def anxiety_depression_screening(matches, ctx):
    missing = [t for t in ("GAD-7", "PHQ-9") if t in {match["missing"]["test"] for match in matches}]
    why = (
        "Fasciculations are on the problem list and no " + " or ".join(missing) + " score from the last 12 months was "
        "found. Screen for anxiety and depression (GAD-7, PHQ-9) in benign fasciculations; anxiety "
        "commonly drives and amplifies them."
    )
    return CardDraft(
        summary=fill("Fasciculations: screen for anxiety and depression ({missing})", missing=", ".join(missing)),
        indicator="info",
        why=why,
        evidence=unique(matches, "fasc"),
    )


# ---- R21 imaging -------------------------------------------------------------------------------


@derivation(
    id="F-LUMBAR-MRI-UNNEEDED",
    title="Lumbar MRI without radicular pain or UMN signs",
    citation=f"{SEED}; {CATALOG} R21",
    when=all_of(
        inclusion=[
            finding("fasciculation", alias="fasc"),
            selected_draft_order("lumbar_mri", only_known_reasons=True, alias="order"),
        ],
        exclusion=[coded("RADICULOPATHY", "ABNORMAL_REFLEX"), order_reason_other_than("FASCICULATION")],
    ),
    produces="imaging_not_indicated",
    logic="a lumbar MRI draft, fasciculation, no radiculopathy/sciatica or R29.2",
)
def lumbar_mri_unneeded(match):
    order = match["order"]
    return {"site": "lumbar", "resource_ref": order["resource_ref"], "label": order["name"]}


@derivation(
    id="F-BRAIN-IMAGING-UNNEEDED",
    title="Brain imaging for isolated fasciculations",
    citation=f"{SEED}; {CATALOG} R21",
    when=all_of(
        inclusion=[
            finding("fasciculation", alias="fasc"),
            selected_draft_order("brain_imaging", only_known_reasons=True, alias="order"),
        ],
        exclusion=[coded("NEW_FOCAL_DEFICIT", "RED_FLAG", "STROKE"), order_reason_other_than("FASCICULATION")],
    ),
    produces="imaging_not_indicated",
    logic="a brain MRI/head CT draft, fasciculation, no other neurological finding",
)
def brain_imaging_unneeded(match):
    order = match["order"]
    return {"site": "brain", "resource_ref": order["resource_ref"], "label": order["name"]}


@card_rule(
    id="R21",
    title="Imaging not indicated for isolated fasciculations",
    citation=SEED,
    hooks=("order-select", "order-sign"),
    needs=("conditions",),
    logic="a lumbar MRI with no radicular pain or abnormal reflex, or brain imaging with no other neurological "
    "finding, ordered for a patient whose only finding is fasciculation",
    when=all_of(inclusion=[order_hook(), finding("imaging_not_indicated", alias="img")]),
)
def imaging_for_isolated_fasciculations(matches, ctx):
    orders = [dict(o, name=o["label"]) for o in unique(matches, "img")]
    lumbar = any(o["site"] == "lumbar" for o in orders)
    why = (
        "Fasciculations are the only neurological finding coded and imaging is being ordered. Lumbar MRI is indicated "
        "only with dermatomal radicular pain or upper motor neuron signs; no routine brain imaging for isolated "
        "fasciculations."
    )
    suggestions, behavior = removal_suggestions(orders)
    summary = (
        "Lumbar MRI for isolated fasciculations is indicated only with radicular pain or UMN signs"
        if lumbar
        else "Isolated fasciculations with no other neurological findings do not need routine brain imaging"
    )
    return CardDraft(
        summary=summary,
        indicator="info",
        why=why,
        evidence=orders + ctx.conditions_in("FASCICULATION"),
        suggestions=suggestions,
        selection_behavior=behavior,
        override_reasons=[("other-indication", "Ordered for another indication")],
    )
