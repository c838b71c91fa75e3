"""CDS Hooks 2.0 conformance: discovery, request checks, prefetch semantics, errors, CORS."""

import copy
import json

import pytest

from conftest import ROOT, as_server_request, fired_rules, load_fixture, namespaced, prefetched_resources

R1_FIRES = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
R3_FIRES = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")


def post(client, service, body, **kwargs):
    return client.post(f"/cds-services/{service}", json=body, **kwargs)


def assert_outcome(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["diagnostics"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body["issue"][0]["diagnostics"]


# ---- discovery ---------------------------------------------------------------------------


def test_discovery_lists_each_service_hook_pair(client):
    response = client.get("/cds-services")
    assert response.status_code == 200 and response.mimetype == "application/json"
    services = response.get_json()["services"]
    pairs = {(s["id"], s["hook"]) for s in services}
    assert pairs == {
        ("legmove-patient-view", "patient-view"),
        ("legmove-order-select", "order-select"),
        ("legmove-order-sign", "order-sign"),
    }
    assert len({s["id"] for s in services}) == len(services), "one id (one URL) per hook"
    for service in services:
        assert service["description"] and service["title"]
        for template in service.get("prefetch", {}).values():
            # 2.0 tokens only: first-level primitive context fields, no FHIRPath
            tokens = [t for t in template.split("{{")[1:]]
            assert all(
                t.split("}}")[0] in ("context.patientId", "context.userId", "context.encounterId") for t in tokens
            )
            assert "_count=" in template or "?" not in template, "every search is bounded"
    assert_no_empty(services)


def assert_no_empty(value):
    if isinstance(value, dict):
        assert all(v not in (None, "", [], {}) for v in value.values())
        for v in value.values():
            assert_no_empty(v)
    elif isinstance(value, list):
        for v in value:
            assert_no_empty(v)


def test_prefetch_templates_follow_what_the_rules_read(app):
    services = app.extensions["legmove"].services
    sign = set(services[("legmove-order-sign", "order-sign")].prefetch)
    assert {"conditions", "procedures", "reports", "medication_requests"} <= sign  # R12 prior EMG, R20 new start
    assert "service_requests" not in sign  # no order-sign rule reads chart orders
    assert {"labs", "service_requests", "patient"} <= set(services[("legmove-patient-view", "patient-view")].prefetch)


# ---- request checks ------------------------------------------------------------------------


def test_unknown_service_is_404(client):
    assert_outcome(post(client, "no-such-service", R1_FIRES["request"]), 404)


def test_hook_not_served_by_that_id_is_400(client):
    body = dict(R1_FIRES["request"], hook="order-sign")
    assert "does not serve" in assert_outcome(post(client, "legmove-patient-view", body), 400)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"hook": NaN}', "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_malformed_bodies_are_400(client, data, message):
    response = client.post("/cds-services/legmove-patient-view", data=data, content_type="application/json")
    assert message in assert_outcome(response, 400)


def test_wrong_content_type_is_415(client):
    response = client.post(
        "/cds-services/legmove-patient-view", data=json.dumps(R1_FIRES["request"]), content_type="text/plain"
    )
    assert_outcome(response, 415)


def test_wrong_method_is_405(client):
    assert_outcome(client.put("/cds-services/legmove-patient-view", json={}), 405)


def test_oversized_body_is_413(client, app):
    big = b'{"hook": "' + b"x" * (app.config["MAX_CONTENT_LENGTH"] + 10) + b'"}'
    assert_outcome(client.post("/cds-services/legmove-patient-view", data=big, content_type="application/json"), 413)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.pop("hook"), "'hook' is required"),
        (lambda b: b.pop("hookInstance"), "'hookInstance' is required"),
        (lambda b: b.pop("context"), "'context' is required"),
        (lambda b: b.update(context=[]), "'context' is required"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].update(patientId=42), "context.patientId"),
        (lambda b: b["context"].update(userId="dr-ada"), "context.userId"),
        (lambda b: b.update(prefetch=[1]), "'prefetch' must be an object"),
        (lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer"}), "requires 'fhirServer'"),
        (
            lambda b: b.update(
                fhirServer="https://ehr.example/fhir",
                fhirAuthorization={"access_token": "t", "token_type": "Bearer", "patient": "someone-else"},
            ),
            "differs from context.patientId",
        ),
        (lambda b: b["prefetch"].update(conditions="Condition?x"), "not a FHIR resource"),
    ],
)
def test_invalid_requests_say_what_is_wrong(client, mutate, message):
    body = copy.deepcopy(R1_FIRES["request"])
    mutate(body)
    assert message in assert_outcome(post(client, "legmove-patient-view", body), 400)


