"""The governance report against a history seeded through the real hook and feedback endpoints."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cds_service.store import governance_report
from cds_service.store.governance import card_event, hook_call, prune_rows
from conftest import ROOT, load_fixture
from test_governance import R2, R3, R8, call, make_app, new_patient, rules_of

R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")


def answer(client, card: dict, outcome: str, service: str, reason: str | None = None) -> None:
    item = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": datetime.now(UTC).isoformat()}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    elif reason:
        item["overrideReason"] = {"reason": {"system": "urn:legmove-cds:override-reason", "code": reason}}
    assert client.post(f"/cds-services/{service}/feedback", json={"feedback": [item]}).status_code == 200


@pytest.fixture()
def seeded(tmp_path):
    """Five patient-views and one order-sign today, plus one patient-view 400 days ago."""
    url = f"sqlite:///{tmp_path / 'report.sqlite3'}"
    app = make_app(url, RULE_MODES={"R8": "silent"})
    client = app.test_client()
    view = "legmove-patient-view"
    gov = app.extensions["legmove_governance"]
    long_ago = datetime.now(UTC) - timedelta(days=400)
    gov.clock = lambda: long_ago
    assert rules_of(call(client, new_patient(R2), view)) == ["R2"]
    gov.clock = lambda: datetime.now(UTC)
    a, b = new_patient(R2), new_patient(R2)
    (card_a,) = call(client, a, view)
    (card_b,) = call(client, b, view)
    (card_c,) = call(client, new_patient(R1), view)
    assert rules_of(call(client, new_patient(R8), view)) == ["R11", "R13"]  # R8 silent
    (card_e,) = call(client, new_patient(R3), "legmove-orders")
    answer(client, card_a, "overridden", view, card_a["overrideReasons"][0]["code"])
    answer(client, card_b, "accepted", view)
    answer(client, card_c, "overridden", view)
    answer(client, card_e, "overridden", "legmove-orders", "benefit-outweighs-risk")
    assert call(client, a, view) == []  # suppressed
    yield app, url, card_a["overrideReasons"][0]["code"], a["context"]["patientId"]
    app.extensions["legmove_ledger"].close()


def test_report_numbers_match_the_seeded_history(seeded):
    app, _, reason_a, _ = seeded
    engine = app.extensions["legmove_ledger"].engine()
    since = date.today() - timedelta(days=30)
    rows = {(r.rule, r.version): r for r in governance_report.build(engine, since=since)}
    assert set(rows) == {("R1", 1), ("R2", 1), ("R3", 1), ("R8", 1), ("R11", 1), ("R13", 1)}
    r2 = rows[("R2", 1)]
    assert (r2.patient_views, r2.cards_issued, r2.would_have_fired, r2.suppressed, r2.accepted, r2.overridden) == (
        5,
        2,
        0,
        1,
        1,
        1,
    )
    assert r2.acceptance_rate == 0.5 and r2.cards_per_100_patient_views == 40.0
    assert r2.override_reasons == {reason_a: 1}
    assert (rows[("R1", 1)].overridden, rows[("R1", 1)].acceptance_rate) == (1, 0.0)
    assert rows[("R1", 1)].override_reasons == {"(no reason given)": 1}
    assert (rows[("R8", 1)].would_have_fired, rows[("R8", 1)].cards_issued) == (1, 0)
    assert rows[("R3", 1)].override_reasons == {"benefit-outweighs-risk": 1}
    assert rows[("R11", 1)].acceptance_rate is None and rows[("R11", 1)].cards_per_100_patient_views == 20.0
    # without --since the call of 400 days ago counts too; --until before today leaves only it
    everything = {(r.rule, r.version): r for r in governance_report.build(engine)}
    assert (everything[("R2", 1)].cards_issued, everything[("R2", 1)].patient_views) == (3, 6)
    old = governance_report.build(engine, until=date.today() - timedelta(days=300))
    assert [(r.rule, r.cards_issued, r.patient_views) for r in old] == [("R2", 1, 1)]


def test_retention_prunes_old_call_and_card_rows(seeded):
    app, *_ = seeded
    engine = app.extensions["legmove_ledger"].engine()
    removed = prune_rows(engine, datetime.now(UTC), 365)
    assert (removed["hook_call"], removed["card_event"]) == (1, 1)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(hook_call)).scalar_one() == 6
        oldest = conn.execute(select(func.min(card_event.c.created_at))).scalar_one()
    assert oldest.replace(tzinfo=UTC) > datetime.now(UTC) - timedelta(days=365)


def test_the_report_command_prints_writes_csv_and_png_without_patient_data(seeded, tmp_path):
    app, url, _, patient_id = seeded
    env = dict(os.environ, LEGMOVE_CONFIG="test", LEGMOVE_FEEDBACK_STORE=url, LEGMOVE_LOG_LEVEL="WARNING")
    cli = str(Path(sys.executable).parent / "legmove-cds")
    since = (date.today() - timedelta(days=30)).isoformat()
    result = subprocess.run(
        [cli, "report", "--since", since, "--csv", str(tmp_path / "r.csv"), "--png", str(tmp_path / "r.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "patient-views: 5" in result.stdout
    r2_line = next(line for line in result.stdout.splitlines() if line.startswith("R2 "))
    assert r2_line.split()[:9] == ["R2", "1", "5", "2", "0", "1", "1", "1", "50%"]
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as handle:
        table = {row["rule"]: row for row in csv.DictReader(handle)}
    assert table["R2"]["cards_per_100_patient_views"] == "40.0" and table["R8"]["would_have_fired"] == "1"
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with app.extensions["legmove_ledger"].engine().connect() as conn:
        hashes = [h for (h,) in conn.execute(select(hook_call.c.patient_hash))]
    produced = result.stdout + (tmp_path / "r.csv").read_text(encoding="utf-8")
    assert patient_id not in produced and not any(h in produced for h in hashes)
    bad = subprocess.run([cli, "report", "--since", "last week"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "must be a date" in bad.stderr


@pytest.mark.parametrize(
    "store, message",
    [
        ("sqlite:///{tmp}/never-migrated.sqlite3", "db upgrade"),
        ("postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=1", "cannot be reached"),
    ],
)
def test_the_report_on_a_store_without_schema_or_unreachable_says_so(tmp_path, store, message):
    env = dict(os.environ, LEGMOVE_CONFIG="test", LEGMOVE_FEEDBACK_STORE=store.format(tmp=tmp_path))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "legmove-cds"), "report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_the_prune_command_uses_retention_days(seeded):
    _, url, *_ = seeded
    env = dict(os.environ, LEGMOVE_CONFIG="test", LEGMOVE_FEEDBACK_STORE=url, LEGMOVE_RETENTION_DAYS="365")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "legmove-cds"), "prune"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "hook_call 1" in result.stdout and "card_event 1" in result.stdout


def test_cards_and_feedback_keep_the_version_they_were_made_with(tmp_path, monkeypatch):
    """R3 at version 1 overridden, then the rule bumped to 2: the report keeps the two apart, and
    the new version's card is new advice (shown again to the same patient)."""
    url = f"sqlite:///{tmp_path / 'versions.sqlite3'}"
    old = make_app(url)
    client = old.test_client()
    body = new_patient(R3)
    (v1,) = call(client, body, "legmove-orders")
    answer(client, v1, "overridden", "legmove-orders", "benefit-outweighs-risk")
    assert call(client, body, "legmove-orders") == []
    old.extensions["legmove_ledger"].close()
    from cds_service.authoring.rulebook import REGISTRY

    monkeypatch.setattr(REGISTRY["R3"], "version", 2)
    new = make_app(url)
    client = new.test_client()
    (v2,) = call(client, body, "legmove-orders")
    assert v2["extension"]["org.legmove-cds.explanation"]["ruleVersion"] == 2
    answer(client, v2, "accepted", "legmove-orders")
    rows = {(r.rule, r.version): r for r in governance_report.build(new.extensions["legmove_ledger"].engine())}
    assert (
        rows[("R3", 1)].cards_issued,
        rows[("R3", 1)].suppressed,
        rows[("R3", 1)].overridden,
        rows[("R3", 1)].accepted,
    ) == (1, 1, 1, 0)
    assert (rows[("R3", 2)].cards_issued, rows[("R3", 2)].overridden, rows[("R3", 2)].accepted) == (1, 0, 1)
    new.extensions["legmove_ledger"].close()
