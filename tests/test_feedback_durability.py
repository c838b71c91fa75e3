"""Feedback durability against real processes and real databases (a SQLite file, the local
PostgreSQL): a 200 means committed, so kill -9 of every service process loses no acknowledged
item; two workers racing on a freshly created PostgreSQL database lose no issued card; the
schema comes from the Alembic migrations and a schema this build does not know stops start-up."""

import os
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, func, select

from cds_service.app import create_app
from cds_service.store import migrations
from cds_service.store.feedback import card_feedback, issued_card, unmatched_feedback
from conftest import ROOT, load_fixture
from serving import Service

R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
pytestmark = pytest.mark.slow  # service processes killed with -9, PostgreSQL databases created
SERVICE = "legmove-patient-view"
ACKNOWLEDGED = 1000


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    return request.getfixturevalue("fresh_postgres")


def rows(url: str, table) -> list:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(table)).mappings())
    finally:
        engine.dispose()


def issue_cards(base: str, count: int) -> list[str]:
    def one(_):
        response = requests.post(f"{base}/cds-services/{SERVICE}", json=R1["request"], timeout=30)
        assert response.status_code == 200, response.text
        return [card["uuid"] for card in response.json()["cards"]]

    with ThreadPoolExecutor(8) as pool:
        return [uuid_ for batch in pool.map(one, range(count)) for uuid_ in batch]


def test_a_200_means_committed_even_when_every_process_is_killed(tmp_path, store_url):
    """1,000+ feedback items acknowledged by 2 workers (one in ten on a card the store never issued,
    which is kept too), then kill -9 of the master and both workers mid-stream: every acknowledged
    item is in the database."""
    service = Service(tmp_path, workers=2, LEGMOVE_FEEDBACK_STORE=store_url)
    try:
        cards = issue_cards(service.base, 60)
        start = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
        items = []
        for n in range(3000):
            card = cards[n % len(cards)] if n % 10 else str(uuid.uuid4())
            stamp = (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
            items.append({"card": card, "outcome": "overridden", "outcomeTimestamp": stamp})
        acknowledged, lock, enough = [], threading.Lock(), threading.Event()

        def send(batch):
            if enough.is_set():
                return
            try:
                response = requests.post(
                    f"{service.base}/cds-services/{SERVICE}/feedback", json={"feedback": batch}, timeout=30
                )
            except requests.RequestException:
                return  # the kill cut it: not acknowledged
            if response.status_code == 200:
                with lock:
                    acknowledged.extend(batch)
                    if len(acknowledged) >= ACKNOWLEDGED:
                        enough.set()

        batches = [items[i : i + 5] for i in range(0, len(items), 5)]
        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(send, batch) for batch in batches]
            enough.wait(timeout=300)
            service.kill()  # while other batches are still in flight
            for job in jobs:
                job.result()
    finally:
        service.stop()
    assert len(acknowledged) >= ACKNOWLEDGED
    stored = {
        (
            r["card_uuid"],
            r["outcome_timestamp"].astimezone(UTC)
            if r["outcome_timestamp"].tzinfo
            else r["outcome_timestamp"].replace(tzinfo=UTC),
        )
        for r in rows(store_url, card_feedback) + rows(store_url, unmatched_feedback)
    }
    lost = [
        i
        for i in acknowledged
        if (i["card"], datetime.fromisoformat(i["outcomeTimestamp"].replace("Z", "+00:00"))) not in stored
    ]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged items lost"