def test_order_hooks_check_their_context(client):
    body = copy.deepcopy(R3_FIRES["request"])
    body["context"].pop("draftOrders")
    assert "draftOrders" in assert_outcome(post(client, "legmove-order-sign", body), 400)
    body = dict(copy.deepcopy(R3_FIRES["request"]), hook="order-select")
    body["context"]["selections"] = "MedicationRequest/draft-sertraline"
    assert "selections" in assert_outcome(post(client, "legmove-order-select", body), 400)


def test_unknown_fields_are_ignored(client):
    body = copy.deepcopy(R1_FIRES["request"])
    body["extension"] = {"org.example.anything": {"x": 1}}
    body["context"]["org.example.extra"] = True
    assert "R1" in fired_rules(post(client, "legmove-patient-view", body).get_json())


def test_patient_facing_user_gets_no_clinician_cards(client):
    body = copy.deepcopy(R1_FIRES["request"])
    body["context"]["userId"] = "Patient/" + body["context"]["patientId"]
    assert post(client, "legmove-patient-view", body).get_json() == {"cards": []}


# ---- prefetch semantics --------------------------------------------------------------------


def test_missing_key_without_fhir_server_silences_the_rules_that_read_it(client):
    body = copy.deepcopy(R1_FIRES["request"])
    body["prefetch"].pop("labs")
    response = post(client, "legmove-patient-view", body)
    assert response.status_code == 200 and "R1" not in fired_rules(response.get_json())


def test_no_key_at_all_without_fhir_server_is_412(client):
    body = copy.deepcopy(R1_FIRES["request"])
    body["prefetch"] = {}
    assert "cannot be queried: no fhirServer in the request" in assert_outcome(
        post(client, "legmove-patient-view", body), 412
    )


def test_null_key_means_no_data_and_is_not_fetched(client):
    body = copy.deepcopy(R1_FIRES["request"])
    body["prefetch"]["labs"] = None
    body["fhirServer"] = "http://127.0.0.1:9/fhir"  # nothing listens: a fetch attempt would give 412
    response = post(client, "legmove-patient-view", body)
    assert response.status_code == 200 and "R1" in fired_rules(response.get_json())


def test_operation_outcome_in_prefetch_without_server_is_an_unknown_key(client):
    body = copy.deepcopy(R1_FIRES["request"])
    body["prefetch"]["labs"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    response = post(client, "legmove-patient-view", body)
    assert response.status_code == 200 and "R1" not in fired_rules(response.get_json())


def test_unreachable_fhir_server_is_412_within_the_deadline(client):
    """Every patient-view rule reads the problem list: without it nothing can be evaluated."""
    body = copy.deepcopy(R1_FIRES["request"])
    body["prefetch"].pop("conditions")
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "legmove-cds",
    }
    diagnostics = assert_outcome(post(client, "legmove-patient-view", body), 412)
    assert "conditions" in diagnostics and "did not provide" in diagnostics
    assert "Error" not in diagnostics, "the outbound exception name stays in the log"


