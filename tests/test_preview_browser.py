"""The card preview page in a real browser: Playwright driving Debian's Chromium headless against the
service started with `legmove-cds serve` (gunicorn) and a real sekmet-fhir, all on loopback.

Skips only when /usr/bin/chromium or playwright is missing outside CI; in CI (CI=true) that is a
failure, because .ci/run installs both. Screenshots and the browser version go to artifacts/.
"""

import json
import os
from pathlib import Path

import pytest
import sqlalchemy

from conftest import FHIR_TOKEN, ROOT, FhirServer, _free_port
from served_app import ServedService, run_cli

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERTRALINE = "R3/fires-sertraline-order-sign"
NO_FERRITIN = "R1/fires-no-ferritin"

pytestmark = [pytest.mark.slow, pytest.mark.fhir_server]  # a real Chromium per module

# chart text is attacker-controlled as far as the page is concerned: HTML in a diagnosis name
PAYLOAD = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
HOSTILE_CHART = [
    {"resourceType": "Patient", "id": "hostile-1"},
    {
        "resourceType": "Condition",
        "id": "hostile-1-rls",
        "subject": {"reference": "Patient/hostile-1"},
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G25.81", "display": PAYLOAD}],
            "text": PAYLOAD,
        },
        "recordedDate": "2025-03-14",
    },
]


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/run installs chromium and playwright)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _need(CHROMIUM.exists(), f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "browser.json").write_text(
            json.dumps({"browser": "chromium", "executable": str(CHROMIUM), "version": browser.version}, indent=2)
            + "\n"
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """sekmet with one example chart loaded; the service allows only that FHIR server."""
    fhir = FhirServer(tmp_path_factory.mktemp("preview-sekmet"))
    loaded = run_cli(
        "load", "--fhir-server", fhir.base_url, "--token", FHIR_TOKEN, ROOT / "fhir_fixtures" / f"{NO_FERRITIN}.json"
    )
    assert loaded.returncode == 0, loaded.stderr
    fhir.transaction(HOSTILE_CHART)
    service = ServedService(
        tmp_path_factory.mktemp("preview-service"), FHIR_SERVER_ALLOWLIST=json.dumps([fhir.base_url])
    )
    yield fhir, service
    service.stop()
    fhir.stop()


@pytest.fixture()
def page(browser, stack):
    _, service = stack
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{service.base_url}/preview")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def feedback_rows(service: ServedService, card_uuid: str) -> list[dict]:
    engine = sqlalchemy.create_engine(service.feedback_store)
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(sqlalchemy.text("SELECT * FROM card_feedback WHERE card_uuid = :u"), {"u": card_uuid})
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]
    finally:
        engine.dispose()


