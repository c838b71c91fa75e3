"""Cards a clinician can read in seconds, and trust: every fixture's cards rendered through the app.

Clinician text (summary, detail, suggestion labels) is short clinical prose with no file names,
FHIR ids, rule ids, cut words or profile jargon; the extension still carries everything machine-facing;
every card's source URL is a served rule page or the DOI its label names; the numbers printed are the
numbers the rule evaluated.
"""

import copy
import json
import re
from functools import cache

import pytest

from card_text import lead, problems, sentences
from cds_service.app import create_app
from cds_service.authoring.rulebook import drug_name, drug_names
from cds_service.knowledge.sources import AASM_2024
from cds_service.knowledge.terminology import KNOWLEDGE_DIR
from conftest import EXTENSION, FIXTURES, ROOT, fixture_id, load_fixture

BASE = "https://cds.example.org"


@cache
def _client(config_json: str):
    config = json.loads(config_json)
    return create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **config).test_client()


def cards_of(fixture: dict, **extra) -> list[dict]:
    client = _client(json.dumps({**(fixture.get("config") or {}), **extra}, sort_keys=True))
    response = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


FIRING = [p for p in FIXTURES if p.stem.startswith("fires-")]


@pytest.mark.parametrize("path", FIRING, ids=fixture_id)
def test_clinician_text_is_clinical(path):
    fixture = load_fixture(path)
    cards = cards_of(fixture)
    assert cards, "a firing fixture renders at least one card"
    for card in cards:
        assert problems(card) == [], (card["summary"], card["detail"])


@pytest.mark.parametrize("path", FIRING, ids=fixture_id)
def test_source_url_is_rule_page_or_named_doi(path):
    fixture = load_fixture(path)
    client = _client(json.dumps({**(fixture.get("config") or {}), "PUBLIC_BASE_URL": BASE}, sort_keys=True))
    patient = fixture["request"]["context"]["patientId"]
    for card in cards_of(fixture, PUBLIC_BASE_URL=BASE):
        rule = card["extension"][EXTENSION]["rule"]
        page = f"{BASE}/rules/{rule}"
        assert card["source"]["topic"]["code"] == rule
        assert card["links"] == [{"label": "Why this card", "url": page, "type": "absolute"}]
        url, label = card["source"]["url"], card["source"]["label"]
        if "AASM 2024" in label:
            assert url == AASM_2024.url, "a label that names the guideline opens the guideline"
        else:
            assert url == page, "any other label opens the rule's own page"
        served = client.get(page.removeprefix(BASE))
        assert served.status_code == 200 and served.content_type.startswith("text/html")
        html = served.get_data(as_text=True)
        assert patient not in html and "Patient/" not in html, "the rule page holds no patient data"
        assert card["source"]["topic"]["display"] in html


def test_base_url_defaults_to_the_request_host(client):
    fixture = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
    card = client.post(
        f"/cds-services/{fixture['service']}", json=fixture["request"], base_url="http://cds.local:8080"
    ).get_json()["cards"][0]
    assert card["links"][0]["url"] == "http://cds.local:8080/rules/R3"
    assert card["source"]["url"] == "http://cds.local:8080/rules/R3"


@pytest.mark.parametrize("path", FIRING, ids=fixture_id)
def test_extension_carries_what_the_text_dropped(path):
    """The old detail named each evidence resource with its code, value and unit, and each drug
    with how it matched; the clinician text no longer does, so the extension must."""
    fixture = load_fixture(path)
    sent = json.dumps(fixture["request"])
    for card in cards_of(fixture):
        explanation = card["extension"][EXTENSION]
        assert (
            explanation["ruleTitle"]
            and explanation["citationKeys"]
            and explanation["rulePage"].endswith(f"/rules/{explanation['rule']}")
        )
        refs = set(explanation["resources"])
        for ref in refs:
            assert ref.split("/", 1)[1] in sent, f"{ref} is a resource of this call"
        for fact in explanation.get("evidence", []):
            if "resource_ref" in fact:
                assert fact["resource_ref"] in refs
            if fact["kind"] == "condition":
                assert fact["code"] and fact["system"]
            if fact["kind"] == "lab" and fact.get("usable"):
                assert {"loinc", "raw_value", "raw_unit", "value", "unit", "date"} <= fact.keys()
            if fact["kind"] == "medication":
                assert fact["matched_by"] and "code" in fact and fact["classes"]
        for file in explanation.get("seedFiles", []):
            assert file.endswith(".txt") and file not in card["detail"]