def test_http_fhir_server_refused_in_production(app):
    from cds_service.app import create_app

    production = create_app(
        "production",
        LOG_LEVEL="WARNING",
        EVALUATION_DATE="2026-11-22",
        OPEN_MODE=True,
        FHIR_SERVER_ALLOWLIST=["*"],
        FEEDBACK_STORE=None,
    ).test_client()
    body = copy.deepcopy(R1_FIRES["request"])
    body["prefetch"] = {}
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    assert "not https" in assert_outcome(post(production, "legmove-patient-view", body), 412)


def test_prefetch_resources_of_another_patient_are_dropped(client):
    body = copy.deepcopy(R1_FIRES["request"])
    foreign = copy.deepcopy(body["prefetch"]["conditions"]["entry"][0])
    foreign["resource"]["id"] = "foreign-rls"
    foreign["resource"]["subject"]["reference"] = "Patient/another-patient"
    body["prefetch"]["conditions"]["entry"] = [foreign]
    assert post(client, "legmove-patient-view", body).get_json()["cards"] == []


@pytest.mark.fhir_server
def test_fhir_server_fills_missing_keys_and_keeps_prefetched_ones(client, fhir_server):
    request = copy.deepcopy(R1_FIRES["request"])
    pid = request["context"]["patientId"] = "contract-mixed"
    for key in ("conditions", "labs"):
        for entry in request["prefetch"][key]["entry"]:
            entry["resource"]["subject"]["reference"] = f"Patient/{pid}"
    fhir_server.transaction(
        [{"resourceType": "Patient", "id": pid}]
        + namespaced([e["resource"] for e in request["prefetch"]["conditions"]["entry"]], pid)
    )
    body = as_server_request(request, fhir_server, keep_prefetch=("labs",))
    response = post(client, "legmove-patient-view", body)
    assert response.status_code == 200 and "R1" in fired_rules(response.get_json())


@pytest.mark.fhir_server
def test_paging_follows_next_links_on_the_same_server(client, fhir_server):
    """A prefetched first page with a next link: the rest is read from the server. The low
    ferritin is not on page 1, so R2 fires only if the later pages were really read."""
    import requests

    pid = "contract-paging"
    fixture = load_fixture(ROOT / "fhir_fixtures/R2/fires-low-ferritin-ugl.json")
    resources = [
        dict(r, subject={"reference": f"Patient/{pid}"}) if r["resourceType"] != "Patient" else dict(r, id=pid)
        for r in prefetched_resources(fixture["request"])
    ]
    fillers = [
        {
            "resourceType": "Observation",
            "id": f"{pid}-hb-{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": f"2026-09-{10 + i:02d}",
            "valueQuantity": {"value": 13.0, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
        }
        for i in range(4)
    ]
    fhir_server.transaction(namespaced(resources, pid) + fillers)
    first = requests.get(
        f"{fhir_server.base_url}/Observation?patient={pid}&_sort=date&_count=2",
        headers=fhir_server.headers(),
        timeout=10,
    ).json()
    assert any(link["relation"] == "next" for link in first["link"])
    assert all(e["resource"]["code"]["coding"][0]["code"] == "718-7" for e in first["entry"])
    body = as_server_request(fixture["request"], fhir_server)
    body["context"]["patientId"] = body["fhirAuthorization"]["patient"] = pid
    body["prefetch"] = {"labs": first}
    response = post(client, "legmove-patient-view", body)
    assert response.status_code == 200
    assert "R2" in fired_rules(response.get_json())


def test_unfollowable_next_link_never_counts_as_absence(client):
    """A next link to another host is not followed (the token must not leak), and the
    incomplete key stops R1 from claiming there is no ferritin."""
    body = copy.deepcopy(R1_FIRES["request"])
    body["prefetch"]["labs"]["link"] = [
        {"relation": "next", "url": "https://elsewhere.example/fhir/Observation?page=2"}
    ]
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "x",
        "subject": "legmove-cds",
    }
    response = post(client, "legmove-patient-view", body)
    assert response.status_code == 200
    assert "R1" not in fired_rules(response.get_json())


