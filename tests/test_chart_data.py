"""Real chart data read right: references, text values, partial dates, stale entries, logging.

The clinical cases are fixtures (fhir_fixtures/, run on both data paths by test_fixtures.py);
these tests check what a fixture cannot express: what the cards say, what is logged, and what
the service asks the FHIR server for.
"""

import html
import logging
import re

from conftest import EXTENSION, ROOT, load_fixture


def _plain(markdown: str) -> str:
    """Card Markdown as a clinician reads it: escapes and entities undone."""
    return re.sub(r"\\(.)", r"\1", html.unescape(markdown))


def _call(client, rule, name):
    fixture = load_fixture(ROOT / "fhir_fixtures" / rule / f"{name}.json")
    response = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    assert response.status_code == 200, response.get_data(as_text=True)
    return {card["extension"][EXTENSION]["rule"]: card for card in response.get_json()["cards"]}


def test_normal_ferritin_in_rls_logs_no_warning(client, caplog):
    """Iron stores in range match no card rule: normal, so nothing at WARNING (it used to log
    'finding iron_stores ... is consumed by no rule' on every such chart)."""
    with caplog.at_level(logging.DEBUG):
        cards = _call(client, "R4", "fires-chart-review")
    assert "R4" in cards and "R2" not in cards
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    assert any("iron_stores" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_unknown_age_uses_adult_thresholds_and_says_so(app):
    from test_fixtures import client_for

    fixture = load_fixture(ROOT / "fhir_fixtures" / "R2" / "fires-aasm-age-unknown-ferritin-60.json")
    body = (
        client_for(fixture, app.test_client())
        .post(f"/cds-services/{fixture['service']}", json=fixture["request"])
        .get_json()
    )
    card = next(c for c in body["cards"] if c["extension"][EXTENSION]["rule"] == "R2")
    assert "age is uncertain" in card["detail"] and "adult thresholds" in card["detail"]


def test_partial_birthdate_is_an_age_range():
    from datetime import date

    from cds_service.facts.build import PatientData, build_facts
    from cds_service.knowledge.terminology import Terminology

    def patient_fact(birth):
        data = PatientData(
            "patient-view", "p1", {"patient": [{"resourceType": "Patient", "id": "p1", "birthDate": birth}]}
        )
        return next(f for f in build_facts(data, Terminology(), date(2026, 12, 1)).facts if f["kind"] == "patient")

    assert patient_fact("2016")["child"] is True and patient_fact("2016")["age_known"] is True
    assert (patient_fact("2016")["age_min"], patient_fact("2016")["age_max"]) == (9, 10)
    assert patient_fact("2008")["age_known"] is False and patient_fact("2008")["child"] is False
    assert (
        patient_fact("2008-11")["age_known"] is True and patient_fact("2008-11")["child"] is False
    )  # 18 by 2026-12-01
    assert patient_fact("1970")["age_known"] is True and patient_fact("1970")["age_years"] == -1
    assert patient_fact("1970-05-02")["age_years"] == 56
    assert patient_fact("someday")["age_known"] is False


def test_text_ferritin_card_keeps_the_comparator(client):
    card = _call(client, "R2", "fires-ferritin-text-below-10")["R2"]
    assert "ferritin <10 ng/mL" in card["summary"], card["summary"]
    assert "reported as text '<10' without a unit" in _plain(card["detail"])  # Markdown escapes '<'


def test_unreadable_ferritin_is_named_by_r1(client):
    card = _call(client, "R1", "fires-ferritin-mg-per-l")["R1"]
    assert "no readable ferritin" in card["summary"]
    assert "could not be read: value '35', unit 'mg/L'" in card["detail"]
    assert any(r.endswith("fer-1") for r in card["extension"][EXTENSION]["resources"])
    card = _call(client, "R1", "fires-ferritin-text-unreadable")["R1"]
    assert "value 'haemolysed, see comment'" in card["detail"]


# ---- medications known only by reference, read from fhirServer ------------------------------


def _medication_server(seen: list):
    """Loopback FHIR server answering only reads of Medication/{id}: path /<mode>/fhir/Medication/<id>."""
    import json as _json
    import threading
    import time

    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    lithium = load_fixture(ROOT / "fhir_fixtures/R4/fires-lithium-by-reference.json")
    medication = lithium["request"]["prefetch"]["medication_requests"]["entry"][-1]["resource"]

    def app(environ, start_response):
        request = Request(environ)
        seen.append(request.path)
        mode = request.path.split("/")[1]
        if mode == "hang":
            time.sleep(3)
        if request.path.endswith(f"/Medication/{medication['id']}"):
            return Response(_json.dumps(medication), 200, content_type="application/fhir+json")(environ, start_response)
        return Response("{}", 404, content_type="application/fhir+json")(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, lithium


def _without_medication(fixture: dict, base: str) -> dict:
    import copy

    body = copy.deepcopy(fixture["request"])
    bundle = body["prefetch"]["medication_requests"]
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Medication"]
    body["fhirServer"] = base
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "legmove-cds",
    }
    return body


def test_referenced_medication_is_read_from_the_fhir_server_within_the_deadline():
    import time

    from cds_service.app import create_app

    seen: list = []
    server, fixture = _medication_server(seen)
    base = f"http://127.0.0.1:{server.server_port}"
    client = create_app(
        "test",
        LOG_LEVEL="WARNING",
        FEEDBACK_STORE=None,
        FHIR_DEADLINE=1.0,
        FHIR_READ_TIMEOUT=0.5,
        FHIR_CONNECT_TIMEOUT=0.5,
    ).test_client()
    try:
        response = client.post(
            "/cds-services/legmove-patient-view", json=_without_medication(fixture, f"{base}/fine/fhir")
        )
        assert response.status_code == 200 and "R4" in {
            c["extension"][EXTENSION]["rule"] for c in response.get_json()["cards"]
        }
        assert seen == ["/fine/fhir/Medication/med-lithium"], "only the missing Medication is read, by id"
        started = time.monotonic()
        response = client.post(
            "/cds-services/legmove-patient-view", json=_without_medication(fixture, f"{base}/hang/fhir")
        )
        assert time.monotonic() - started < 2.0, "the read is bounded by the call's FHIR deadline"
        body = response.get_json()
        assert response.status_code == 200 and "R4" not in {c["extension"][EXTENSION]["rule"] for c in body["cards"]}
    finally:
        server.shutdown()


def test_only_relative_or_same_server_medication_references_are_read():
    from cds_service.advice import _medication_id

    assert _medication_id("Medication/123", "https://ehr.example/fhir") == "123"
    assert _medication_id("https://ehr.example/fhir/Medication/123", "https://ehr.example/fhir") == "123"
    assert _medication_id("https://elsewhere.example/fhir/Medication/123", "https://ehr.example/fhir") is None
    assert _medication_id("Medication/123/_history/2", None) is None
    assert _medication_id("Substance/9", None) is None


# ---- clinical corrections: what the cards say -------------------------------------------------


def _labels(card) -> list[str]:
    return [s["label"] for s in card.get("suggestions", [])]


def test_cetirizine_is_offered_only_for_an_allergic_indication(client):
    urticaria = _call(client, "R3", "fires-hydroxyzine-for-urticaria")["R3"]
    assert any("cetirizine" in label for label in _labels(urticaria))
    assert "Urticaria, unspecified (L50.9)" in _plain(urticaria["detail"])
    anxiety = _call(client, "R3", "fires-hydroxyzine-for-anxiety")["R3"]
    assert not any("cetirizine" in label for label in _labels(anxiety)), _labels(anxiety)
    assert _labels(anxiety) and all(label.startswith("Remove") for label in _labels(anxiety))
    uncoded = _call(client, "R3", "fires-diphenhydramine-plmd")["R3"]  # no reason coded: no cetirizine either
    assert not any("cetirizine" in label for label in _labels(uncoded))


def test_a_coded_indication_is_named_and_weighed(client):
    card = _call(client, "R3", "fires-escitalopram-for-anxiety")["R3"]
    assert "ordered for Generalized anxiety disorder (F41.1): weigh that benefit against the risk" in _plain(
        card["detail"]
    )


def test_r8_summary_names_the_red_flags_present(client):
    assert _call(client, "R8", "fires-dysphagia-only")["R8"]["summary"] == (
        "Fasciculations with dysphagia: urgent EMG/NCS and neurology referral"
    )
    assert _call(client, "R8", "fires-weakness-critical")["R8"]["summary"].startswith("Fasciculations with weakness:")


def test_red_flag_phrase_stays_within_its_budget():
    from rules.fasciculation import red_flag_phrase

    every = [{"flags": ["weakness", "muscle atrophy", "abnormal reflexes", "dysphagia", "dysarthria"]}]
    assert red_flag_phrase(every) == "weakness and other red flags"
    assert red_flag_phrase([{"flags": ["dysarthria"]}, {"flags": ["weakness"]}]) == "weakness and dysarthria"


def test_r20_offers_no_gabapentinoid_where_r19_gives_no_drug_advice(client):
    for name in (
        "fires-pregnancy-no-gabapentinoid",
        "fires-esrd-no-gabapentinoid",
        "fires-child-no-gabapentinoid",
        "fires-age-unknown-no-gabapentinoid",
    ):
        card = _call(client, "R20", name)["R20"]
        assert _labels(card) and all(label.startswith("Remove this order") for label in _labels(card)), (
            name,
            _labels(card),
        )
        assert "specialist advice" in card["detail"] and "gabapentin 300" not in str(card.get("suggestions")), name
    adult = _call(client, "R20", "fires-pramipexole-new-start")["R20"]
    assert any("gabapentin" in label for label in _labels(adult))


def test_r20_replaces_r2_on_order_select_and_carries_the_iron_verdict(client):
    cards = _call(client, "R20", "fires-supersedes-r2-order-select")
    assert "R2" not in cards and cards["R20"]["indicator"] == "warning"
    assert "ferritin 20 ng/mL" in cards["R20"]["detail"]
    assert cards["R20"]["extension"][EXTENSION]["supersedes"] == ["R2"]


def test_plms_index_known_by_name_has_a_query_that_can_find_it(client):
    """A code filter can never return an Observation known only by its text: discovery asks for a
    separate name search (`code:text`), and the R7 fixtures prove it on a real FHIR server."""
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    template = services["legmove-patient-view"]["prefetch"]["plms_index_by_text"]
    assert template.startswith("Observation?patient={{context.patientId}}&code:text=plm%20index,")
    assert "arousal" not in template and "_count=20" in template


def test_a_server_refusing_the_name_search_costs_only_that_key():
    """`code:text` is a modifier some servers lack: a 400 for it marks the key incomplete, not a 412."""
    import copy
    import json as _json
    import threading

    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    from cds_service.app import create_app

    fixture = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
    condition = fixture["request"]["prefetch"]["conditions"]["entry"][0]["resource"]

    def app(environ, start_response):
        request = Request(environ)
        if "code:text" in request.query_string.decode().replace("%3A", ":"):
            return Response('{"resourceType": "OperationOutcome"}', 400)(environ, start_response)
        body = {"resourceType": "Bundle", "type": "searchset", "total": 0}
        if request.path.endswith("/Condition"):
            body["entry"] = [{"resource": condition}]
        return Response(_json.dumps(body), 200, content_type="application/fhir+json")(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = copy.deepcopy(fixture["request"])
        body.pop("prefetch")
        body["fhirServer"] = f"http://127.0.0.1:{server.server_port}/fhir"
        body["fhirAuthorization"] = {
            "access_token": "t",
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": "patient/*.read",
            "subject": "legmove-cds",
        }
        client = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None).test_client()
        response = client.post("/cds-services/legmove-patient-view", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        card = next(c for c in response.get_json()["cards"] if c["extension"][EXTENSION]["rule"] == "R1")
        assert card["extension"][EXTENSION]["incompleteData"] == ["plms_index_by_text"]
    finally:
        server.shutdown()


def test_exactly_50_gives_the_disagreement_card_not_the_seed_warning(client):
    card = _call(client, "R2", "fires-disagreement-at-exactly-50")["R2"]
    assert card["indicator"] == "info" and "iron therapy per AASM 2024 (≤ 75)" in card["summary"]
    assert "not below the 50 ng/mL used by the review articles" in card["detail"]


def test_r20_names_the_population_it_withholds_gabapentinoids_for(client):
    card = _call(client, "R20", "fires-esrd-no-gabapentinoid")["R20"]
    assert "end-stage renal disease or is on dialysis" in card["detail"]
    assert any(ref.endswith("esrd-1") for ref in card["extension"][EXTENSION]["resources"])