def expect(locator):
    """Playwright's auto-waiting assertions (the page's CSP forbids evaluating strings)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def show_cards(page, example: str) -> None:
    page.select_option("#example", example)
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("card(s) from")


def test_cards_for_an_example_patient_are_shown_as_an_ehr_shows_them(page):
    show_cards(page, SERTRALINE)
    assert page.input_value("#hook") == "order-sign"  # the example's own hook is preselected
    cards = page.locator(".card")
    assert cards.count() == 1
    card = cards.first
    assert "indicator-warning" in card.get_attribute("class")
    assert "sertraline 50 MG Oral Tablet (SSRI) can worsen restless legs" in card.locator("h2").inner_text()
    assert "sertraline 50 MG Oral Tablet" in card.locator(".detail strong").all_inner_texts()  # Markdown rendered
    assert card.locator(".detail li").count() >= 2
    card.locator("details.why summary").click()
    why = card.locator("details.why").inner_text()
    assert "Rule R3: RLS-worsening drug ordered" in why and "Condition/rls-1" in why
    page.screenshot(path=str(ARTIFACTS / "preview-order-sign-R3.png"), full_page=True)


def test_a_suggestion_click_shows_its_action_and_its_feedback_is_stored(page, stack):
    _, service = stack
    show_cards(page, SERTRALINE)
    card = page.locator(".card").first
    button = card.locator(".suggestions button").first
    suggestion_uuid = button.get_attribute("data-suggestion-uuid")
    button.click()
    expect(card.locator(".feedback-note")).to_contain_text("feedback sent")
    action = json.loads(card.locator("pre.action-view").inner_text())
    assert action == [
        {
            "type": "delete",
            "description": "Remove the draft order for sertraline 50 MG Oral Tablet",
            "resourceId": "MedicationRequest/draft-sertraline",
        }
    ]
    (row,) = feedback_rows(service, card.get_attribute("data-card-uuid"))
    assert row["outcome"] == "accepted" and row["rule_id"] == "R3"
    assert json.loads(row["accepted_suggestions"]) == [suggestion_uuid]
    page.screenshot(path=str(ARTIFACTS / "preview-suggestion-accepted.png"), full_page=True)


def test_dismissing_sends_an_override_with_its_reason(page, stack):
    _, service = stack
    show_cards(page, NO_FERRITIN)
    card = page.locator(".card").first
    card.locator("button.dismiss").click()
    card.locator("select.override-reason").select_option(index=1)
    card.locator("button.confirm").click()
    expect(card.locator(".feedback-note")).to_contain_text("Dismissed: feedback sent")
    (row,) = feedback_rows(service, card.get_attribute("data-card-uuid"))
    assert row["outcome"] == "overridden" and row["rule_id"] == "R1"
    assert row["reason_system"] == "urn:legmove-cds:override-reason" and row["reason_code"]


def test_an_order_for_a_medication_searched_by_name(page):
    page.select_option("#example", NO_FERRITIN)  # RLS on the problem list
    page.select_option("#hook", "order-select")
    page.check("input[name=draft][value=medication]")
    page.fill("#medication-search", "sertraline 50 oral tablet")
    page.wait_for_selector("#medication option[value='312941']", state="attached")
    page.select_option("#medication", "312941")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("card(s) from")
    summaries = page.locator(".card h2").all_inner_texts()
    assert any("sertraline 50 MG Oral Tablet" in s and "worsen restless legs" in s for s in summaries), summaries


def test_a_typed_fhir_server_goes_through_the_services_allowlist_and_token_rules(page, stack):
    fhir, _ = stack
    patient = "r1-fires-no-ferritin"
    page.check("input[name=source][value=fhir]")
    page.select_option("#hook", "patient-view")
    page.fill("#fhir-server", fhir.base_url)
    page.fill("#patient-id", patient)
    page.fill("#fhir-token", FHIR_TOKEN)
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("card(s) from")
    assert any("no ferritin" in s for s in page.locator(".card h2").all_inner_texts())
    # a server the deployment does not list: the service refuses to query it, and the page says why
    page.fill("#fhir-server", f"http://127.0.0.1:{_free_port()}/fhir")
    page.click("#run")
    page.wait_for_selector("#status.error")
    assert "412" in page.inner_text("#status") and "allowlist" in page.inner_text("#status")
    assert page.locator(".card").count() == 0


def test_the_preview_is_off_in_production_and_with_client_auth():
    from cds_service.app import create_app

    # OPEN_MODE and the allowlist: what a production start-up asks for when client auth is off
    open_production = {"OPEN_MODE": True, "FHIR_SERVER_ALLOWLIST": ["https://ehr.example.org/fhir"]}
    production = create_app("production", LOG_LEVEL="ERROR", FEEDBACK_STORE=None, **open_production)
    assert production.test_client().get("/preview").status_code == 404
    enabled = create_app("production", LOG_LEVEL="ERROR", FEEDBACK_STORE=None, PREVIEW_ENABLED=True, **open_production)
    assert enabled.test_client().get("/preview").status_code == 200
    signed = create_app(
        "test",
        LOG_LEVEL="ERROR",
        FEEDBACK_STORE=None,
        CLIENT_AUTH=True,
        PUBLIC_BASE_URL="https://cds.example.org",
        TRUSTED_ISSUERS={"https://ehr.example.org": {"jwks": {"keys": []}}},
    )
    assert signed.test_client().get("/preview").status_code == 404


def test_html_in_chart_data_is_shown_as_text_never_run(page, stack):
    fhir, _ = stack
    page.check("input[name=source][value=fhir]")
    page.select_option("#hook", "patient-view")
    page.fill("#fhir-server", fhir.base_url)
    page.fill("#patient-id", "hostile-1")
    page.fill("#fhir-token", FHIR_TOKEN)
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("card(s) from")
    card = page.locator(".card").first
    assert "<img src=x" in card.locator(".detail").inner_text(), "the payload is quoted in the card, as text"
    assert page.locator(".card img, .card script").count() == 0
    assert page.title() != "pwned"
    page.screenshot(path=str(ARTIFACTS / "preview-chart-text-with-html.png"), full_page=True)


def test_an_order_for_a_procedure(page):
    page.select_option("#example", "R6/fires-psg-for-cramps")  # simple leg cramps on the problem list
    page.select_option("#hook", "order-select")
    page.check("input[name=draft][value=procedure]")
    page.select_option("#procedure", "psg")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("card(s) from")
    rules = [why.split("rule ")[-1] for why in page.locator("details.why summary").all_inner_texts()]
    assert "R6" in rules, rules