# ---- cards ---------------------------------------------------------------------------------


def test_r1_card_explains_itself_and_orders_iron_studies(client):
    card = post(client, "legmove-patient-view", R1_FIRES["request"]).get_json()["cards"][0]
    assert card["indicator"] == "info"
    assert card["source"] == {
        "label": "AASM 2024 RLS guideline (Winkelman et al.)",
        "url": "https://doi.org/10.5664/jcsm.11390",
        "topic": {"system": "urn:legmove-cds:rule", "code": "R1", "display": "RLS without recent ferritin"},
    }
    assert "G25.81" in card["detail"] and "Condition/rls-1" not in card["detail"]
    assert "Condition/rls-1" in card["extension"]["org.legmove-cds.explanation"]["resources"]
    actions = card["suggestions"][0]["actions"]
    assert [a["resource"]["code"]["coding"][0]["code"] for a in actions] == ["2276-4", "50190-8"]
    for action in actions:
        assert action["resource"]["status"] == "draft" and action["resource"]["intent"] == "proposal"
        assert action["resource"]["subject"]["reference"] == "Patient/r1-fires-no-ferritin"
    assert card["extension"]["org.legmove-cds.explanation"]["findings"] == ["iron_check_due", "rls"]


def test_r2_card_shows_raw_and_converted_values(client):
    fixture = load_fixture(ROOT / "fhir_fixtures/R2/fires-low-ferritin-ugl.json")
    card = post(client, fixture["service"], fixture["request"]).get_json()["cards"][0]
    assert card["summary"] == "RLS with ferritin 32 ng/mL (below 50): iron supplementation indicated"
    assert "Ferritin 32 ug/L (32 ng/mL) on 2026-10-15" in card["detail"]  # as reported, then converted
    [lab] = [
        f
        for f in card["extension"]["org.legmove-cds.explanation"]["evidence"]
        if f["kind"] == "lab" and f["analyte"] == "ferritin"
    ]
    assert (lab["loinc"], lab["raw_value"], lab["raw_unit"], lab["value"], lab["unit"]) == (
        "2276-4",
        32,
        "ug/L",
        32,
        "ng/mL",
    )
    assert "12.9 g/dL on" in card["detail"] and "= 12.9" not in card["detail"]
    resource = card["suggestions"][0]["actions"][0]["resource"]
    assert (
        resource["medicationCodeableConcept"]["coding"][0]["code"] == "310325" and "dosageInstruction" not in resource
    )


def test_r3_card_offers_to_delete_the_draft(client):
    body = post(client, "legmove-order-sign", R3_FIRES["request"]).get_json()
    card = body["cards"][0]
    assert card["indicator"] == "warning"
    assert card["summary"] == "sertraline 50 MG Oral Tablet (SSRI) can worsen restless legs; consider an alternative"
    action = card["suggestions"][0]["actions"][0]
    assert action == {
        "type": "delete",
        "description": action["description"],
        "resourceId": "MedicationRequest/draft-sertraline",
    }
    assert "SSRI, recognised by its product code" in card["detail"] and "312941" not in card["detail"]
    [drug] = [f for f in card["extension"]["org.legmove-cds.explanation"]["evidence"] if f["kind"] == "medication"]
    assert (drug["matched_by"], drug["code"]) == ("rxnorm-product", "312941")


def test_r4_counts_one_ingredient_once(client):
    fixture = load_fixture(ROOT / "fhir_fixtures/R4/fires-chart-review.json")
    cards = post(client, fixture["service"], fixture["request"]).get_json()["cards"]
    card = next(c for c in cards if c["extension"]["org.legmove-cds.explanation"]["rule"] == "R4")
    assert card["summary"].startswith("Review 2 active medications that can worsen RLS")
    resources = card["extension"]["org.legmove-cds.explanation"]["resources"]
    assert {"MedicationRequest/mr-sertraline", "MedicationStatement/ms-sertraline"} <= set(resources)