def test_extension_keeps_the_references_and_codes_of_the_old_detail():
    """The README's R3 example: its old detail named these; they now live in the extension only."""
    card = cards_of(load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json"))[0]
    machine = json.dumps(card["extension"][EXTENSION])
    for named in (
        "MedicationRequest/draft-sertraline",
        "312941",
        "rxnorm-product",
        "Condition/rls-1",
        "G25.81",
        "000_e09f97222edeabb3.txt",
        "001_9c4bd8494c6f1f15.txt",
    ):
        assert named in machine
        assert named not in card["detail"] or named == "G25.81"  # ICD-10 codes may stay in the evidence list
    assert "sertraline 50 MG Oral Tablet" in card["detail"] and "SSRI" in card["detail"]
    assert "Differential Diagnosis of Involuntary Lower Left Leg Jerking" in card["detail"]


def _profiles(**changes) -> dict:
    profiles = copy.deepcopy(json.loads((KNOWLEDGE_DIR / "settings.json").read_text())["profiles"])
    for key, value in changes.items():
        profile, name = key.split("__")
        profiles[profile][name] = value
    return profiles


def _clinician_text(card: dict) -> str:
    return " ".join([card["summary"], card["detail"], *(s["label"] for s in card.get("suggestions", []))])


def test_r2_prints_the_overridden_aasm_threshold():
    fixture = load_fixture(ROOT / "fhir_fixtures/R2/fires-disagreement-ferritin-60.json")
    overrides = {"KNOWLEDGE_OVERRIDES": {"profiles": _profiles(aasm2024__ferritin_iron_indicated_at_or_below=65)}}
    [card] = [c for c in cards_of(fixture, **overrides) if c["extension"][EXTENSION]["rule"] == "R2"]
    text = _clinician_text(card)
    assert "≤ 65" in card["summary"] and "≤ 65 ng/mL" in lead(card["detail"])
    assert "75" not in text, "the default the rule did not use is never printed"
    assert card["extension"][EXTENSION]["thresholds"]["aasm"] == "65"


def test_r2_prints_the_overridden_seed_threshold_and_aasm_profile():
    seed = load_fixture(ROOT / "fhir_fixtures/R2/fires-latest-of-two.json")  # ferritin 41 ng/mL
    overrides = {"KNOWLEDGE_OVERRIDES": {"profiles": _profiles(seed__ferritin_iron_indicated_below=45)}}
    [card] = [c for c in cards_of(seed, **overrides) if c["extension"][EXTENSION]["rule"] == "R2"]
    assert "below 45" in card["summary"] and "45 ng/mL" in lead(card["detail"])
    assert "50" not in _clinician_text(card)
    aasm = load_fixture(ROOT / "fhir_fixtures/R2/fires-aasm-ferritin-70.json")
    profiles = _profiles(aasm2024__ferritin_iron_indicated_at_or_below=72)
    knowledge = {**aasm["config"]["KNOWLEDGE_OVERRIDES"], "profiles": profiles}
    [card] = [
        c
        for c in cards_of({**aasm, "config": {**aasm["config"], "KNOWLEDGE_OVERRIDES": knowledge}})
        if c["extension"][EXTENSION]["rule"] == "R2"
    ]
    assert "≤ 72 ng/mL" in lead(card["detail"]) and "75" not in _clinician_text(card)


def test_r2_disagreement_reads_as_two_sources():
    card = cards_of(load_fixture(ROOT / "fhir_fixtures/R2/fires-disagreement-ferritin-60.json"))[0]
    first = lead(card["detail"])
    assert "review articles" in first and "AASM 2024 guideline" in first and "60 ng/mL" in first
    assert sentences(first) <= 2 and "seed" not in _clinician_text(card).lower()


@pytest.mark.parametrize(
    "product, short",
    [
        ("diphenhydramine hydrochloride 25 MG Oral Tablet", "diphenhydramine 25 mg"),
        ("gabapentin enacarbil 600 MG Extended Release Oral Tablet", "gabapentin enacarbil 600 mg"),
        ("sertraline 50 MG Oral Tablet", "sertraline 50 MG Oral Tablet"),
        ("chlorpheniramine maleate 4 MG Oral Tablet", "chlorpheniramine 4 mg"),
        (
            "codeine phosphate 1.8 MG/ML / dexchlorpheniramine maleate 0.4 MG/ML Oral Solution",
            "codeine and dexchlorpheniramine",
        ),
    ],
)
def test_long_product_names_become_ingredient_and_strength(product, short):
    assert drug_name(product) == short


def test_several_drugs_are_all_named_or_counted_after_whole_names():
    two = ["chlorpheniramine maleate 4 MG Oral Tablet", "sertraline 50 MG Oral Tablet"]
    assert drug_names(two) == "chlorpheniramine 4 mg and sertraline 50 MG Oral Tablet"
    many = two + [
        "amitriptyline hydrochloride 25 MG Oral Tablet",
        "lithium carbonate 300 MG Oral Capsule",
        "haloperidol 5 MG Oral Tablet",
    ]
    text = drug_names(many)
    assert len(text) <= 60 and re.fullmatch(r"[a-z ,]+ and \d other drugs", text), text
    assert "…" not in text and "chlorpheniramine" in text


def test_two_drugs_in_one_order_sign_card_are_both_named():
    fixture = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
    request = copy.deepcopy(fixture["request"])
    entries = request["context"]["draftOrders"]["entry"]
    second = copy.deepcopy(entries[0])
    second["resource"]["id"] = "draft-chlorpheniramine"
    second["resource"]["medicationCodeableConcept"] = {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "1363309",
                "display": "chlorpheniramine maleate 4 MG Oral Tablet",
            }
        ],
        "text": "chlorpheniramine maleate 4 MG Oral Tablet",
    }
    entries.append(second)
    cards = cards_of({**fixture, "request": request})
    [card] = [c for c in cards if c["extension"][EXTENSION]["rule"] == "R3"]
    assert "chlorpheniramine" in card["summary"] and "sertraline" in card["summary"], card["summary"]
    assert "…" not in _clinician_text(card) and "drugs)" not in card["summary"]
    assert problems(card) == []


