"""Unit conversion, code sets and medication matching (clinical-rules.md sections 8 and 9)."""

from datetime import date

import pytest

from cds_service.facts.build import PatientData, build_facts
from cds_service.knowledge.codesets import ATC, ICD10CM, RXNORM, SNOMED
from cds_service.knowledge.terminology import Terminology


@pytest.fixture(scope="module")
def term():
    return Terminology()


def rx(code, display=None):
    return [{"system": RXNORM, "code": code, **({"display": display} if display else {})}]


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        (32, "ng/mL", 32),
        (32, "ug/L", 32),
        (32, "µg/L", 32),
        (112.35, "pmol/L", 50.0),
        (3.2, "ug/dL", 32),
        (20, "mg/L", None),
        (20, "ng", None),
        (20, None, None),
    ],
)
def test_ferritin_units(term, value, unit, expected):
    converted = term.analytes["ferritin"].to_canonical(value, unit)
    assert (converted is None) if expected is None else converted == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "value, unit, expected", [(18, "%", 18), (0.18, "1", 18), (0.18, "{ratio}", 18), (18, "mg", None)]
)
def test_tsat_percent_or_fraction_never_inferred_from_size(term, value, unit, expected):
    converted = term.analytes["tsat"].to_canonical(value, unit)
    assert (converted is None) if expected is None else converted == pytest.approx(expected)


def test_condition_code_sets(term):
    assert term.codesets.sets_for(ICD10CM, "G25.81") == {"RLS"}
    assert term.codesets.sets_for(ICD10CM, "G2581") == {"RLS"}, "codes match with or without the dot"
    assert term.codesets.sets_for(SNOMED, "32914008") == {"RLS"}
    assert term.codesets.sets_for(ICD10CM, "G25.8") == frozenset(), "no guessing from a parent code"
    assert term.codesets.sets_for("http://example.org/local", "G25.81") == frozenset()


def test_product_code(term):
    match = term.match_medication(rx("312941"), [], [])
    assert (match.classes, match.matched_by, match.ingredients) == (("ssri",), "rxnorm-product", ("36437",))


def test_branded_product_code(term):
    assert term.match_medication(rx("208161"), [], []).classes == ("ssri",)


def test_combination_product_yields_both_ingredients_and_classes(term):
    match = term.match_medication(rx("403970"), [], [])
    assert set(match.classes) == {"ssri", "antipsychotic_atypical"} and len(match.ingredients) == 2


def test_ingredient_code(term):
    match = term.match_medication(rx("36437"), [], [])
    assert match.matched_by == "rxnorm-product"  # the table's IN row is itself a product-table row
    assert match.classes == ("ssri",)


def test_atc_only_coding(term):
    match = term.match_medication([{"system": ATC, "code": "N06AB06"}], ["sertraline"], [])
    assert (match.classes, match.matched_by) == (("ssri",), "atc")
    assert term.match_medication([{"system": ATC, "code": "N05AN01"}], [], []).classes == ("lithium",)
    assert term.match_medication([{"system": ATC, "code": "N05AX17"}], [], []) is None, (
        "pimavanserin is no dopamine antagonist"
    )
    assert term.match_medication([{"system": ATC, "code": "R06AE07"}], [], []) is None, "cetirizine does not sedate"


def test_retired_code_with_good_text_matches_by_name(term):
    match = term.match_medication(
        rx("204892", "clonazePAM 0.25 MG Oral Tablet"), ["clonazePAM 0.25 MG Oral Tablet"], []
    )
    assert (match.classes, match.matched_by) == (("antimyoclonic",), "text")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("citalopram 20 mg", ("ssri", "2556")),
        ("escitalopram 10 mg", ("ssri", "321988")),
        ("Quinine sulfate 324 mg capsule", ("quinine", "9071")),
        ("quinidine gluconate 324 mg", None),
        ("Chlorphenamine 4 mg", ("sedating_antihistamine", "2400")),
        ("Zoloft 50 mg", ("ssri", "36437")),
    ],
)
def test_name_matching_uses_whole_words(term, text, expected):
    match = term.match_medication([], [text], [])
    if expected is None:
        assert match is None
    else:
        assert match.classes[0] == expected[0] and expected[1] in match.ingredients


