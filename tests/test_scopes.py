"""SMART scopes from fhirAuthorization.scope: parsed (v1, v2, wildcards, levels, granular), used
to skip types the token does not grant, and tested against sekmet-fhir enforcing scopes."""

import copy

import pytest
import requests

from cds_service.fhir.scopes import parse_scopes
from conftest import (
    EXTENSION,
    FHIR_TOKEN,
    ROOT,
    FhirServer,
    as_server_request,
    fired_rules,
    load_fixture,
    namespaced,
    prefetched_resources,
)
from test_partial_data import by_type_server

R3 = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")


@pytest.mark.parametrize(
    "scope, rtype, search, granted",
    [
        ("patient/Observation.read", "Observation", True, True),
        ("patient/Observation.read", "Observation", False, True),
        ("patient/Observation.rs", "Observation", True, True),
        ("patient/Observation.r", "Observation", True, False),  # v2: a search needs s
        ("patient/Observation.s", "Observation", False, False),
        ("patient/Observation.cud", "Observation", True, False),
        ("patient/Observation.write", "Observation", True, False),
        ("patient/*.read", "Condition", True, True),
        ("patient/*.*", "Procedure", True, True),
        ("patient/*.rs", "Patient", False, True),
        ("user/Condition.read", "Condition", True, True),
        ("system/Condition.rs", "Condition", True, True),
        ("patient/Condition.read", "Observation", True, False),
        ("launch openid fhirUser offline_access", "Observation", True, False),
        ("", "Observation", True, False),
        ("patient/Observation.sr", "Observation", True, False),  # letters out of order: not a v2 scope
        ("encounter/Observation.read", "Observation", True, False),
    ],
)
def test_scope_grants(scope, rtype, search, granted):
    assert (parse_scopes(scope).grant(rtype, search) is not None) is granted


def test_no_scope_statement_means_no_restriction():
    assert parse_scopes(None) is None


def test_granular_scopes_restrict_the_query():
    scopes = parse_scopes("patient/Observation.rs?category=laboratory patient/Condition.rs")
    grant = scopes.grant("Observation", True)
    assert not grant.unrestricted
    assert grant.queries("Observation?patient=1&code=a") == ["Observation?patient=1&code=a&category=laboratory"]
    assert scopes.grant("Observation", False) is None, "a read cannot honour a granular scope"
    assert scopes.grant("Condition", True).unrestricted
    both = parse_scopes("patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs")
    assert both.grant("Observation", True).queries("Observation?patient=1") == [
        "Observation?patient=1&category=laboratory",
        "Observation?patient=1&category=vital-signs",
    ]
    wide = parse_scopes("patient/Observation.rs?category=laboratory patient/Observation.read")
    assert wide.grant("Observation", True).unrestricted


# ---- against sekmet-fhir enforcing scopes on SMART tokens ----------------------------------

SMART_SECRET = "legmove-test-secret"


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory):
    auth = (
        f"{{types: [bearer, smart], tokens: [{FHIR_TOKEN}], enforce_scopes: true, smart_clients: "
        f"[{{client_id: legmove, client_secret: {SMART_SECRET}, scopes: 'system/*.*'}}]}}"
    )
    server = FhirServer(tmp_path_factory.mktemp("sekmet-scopes"), server_auth=auth)
    server.transaction(namespaced(prefetched_resources(R3["request"]), "scopes"))
    yield server
    server.stop()


def smart_token(server: FhirServer, scope: str) -> str:
    root = server.base_url.rsplit("/fhir", 1)[0]
    response = requests.post(
        f"{root}/auth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=("legmove", SMART_SECRET),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


NO_LABS = (
    "system/Patient.read system/Condition.rs system/MedicationRequest.rs system/MedicationStatement.rs "
    "system/Procedure.rs system/DiagnosticReport.rs system/ServiceRequest.rs"
)


def server_call(server: FhirServer, token: str, scope: str) -> dict:
    call = as_server_request(R3["request"], server)
    call["fhirAuthorization"].update(access_token=token, scope=scope)
    return call


def test_the_server_really_refuses_an_ungranted_type(scoped_server):
    token = smart_token(scoped_server, NO_LABS)
    headers = {"Authorization": f"Bearer {token}"}
    pid = R3["request"]["context"]["patientId"]
    assert (
        requests.get(f"{scoped_server.base_url}/Observation?patient={pid}", headers=headers, timeout=10).status_code
        == 403
    )
    assert (
        requests.get(f"{scoped_server.base_url}/Condition?patient={pid}", headers=headers, timeout=10).status_code
        == 200
    )


def test_an_ungranted_type_is_not_queried_and_is_unknown(client, scoped_server, caplog):
    caplog.set_level("INFO", logger="cds_service.web.api")
    response = client.post(
        f"/cds-services/{R3['service']}", json=server_call(scoped_server, smart_token(scoped_server, NO_LABS), NO_LABS)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert fired_rules(body) == {"R3"} and body["cards"][0]["extension"][EXTENSION]["missingData"] == ["labs"]
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert "do not grant Observation" in record.missing_reasons["labs"], "skipped, not refused by the server"


def test_a_403_for_one_type_is_an_unknown_key(client, scoped_server, caplog):
    """The token lacks Observation but the request claims more: the server's 403 costs only labs."""
    caplog.set_level("INFO", logger="cds_service.web.api")
    token = smart_token(scoped_server, NO_LABS)
    response = client.post(f"/cds-services/{R3['service']}", json=server_call(scoped_server, token, "system/*.read"))
    assert response.status_code == 200 and fired_rules(response.get_json()) == {"R3"}
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert record.missing == ["labs"] and "HTTP 403" in record.missing_reasons["labs"]


def test_v1_v2_and_wildcard_tokens_read_everything(client, scoped_server):
    for scope in ("system/*.read", "system/*.rs", "system/*.*", NO_LABS + " system/Observation.rs"):
        response = client.post(
            f"/cds-services/{R3['service']}", json=server_call(scoped_server, smart_token(scoped_server, scope), scope)
        )
        assert response.status_code == 200 and fired_rules(response.get_json()) == {"R3"}
        assert "missingData" not in response.get_json()["cards"][0]["extension"][EXTENSION], scope


def test_granular_scope_adds_the_category_to_the_query(client):
    seen = []
    server = by_type_server(prefetched_resources(R1["request"]), seen)
    try:
        body = copy.deepcopy(R1["request"])
        body.pop("prefetch")
        body["fhirServer"] = f"http://127.0.0.1:{server.server_port}/none/fhir"
        body["fhirAuthorization"] = {
            "access_token": "t",
            "token_type": "Bearer",
            "scope": NO_LABS.replace("system/", "patient/") + " patient/Observation.rs?category=laboratory",
        }
        response = client.post("/cds-services/legmove-patient-view", json=body)
    finally:
        server.shutdown()
    assert response.status_code == 200
    observation_searches = [url for url in seen if "/Observation" in url]
    assert observation_searches and all("category=laboratory" in url for url in observation_searches)
    assert not [url for url in seen if "/Condition" in url and "category=" in url]
    # only the laboratory category was visible: "no ferritin on file" cannot be concluded
    assert "R1" not in fired_rules(response.get_json())