def test_rule_index_and_pages_are_open_with_client_auth_on():
    from test_client_auth import BASE as AUTH_BASE
    from test_client_auth import EHR_JWKS

    secured = create_app(
        "test",
        LOG_LEVEL="WARNING",
        CLIENT_AUTH=True,
        PUBLIC_BASE_URL=AUTH_BASE,
        FEEDBACK_STORE=None,
        TRUSTED_ISSUERS={"https://ehr.example.org": {"jwks": EHR_JWKS}},
    )
    client = secured.test_client()
    index = client.get("/rules")
    assert index.status_code == 200 and index.content_type.startswith("text/html")
    for rule in ("R1", "R2", "R20", "R23"):
        assert f'href="/rules/{rule}"' in index.get_data(as_text=True)
    page = client.get("/rules/R2")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "RLS with low iron stores" in html
    assert AASM_2024.url in html and "It fires" in html and "It stays silent" in html
    assert ".txt" not in html and "seed 000" not in html
    assert client.get("/rules/R999").status_code == 404
    assert client.post("/cds-services/legmove-patient-view", json={}).status_code == 401, "the CDS API stays closed"


def test_rule_page_shows_the_thresholds_in_force():
    overrides = {"KNOWLEDGE_OVERRIDES": {"profiles": _profiles(aasm2024__ferritin_iron_indicated_at_or_below=65)}}
    html = _client(json.dumps(overrides, sort_keys=True)).get("/rules/R2").get_data(as_text=True)
    row = re.search(r"aasm2024\.ferritin_iron_indicated_at_or_below</code></td><td>([^<]+)<", html)
    assert row and row.group(1) == "65"


def test_rule_page_without_packaged_examples_still_serves(monkeypatch):
    from cds_service.web import rule_pages

    monkeypatch.setattr(rule_pages, "_fixtures_root", lambda: None)
    rule_pages.examples.cache_clear()
    try:
        page = _client("{}").get("/rules/R3")
        assert page.status_code == 200 and page.get_data(as_text=True).count("No example.") == 2
    finally:
        rule_pages.examples.cache_clear()
    assert "RLS or PLMD is on the problem list" in _client("{}").get("/rules/R3").get_data(as_text=True)
