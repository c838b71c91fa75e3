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
from durable.lang import c, item, m, none, when_all

from cds_service.authoring.rulebook import CardDraft, card_rule, derivation, fill

from .common import AASM_2024, CATALOG, SEED_000, SEED_001, seeds, unique

SEEDS = seeds(SEED_000, SEED_001)
PARAMS = c.params << (m.kind == "params")
VIEW = c.ctx << ((m.kind == "context") & (m.hook == "patient-view"))
NOT_AN_UPPER_BOUND = (m.comparator != "<") & (m.comparator != "<=")


def _index_above(child: bool):
    limit = c.params.plms_index_threshold_child if child else c.params.plms_index_threshold_adult
    return (m.kind == "lab") & (m.analyte == "plms_index") & (m.usable == True) & (m.value > limit) & NOT_AN_UPPER_BOUND


def _register_b(child: bool) -> None:
    who = "child" if child else "adult"

    def derive(match):
        return {"variant": "B", "index": match["idx"]["value"], "resource_ref": match["idx"]["resource_ref"],
                "threshold": match["params"][f"plms_index_threshold_{who}"], "age_known": match["patient"]["age_known"]}

    derive.__name__ = f"plms_without_complaint_{who}"
    derivation(id=f"F-PLMS-NO-COMPLAINT-{who.upper()}", title=f"PLMS index above the {who} threshold without a complaint",
               citation=f"{SEEDS}; {CATALOG} R7", produces="plm_case", needs=("labs", "plms_index_by_text", "conditions", "patient"),
               logic=f"PLMS index > {who} threshold, no RLS and no sleep complaint or fatigue",
               when=when_all(VIEW, PARAMS, c.patient << ((m.kind == "patient") & (m.child == child)),
                             c.idx << _index_above(child),
                             none((m.kind == "condition") & m.sets.anyItem((item == "RLS") | (item == "SLEEP_COMPLAINT")))))(derive)


def _register_a(missing: str, child: bool | None, *conditions) -> None:
    who = "" if child is None else ("-CHILD" if child else "-ADULT")

    def derive(match):
        return {"variant": "A", "missing": missing, "resource_ref": match["plmd"]["resource_ref"]}

    derive.__name__ = f"plmd_criterion_missing_{missing}{who.lower().replace('-', '_')}"
    patient = () if child is None else (c.patient << ((m.kind == "patient") & (m.child == child)),)
    derivation(id=f"F-PLMD-MISSING-{missing.upper()}{who}", title=f"PLMD coded without {missing}",
               citation=f"{SEEDS}; {CATALOG} R7", produces="plm_case", needs=("labs", "plms_index_by_text", "conditions", "patient"),
               logic=f"PLMD present and no {missing} documented (r7_documentation_check on)",
               when=when_all(VIEW, c.params << ((m.kind == "params") & (m.r7_documentation_check == True)),
                             c.plmd << ((m.kind == "finding") & (m.name == "plmd")), *patient, *conditions))(derive)


_register_b(child=False)
_register_b(child=True)
_NO_INDEX_GAP = none((m.kind == "data_gap") & ((m.key == "labs") | (m.key == "plms_index_by_text")))
_register_a("a PLMS index above the threshold", False, none(_index_above(False)), _NO_INDEX_GAP)
_register_a("a PLMS index above the threshold", True, none(_index_above(True)), _NO_INDEX_GAP)
_register_a("a sleep complaint or daytime fatigue", None,
            none((m.kind == "condition") & m.sets.anyItem(item == "SLEEP_COMPLAINT")))


@card_rule(id="R7", title="PLMD criteria / PLMS without complaint", citation=f"{SEEDS}; child threshold: {AASM_2024}",
           hooks=("patient-view",), needs=("labs", "plms_index_by_text", "conditions", "patient"),
           logic="B: PLMS index above the threshold (adult > 15/h, child > 5/h) with no RLS and no sleep complaint; "
                 "A (r7_documentation_check): PLMD coded without the index or without a sleep complaint",
           when=when_all(c.case << ((m.kind == "finding") & (m.name == "plm_case"))))
def plm_criteria(matches, ctx):
    cases = [match["case"] for match in matches]
    b = next((case for case in cases if case["variant"] == "B"), None)
    index = ctx.labs("plms_index")
    if b:
        why = (f"A PLMS index of {b['index']:g}/h is above the threshold of {b['threshold']:g}/h, with no restless "
               "legs syndrome and no sleep complaint or daytime fatigue coded. Periodic limb movements without sleep "
               "disruption or daytime fatigue usually need no treatment.")
        notes = ["PLMD requires the complaint as well as the index."]
        if not b["age_known"]:
            notes.append("The patient's age is uncertain (birth date missing or only partly known), so the adult "
                         "threshold is used.")
        return CardDraft(summary=fill("PLMS index {index} /h without sleep complaint or daytime fatigue: treatment "
                                      "usually unnecessary", index=f"{b['index']:g}"),
                         indicator="info", why=why, notes=notes, evidence=[b] + index,
                         thresholds={"plms_index_threshold": b["threshold"]})
    missing = sorted({case["missing"] for case in cases})
    threshold = ctx.settings.plms_index_threshold_adult
    child = ctx.settings.plms_index_threshold_child
    why = (f"PLMD is coded but the record lacks {' and '.join(missing)}. PLMD needs a polysomnographic PLMS index "
           f"above {threshold:g}/h (children: above {child:g}/h, AASM 2024) plus sleep disturbance or daytime fatigue.")
    return CardDraft(summary=fill("PLMD diagnosis needs a PSG PLMS index >{plms} /h plus sleep disturbance or daytime "
                                  "fatigue", plms=f"{threshold:g}"),
                     indicator="info", why=why, evidence=unique(matches, "case") + index + ctx.conditions_in("PLMD"))
