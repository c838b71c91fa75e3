"""Drugs in restless legs syndrome: those that worsen it (R3, R4) and dopaminergic treatment (R20).

Recommendations: tricyclic antidepressants, SSRIs, lithium, dopamine antagonists (antipsychotics,
and antiemetics such as metoclopramide) and centrally acting antihistamines can cause or worsen
restless legs. In a patient with RLS or periodic limb movement disorder, avoid starting them or
weigh the benefit against that risk, and review the ones already taken. The AASM 2024 guideline
counts antidepressants in general among the aggravating factors, so SNRIs and mirtazapine are added
to the review articles' list (setting `rls_worsening_additions`, `[]` to leave them out). The same
guideline suggests against the standard use of dopamine agonists (pramipexole, ropinirole,
rotigotine) and levodopa for RLS, because they cause augmentation over time, and prefers gabapentin
enacarbil, gabapentin or pregabalin; low iron stores are treated first.

Sources: Differential Diagnosis of Involuntary Lower Left Leg Jerking and Differential Diagnoses for
Intractable Leg Spasms (Dr.Oracle Medical Advisory Board, 2025); AASM 2024 clinical practice
guideline on RLS and PLMD, Winkelman et al., J Clin Sleep Med 2024.

Which classes count is the `rls_worsening` drug group of the knowledge files; the facts layer tags
each medication with its groups.

- R3, RLS-worsening drug ordered. Include: RLS or PLMD on the problem list and a systemic drug of an
  RLS-worsening class being ordered (the selected draft on order-select, any draft on order-sign).
  Exclude: topical forms (a cream, eye drops); classes outside the list (bupropion, trazodone,
  cetirizine); a drug such as an SSRI for anxiety when neither RLS nor PLMD is coded. A coded
  indication is named on the card and weighed; a non-sedating antihistamine is offered as the
  replacement only for an antihistamine ordered for an allergic condition.
- R4, active RLS-worsening medications. Include: on opening the chart, RLS, PLMD or a leg-movement
  complaint, and an active systemic drug of an RLS-worsening class, counted once per ingredient
  across orders and medication statements. Exclude: medications stopped, completed or entered in
  error; topical forms.
- R20, dopamine agonist or levodopa for RLS. Include: a dopamine agonist or levodopa being ordered,
  RLS present (or named as the order's reason), and a new start: no order of either class within
  `new_start_window_days`, with the whole medication list readable. A warning instead of an info
  card when iron stores are low, and then it replaces R2's card. Exclude: parkinsonism; cabergoline
  or bromocriptine for hyperprolactinaemia; continuation of established therapy. No gabapentinoid is
  proposed in pregnancy, end-stage renal disease or dialysis, for a child, or when the age is unknown.
"""

from cds_service.authoring.criteria import (
    all_of,
    chart_medication,
    chart_or_recent_medication,
    coded,
    data_gap,
    draft_medication,
    finding,
    hook_is,
    order_hook,
    selected_draft,
)
from cds_service.authoring.orders import medication_proposal, remove_draft
from cds_service.authoring.rulebook import (
    CardDraft,
    SuggestionDraft,
    card_rule,
    derivation,
    drug_name,
    drug_names,
    escape,
)

from .common import (
    AASM_2024,
    AASM_2024_URL,
    CATALOG,
    SEED_000,
    SEED_001,
    as_drug,
    class_of,
    drug_fields,
    drug_line,
    seeds,
    unique,
    unique_drugs,
)
from .iron import iron_verdict

SEEDS_DRUGS = f"{seeds(SEED_000, SEED_001)} (SNRI, mirtazapine: AASM 2024 addition)"
CETIRIZINE_10 = ("1014678", "cetirizine hydrochloride 10 MG Oral Tablet")
RLS_ALTERNATIVES = [
    ("1101338", "gabapentin enacarbil 600 MG Extended Release Oral Tablet"),
    ("483450", "pregabalin 75 MG Oral Capsule"),
    ("310431", "gabapentin 300 MG Oral Capsule"),
]


def _worsening_class(drug: dict, ctx) -> str:
    return class_of(drug, ctx.groups["rls_worsening"], ctx)


