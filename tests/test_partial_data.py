"""Partial data: a key that cannot be read is unknown, silences only the rules that read it,
and is named in every card and in the log; 412 only when no rule can be evaluated."""

import copy
import json
import threading
import time

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from cds_service.app import create_app
from cds_service.authoring.rulebook import CARD
from cds_service.services import _with_derivations, keys_matched
from conftest import EXTENSION, ROOT, fired_rules, load_fixture, prefetched_resources

R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
R1_SELECT = load_fixture(ROOT / "fhir_fixtures/R1/fires-snomed-order-select-pramipexole.json")
R2 = load_fixture(ROOT / "fhir_fixtures/R2/fires-low-ferritin-ugl.json")
R3 = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
R20 = load_fixture(ROOT / "fhir_fixtures/R20/fires-pramipexole-new-start.json")


def without(fixture: dict, *keys: str) -> dict:
    body = copy.deepcopy(fixture["request"])
    for key in keys:
        body["prefetch"].pop(key)
    return body


def hook_calls(caplog) -> list:
    return [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]


def test_r3_fires_without_labs_and_names_the_missing_key(client, caplog):
    caplog.set_level("INFO", logger="cds_service.web.api")
    response = client.post(f"/cds-services/{R3['service']}", json=without(R3, "labs"))
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    assert fired_rules(response.get_json()) == {"R3"}
    assert all(card["extension"][EXTENSION]["missingData"] == ["labs"] for card in cards)
    (record,) = hook_calls(caplog)
    assert record.status == 200 and record.missing == ["labs"] and "no fhirServer" in record.missing_reasons["labs"]


@pytest.mark.parametrize("fixture", [R1, R1_SELECT], ids=["patient-view", "order-select"])
def test_r1_is_silent_when_labs_are_unknown(client, fixture):
    """'No ferritin on file' from an unread Observation search would be a false alarm."""
    response = client.post(f"/cds-services/{fixture['service']}", json=without(fixture, "labs"))
    assert response.status_code == 200 and "R1" not in fired_rules(response.get_json())
    assert client.post(f"/cds-services/{fixture['service']}", json=fixture["request"]).status_code == 200


@pytest.mark.parametrize(
    "fixture, rule, key",
    [
        (R2, "R2", "medication_requests"),  # low ferritin read, but "already on iron" unknown
        (R20, "R20", "medication_statements"),  # a new start cannot be told from a continuation
        (R1, "R1", "service_requests"),  # a pending ferritin order unknown
    ],
)
def test_a_rule_is_silent_when_any_key_it_weighs_is_unknown(client, fixture, rule, key):
    assert rule in fired_rules(client.post(f"/cds-services/{fixture['service']}", json=fixture["request"]).get_json())
    response = client.post(f"/cds-services/{fixture['service']}", json=without(fixture, key))
    assert response.status_code == 200 and rule not in fired_rules(response.get_json())


def test_no_card_is_made_just_to_say_data_is_missing(client):
    body = without(R1, "labs", "medication_requests", "medication_statements")
    response = client.post("/cds-services/legmove-patient-view", json=body)
    assert response.status_code == 200 and response.get_json()["cards"] == []


def test_412_only_when_no_rule_can_be_evaluated(client):
    """Every patient-view rule reads the problem list; order-sign's R3 needs only it."""
    response = client.post("/cds-services/legmove-patient-view", json=without(R1, "conditions"))
    assert response.status_code == 412
    assert "conditions" in response.get_json()["issue"][0]["diagnostics"]
    keys = [k for k in R3["request"]["prefetch"] if k != "conditions"]
    assert client.post(f"/cds-services/{R3['service']}", json=without(R3, *keys)).status_code == 200


def test_every_rule_declares_the_keys_whose_facts_it_matches(app):
    """The audit: a rule that matches facts of a key (directly or through a finding) lists that key
    in `needs`, so discovery asks for it and a missing one silences the rule."""
    specs = list(app.extensions["legmove"].specs.values())
    for spec in specs:
        if spec.stratum != CARD:
            continue
        chain = _with_derivations([spec], specs)
        declared = {key for s in chain for key in s.needs}
        matched = set().union(*(keys_matched(s) for s in chain))
        assert matched <= declared, f"{spec.id} matches facts of {sorted(matched - declared)} it does not declare"


# ---- against a real HTTP FHIR server that fails for one resource type -----------------------


def by_type_server(resources: list[dict], seen: list | None = None):
    """Path /<Type>=<fault>/fhir/<Type>?...: serves `resources` by type; the named type fails.
    Each requested URL is appended to `seen`."""

    def app(environ, start_response):
        request = Request(environ)
        if seen is not None:
            seen.append(request.url)
        fault_spec, _, rest = request.path.strip("/").partition("/fhir/")
        bad_type, _, fault = fault_spec.partition("=")
        resource_type = rest.split("/")[0].split("?")[0]
        if resource_type == bad_type and fault == "403":
            return Response(
                json.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}),
                403,
                content_type="application/fhir+json",
            )(environ, start_response)
        if resource_type == bad_type and fault == "slow":
            time.sleep(3)
        matching = [r for r in resources if r["resourceType"] == resource_type]
        if "?" not in request.url and "/" in rest:  # a read
            body = matching[0] if matching else {"resourceType": "OperationOutcome", "issue": []}
            return Response(json.dumps(body), 200 if matching else 404, content_type="application/fhir+json")(
                environ, start_response
            )
        body = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in matching]}
        return Response(json.dumps(body), 200, content_type="application/fhir+json")(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def r3_server():
    server = by_type_server(prefetched_resources(R3["request"]) + prefetched_resources(R1["request"]))
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("fault", ["403", "slow"])
def test_one_failing_type_costs_only_its_rules(r3_server, fault, caplog):
    caplog.set_level("INFO", logger="cds_service.web.api")
    app = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, FHIR_DEADLINE=1.5, FHIR_READ_TIMEOUT=1.0)
    body = copy.deepcopy(R3["request"])
    body.pop("prefetch")
    body["fhirServer"] = f"{r3_server}/Observation={fault}/fhir"
    started = time.monotonic()
    response = app.test_client().post(f"/cds-services/{R3['service']}", json=body)
    assert time.monotonic() - started < 2.5
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fired_rules(response.get_json()) == {"R3"}
    assert response.get_json()["cards"][0]["extension"][EXTENSION]["missingData"] == ["labs"]
    (record,) = hook_calls(caplog)
    assert record.missing == ["labs"]
    assert ("HTTP 403" if fault == "403" else "Timeout") in record.missing_reasons["labs"]