def test_topical_products_do_not_match(term):
    assert term.match_medication(rx("1292313"), [], []) is None, "every table row is systemic=no"
    assert term.match_medication([], ["diphenhydramine 2% cream"], []) is None
    assert term.match_medication([], ["doxepin"], ["Topical route"]) is None


def test_transdermal_patch_is_systemic(term):
    assert term.match_medication(rx("577057"), [], ["Transdermal"]).classes == ("opioid",)
    assert term.match_medication([], ["fentanyl 12 mcg/hr patch"], ["transdermal"]).classes == ("opioid",)


def test_promethazine_in_two_classes_is_one_medication(term):
    match = term.match_medication(rx("992447"), [], [])
    assert match.classes == ("antiemetic_dopamine_antagonist",) and match.ingredients == ("8745",)


def test_rls_worsening_additions_are_configurable():
    assert "snri" in Terminology().groups["rls_worsening"]
    assert "snri" not in Terminology({"rls_worsening_additions": []}).groups["rls_worsening"]


def _lab_facts(term, observation, kind="lab"):
    data = PatientData("patient-view", "p1", {"labs": [observation]})
    return [f for f in build_facts(data, term, date(2026, 11, 22)).facts if f["kind"] == kind]


def _ferritin(**overrides):
    base = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
        "effectiveDateTime": "2026-10-01",
        "valueQuantity": {"value": 30, "unit": "ng/mL"},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "overrides, usable",
    [
        ({}, True),
        ({"valueQuantity": {"value": "30", "unit": "ng/mL"}}, False),
        ({"valueQuantity": {"value": True, "unit": "ng/mL"}}, False),
        ({"valueQuantity": {"value": 1e300, "unit": "ng/mL"}}, False),
        ({"valueQuantity": {"value": 30, "unit": "furlongs"}}, False),
        ({"valueQuantity": {"value": 35, "unit": "mg/L"}}, False),  # converts, but ferritin is never reported in mg/L
        ({"valueQuantity": {"value": 0.035, "unit": "g/L"}}, False),
        ({"valueQuantity": {"value": 5, "unit": "ng/mL", "comparator": "ad"}}, False),  # not an R4 comparator
        ({"valueQuantity": None, "valueString": "see comment"}, False),
        ({"valueQuantity": None, "dataAbsentReason": {"text": "x"}}, False),
    ],
)
def test_values_are_read_or_kept_as_unreadable(term, overrides, usable):
    """An unreadable value is never a lab fact (so never "on file"), but an unreadable_result the rules can name."""
    facts, unreadable = (
        _lab_facts(term, _ferritin(**overrides)),
        _lab_facts(term, _ferritin(**overrides), "unreadable_result"),
    )
    assert len(facts) == int(usable) and len(unreadable) == int(not usable)
    assert not facts or (facts[0]["usable"] and "value" in facts[0])


@pytest.mark.parametrize(
    "text, comparator, value, assumed",
    [
        ("<10", "<", 10, True),
        ("< 10 ng/mL", "<", 10, False),
        (">1000", ">", 1000, True),
        ("≤ 5 ng/mL", "<=", 5, False),
        ("12.5", "=", 12.5, True),
        ("27 ug/L", "=", 27, False),
    ],
)
def test_text_values_are_bounds_or_numbers(term, text, comparator, value, assumed):
    [fact] = _lab_facts(term, _ferritin(valueQuantity=None, valueString=text))
    assert (fact["comparator"], fact["value"], fact["unit"]) == (comparator, value, "ng/mL")
    assert fact.get("unit_assumed", False) is assumed and fact["value_source"] == "text"


@pytest.mark.parametrize("text", ["see note", "<<10", "10 ng/mL (repeat)", "35 mg/L", "10-20", ""])
def test_text_without_a_readable_number_is_unreadable(term, text):
    observation = _ferritin(valueQuantity=None, valueString=text)
    assert _lab_facts(term, observation) == [] and len(_lab_facts(term, observation, "unreadable_result")) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"status": "entered-in-error"},
        {"status": "preliminary"},
        {"effectiveDateTime": "2024-01-01"},
        {"effectiveDateTime": "2031-01-01"},
        {"effectiveDateTime": "2026-10"},
        {"effectiveDateTime": "yesterday"},
        {"subject": {"reference": "Patient/p2"}},
    ],
)
def test_unusable_observations_never_become_facts(term, overrides):
    assert _lab_facts(term, _ferritin(**overrides)) == []
