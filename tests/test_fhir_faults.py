"""A FHIR server that misbehaves on purpose, on loopback: every fault ends within the deadline
in a 412 or in cards from the data that could be read, and says which."""

import copy
import json
import threading
import time

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from cds_service.app import create_app
from conftest import ROOT, fired_rules, load_fixture

FIXTURE = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
DEADLINE = 1.0
RLS_CONDITION = FIXTURE["request"]["prefetch"]["conditions"]["entry"][0]["resource"]


def empty_bundle():
    return {"resourceType": "Bundle", "type": "searchset", "total": 0}


def faulty_fhir(environ, start_response):
    """Path /<fault>/fhir/<query>: the fault decides how this server misbehaves."""
    request = Request(environ)
    fault = request.path.split("/")[1]
    resource_type = request.path.split("/")[3]
    if fault == "hang":
        time.sleep(5)
    if fault == "error500":
        return Response("boom", 500)(environ, start_response)
    if fault == "unauthorized":
        return Response("", 401)(environ, start_response)
    if fault == "notjson":
        return Response("<html>login</html>", 200, content_type="text/html")(environ, start_response)
    if fault == "array":
        return Response("[1, 2]", 200, content_type="application/fhir+json")(environ, start_response)
    if fault == "outcome":
        body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
        return Response(json.dumps(body), 200, content_type="application/fhir+json")(environ, start_response)
    if fault == "drip":

        def drip():
            for char in json.dumps(empty_bundle()):
                time.sleep(0.1)
                yield char.encode()

        return Response(drip(), 200, content_type="application/fhir+json")(environ, start_response)
    if fault == "badbundle":
        body = {"resourceType": "Bundle", "entry": "not a list", "link": {"relation": "next"}}
        return Response(json.dumps(body), 200, content_type="application/fhir+json")(environ, start_response)
    body = empty_bundle()
    if resource_type == "Condition":
        body = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": RLS_CONDITION}]}
        if fault == "endless":  # every page points at yet another page
            base = request.host_url.rstrip("/")
            body["link"] = [{"relation": "next", "url": f"{base}{request.path}?page={time.monotonic_ns()}"}]
    return Response(json.dumps(body), 200, content_type="application/fhir+json")(environ, start_response)


@pytest.fixture(scope="module")
def faulty_server():
    server = make_server("127.0.0.1", 0, faulty_fhir, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def client():
    app = create_app(
        "test",
        LOG_LEVEL="WARNING",
        FHIR_DEADLINE=DEADLINE,
        FHIR_READ_TIMEOUT=0.5,
        FHIR_CONNECT_TIMEOUT=0.5,
        FHIR_MAX_PAGES=5,
    )
    return app.test_client()


def call(client, base, fault):
    body = copy.deepcopy(FIXTURE["request"])
    body.pop("prefetch")
    body["fhirServer"] = f"{base}/{fault}/fhir"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "legmove-cds",
    }
    started = time.monotonic()
    response = client.post("/cds-services/legmove-patient-view", json=body)
    return response, time.monotonic() - started


@pytest.mark.parametrize(
    "fault, says",
    [
        ("hang", "ReadTimeout"),
        ("error500", "HTTP 500"),
        ("unauthorized", "HTTP 401"),
        ("notjson", "not JSON"),
        ("array", "not a FHIR resource"),
        ("outcome", "OperationOutcome"),
        ("drip", "deadline"),
    ],
)
def test_faults_end_in_412_within_the_deadline(client, faulty_server, fault, says, caplog):
    caplog.set_level("INFO", logger="cds_service.web.api")
    response, elapsed = call(client, faulty_server, fault)
    assert response.status_code == 412, response.get_data(as_text=True)
    assert "did not provide" in response.get_json()["issue"][0]["diagnostics"]
    assert says not in response.get_json()["issue"][0]["diagnostics"], "the cause is for the log, not the client"
    assert says in logged_reasons(caplog)
    assert elapsed < DEADLINE + 1.0, f"{fault} took {elapsed:.2f} s"


def logged_reasons(caplog) -> str:
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    return json.dumps(record.missing_reasons)


def test_malformed_bundle_is_412_never_read_as_empty(client, faulty_server, caplog):
    """Read as 'no data', a broken Bundle would let absence rules (R1) fire on garbage."""
    caplog.set_level("INFO", logger="cds_service.web.api")
    response, elapsed = call(client, faulty_server, "badbundle")
    assert response.status_code == 412 and "malformed Bundle" in logged_reasons(caplog)


def test_endless_next_links_stop_at_the_page_cap_and_say_so(client, faulty_server):
    response, elapsed = call(client, faulty_server, "endless")
    assert response.status_code == 200 and elapsed < DEADLINE + 1.0
    body = response.get_json()
    assert fired_rules(body) == {"R1"}  # RLS is known from the pages read; labs were complete
    assert body["cards"][0]["extension"]["org.legmove-cds.explanation"]["incompleteData"] == ["conditions"]


def test_a_healthy_server_still_works_after_the_faults(client, faulty_server):
    response, _ = call(client, faulty_server, "fine")
    assert response.status_code == 200 and fired_rules(response.get_json()) == {"R1"}
