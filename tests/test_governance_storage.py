"""Governance storage: the Alembic migrations (from an empty database and from the previous
revision, with its data) and suppression shared by two real service processes on one database."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
import sqlalchemy
from alembic import command
from sqlalchemy import insert, inspect, select

from cds_service.app import create_app
from cds_service.store import migrations
from cds_service.store.feedback import card_event, card_feedback, issued_card, patient_feedback
from cds_service.store.governance import DEVELOPMENT_KEY, patient_hash
from conftest import EXTENSION
from serving import Service
from test_governance import R3, R8, new_patient

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")  # the service's log file handles


def table_names(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store(request, tmp_path):
    return f"sqlite:///{tmp_path / 'empty.sqlite3'}" if request.param == "sqlite" else _fresh_postgres()


def test_migrations_from_an_empty_database(empty_store):
    url = empty_store
    assert migrations.current(url) is None
    assert migrations.upgrade(url) == migrations.head() == "0004"
    tables = {"issued_card", "card_feedback", "unmatched_feedback", "hook_call", "card_event", "patient_feedback"}
    assert tables <= table_names(url)
    migrations.require_current(url)


def test_migrations_from_the_previous_revision_keep_its_data(empty_store):
    url = empty_store
    command.upgrade(migrations._config(url), "0002")
    assert migrations.current(url) == "0002" and "hook_call" not in table_names(url)
    now = datetime.now(UTC)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(issued_card),
            {
                "card_uuid": "c-old",
                "rule_id": "R3",
                "service_id": "legmove-orders",
                "hook": "order-sign",
                "suggestion_uuids": "[]",
                "issued_at": now,
            },
        )
        conn.execute(
            insert(card_feedback),
            {
                "card_uuid": "c-old",
                "rule_id": "R3",
                "outcome": "overridden",
                "accepted_suggestions": "[]",
                "outcome_timestamp": now,
                "received_at": now,
            },
        )
    with pytest.raises(migrations.SchemaMismatch, match=migrations.head()):
        migrations.require_current(url)  # a build with governance refuses the old schema until upgraded
    assert migrations.upgrade(url) == migrations.head()
    with engine.connect() as conn:
        assert conn.execute(select(card_feedback.c.card_uuid)).scalars().all() == ["c-old"]
        assert conn.execute(select(issued_card.c.rule_id)).scalars().all() == ["R3"]
    engine.dispose()
    assert {"hook_call", "card_event"} <= table_names(url)


def test_feedback_stored_before_the_patient_feedback_revision_still_suppresses_after_it(empty_store):
    """A store at 0003 holds a card shown to a patient (its issued card_event and issued_card rows,
    as that build wrote them) and a clinician's override of it. After `migrations.upgrade` (0004
    backfills patient_feedback from card_feedback x card_event), the same call through the app
    finds the override: the card is still suppressed; another patient's card is not."""
    url = empty_store
    command.upgrade(migrations._config(url), "0003")
    body = new_patient(R3)
    offline = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None)  # the card, with its fingerprint
    (card,) = offline.test_client().post("/cds-services/legmove-orders", json=body).get_json()["cards"]
    explanation = card["extension"][EXTENSION]
    who = patient_hash(DEVELOPMENT_KEY.encode(), body["context"]["patientId"], body.get("fhirServer"))
    issued_at = datetime.now(UTC) - timedelta(days=2)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(card_event),
            {
                "call_id": 1,
                "created_at": issued_at,
                "kind": "issued",
                "card_uuid": card["uuid"],
                "rule_id": explanation["rule"],
                "rule_version": explanation["ruleVersion"],
                "knowledge_version": explanation["knowledgeVersion"],
                "service_id": "legmove-orders",
                "hook": "order-sign",
                "indicator": card["indicator"],
                "patient_hash": who,
                "evidence_fingerprint": explanation["evidenceFingerprint"],
                "draft_refs": json.dumps(["MedicationRequest/draft-sertraline"]),
                "reason": None,
            },
        )
        conn.execute(
            insert(issued_card),
            {
                "card_uuid": card["uuid"],
                "rule_id": "R3",
                "service_id": "legmove-orders",
                "hook": "order-sign",
                "suggestion_uuids": "[]",
                "issued_at": issued_at,
            },
        )
        conn.execute(
            insert(card_feedback),
            {
                "card_uuid": card["uuid"],
                "rule_id": "R3",
                "outcome": "overridden",
                "accepted_suggestions": "[]",
                "outcome_timestamp": issued_at,
                "received_at": datetime.now(UTC) - timedelta(days=1),
            },
        )
    assert migrations.upgrade(url) == migrations.head()  # the project's runner, as `legmove-cds db upgrade`
    with engine.connect() as conn:
        (row,) = conn.execute(select(patient_feedback)).mappings().all()
    engine.dispose()
    assert (row["patient_hash"], row["card_uuid"], row["outcome"]) == (who, card["uuid"], "overridden")
    app = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=url)
    client = app.test_client()
    try:
        response = client.post("/cds-services/legmove-orders", json=body)
        assert response.status_code == 200 and response.get_json()["cards"] == []
        other = client.post("/cds-services/legmove-orders", json=new_patient(R3)).get_json()["cards"]
        assert [c["extension"][EXTENSION]["rule"] for c in other] == ["R3"]
    finally:
        app.extensions["legmove_ledger"].close()


_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
_created: list[str] = []


def _fresh_postgres() -> str:
    name = f"legmove_mig_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    _created.append(name)
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="module", autouse=True)
def _drop_fresh_databases():
    yield
    admin = sqlalchemy.create_engine(_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in _created:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


# ---- two processes, one database -------------------------------------------------------


def post(base: str, path: str, body: dict) -> requests.Response:
    return requests.post(f"{base}{path}", json=body, timeout=30)


def cards_at(service: Service, body: dict, sid: str) -> list[dict]:
    response = post(service.base, f"/cds-services/{sid}", body)
    assert response.status_code == 200, response.text[:300]
    return response.json()["cards"]


def override(service: Service, card: dict, sid: str) -> None:
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": datetime.now(UTC).isoformat()}
    assert post(service.base, f"/cds-services/{sid}/feedback", {"feedback": [item]}).status_code == 200


@pytest.fixture(params=["sqlite", "postgresql"])
def two_services(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}" if request.param == "sqlite" else _fresh_postgres()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Service(tmp_path / "a", LEGMOVE_FEEDBACK_STORE=url)
    try:
        second = Service(tmp_path / "b", LEGMOVE_FEEDBACK_STORE=url)
    except Exception:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


@pytest.mark.slow
def test_two_processes_on_one_database_share_suppressions(two_services):
    a, b = two_services
    body = new_patient(R3)
    (card,) = cards_at(a, body, "legmove-orders")
    override(b, card, "legmove-orders")  # the feedback reaches the other process
    assert cards_at(b, body, "legmove-orders") == []
    assert cards_at(a, body, "legmove-orders") == []
    changed = copy.deepcopy(body)
    changed["context"]["draftOrders"]["entry"][0]["resource"]["id"] += "-new"
    assert [c["extension"][EXTENSION]["rule"] for c in cards_at(b, changed, "legmove-orders")] == ["R3"]
    critical = new_patient(R8)
    (referral,) = cards_at(b, critical, "legmove-patient-view")
    override(a, referral, "legmove-patient-view")
    assert [c["indicator"] for c in cards_at(a, critical, "legmove-patient-view")] == ["critical"]
    assert [c["extension"][EXTENSION]["rule"] for c in cards_at(b, new_patient(R3), "legmove-orders")] == [
        "R3"
    ]  # another patient
