"""Discovery's prefetch templates: minimal per hook, within the CDS Hooks 2.0 recommended query
subset, free of placeholders, and each a valid search that a real FHIR server (sekmet-fhir)
answers, by GET and form-encoded as POST {type}/_search (as the CDS Hooks Sandbox sends them)."""

import re
from urllib.parse import parse_qsl

import pytest
import requests

from cds_service.fhir.prefetch import BEST_EFFORT_KEYS, OPTIONAL, expand
from conftest import FHIR_TOKEN, ROOT, fired_rules, load_fixture

R3 = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
SUBSET_PARAMS = {"patient", "code", "status", "clinical-status", "_count", "_sort"}


def discovered(client):
    return client.get("/cds-services").get_json()["services"]


def test_templates_stay_in_the_recommended_subset(client):
    for service in discovered(client):
        for key, template in service["prefetch"].items():
            assert "example.org" not in template, f"{service['id']} {key}: placeholder code in a template"
            assert not re.search(r"date=|\{\{\s*today", template), "no relative dates in templates"
            if key in OPTIONAL:
                assert "_include=" in template
                continue
            if key in BEST_EFFORT_KEYS:  # documented as outside the subset: a client may drop it
                assert set(parse_qsl(template.split("?", 1)[1])) - {("code:text", "")} and "code:text=" in template
                continue
            if "?" not in template:
                assert re.fullmatch(r"[A-Z][A-Za-z]+/\{\{context\.patientId\}\}", template)
                continue
            params = {name for name, _ in parse_qsl(template.split("?", 1)[1])}
            assert params <= SUBSET_PARAMS, f"{service['id']} {key}: {params - SUBSET_PARAMS}"


def test_each_hook_asks_only_for_what_its_rules_read(app, client):
    services = app.extensions["legmove"].services
    for entry in discovered(client):
        service = next(s for s in services.values() if s.id == entry["id"])
        read = set().union(*service.rule_keys.values())
        required = {k for k in entry["prefetch"] if k not in OPTIONAL}
        assert required == read, f"{entry['id']}: asks for {sorted(required - read)} no rule reads"
    sign = next(e for e in discovered(client) if e["hook"] == "order-sign")
    assert "service_requests" not in sign["prefetch"]


def test_a_client_may_drop_the_optional_key(client):
    body = dict(R3["request"])
    assert "medication_request_medications" not in body["prefetch"]
    response = client.post(f"/cds-services/{R3['service']}", json=body)
    assert response.status_code == 200 and fired_rules(response.get_json()) == {"R3"}
    card = response.get_json()["cards"][0]
    assert "missingData" not in card["extension"]["org.legmove-cds.explanation"]


@pytest.mark.fhir_server
def test_every_template_is_a_search_sekmet_answers_by_get_and_by_post(client, fhir_server):
    headers = {"Authorization": f"Bearer {FHIR_TOKEN}", "Accept": "application/fhir+json"}
    context = {"patientId": "template-check", "userId": "Practitioner/dr-ada"}
    fhir_server.transaction([{"resourceType": "Patient", "id": "template-check"}])
    checked = 0
    for service in discovered(client):
        for key, template in service["prefetch"].items():
            query = expand(template, context)
            got = requests.get(f"{fhir_server.base_url}/{query}", headers=headers, timeout=20)
            assert got.status_code == 200, (service["id"], key, got.text[:300])
            if "?" not in query:
                continue
            kind, params = query.split("?", 1)
            posted = requests.post(
                f"{fhir_server.base_url}/{kind}/_search", data=dict(parse_qsl(params)), headers=headers, timeout=20
            )
            assert posted.status_code == 200 and posted.json()["resourceType"] == "Bundle", (key, posted.text[:300])
            assert posted.json().get("total") == got.json().get("total")
            checked += 1
    assert checked >= 20
