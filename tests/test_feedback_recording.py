"""Recording issued cards: one connection and one write transaction per hook call (the call log,
its card events and the issued_card rows together), and every card a client was shown can take
feedback: when the call log cannot be written, and after kill -9 of the whole service."""

import pytest
import requests
import sqlalchemy
from sqlalchemy import event, func, select, text

from cds_service.app import create_app
from cds_service.store.feedback import card_feedback, issued_card
from cds_service.store.governance import card_event
from conftest import ROOT, load_fixture, patient_variant
from serving import Service

R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
SERVICE = "legmove-patient-view"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('recording') / 'feedback.sqlite3'}"
    app = create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=url)
    yield app, url
    app.extensions["legmove_ledger"].close()


def _count(url: str, table, where=None) -> int:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(table)
            return conn.execute(query if where is None else query.where(where)).scalar_one()
    finally:
        engine.dispose()


def _feedback(client, cards: list[str]) -> dict:
    items = [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z"} for card in cards]
    response = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": items})
    assert response.status_code == 200
    return response


def test_one_connection_and_one_write_per_call(store):
    app, url = store
    engine = app.extensions["legmove_ledger"].engine()
    checkouts, writes = [], []

    def on_checkout(*_):
        checkouts.append(1)

    def on_execute(conn, cursor, statement, *_):
        writes.append(statement.split()[0].upper())

    client = app.test_client()
    client.post(f"/cds-services/{SERVICE}", json=R1["request"])  # the first call opens the pool
    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        request, _ = patient_variant(R1["request"], 9001)
        response = client.post(f"/cds-services/{SERVICE}", json=request)
    finally:
        event.remove(engine.pool, "checkout", on_checkout)
        event.remove(engine, "before_cursor_execute", on_execute)
    cards = [card["uuid"] for card in response.get_json()["cards"]]
    assert cards
    assert len(checkouts) == 1, checkouts
    assert writes.count("INSERT") == 3 and writes.count("SELECT") == 1, writes  # call, events, issued; suppression
    assert _count(url, issued_card, issued_card.c.card_uuid.in_(cards)) == len(cards)
    assert _count(url, card_event, card_event.c.card_uuid.in_(cards)) == len(cards)


def test_cards_are_recorded_when_the_call_log_cannot_be_written(store):
    app, url = store
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE hook_call RENAME TO hook_call_away"))
    try:
        request, _ = patient_variant(R1["request"], 9002)
        response = app.test_client().post(f"/cds-services/{SERVICE}", json=request)
        assert response.status_code == 200
        cards = [card["uuid"] for card in response.get_json()["cards"]]
        assert cards
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE hook_call_away RENAME TO hook_call"))
        engine.dispose()
    assert _count(url, issued_card, issued_card.c.card_uuid.in_(cards)) == len(cards)
    assert _count(url, card_event, card_event.c.card_uuid.in_(cards)) == 0  # that transaction rolled back whole
    _feedback(app.test_client(), cards)
    assert _count(url, card_feedback, card_feedback.c.card_uuid.in_(cards)) == len(cards)  # matched, not unknown


def test_every_card_answered_before_a_kill_takes_feedback(tmp_path):
    """kill -9 of the master and its workers right after the last answer: a fresh app on the same
    store matches feedback on every card it answered to its issuing rule (none 'unknown')."""
    url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    service = Service(tmp_path, workers=2, LEGMOVE_FEEDBACK_STORE=url)
    cards: list[str] = []
    try:
        session = requests.Session()
        for n in range(40):
            request, _ = patient_variant(R1["request"], 9100 + n)
            response = session.post(f"{service.base}/cds-services/{SERVICE}", json=request, timeout=30)
            assert response.status_code == 200
            cards += [card["uuid"] for card in response.json()["cards"]]
        service.kill()
    finally:
        service.stop()
    assert len(cards) >= 40
    app = create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=url)
    try:
        client = app.test_client()
        _feedback(client, cards)
        assert _count(url, issued_card, issued_card.c.card_uuid.in_(cards)) == len(cards)
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            unknown = conn.execute(text("SELECT count(*) FROM unmatched_feedback")).scalar_one()
            stored = conn.execute(text("SELECT count(*) FROM card_feedback")).scalar_one()
        engine.dispose()
        assert unknown == 0 and stored == len(cards)
    finally:
        app.extensions["legmove_ledger"].close()
