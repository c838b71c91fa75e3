"""Knowledge added for the whole catalog: unit conversions, procedures, code-set exclusions and text,
finer drug classes, and the iron profiles of catalog section 7.2."""

import pytest

from cds_service.facts.build import params_fact
from cds_service.knowledge.codesets import ATC, ICD10CM, LOINC, RXNORM, SNOMED
from cds_service.knowledge.terminology import Terminology
from rules.iron import assess_iron


@pytest.fixture(scope="module")
def term():
    return Terminology()


@pytest.mark.parametrize(
    "analyte, value, unit, expected",
    [
        ("glucose", 3.2, "mmol/L", 57.651),
        ("glucose", 65, "mg/dL", 65),
        ("glucose", 65, "g/L", None),
        ("sodium", 130, "mEq/L", 130),
        ("sodium", 130, "mmol/L", 130),
        ("sodium", 130, "mg/dL", None),
        ("egfr", 42, "mL/min/{1.73_m2}", 42),
        ("egfr", 42, "mL/min/1.73m2", 42),
        ("egfr", 42, "mL/min", None),
        ("tsat", 0.15, "1", 15),
        ("tsat", 15, "%", 15),
        ("plms_index", 20, "/h", 20),
        ("plms_index", 20, "/night", None),
    ],
)
def test_unit_conversions(term, analyte, value, unit, expected):
    converted = term.analytes[analyte].to_canonical(value, unit)
    assert (converted is None) if expected is None else converted == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "codings, text, analyte",
    [
        ([{"system": LOINC, "code": "98979-8"}], None, "egfr"),
        ([{"system": "http://example.org/fhir/CodeSystem/legmove-local", "code": "plms-index"}], None, "plms_index"),
        ([], "PLM index (PSG)", "plms_index"),
        ([], "Periodic limb movement index", "plms_index"),
        ([], "PLMS arousal index", None),
        ([{"system": LOINC, "code": "9999-9"}], "Something else", None),
    ],
)
def test_observation_codes_and_names(term, codings, text, analyte):
    found = term.observation_analyte(codings, [text] if text else [])
    assert (found[0].name if found else None) == analyte


@pytest.mark.parametrize(
    "codings, text, procedure",
    [
        ([{"system": SNOMED, "code": "60554003"}], None, "psg"),
        ([], "Sleep study, attended", "psg"),
        ([], "EMG lower limbs", "emg"),
        ([], "Nerve conduction studies", "emg"),
        ([], "MRI L-spine w/o contrast", "lumbar_mri"),
        ([], "CT head without contrast", "brain_imaging"),
        ([], "Referral to neurology", "neurology_referral"),
        ([], "Chemistry panel", None),
        ([], "MRI knee", None),
    ],
)
def test_procedure_orders_by_code_or_text(term, codings, text, procedure):
    found = term.procedures.match(codings, [text] if text else [])
    assert (found[0] if found else None) == procedure


def test_code_set_exclusions_and_text(term):
    assert "OTHER_SLEEP_DISORDER" in term.codesets.sets_for(ICD10CM, "G47.33")
    assert "OTHER_SLEEP_DISORDER" not in term.codesets.sets_for(
        ICD10CM, "G47.62"
    )  # cramps are not a sleep disorder here
    assert term.codesets.sets_for(ICD10CM, "G2081") == term.codesets.sets_for(ICD10CM, "G20.81")
    assert "FASCICULATION" in term.codesets.sets_for_text("Benign fasciculation syndrome")
    assert not term.codesets.sets_for_text("Fasciculations")  # only the catalog's phrase, never a guess


@pytest.mark.parametrize(
    "codings, texts, prolactin",
    [
        ([{"system": RXNORM, "code": "1760"}], [], True),  # bromocriptine: not in the table, an extra ingredient
        ([{"system": ATC, "code": "N04BC06"}], ["Dostinex"], True),
        ([], ["bromocriptine mesylate 2.5 mg tablet"], True),
        ([{"system": RXNORM, "code": "859033"}], ["pramipexole dihydrochloride 0.125 MG Oral Tablet"], False),
    ],
)
def test_prolactin_lowering_subclass(term, codings, texts, prolactin):
    match = term.match_medication(codings, texts, [])
    assert "dopamine_agonist" in match.classes
    assert ("prolactin_lowering" in match.classes) is prolactin


def _lab(value, comparator="="):
    return {"value": float(value), "comparator": comparator}


@pytest.mark.parametrize(
    "ferritin, tsat, child, seed, aasm, shown_seed",
    [
        (40, None, False, "indicated", "indicated", "indicated"),
        (50, None, False, "in_range", "indicated", "disagreement"),  # section 7.2 row 2
        (75, None, False, "in_range", "indicated", "disagreement"),
        (60, 30, False, "in_range", "indicated", "disagreement"),
        (150, 15, False, "in_range", "indicated", "disagreement"),  # TSAT < 20 %
        (90, 30, False, "in_range", "iv_only", "in_range"),  # 75 < ferritin <= 100
        (100, None, False, "in_range", "iv_only", "in_range"),
        (101, 30, False, "in_range", "in_range", "in_range"),
        (60, 30, True, "in_range", "in_range", "in_range"),  # child: < 50
        (40, 30, True, "indicated", "indicated", "indicated"),
    ],
)
def test_iron_profiles_follow_section_7_2(term, ferritin, tsat, child, seed, aasm, shown_seed):
    params = params_fact(term)
    result = assess_iron(_lab(ferritin), _lab(tsat) if tsat is not None else None, {"child": child}, params)
    assert (result["seed_verdict"], result["aasm_verdict"], result["verdict"]) == (seed, aasm, shown_seed)


@pytest.mark.parametrize(
    "ferritin, expected_seed",
    [
        (_lab(10, "<"), "indicated"),
        (_lab(60, ">"), "in_range"),
        (_lab(20, ">"), "unknown"),
        (_lab(50, "<="), "unknown"),
    ],
)
def test_bounds_are_never_misread(term, ferritin, expected_seed):
    assert assess_iron(ferritin, None, {"child": False}, params_fact(term))["seed_verdict"] == expected_seed


def test_the_aasm_profile_is_selectable():
    params = params_fact(Terminology({"iron_profile": "aasm2024"}))
    assert assess_iron(_lab(90), None, {"child": False}, params)["verdict"] == "iv_only"
    with pytest.raises(ValueError, match="iron_profile"):
        params_fact(Terminology({"iron_profile": "nonsense"}))