def _drug_line(drug: dict, ctx) -> str:
    return drug_line(drug, _worsening_class(drug, ctx))


def _diagnoses(matches) -> list[dict]:
    return unique(matches, "dx")


@card_rule(
    id="R3",
    title="RLS-worsening drug ordered",
    citation=SEEDS_DRUGS,
    hooks=("order-select", "order-sign"),
    logic="present(RLS or PLMD) and a selected (order-select) or any (order-sign) draft MedicationRequest "
    "is a systemic drug of an RLS-worsening class; a coded indication is named and weighed; a "
    "non-sedating antihistamine (cetirizine) is offered only when the antihistamine is ordered for an "
    "allergic condition (J30.*, L50.*, L20.*, T78.4*, H10.1*, SNOMED 61582004, 126485001)",
    when=all_of(
        inclusion=[
            finding("rls", "plmd", alias="dx"),
            order_hook(),
            selected_draft(group="rls_worsening", alias="drug"),
        ]
    ),
)
def worsening_drug_ordered(matches, ctx):
    drugs = unique_drugs(matches, "drug")
    first = drugs[0]
    why = (
        "Restless legs syndrome or periodic limb movement disorder is on the problem list, and the order being "
        "placed can worsen it. Consider an alternative, or weigh the benefit against that risk."
    )
    notes = [_drug_line(d, ctx) for d in drugs]
    notes.append(
        "Drugs that can worsen restless legs: tricyclics, SSRIs, lithium, dopamine antagonists and centrally "
        "acting antihistamines (review articles); SNRIs and mirtazapine (AASM 2024 guideline)."
    )
    indicated = [(d, d.get("indications") or []) for d in drugs if d.get("indications")]
    notes += [
        f"{escape(d['name'])} is ordered for {escape(', '.join(reasons))}: weigh that benefit against the risk "
        "of worsening restless legs."
        for d, reasons in indicated
    ]
    if len(drugs) == 1:
        suggestions = [
            SuggestionDraft(
                label=f"Remove this order ({drug_name(first['name'])})",
                actions=[remove_draft(first["resource_ref"], first["name"])],
            )
        ]
        # cetirizine treats allergy only: not anxiety (hydroxyzine), sleep (doxylamine), vertigo or nausea
        if (
            "sedating_antihistamine" in first["classes"]
            and first["resource_type"] == "MedicationRequest"
            and "ALLERGIC_CONDITION" in first.get("indication_sets", [])
        ):
            suggestions.append(
                SuggestionDraft(
                    label="Replace with a non-sedating antihistamine (cetirizine 10 mg)",
                    actions=[
                        remove_draft(first["resource_ref"], first["name"]),
                        medication_proposal(ctx.patient_id, *CETIRIZINE_10),
                    ],
                )
            )
        behavior = "at-most-one"
        drug_text = drug_name(first["name"])  # at most 40 characters: ingredient and strength when longer
        class_text = _worsening_class(first, ctx)
    else:
        suggestions = [
            SuggestionDraft(
                label=f"Remove the order for {drug_name(d['name'])}",
                actions=[remove_draft(d["resource_ref"], d["name"])],
            )
            for d in drugs
        ]
        behavior = "any"
        drug_text = drug_names([d["name"] for d in drugs])
        class_text = None
    summary = (
        f"{drug_text} ({class_text}) can worsen restless legs; consider an alternative"
        if class_text
        else f"{drug_text} can worsen restless legs; consider alternatives"
    )
    return CardDraft(
        summary=summary,
        indicator="warning",
        why=why,
        notes=notes,
        evidence=drugs + _diagnoses(matches),
        suggestions=suggestions,
        selection_behavior=behavior,
        override_reasons=[
            ("benefit-outweighs-risk", "Benefit outweighs the risk of worsening RLS"),
            ("rls-controlled", "RLS well controlled; will monitor"),
        ],
    )


