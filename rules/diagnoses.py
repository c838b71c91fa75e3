"""Findings from the problem list: which leg-movement diagnoses are present.

These derivations feed every topic module, so a code set is interpreted in one place.
"Present" follows clinical-rules.md 2.2: an active, recurrent or relapsed Condition that is
not refuted or entered in error (the facts layer has already dropped everything else).
"""
from durable.lang import c, item, m, when_all

from cds_service.rulebook import derivation

CATALOG = "shared/reference/clinical-rules.md 2.2 and 8.1"


def _condition_in(code_set: str):
    return when_all(c.condition << ((m.kind == "condition") & m.sets.anyItem(item == code_set)))


def _from_condition(match):
    return {"resource_ref": match["condition"]["resource_ref"]}


@derivation(id="F-RLS", title="Restless legs syndrome is present", citation=CATALOG,
            when=_condition_in("RLS"), produces="rls", needs=("conditions",), logic="present(RLS): G25.81, SNOMED 32914008 or 1052284009")
def rls_present(match):
    return _from_condition(match)


@derivation(id="F-PLMD", title="Periodic limb movement disorder is present", citation=CATALOG,
            when=_condition_in("PLMD"), produces="plmd", needs=("conditions",), logic="present(PLMD): G47.61, SNOMED 418763003")
def plmd_present(match):
    return _from_condition(match)


@derivation(id="F-LEG-COMPLAINT", title="A leg-movement complaint is present", citation=CATALOG,
            when=_condition_in("LEG_MOVEMENT_COMPLAINT"), produces="leg_movement_complaint", needs=("conditions",),
            logic="present(LEG_MOVEMENT_COMPLAINT): R25.2, R25.3, R25.8, R25.9, G47.62, G47.69, G25.3")
def leg_complaint_present(match):
    return _from_condition(match)
