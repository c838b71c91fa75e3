"""Card feedback (checklist 10) against real databases: a SQLite file and the local PostgreSQL."""

import itertools
import json
import uuid

import pytest

from cds_service.app import create_app
from conftest import ROOT, load_fixture, patient_variant

R3 = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")


@pytest.fixture(params=["sqlite", "postgresql"])
def feedback_app(request, tmp_path):
    url = (
        f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    app = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=url, FEEDBACK_STORE_COMMENTS=False)
    yield app
    app.extensions["legmove_ledger"].close()


_patients = itertools.count(9000)


def issue_card(client, service="legmove-order-sign") -> dict:
    """A new patient each time: feedback on one card keeps it away for that patient (governance)."""
    response = client.post(f"/cds-services/{service}", json=patient_variant(R3["request"], next(_patients))[0])
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    return card


def send(client, *items, service="legmove-order-sign"):
    return client.post(f"/cds-services/{service}/feedback", json={"feedback": list(items)})


def test_accepted_and_overridden_feedback_is_stored_with_the_rule(feedback_app):
    client = feedback_app.test_client()
    card = issue_card(client)
    suggestion = card["suggestions"][0]["uuid"]
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion}],
        "outcomeTimestamp": "2026-11-22T10:05:31.52z",
    }
    response = send(client, accepted)
    assert response.status_code == 200 and response.get_data() == b""
    overridden = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-11-22T10:06:00Z",
        "overrideReason": {
            "reason": {"system": "urn:legmove-cds:override-reason", "code": "benefit-outweighs-risk"},
            "userComment": "Patient Jane Doe prefers it",
        },
    }
    assert send(client, overridden).status_code == 200
    rows = feedback_app.extensions["legmove_ledger"].feedback_for(card["uuid"])
    assert {(r["rule_id"], r["outcome"]) for r in rows} == {("R3", "accepted"), ("R3", "overridden")}
    by_outcome = {r["outcome"]: r for r in rows}
    assert json.loads(by_outcome["accepted"]["accepted_suggestions"]) == [suggestion]
    assert by_outcome["overridden"]["reason_code"] == "benefit-outweighs-risk"
    assert by_outcome["overridden"]["user_comment"] is None  # free text kept only when configured


def test_repeated_reports_are_stored_once_and_unknown_cards_are_kept_apart(feedback_app, caplog):
    """Feedback on a card uuid the store does not know is answered 200 and kept in its own table
    (it was dropped before), once per report like any other."""
    client = feedback_app.test_client()
    card = issue_card(client)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}
    stranger = dict(item, card=str(uuid.uuid4()))
    caplog.set_level("INFO", logger="cds_service.web.api")
    assert send(client, item, item, stranger).status_code == 200
    assert send(client, item, stranger).status_code == 200
    ledger = feedback_app.extensions["legmove_ledger"]
    assert len(ledger.feedback_for(card["uuid"])) == 1
    (kept,) = ledger.unmatched_for(stranger["card"])
    assert (kept["service_id"], kept["outcome"]) == ("legmove-order-sign", "overridden")  # the endpoint called
    counts = [r for r in caplog.records if getattr(r, "event", None) == "feedback"]
    assert (counts[0].stored, counts[0].repeated, counts[0].unknown_card) == (1, 1, 1)


def test_a_card_uuid_from_another_service_is_unknown_there(feedback_app):
    client = feedback_app.test_client()
    card = issue_card(client)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}
    assert send(client, item, service="legmove-patient-view").status_code == 200
    assert feedback_app.extensions["legmove_ledger"].feedback_for(card["uuid"]) == []


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "feedback"),
        ({"feedback": []}, "at least one item"),
        ({"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": "2026-11-22T10:06:00Z"}]}, "outcome"),
        (
            {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-11-22T10:06:00Z"}]},
            "acceptedSuggestions",
        ),
        (
            {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00"}]},
            "time zone",
        ),
        ({"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]}, "RFC 3339"),
        ({"feedback": [{"card": 5, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}]}, "card"),
        (
            {
                "feedback": [
                    {
                        "card": "x",
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-22T10:06:00Z",
                        "overrideReason": {"reason": "no"},
                    }
                ]
            },
            "Coding",
        ),
    ],
)
def test_malformed_feedback_is_400(client, body, message):
    response = client.post("/cds-services/legmove-order-sign/feedback", json=body)
    assert response.status_code == 400 and message in response.get_json()["issue"][0]["diagnostics"]


def test_feedback_for_an_unknown_service_is_404(client):
    assert client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404


def test_database_down_keeps_advice_flowing_and_feedback_says_retry():
    app = create_app(
        "test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE="postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=1"
    )
    client = app.test_client()
    card = issue_card(client)  # the hook call still answers with its card
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}
    response = send(client, item)
    app.extensions["legmove_ledger"].close()
    assert response.status_code == 503 and response.get_json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "issued_at, sent_to",
    [
        ("legmove-order-sign", "legmove-order-sign"),  # the id that issued the card
        ("legmove-order-sign", "legmove-orders"),  # the deprecated alias, for a card of an order service
        ("legmove-orders", "legmove-order-sign"),  # a card issued through the alias belongs to the per-hook id
        ("legmove-orders", "legmove-orders"),
    ],
)
def test_feedback_is_accepted_at_the_issuing_id_and_at_the_alias(feedback_app, issued_at, sent_to):
    client = feedback_app.test_client()
    card = issue_card(client, service=issued_at)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}
    response = send(client, item, service=sent_to)
    assert response.status_code == 200 and response.get_data() == b""
    assert "Content-Type" not in response.headers, "an empty 200 is no text/html page"
    assert [r["rule_id"] for r in feedback_app.extensions["legmove_ledger"].feedback_for(card["uuid"])] == ["R3"]


def test_feedback_at_the_other_order_id_is_unknown_there(feedback_app):
    client = feedback_app.test_client()
    card = issue_card(client, service="legmove-order-sign")
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}
    assert send(client, item, service="legmove-order-select").status_code == 200
    assert feedback_app.extensions["legmove_ledger"].feedback_for(card["uuid"]) == []