@card_rule(
    id="R4",
    title="Active RLS-worsening medications (chart review)",
    citation=SEEDS_DRUGS,
    hooks=("patient-view",),
    needs=("medication_requests", "medication_statements"),
    logic="present(RLS, PLMD or a leg-movement complaint) and an active systemic medication of an "
    "RLS-worsening class, deduplicated by ingredient",
    when=all_of(
        inclusion=[
            finding("rls", "plmd", "leg_movement_complaint", alias="dx"),
            hook_is("patient-view"),
            chart_medication(group="rls_worsening", alias="drug"),
        ]
    ),
)
def worsening_drugs_review(matches, ctx):
    drugs = unique_drugs(matches, "drug")
    names = [d["name"] for d in drugs]
    why = (
        "A leg-movement diagnosis or complaint is on the problem list and the patient takes medication that can "
        "cause or worsen restless legs. Review whether each is still needed."
    )
    notes = [_drug_line(d, ctx) for d in drugs]
    noun = "medication" if len(drugs) == 1 else "medications"
    return CardDraft(
        summary=f"Review {len(drugs)} active {noun} that can worsen RLS: {drug_names(names)}",
        indicator="info",
        why=why,
        notes=notes,
        evidence=[m_["drug"] for m_ in matches] + _diagnoses(matches),
    )


# ---- dopaminergic drafts (feed R5 and R20) --------------------------------------------------


def _dopaminergic(match) -> dict:
    return drug_fields(match["drug"])


@derivation(
    id="F-DOPAMINERGIC-DRAFT",
    title="A dopaminergic drug is being ordered",
    citation=f"{CATALOG} R5, R20",
    when=all_of(inclusion=[draft_medication(group="dopaminergic", not_class="prolactin_lowering", alias="drug")]),
    produces="dopaminergic_draft",
    logic="a draft dopamine agonist or levodopa other than cabergoline/bromocriptine",
)
def dopaminergic_draft(match):
    return _dopaminergic(match)


@derivation(
    id="F-DOPAMINERGIC-DRAFT-PRL",
    title="A prolactin-lowering dopamine agonist is being ordered without hyperprolactinaemia",
    citation=f"{CATALOG} R5, R20",
    when=all_of(
        inclusion=[draft_medication(group="dopaminergic", drug_class="prolactin_lowering", alias="drug")],
        exclusion=[coded("HYPERPROLACTINAEMIA")],
    ),
    produces="dopaminergic_draft",
    logic="a draft cabergoline or bromocriptine with no hyperprolactinaemia (E22.1, D35.2), also as the reason",
)
def prolactin_lowering_draft(match):
    return _dopaminergic(match)


# ---- R20 --------------------------------------------------------------------------------------


