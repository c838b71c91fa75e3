"""Bad input: every malformed, mistyped or absurd request gets a clear 4xx, or cards built only from
the usable part of the data. Never a 500, never a card resting on a misread value.

The parametrised cases pin each class of bad input; the hypothesis tests then throw arbitrary JSON
at every field of the request and at every value inside the fixtures' FHIR resources.
"""

import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, ROOT, assert_valid_cds_response, fired_rules, load_fixture

R2_FIRES = load_fixture(ROOT / "fhir_fixtures/R2/fires-low-ferritin-ugl.json")
R3_SELECT = load_fixture(ROOT / "fhir_fixtures/R3/fires-diphenhydramine-plmd.json")
EXTENSION = "org.legmove-cds.explanation"


def post(client, body, service="legmove-patient-view", raw=False):
    data = body if raw else json.dumps(body)
    return client.post(f"/cds-services/{service}", data=data, content_type="application/json")


def labs_of(body: dict) -> list[dict]:
    return [e["resource"] for e in body["prefetch"]["labs"]["entry"]]


def assert_clean(response) -> dict:
    """A 4xx carries an OperationOutcome; a 200 is a valid CDS response. Never a 5xx."""
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    body = response.get_json()
    if response.status_code == 200:
        assert_valid_cds_response(body)
    else:
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["diagnostics"]
        assert "Traceback" not in response.get_data(as_text=True)
    return body


# ---- wrong types in every field ---------------------------------------------------------

WRONG_VALUES = [None, 0, 1.5, True, "", "not/valid id", "x" * 200, [], ["x"], {}, {"resourceType": "Patient"}]
FIELDS = {  # field -> (hook fixture, values of the right type that are still legal)
    "hook": (R2_FIRES, ()),
    "hookInstance": (R2_FIRES, ("not/valid id",)),  # any non-empty id up to 128 characters
    "context": (R2_FIRES, ()),
    "prefetch": (R2_FIRES, (None,)),
    "fhirServer": (R2_FIRES, (None,)),
    "fhirAuthorization": (R2_FIRES, (None,)),
    "context.patientId": (R2_FIRES, ()),
    "context.userId": (R2_FIRES, ()),
    "context.encounterId": (R2_FIRES, ()),
    "context.draftOrders": (R3_SELECT, ()),
    "context.selections": (R3_SELECT, ([],)),
}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", WRONG_VALUES, ids=lambda v: repr(v)[:16])
def test_wrong_type_in_any_field_is_a_clear_400(client, field, value):
    fixture, legal = FIELDS[field]
    if any(value == ok and type(value) is type(ok) for ok in legal):
        pytest.skip("a legal value for this field")
    body = copy.deepcopy(fixture["request"])
    target, name = (body["context"], field.split(".", 1)[1]) if field.startswith("context.") else (body, field)
    target[name] = value
    response = post(client, body, fixture["service"])
    if field == "prefetch" and isinstance(value, dict):
        assert response.status_code == 412  # an object without our keys: nothing prefetched, no server to ask
        return
    assert response.status_code == 400, (field, value, response.get_data(as_text=True))
    assert_clean(response)


# ---- absurd values inside FHIR resources ------------------------------------------------


@pytest.mark.parametrize("value", [10**20, -5, -0.01, "12", True, None, [12], {"value": 12}], ids=repr)
def test_absurd_lab_value_never_reaches_a_card(client, value):
    body = copy.deepcopy(R2_FIRES["request"])
    for lab in labs_of(body):
        lab["valueQuantity"]["value"] = value
    rules = fired_rules(assert_clean(post(client, body)))
    assert "R2" not in rules


@pytest.mark.parametrize(
    "when",
    ["0001-01-01", "9999-12-31", "2026-13-45", "2026-11-01T25:99:00Z", "yesterday", 12345, None, ["2026-11-01"]],
    ids=repr,
)
def test_absurd_or_unparseable_dates_make_the_value_unusable(client, when):
    body = copy.deepcopy(R2_FIRES["request"])
    for lab in labs_of(body):
        lab["effectiveDateTime"] = when
        lab.pop("issued", None)
    assert "R2" not in fired_rules(assert_clean(post(client, body)))


@pytest.mark.parametrize("number", ["1e999", str(10**400)], ids=["1e999", "400-digit integer"])
def test_number_overflowing_to_infinity_is_400(client, number):
    """No FHIR value is that large; read as infinity it would reach the engine (or, as a huge
    integer, overflow later), so the body is refused as a whole, saying why."""
    text = json.dumps(R2_FIRES["request"]).replace('"valueQuantity": {', f'"valueQuantity": {{"x": {number}, ', 1)
    assert number in text
    response = post(client, text, raw=True)
    assert response.status_code == 400 and "out of range" in response.get_json()["issue"][0]["diagnostics"]


def test_prefetch_key_holding_the_wrong_resource_type_is_400(client):
    body = copy.deepcopy(R2_FIRES["request"])
    body["prefetch"]["labs"] = {"resourceType": "Condition", "id": "c1"}
    response = post(client, body)
    assert response.status_code == 400
    assert "not a Bundle of Observation" in assert_clean(response)["issue"][0]["diagnostics"]