def test_two_workers_racing_on_a_fresh_postgres_database_lose_nothing(tmp_path, fresh_postgres):
    """The first calls of two workers on a new database raced on CREATE TABLE; the loser's cards
    were never recorded and their feedback was dropped as 'unknown card'. Now the master migrates
    before forking: every issued card is recorded, every feedback item finds its card."""
    service = Service(tmp_path, workers=2, LEGMOVE_FEEDBACK_STORE=fresh_postgres)
    try:
        cards = issue_cards(service.base, 200)
        items = [{"card": c, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"} for c in cards]
        for i in range(0, len(items), 50):
            response = requests.post(
                f"{service.base}/cds-services/{SERVICE}/feedback", json={"feedback": items[i : i + 50]}, timeout=30
            )
            assert response.status_code == 200
    finally:
        service.stop()
    assert len(rows(fresh_postgres, issued_card)) == len(cards) == 200
    assert len(rows(fresh_postgres, card_feedback)) == 200 and rows(fresh_postgres, unmatched_feedback) == []
    assert "could not record issued cards" not in service.log_path.read_text()


def test_concurrent_upgrades_of_a_fresh_postgres_database_both_succeed(fresh_postgres):
    """Two deployments (or a deployment step and a master) upgrading at once: an advisory lock
    lets one migrate; the other finds the schema current."""
    env_url = {"LEGMOVE_FEEDBACK_STORE": fresh_postgres, "LEGMOVE_CONFIG": "production"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cds_service.store.migrations", "upgrade"],
            env={**os.environ, **env_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert migrations.current(fresh_postgres) == migrations.head()


def test_the_baseline_stamps_a_database_made_by_create_all(tmp_path):
    """A store made by the build before migrations (metadata.create_all of two tables) keeps its
    rows: the baseline creates nothing, later revisions add what is new."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    old = MetaData()
    Table(
        "issued_card",
        old,
        Column("card_uuid", String(36), primary_key=True),
        Column("rule_id", String(32)),
        Column("service_id", String(64)),
        Column("hook", String(32)),
        Column("suggestion_uuids", Text),
        Column("issued_at", DateTime(timezone=True)),
    )
    Table(
        "card_feedback",
        old,
        Column("card_uuid", String(36)),
        Column("rule_id", String(32)),
        Column("outcome", String(16)),
        Column("accepted_suggestions", Text),
        Column("reason_system", String(255)),
        Column("reason_code", String(64)),
        Column("user_comment", Text),
        Column("outcome_timestamp", DateTime(timezone=True)),
        Column("received_at", DateTime(timezone=True)),
    )
    engine = sqlalchemy.create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            old.tables["issued_card"].insert(),
            {
                "card_uuid": "c-1",
                "rule_id": "R3",
                "service_id": SERVICE,
                "hook": "patient-view",
                "suggestion_uuids": "[]",
                "issued_at": datetime.now(UTC),
            },
        )
    engine.dispose()
    assert migrations.current(url) is None
    assert migrations.upgrade(url) == migrations.head()
    assert [r["card_uuid"] for r in rows(url, issued_card)] == ["c-1"] and rows(url, unmatched_feedback) == []


def test_a_schema_this_build_does_not_know_stops_start_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'future.sqlite3'}"
    migrations.upgrade(url)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(migrations.SchemaMismatch, match="9999"):
        create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=url)
    result = subprocess.run(
        [sys.executable, "-m", "cds_service.cli.prestart"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LEGMOVE_CONFIG": "test", "LEGMOVE_FEEDBACK_STORE": url},
    )
    assert result.returncode == 1 and "does not know" in result.stderr


def test_production_does_not_migrate_on_the_request_path_and_refuses_an_old_schema(tmp_path):
    """Production never changes the schema inside the app: behind means refuse, with the command to run."""
    url = f"sqlite:///{tmp_path / 'behind.sqlite3'}"
    from alembic import command

    command.upgrade(migrations._config(url), "0001")
    with pytest.raises(migrations.SchemaMismatch, match="legmove-cds db upgrade"):
        create_app("production", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=url, OPEN_MODE=True, FHIR_SERVER_ALLOWLIST=["*"])
    assert migrations.current(url) == "0001"
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        assert "unmatched_feedback" not in sqlalchemy.inspect(conn).get_table_names()
        assert conn.execute(select(func.count()).select_from(issued_card)).scalar() == 0
    engine.dispose()


def test_the_db_upgrade_command_migrates_the_configured_store(tmp_path):
    """`legmove-cds db upgrade` reads the same settings as the app (LEGMOVE_CONFIG, LEGMOVE_FEEDBACK_STORE)."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    env = {**os.environ, "LEGMOVE_CONFIG": "production", "LEGMOVE_FEEDBACK_STORE": url}
    cli = str(Path(sys.executable).parent / "legmove-cds")
    result = subprocess.run([cli, "db", "upgrade"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert f"revision: {migrations.head()}" in result.stdout and migrations.current(url) == migrations.head()
    shown = subprocess.run([cli, "db", "current"], capture_output=True, text=True, timeout=120, env=env)
    assert migrations.head() in shown.stdout
