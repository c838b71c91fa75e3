"""Periodic limb movements (R7): PLMD criteria, and PLMS without a complaint.

Recommendation: periodic limb movement disorder needs a polysomnographic PLMS index above 15 per
hour in an adult (above 5 per hour in a child, AASM 2024) together with disturbed sleep or daytime
fatigue that nothing else explains. Periodic limb movements without such a complaint need no
treatment; most patients with restless legs have them, and there the RLS is what is treated.

Sources: Differential Diagnosis of Involuntary Lower Left Leg Jerking and Differential Diagnoses for
Intractable Leg Spasms (Dr.Oracle Medical Advisory Board, 2025); for the child threshold, AASM 2024
clinical practice guideline on RLS and PLMD, Winkelman et al., J Clin Sleep Med 2024.

The PLMS index has no LOINC code: it is found by a configurable local code (`plms_index_code`) or by
the test's name (a name search), never as a "PLMS arousal index", which measures something else.

- R7 variant B, PLMS without a complaint. Include: a PLMS index within `plms_index_lookback_days`
  above the threshold for the patient's age (`plms_index_threshold_adult`, `plms_index_threshold_child`;
  the adult one when the age is unknown). Exclude: RLS on the problem list; a sleep complaint or
  daytime fatigue coded; an index at or below the threshold or in a unit not understood; lab results
  the service could not read.
- R7 variant A, PLMD documentation check (off unless `r7_documentation_check`: noisy wherever
  sleep-study results are not coded). Include: PLMD coded without an index above the threshold, or
  without a sleep complaint or daytime fatigue. Exclude: both criteria documented.
"""

from cds_service.authoring.criteria import (
    all_of,
    coded,
    data_gap,
    finding,
    hook_is,
    params,
    patient,
    readable_result,
    setting,
)
from cds_service.authoring.rulebook import CardDraft, card_rule, derivation, fill

from .common import AASM_2024, CATALOG, SEED_000, SEED_001, seeds, unique

SEEDS = seeds(SEED_000, SEED_001)


def _index_above(child: bool, alias: str | None = None):
    """A readable PLMS index above the child or adult threshold (an upper bound such as '<5' never is)."""
    limit = setting("plms_index_threshold_child" if child else "plms_index_threshold_adult")
    return readable_result("plms_index", alias=alias, above=limit)


def _register_b(id: str, child: bool) -> None:
    who = "child" if child else "adult"

    def derive(match):
        return {
            "variant": "B",
            "index": match["idx"]["value"],
            "resource_ref": match["idx"]["resource_ref"],
            "threshold": match["params"][f"plms_index_threshold_{who}"],
            "age_known": match["patient"]["age_known"],
        }

    derive.__name__ = f"plms_without_complaint_{who}"
    derivation(
        id=id,
        title=f"PLMS index above the {who} threshold without a complaint",
        citation=f"{SEEDS}; {CATALOG} R7",
        produces="plm_case",
        needs=("labs", "plms_index_by_text", "conditions", "patient"),
        logic=f"PLMS index > {who} threshold, no RLS and no sleep complaint or fatigue",
        when=all_of(
            inclusion=[hook_is("patient-view"), params(), patient(child=child), _index_above(child, alias="idx")],
            exclusion=[coded("RLS", "SLEEP_COMPLAINT")],
        ),
    )(derive)


def _register_a(id: str, missing: str, child: bool | None, exclusion: list) -> None:
    who = "" if child is None else ("-CHILD" if child else "-ADULT")

    def derive(match):
        return {"variant": "A", "missing": missing, "resource_ref": match["plmd"]["resource_ref"]}

    derive.__name__ = f"plmd_criterion_missing_{missing}{who.lower().replace('-', '_')}"
    age = [] if child is None else [patient(child=child)]
    derivation(
        id=id,
        title=f"PLMD coded without {missing}",
        citation=f"{SEEDS}; {CATALOG} R7",
        produces="plm_case",
        needs=("labs", "plms_index_by_text", "conditions", "patient"),
        logic=f"PLMD present and no {missing} documented (r7_documentation_check on)",
        when=all_of(
            inclusion=[
                hook_is("patient-view"),
                params(r7_documentation_check=True),
                finding("plmd", alias="plmd"),
                *age,
            ],
            exclusion=exclusion,
        ),
    )(derive)


_register_b("F-PLMS-NO-COMPLAINT-ADULT", child=False)
_register_b("F-PLMS-NO-COMPLAINT-CHILD", child=True)
_register_a(
    "F-PLMD-NO-INDEX-ADULT",
    "a PLMS index above the threshold",
    False,
    exclusion=[_index_above(False), data_gap("labs", "plms_index_by_text")],
)
_register_a(
    "F-PLMD-NO-INDEX-CHILD",
    "a PLMS index above the threshold",
    True,
    exclusion=[_index_above(True), data_gap("labs", "plms_index_by_text")],
)
_register_a("F-PLMD-NO-COMPLAINT", "a sleep complaint or daytime fatigue", None, exclusion=[coded("SLEEP_COMPLAINT")])


@card_rule(
    id="R7",
    title="PLMD criteria / PLMS without complaint",
    citation=f"{SEEDS}; child threshold: {AASM_2024}",
    hooks=("patient-view",),
    needs=("labs", "plms_index_by_text", "conditions", "patient"),
    logic="B: PLMS index above the threshold (adult > 15/h, child > 5/h) with no RLS and no sleep complaint; "
    "A (r7_documentation_check): PLMD coded without the index or without a sleep complaint",
    when=all_of(inclusion=[finding("plm_case", alias="case")]),
)
def plm_criteria(matches, ctx):
    cases = [match["case"] for match in matches]
    b = next((case for case in cases if case["variant"] == "B"), None)
    index = ctx.labs("plms_index")
    if b:
        why = (
            f"A PLMS index of {b['index']:g}/h is above the threshold of {b['threshold']:g}/h, with no restless "
            "legs syndrome and no sleep complaint or daytime fatigue coded. Periodic limb movements without sleep "
            "disruption or daytime fatigue usually need no treatment."
        )
        notes = ["PLMD requires the complaint as well as the index."]
        if not b["age_known"]:
            notes.append(
                "The patient's age is uncertain (birth date missing or only partly known), so the adult "
                "threshold is used."
            )
        return CardDraft(
            summary=fill(
                "PLMS index {index} /h without sleep complaint or daytime fatigue: treatment usually unnecessary",
                index=f"{b['index']:g}",
            ),
            indicator="info",
            why=why,
            notes=notes,
            evidence=[b] + index,
            thresholds={"plms_index_threshold": b["threshold"]},
        )
    missing = sorted({case["missing"] for case in cases})
    threshold = ctx.settings.plms_index_threshold_adult
    child = ctx.settings.plms_index_threshold_child
    why = (
        f"PLMD is coded but the record lacks {' and '.join(missing)}. PLMD needs a polysomnographic PLMS index "
        f"above {threshold:g}/h (children: above {child:g}/h, AASM 2024) plus sleep disturbance or daytime fatigue."
    )
    return CardDraft(
        summary=fill(
            "PLMD diagnosis needs a PSG PLMS index >{plms} /h plus sleep disturbance or daytime fatigue",
            plms=f"{threshold:g}",
        ),
        indicator="info",
        why=why,
        evidence=unique(matches, "case") + index + ctx.conditions_in("PLMD"),
    )