def test_wrong_types_inside_a_bundle_are_skipped_and_the_rest_is_used(client):
    body = copy.deepcopy(R2_FIRES["request"])
    patient = body["context"]["patientId"]
    body["prefetch"]["labs"]["entry"] += [
        {"resource": {"resourceType": "Condition", "id": "odd", "subject": {"reference": f"Patient/{patient}"}}},
        {"resource": "Observation/1"},
        {"fullUrl": "x"},
        42,
        None,
        {"resource": {"resourceType": 7}},
    ]
    body["prefetch"]["conditions"]["entry"].append({"resource": {"resourceType": "Observation", "id": "o"}})
    assert "R2" in fired_rules(assert_clean(post(client, body)))


def test_bundle_with_a_broken_entry_array_is_400_not_empty(client):
    body = copy.deepcopy(R2_FIRES["request"])
    body["prefetch"]["labs"]["entry"] = {"resource": labs_of(body)[0]}
    response = post(client, body)
    assert (
        response.status_code == 400
        and "Bundle.entry is not an array" in assert_clean(response)["issue"][0]["diagnostics"]
    )


def test_duplicated_resources_give_one_card_naming_each_resource_once(client):
    body = copy.deepcopy(R2_FIRES["request"])
    for key in ("conditions", "labs"):
        body["prefetch"][key]["entry"] *= 3
    cards = assert_clean(post(client, body))["cards"]
    assert [c["extension"][EXTENSION]["rule"] for c in cards].count("R2") == 1
    for card in cards:
        resources = card["extension"][EXTENSION]["resources"]
        assert len(resources) == len(set(resources))


def test_one_id_used_by_two_different_resources_counts_once(client):
    """Two ferritins under one id (a client bug): one fact, and never two cards."""
    body = copy.deepcopy(R2_FIRES["request"])
    first = labs_of(body)[0]
    twin = copy.deepcopy(first)
    twin["valueQuantity"]["value"] = 400
    body["prefetch"]["labs"]["entry"].append({"resource": twin})
    cards = assert_clean(post(client, body))["cards"]
    assert len([c for c in cards if c["extension"][EXTENSION]["rule"] == "R2"]) <= 1


# Counterexamples hypothesis found (each was a 500 before the fix), pinned.
QUINE = load_fixture(ROOT / "fhir_fixtures/R22/fires-quinine-for-cramps.json")


@pytest.mark.parametrize(
    "where, value",
    [
        (("prefetch", "labs", "entry", 0, "resource", "status"), []),
        (("prefetch", "labs", "entry", 0, "resource", "resourceType"), []),
    ],
)
def test_found_by_hypothesis_shapes_are_clean(client, where, value):
    body = copy.deepcopy(R2_FIRES["request"])
    target = body
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    assert "R2" not in fired_rules(assert_clean(post(client, body)))


def test_draft_without_an_id_keeps_the_advice_but_offers_no_delete(client):
    body = copy.deepcopy(QUINE["request"])
    body["context"]["draftOrders"]["entry"][0]["resource"].pop("id")
    body["hook"] = "order-sign"
    body["context"].pop("selections", None)
    cards = assert_clean(post(client, body, QUINE["service"]))["cards"]
    assert [c["extension"][EXTENSION]["rule"] for c in cards] == ["R22"]
    assert "suggestions" not in cards[0]


# ---- property-based: arbitrary JSON anywhere --------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
TOP_LEVEL = ["hook", "hookInstance", "context", "prefetch", "fhirServer", "fhirAuthorization", "extension"]
# `make test` is deterministic (derandomize): CI must not fail on a new random draw. Explore with
# HYPOTHESIS_EXPLORE=5000 for a long randomised run; add any counterexample as a pinned case above.
EXPLORE = int(os.environ.get("HYPOTHESIS_EXPLORE", "0"))
PROPERTY_SETTINGS = settings(
    max_examples=EXPLORE or 150,
    derandomize=not EXPLORE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(body=st.dictionaries(st.sampled_from(TOP_LEVEL) | st.text(max_size=8), json_values, max_size=7))
def test_any_request_shape_gets_a_clean_answer(client, body):
    for service in ("legmove-patient-view", "legmove-order-select", "legmove-order-sign", "legmove-orders"):
        assert_clean(post(client, body, service))


def _paths(value, prefix=()):
    """Every path to a value inside a JSON document."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


FIXTURE_DOCS = [load_fixture(path) for path in FIXTURES]
FIXTURE_PATHS = [(i, path) for i, doc in enumerate(FIXTURE_DOCS) for path in _paths(doc["request"]) if path]


@PROPERTY_SETTINGS
@given(where=st.sampled_from(FIXTURE_PATHS), value=json_values)
def test_any_value_replaced_anywhere_in_a_fixture_gets_a_clean_answer(client, where, value):
    index, path = where
    fixture = FIXTURE_DOCS[index]
    body = copy.deepcopy(fixture["request"])
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    answer = assert_clean(post(client, body, fixture["service"]))
    if answer.get("cards"):
        own = body["context"]["patientId"] if isinstance(body.get("context"), dict) else None
        text = json.dumps(answer)
        for other in {d["request"]["context"]["patientId"] for d in FIXTURE_DOCS} - {own}:
            assert f'Patient/{other}"' not in text
