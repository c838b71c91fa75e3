"""Findings from the problem list: which leg-movement diagnoses are present (or suspected).

No recommendation of its own: these derivations turn code sets into findings (restless legs,
periodic limb movement disorder, leg cramps, fasciculations, myoclonus, a leg-movement complaint)
that every topic module reads, so a code set is interpreted in one place. "Present" means an active,
recurrent or relapsed Condition that is not refuted or entered in error (the facts layer has already
dropped everything else); provisional and differential diagnoses count, so a finding means
"suspected or confirmed". A coded reason on the order being placed counts too (the facts layer makes
it a condition). The code sets are in the knowledge files and described in docs/knowledge.md.
"""

from cds_service.authoring.criteria import all_of, coded
from cds_service.authoring.rulebook import derivation

CATALOG = "legmove-cds rule catalog: which conditions count, and the code sets"


def _present(finding_id: str, title: str, code_set: str, produces: str, codes: str) -> None:
    """Register `F-...`: present(code_set) -> finding `produces`."""

    def derive(match):
        return {"resource_ref": match["condition"]["resource_ref"]}

    derive.__name__ = f"{produces}_present"
    derivation(
        id=finding_id,
        title=title,
        citation=CATALOG,
        produces=produces,
        needs=("conditions",),
        logic=f"present({code_set}): {codes}",
        when=all_of(inclusion=[coded(code_set, alias="condition")]),
    )(derive)


_present(
    "F-RLS",
    "Restless legs syndrome suspected or confirmed",
    "RLS",
    "rls",
    "G25.81, SNOMED 32914008 or 1052284009, also as the order's reason",
)
_present("F-PLMD", "Periodic limb movement disorder suspected or confirmed", "PLMD", "plmd", "G47.61, SNOMED 418763003")
_present(
    "F-LEG-COMPLAINT",
    "A leg-movement complaint is present",
    "LEG_MOVEMENT_COMPLAINT",
    "leg_movement_complaint",
    "R25.2, R25.3, R25.8, R25.9, G47.62, G47.69, G25.3",
)
_present("F-LEG-CRAMP", "Leg cramps are present", "LEG_CRAMP", "leg_cramp", "G47.62, R25.2, M62.831")
_present(
    "F-FASCICULATION",
    "Fasciculations are present",
    "FASCICULATION",
    "fasciculation",
    "R25.3, SNOMED 82470000, or the text 'benign fasciculation'",
)
_present("F-MYOCLONUS", "Myoclonus is present", "MYOCLONUS", "myoclonus", "G25.3, SNOMED 17450006")