def test_markup_in_fhir_text_is_escaped(client):
    body = copy.deepcopy(R1_FIRES["request"])
    coding = body["prefetch"]["conditions"]["entry"][0]["resource"]["code"]["coding"][0]
    coding["display"] = "<img src=x onerror=alert(1)> **RLS**"
    detail = post(client, "legmove-patient-view", body).get_json()["cards"][0]["detail"]
    assert "<img" not in detail and "&lt;img" in detail


# ---- CORS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/cds-services", "/cds-services/legmove-patient-view"])
def test_cors_preflight_needs_no_auth(client, path):
    response = client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_cors_headers_on_errors(client):
    response = client.post(
        "/cds-services/legmove-patient-view",
        data=b"{",
        content_type="application/json",
        headers={"Origin": "https://sandbox.cds-hooks.org"},
    )
    assert response.status_code == 400 and response.headers.get("Access-Control-Allow-Origin")


def test_markup_in_medication_names_is_escaped_in_rule_text(client):
    body = copy.deepcopy(R3_FIRES["request"])
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["medicationCodeableConcept"] = {"text": "sertraline <script>x()</script> 50 mg"}
    card = post(client, "legmove-order-sign", body).get_json()["cards"][0]
    # detail is Markdown and must be escaped; summary and labels are plain text by the spec
    assert "<script>" not in card["detail"] and "&lt;script&gt;" in card["detail"]


@pytest.mark.fhir_server
def test_fhir_server_rejecting_the_token_is_412(client, fhir_server, caplog):
    caplog.set_level("INFO", logger="cds_service.web.api")
    body = as_server_request(R1_FIRES["request"], fhir_server)
    body["fhirAuthorization"]["access_token"] = "not-the-right-token"
    assert "did not provide" in assert_outcome(post(client, "legmove-patient-view", body), 412)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert "HTTP 401" in record.missing_reasons["conditions"], "the real cause is in the log"


def test_prefetch_tokens_expand_from_context():
    from cds_service.fhir.prefetch import expand

    context = {"patientId": "p-42", "userId": "PractitionerRole/pr-7"}
    assert expand("Condition?patient={{context.patientId}}", context) == "Condition?patient=p-42"
    assert expand("{{context.userId}}", context) == "PractitionerRole/pr-7"
    assert expand("Encounter/{{context.encounterId}}", context) is None


def test_source_label_is_in_words_and_the_citation_keys_in_the_extension(client):
    fixture = load_fixture(ROOT / "fhir_fixtures/R22/fires-quinine-for-cramps.json")
    card = post(client, fixture["service"], fixture["request"]).get_json()["cards"][0]
    assert card["source"]["label"] == "Leg-movement CDS: Quinine for leg cramps"
    assert card["source"]["url"] == "http://localhost/rules/R22"
    assert "FDA Drug Safety Communication on quinine" in card["detail"]
    assert card["extension"]["org.legmove-cds.explanation"]["citationKeys"] == ["fda-2010"]
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/draft-quinine"


def test_fhir_server_outside_the_allowlist_is_never_queried(fhir_server):
    """SSRF guard: with an allowlist, a fhirServer elsewhere is refused (412) before any request."""
    from cds_service.app import create_app

    guarded = create_app("test", LOG_LEVEL="WARNING", FHIR_SERVER_ALLOWLIST=["https://ehr.example.org/fhir"])
    call = as_server_request(R1_FIRES["request"], fhir_server)
    response = post(guarded.test_client(), "legmove-patient-view", call)
    assert "not on the configured allowlist" in assert_outcome(response, 412)
    allowed = create_app("test", LOG_LEVEL="WARNING", FHIR_SERVER_ALLOWLIST=[fhir_server.base_url])
    assert post(allowed.test_client(), "legmove-patient-view", call).status_code == 200