@card_rule(
    id="R20",
    title="Dopamine agonist or levodopa as RLS treatment",
    citation=AASM_2024,
    source_url=AASM_2024_URL,
    hooks=("order-select", "order-sign"),
    needs=("conditions", "medication_requests", "medication_statements", "labs", "patient"),
    supersedes=("R2",),
    analytes=("ferritin", "tsat"),  # iron_verdict
    logic="a selected/any draft dopamine agonist or levodopa, RLS present (or the order's reason), no "
    "parkinsonism, and no order of either class in the new-start window (the medication list complete: "
    "every medication readable); warning when iron is low, and then it replaces R2's card (its detail "
    "carries the iron verdict); no gabapentinoid is proposed in pregnancy (within pregnancy_max_days), "
    "ESRD/dialysis, for a child or when the age is unknown",
    when=all_of(
        inclusion=[
            order_hook(),
            finding("dopaminergic_draft", alias="draft", selected=True),
            finding("rls", alias="rls"),
        ],
        exclusion=[
            coded("PARKINSONISM"),
            chart_or_recent_medication(group="dopaminergic"),
            data_gap("medication_requests"),
        ],  # "new start" needs the full list
    ),
)
def dopaminergic_for_rls(matches, ctx):
    drafts = [as_drug(d) for d in unique(matches, "draft")]
    first = drafts[0]
    levodopa = "levodopa" in first["classes"] and "dopamine_agonist" not in first["classes"]
    assessment = iron_verdict(ctx)
    iron = assessment["verdict"] if assessment else None
    window = ctx.settings.new_start_window_days
    withheld, population = _no_gabapentinoid_because(ctx)
    lead = (
        f"Restless legs syndrome is on the problem list and a new dopaminergic treatment is being ordered (none "
        f"in the last {window} days). The AASM 2024 guideline suggests against its standard use because of "
        "augmentation; "
        + (
            "seek specialist advice for this patient."
            if withheld
            else "prefer gabapentin enacarbil, gabapentin or pregabalin."
        )
    )
    notes = [drug_line(d, ctx.class_title(d["classes"][0])) for d in drafts]
    notes.append(
        "The guideline suggests against the standard use of pramipexole, ropinirole, rotigotine and levodopa, "
        "and against cabergoline; gabapentin enacarbil, gabapentin or pregabalin are the preferred first-line "
        + ("options for adults in general " if withheld else "options ")
        + "(recommendation strengths come from secondary summaries and are not quoted here)."
    )
    if assessment and iron in ("indicated", "iv_only"):
        notes.insert(0, f"**Iron stores are low (ferritin {_ferritin_text(assessment)}): treat iron first.**")
    elif assessment and iron == "disagreement":
        notes.insert(
            0,
            f"Ferritin {_ferritin_text(assessment)} is within the AASM 2024 guideline's iron threshold but "
            "not below that of the review articles: consider iron first.",
        )
    if withheld:
        notes.append(
            f"No gabapentinoid is proposed: the patient {withheld}. The guideline has separate recommendations "
            "for pregnancy, end-stage renal disease and children that have not been verified for this service "
            "(gabapentin enacarbil is not recommended on haemodialysis)."
        )
    else:
        notes.append("Check renal function before dosing a gabapentinoid.")
    if len(drafts) != 1:
        suggestions = []
    elif withheld:
        suggestions = [
            SuggestionDraft(
                label=f"Remove this order ({drug_name(first['name'])})",
                actions=[remove_draft(first["resource_ref"], first["name"])],
            )
        ]
    else:
        suggestions = [
            SuggestionDraft(
                label=f"Replace with {drug_name(name)}",
                actions=[
                    remove_draft(first["resource_ref"], first["name"]),
                    medication_proposal(ctx.patient_id, rxcui, name),
                ],
            )
            for rxcui, name in RLS_ALTERNATIVES
        ]
    summary = (
        "Levodopa for RLS: AASM 2024 suggests against standard use (augmentation risk)"
        if levodopa
        else "Dopamine agonist for RLS: AASM 2024 suggests against standard use (augmentation risk)"
    )
    return CardDraft(
        summary=summary,
        indicator="warning" if iron in ("indicated", "iv_only") else "info",
        why=lead,
        notes=notes,
        thresholds={"new_start_window_days": window, "iron": assessment or {}},
        evidence=drafts + unique(matches, "rls") + population,
        suggestions=suggestions,
        override_reasons=[
            ("continuation", "Continuation of established therapy"),
            ("alternatives-failed", "Alternatives tried or contraindicated"),
        ],
    )


def _ferritin_text(assessment: dict) -> str:
    comparator = "" if assessment["ferritin_comparator"] == "=" else assessment["ferritin_comparator"]
    return f"{comparator}{round(float(assessment['ferritin']), 1):g} ng/mL"


def _no_gabapentinoid_because(ctx) -> tuple[str | None, list[dict]]:
    """Why no gabapentinoid may be proposed (the populations R19 gives no drug advice for), or
    None, with the conditions that say so (evidence for the card)."""
    reasons = []
    pregnancy, esrd = ctx.conditions_in("PREGNANCY"), ctx.conditions_in("ESRD_DIALYSIS")
    if pregnancy:  # the facts layer keeps only pregnancies within pregnancy_max_days
        reasons.append("is pregnant")
    if esrd:
        reasons.append("has end-stage renal disease or is on dialysis")
    patient = ctx.patient
    if patient["child"]:
        reasons.append("is a child")
    elif not patient["age_known"]:
        reasons.append("has an unknown age (birth date missing or only partly known)")
    return " and ".join(reasons) or None, pregnancy + esrd
