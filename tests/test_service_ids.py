"""One service id (one URL) per hook, the deprecated `legmove-orders` alias, and small HTTP
details clients trip over: trailing slashes, `Allow` on 405, what a 400 writes to the log."""

import copy
import threading

import pytest
import requests
from werkzeug.serving import make_server

from cds_service.app import create_app
from conftest import ROOT, fired_rules, load_fixture
from fixture_pins import card_keys, sorted_cards

R1_FIRES = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
R3_SIGN = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
R3_SELECT = load_fixture(ROOT / "fhir_fixtures/R3/fires-diphenhydramine-plmd.json")


@pytest.fixture(scope="module")
def base_url():
    app = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_client_that_keys_services_by_url_reaches_all_three_hooks(base_url):
    """What the CDS Hooks Sandbox does: one service per URL, then call the service of each hook."""
    discovered = requests.get(f"{base_url}/cds-services", timeout=10).json()["services"]
    by_url = {f"{base_url}/cds-services/{s['id']}": s for s in discovered}  # a later entry replaces an earlier one
    by_hook = {s["hook"]: url for url, s in by_url.items()}
    assert set(by_hook) == {"patient-view", "order-select", "order-sign"}
    for fixture in (R1_FIRES, R3_SELECT, R3_SIGN):
        response = requests.post(by_hook[fixture["request"]["hook"]], json=fixture["request"], timeout=10)
        assert response.status_code == 200, response.text
        assert card_keys(response.json()) == sorted_cards(fixture["expect"]["cards"])


@pytest.mark.parametrize("fixture", [R3_SELECT, R3_SIGN], ids=["order-select", "order-sign"])
def test_the_deprecated_alias_answers_both_order_hooks(base_url, fixture):
    response = requests.post(f"{base_url}/cds-services/legmove-orders", json=fixture["request"], timeout=10)
    assert response.status_code == 200 and response.headers["Deprecation"] == "true"
    assert "R3" in fired_rules(response.json())
    direct = requests.post(
        f"{base_url}/cds-services/legmove-{fixture['request']['hook']}", json=fixture["request"], timeout=10
    )
    assert "Deprecation" not in direct.headers and fired_rules(direct.json()) == fired_rules(response.json())


def test_the_alias_is_documented_but_not_listed(base_url):
    services = requests.get(f"{base_url}/cds-services", timeout=10).json()["services"]
    assert "legmove-orders" not in {s["id"] for s in services}
    order_services = [s for s in services if s["hook"] != "patient-view"]
    assert all("legmove-orders is a deprecated alias" in s["description"] for s in order_services)


def test_a_per_hook_id_refuses_the_other_order_hook(base_url):
    body = copy.deepcopy(R3_SIGN["request"])
    response = requests.post(f"{base_url}/cds-services/legmove-order-select", json=body, timeout=10)
    assert response.status_code == 400 and "does not serve the hook" in response.json()["issue"][0]["diagnostics"]


def test_trailing_slashes_give_the_same_answer(base_url):
    plain = requests.get(f"{base_url}/cds-services", timeout=10)
    slashed = requests.get(f"{base_url}/cds-services/", timeout=10, allow_redirects=False)
    assert slashed.status_code == 200 and slashed.json() == plain.json()
    response = requests.post(
        f"{base_url}/cds-services/legmove-order-sign/", json=R3_SIGN["request"], timeout=10, allow_redirects=False
    )
    assert response.status_code == 200 and "R3" in fired_rules(response.json())


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/cds-services/legmove-patient-view", {"POST"}),
        ("GET", "/cds-services/legmove-patient-view", {"POST"}),
        ("DELETE", "/cds-services", {"GET"}),
        ("GET", "/cds-services/legmove-patient-view/feedback", {"POST"}),
    ],
)
def test_405_names_the_allowed_methods(base_url, method, path, allowed):
    response = requests.request(method, f"{base_url}{path}", timeout=10)
    assert response.status_code == 405 and response.json()["resourceType"] == "OperationOutcome"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


@pytest.mark.parametrize(
    "data, outcome",
    [
        (b"{not json", "the body is not valid JSON"),
        (b"\xff{}", "the body is not UTF-8"),
        (b'{"hook": 1}', "'hook' is required and must be a non-empty string"),
    ],
)
def test_a_400_is_logged_as_a_400(client, caplog, data, outcome):
    caplog.set_level("INFO", logger="cds_service.web.api")
    response = client.post("/cds-services/legmove-patient-view", data=data, content_type="application/json")
    assert response.status_code == 400
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert (record.status, record.outcome) == (400, outcome)


def test_a_413_is_logged_as_a_413(client, app, caplog):
    caplog.set_level("INFO", logger="cds_service.web.api")
    big = b'{"hook": "' + b"x" * (app.config["MAX_CONTENT_LENGTH"] + 10) + b'"}'
    assert (
        client.post("/cds-services/legmove-patient-view", data=big, content_type="application/json").status_code == 413
    )
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert record.status == 413 and record.outcome != "internal error"


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({}, "not on the configured allowlist"),  # development: FHIR servers on loopback only
        ({"FHIR_SERVER_ALLOWLIST": ["*"]}, "fhirServer is not on the unauthenticated-reads allowlist"),
        ({"FHIR_SERVER_ALLOWLIST": ["*"], "FHIR_UNAUTHENTICATED_READS": False}, "unauthenticated reads are off"),
        ({"FHIR_SERVER_ALLOWLIST": ["https://ehr.example.org/fhir"]}, "not on the configured allowlist"),
    ],
)
def test_a_412_in_development_names_the_real_reason(overrides, reason):
    app = create_app("development", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **overrides)
    body = dict(copy.deepcopy(R1_FIRES["request"]), prefetch={}, fhirServer="https://fhir.other-hospital.example/r4")
    response = app.test_client().post("/cds-services/legmove-patient-view", json=body)
    assert response.status_code == 412 and reason in response.get_json()["issue"][0]["diagnostics"]
