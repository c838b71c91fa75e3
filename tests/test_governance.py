"""Governance through the HTTP entry point on real databases (a SQLite file and the local
PostgreSQL): rule modes, versions on cards and discovery, the call log, suppression (expiry on an
injected clock, lifting on new evidence, critical cards), order-select -> order-sign de-duplication."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from importlib import metadata

import pytest
import sqlalchemy
from sqlalchemy import insert, select

from cds_service.app import create_app
from cds_service.authoring.rulebook import REGISTRY
from cds_service.knowledge.settings import SettingsError
from cds_service.store import governance
from cds_service.store.governance import (
    GovernanceConfigError,
    card_event,
    hook_call,
    knowledge_version,
    patient_hash,
    rule_modes,
)
from conftest import EXTENSION, ROOT, load_fixture, patient_variant

R3 = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
R2 = load_fixture(ROOT / "fhir_fixtures/R2/fires-low-ferritin-ugl.json")
R8 = load_fixture(ROOT / "fhir_fixtures/R8/fires-weakness-critical.json")
_patients = itertools.count(7000)


def new_patient(fixture: dict) -> dict:
    return patient_variant(fixture["request"], next(_patients))[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'governance.sqlite3'}"
    return request.getfixturevalue("postgres_url")


def make_app(url: str, caplog=None, **config):
    app = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=url, **config)
    if caplog is not None:  # create_app replaced the root handlers during this test
        logging.getLogger().addHandler(caplog.handler)
    return app


@pytest.fixture()
def sqlite_app(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'governance.sqlite3'}")
    yield app
    app.extensions["legmove_ledger"].close()


def call(client, body: dict, service: str) -> list[dict]:
    response = client.post(f"/cds-services/{service}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


def rules_of(cards: list[dict]) -> list[str]:
    return [card["extension"][EXTENSION]["rule"] for card in cards]


def feedback(client, card: dict, outcome: str, service: str) -> None:
    item = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": datetime.now(UTC).isoformat()}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    else:
        item["overrideReason"] = {
            "reason": {"system": "urn:legmove-cds:override-reason", "code": card["overrideReasons"][0]["code"]}
        }
    response = client.post(f"/cds-services/{service}/feedback", json={"feedback": [item]})
    assert response.status_code == 200


def events(app, **where) -> list[dict]:
    with app.extensions["legmove_ledger"].engine().connect() as conn:
        query = select(card_event).where(*[card_event.c[k] == v for k, v in where.items()]).order_by(card_event.c.id)
        return [dict(row) for row in conn.execute(query).mappings()]


def calls(app) -> list[dict]:
    with app.extensions["legmove_ledger"].engine().connect() as conn:
        return [dict(row) for row in conn.execute(select(hook_call).order_by(hook_call.c.id)).mappings()]


def move_clock(app, days: float) -> None:
    later = datetime.now(UTC) + timedelta(days=days)
    app.extensions["legmove_governance"].clock = lambda: later


# ---- modes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, shown, recorded", [("active", ["R3"], "issued"), ("silent", [], "silent"), ("off", [], None)]
)
def test_the_three_modes_on_a_fixture(tmp_path, caplog, mode, shown, recorded):
    app = make_app(f"sqlite:///{tmp_path / 'modes.sqlite3'}", caplog, RULE_MODES={"R3": mode})
    caplog.set_level("INFO", logger="cds_service.web.api")
    cards = call(app.test_client(), R3["request"], "legmove-orders")
    assert rules_of(cards) == shown
    rows = events(app, rule_id="R3")
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    if recorded is None:
        assert rows == [] and "R3" not in app.extensions["legmove"].specs
    else:
        (row,) = rows
        assert row["kind"] == recorded and row["rule_version"] == REGISTRY["R3"].version
        assert row["hook"] == "order-sign" and len(row["evidence_fingerprint"]) == 32
        expected_hash = patient_hash(governance.DEVELOPMENT_KEY.encode(), R3["request"]["context"]["patientId"], None)
        assert row["patient_hash"] == expected_hash and R3["request"]["context"]["patientId"] not in json.dumps(
            row, default=str
        )
    assert line.silent == (["R3"] if mode == "silent" else [])
    (logged,) = calls(app)
    assert (logged["cards_issued"], logged["silent"], logged["suppressed"]) == (len(shown), int(mode == "silent"), 0)
    app.extensions["legmove_ledger"].close()


def test_a_silent_rule_does_not_hide_the_cards_it_would_supersede(tmp_path):
    """Decision: a silent rule changes nothing clinicians see. R8 (critical referral) replaces the
    R11/R13 work-up cards when active; silent, it is recorded and the work-up cards are shown."""
    active = make_app(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    assert rules_of(call(active.test_client(), R8["request"], "legmove-patient-view")) == ["R8"]
    silent = make_app(f"sqlite:///{tmp_path / 's.sqlite3'}", RULE_MODES={"R8": "silent"})
    assert rules_of(call(silent.test_client(), R8["request"], "legmove-patient-view")) == ["R11", "R13"]
    assert [e["rule_id"] for e in events(silent, kind="silent")] == ["R8"]
    for app in (active, silent):
        app.extensions["legmove_ledger"].close()


def test_modes_merge_with_enabled_rules_and_off_by_default():
    import rules

    rules.load_all()
    assert REGISTRY["R9"].enabled_by_default is False
    assert rule_modes(REGISTRY, {})["R9"] == "off"
    assert rule_modes(REGISTRY, {"RULE_MODES": {"R9": "silent"}})["R9"] == "silent"
    narrowed = rule_modes(REGISTRY, {"ENABLED_RULES": ["R1"], "RULE_MODES": {"R3": "silent"}})
    assert (narrowed["R1"], narrowed["R2"], narrowed["R3"]) == ("active", "off", "silent")


@pytest.mark.parametrize(
    "modes, message",
    [
        ({"R3": "loud"}, "must be one of"),
        ({"R99": "silent"}, "not card rules"),
        ({"F-RLS": "off"}, "not card rules"),
        (["R3"], "must be an object"),
    ],
)
def test_bad_rule_modes_stop_start_up(modes, message):
    with pytest.raises(GovernanceConfigError, match=message):
        create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, RULE_MODES=modes)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        # wrong types are caught when the typed settings are built, ranges and outcomes by governance
        ({"suppress_overridden_days": "a month"}, SettingsError, "suppress_overridden_days must be a number"),
        ({"suppress_accepted_days": -1}, GovernanceConfigError, "suppress_accepted_days"),
        (
            {"suppress_days_by_rule": {"R3": {"overriden": 7}}},
            GovernanceConfigError,
            "only 'overridden' and 'accepted'",
        ),
        ({"suppress_days_by_rule": {"R3": {"overridden": True}}}, SettingsError, "suppress_days_by_rule.R3.overridden"),
        ({"suppress_days_by_rule": []}, SettingsError, "must be an object"),
    ],
)
def test_bad_suppression_windows_stop_start_up(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        make_app(f"sqlite:///{tmp_path / 'bad.sqlite3'}", KNOWLEDGE_OVERRIDES=overrides)


def test_production_refuses_to_start_without_a_patient_hash_key(tmp_path):
    settings = dict(
        LOG_LEVEL="CRITICAL",
        OPEN_MODE=True,
        FHIR_SERVER_ALLOWLIST=["*"],
        FEEDBACK_STORE_AUTO_UPGRADE=True,
        FEEDBACK_STORE=f"sqlite:///{tmp_path / 'prod.sqlite3'}",
    )
    with pytest.raises(GovernanceConfigError, match="PATIENT_HASH_KEY is not set"):
        create_app("production", **settings)
    with pytest.raises(GovernanceConfigError, match="too short"):
        create_app("production", PATIENT_HASH_KEY="secret", **settings)
    app = create_app("production", PATIENT_HASH_KEY="a-long-random-secret-for-this-site", **settings)
    assert app.extensions["legmove_governance"] is not None
    app.extensions["legmove_ledger"].close()


def test_development_key_is_announced(tmp_path, caplog):
    app = make_app(f"sqlite:///{tmp_path / 'dev.sqlite3'}", caplog)
    assert app.extensions["legmove_governance"] is not None
    caplog.set_level("WARNING", logger="cds_service.store.governance")
    governance.patient_key({"PATIENT_HASH_KEY": governance.DEVELOPMENT_KEY})
    assert any("public development key" in r.getMessage() for r in caplog.records)
    app.extensions["legmove_ledger"].close()


# ---- versions on cards and discovery ---------------------------------------------------


def test_cards_and_discovery_carry_versions(sqlite_app):
    client = sqlite_app.test_client()
    (card,) = call(client, R3["request"], "legmove-orders")
    explanation = card["extension"][EXTENSION]
    knowledge_version = sqlite_app.extensions["legmove"].knowledge_version
    assert explanation["ruleVersion"] == REGISTRY["R3"].version and explanation["knowledgeVersion"] == knowledge_version
    assert knowledge_version.startswith("kb-")
    for service in client.get("/cds-services").get_json()["services"]:
        assert service["extension"]["org.legmove-cds.versions"] == {
            "service": metadata.version("legmove-cds"),
            "knowledge": knowledge_version,
        }
    (row,) = events(sqlite_app, card_uuid=card["uuid"])
    assert (row["rule_version"], row["knowledge_version"]) == (explanation["ruleVersion"], knowledge_version)


def test_knowledge_overrides_change_the_knowledge_version(tmp_path):
    plain = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None)
    tuned = create_app(
        "test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, KNOWLEDGE_OVERRIDES={"iron_profile": "aasm2024"}
    )
    assert plain.extensions["legmove"].knowledge_version != tuned.extensions["legmove"].knowledge_version


def test_the_knowledge_version_follows_the_data_not_the_notes(tmp_path, monkeypatch):
    """Rewording a knowledge file's `_about` note is documentation: the version stays; a changed code moves it."""
    copy_dir = tmp_path / "knowledge"
    shutil.copytree(governance.KNOWLEDGE_DIR, copy_dir)
    monkeypatch.setattr(governance, "KNOWLEDGE_DIR", copy_dir)
    before = knowledge_version({})
    labs = copy_dir / "labs.json"
    data = json.loads(labs.read_text(encoding="utf-8"))
    data["_about"] = "Reworded note."
    labs.write_text(json.dumps(data), encoding="utf-8")
    assert knowledge_version({}) == before
    data["ferritin"]["loinc"] = [*data["ferritin"]["loinc"], "99999-9"]
    labs.write_text(json.dumps(data), encoding="utf-8")
    assert knowledge_version({}) != before


def test_evidence_fingerprint_ignores_request_identity_and_hook(sqlite_app):
    client = sqlite_app.test_client()
    first = call(client, R3["request"], "legmove-orders")[0]["extension"][EXTENSION]["evidenceFingerprint"]
    again = dict(copy.deepcopy(R3["request"]), hookInstance=str(uuid.uuid4()))
    second = call(client, again, "legmove-orders")[0]["extension"][EXTENSION]["evidenceFingerprint"]
    select_call = copy.deepcopy(R3["request"])
    select_call.update(hook="order-select")
    select_call["context"]["selections"] = ["MedicationRequest/draft-sertraline"]
    third = call(client, select_call, "legmove-orders")[0]["extension"][EXTENSION]["evidenceFingerprint"]
    assert first == second == third


# ---- suppression -----------------------------------------------------------------------


def test_an_overridden_card_is_suppressed_until_it_expires(store_url, caplog):
    app = make_app(store_url, caplog)
    client = app.test_client()
    body = new_patient(R3)
    (card,) = call(client, body, "legmove-orders")
    feedback(client, card, "overridden", "legmove-orders")
    caplog.set_level("INFO", logger="cds_service.web.api")
    assert call(client, body, "legmove-orders") == []
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert line.suppressed == [{"rule": "R3", "reason": "overridden"}] and line.cards == 0
    (suppressed,) = [
        e
        for e in events(app, kind="suppressed")
        if e["patient_hash"] == events(app, card_uuid=card["uuid"])[0]["patient_hash"]
    ]
    assert suppressed["reason"] == "overridden" and suppressed["card_uuid"] is None
    assert call(client, new_patient(R3), "legmove-orders") != []  # another patient is not affected
    move_clock(app, 29)
    assert call(client, body, "legmove-orders") == []
    move_clock(app, 31)  # suppress_overridden_days is 30
    assert rules_of(call(client, body, "legmove-orders")) == ["R3"]
    app.extensions["legmove_ledger"].close()


def test_an_accepted_card_is_not_resuggested_for_its_own_window(store_url):
    app = make_app(store_url)
    client = app.test_client()
    body = new_patient(R3)
    (card,) = call(client, body, "legmove-orders")
    feedback(client, card, "accepted", "legmove-orders")
    move_clock(app, 60)  # past the override window, inside suppress_accepted_days (90)
    assert call(client, body, "legmove-orders") == []
    move_clock(app, 91)
    assert rules_of(call(client, body, "legmove-orders")) == ["R3"]
    app.extensions["legmove_ledger"].close()


def test_per_rule_window_from_knowledge_settings(tmp_path):
    app = make_app(
        f"sqlite:///{tmp_path / 'w.sqlite3'}", KNOWLEDGE_OVERRIDES={"suppress_days_by_rule": {"R3": {"overridden": 2}}}
    )
    client = app.test_client()
    body = new_patient(R3)
    feedback(client, call(client, body, "legmove-orders")[0], "overridden", "legmove-orders")
    move_clock(app, 1)
    assert call(client, body, "legmove-orders") == []
    move_clock(app, 3)
    assert call(client, body, "legmove-orders") != []
    app.extensions["legmove_ledger"].close()


def test_new_evidence_lifts_the_suppression(store_url):
    app = make_app(store_url)
    client = app.test_client()
    # a new draft order (another worsening drug) at order-sign
    body = new_patient(R3)
    feedback(client, call(client, body, "legmove-orders")[0], "overridden", "legmove-orders")
    assert call(client, body, "legmove-orders") == []
    other = copy.deepcopy(body)
    draft = other["context"]["draftOrders"]["entry"][0]["resource"]
    draft["id"] = draft["id"] + "-2"
    assert rules_of(call(client, other, "legmove-orders")) == ["R3"]
    # a new ferritin value on patient-view
    view = new_patient(R2)
    feedback(client, call(client, view, "legmove-patient-view")[0], "overridden", "legmove-patient-view")
    assert call(client, view, "legmove-patient-view") == []
    changed = copy.deepcopy(view)
    ferritin = next(e["resource"] for e in changed["prefetch"]["labs"]["entry"] if e["resource"].get("valueQuantity"))
    ferritin["valueQuantity"]["value"] = ferritin["valueQuantity"]["value"] - 3
    assert rules_of(call(client, changed, "legmove-patient-view")) == ["R2"]
    app.extensions["legmove_ledger"].close()


def reads_during(app, action) -> list[str]:
    """The SELECT statements the store ran while `action()` ran (a listener on the store's engine)."""
    engine = app.extensions["legmove_ledger"].engine()
    seen: list[str] = []

    def note(_conn, _cursor, statement, *_):
        seen.append(statement)

    sqlalchemy.event.listen(engine, "before_cursor_execute", note)
    try:
        action()
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", note)
    return [s for s in seen if s.lstrip().upper().startswith("SELECT")]


def open_chart_again(app, card: dict, times: int) -> None:
    """`times` earlier openings of the chart that showed `card`: copies of its issued card_event row
    (same patient, rule, version and fingerprint), each with its own card uuid, inserted directly."""
    (issued,) = events(app, card_uuid=card["uuid"])
    earlier = issued["created_at"] - timedelta(days=1)
    copied = {k: v for k, v in issued.items() if k != "id"}
    rows = [
        {**copied, "card_uuid": str(uuid.uuid4()), "created_at": earlier - timedelta(minutes=n)} for n in range(times)
    ]
    with app.extensions["legmove_ledger"].engine().begin() as conn:
        conn.execute(insert(card_event), rows)


@pytest.mark.parametrize("answered", [True, False])
def test_a_chart_opened_many_times_decides_alike_without_reading_card_events(store_url, caplog, answered):
    """The suppression lookup starts from the patient's feedback: 2,000 earlier openings of the
    chart (card_event rows of the same patient and evidence) change neither the decision nor what
    the lookup reads (no statement of the hook call reads card_event)."""
    app = make_app(store_url, caplog)
    client = app.test_client()
    body = new_patient(R3)
    (card,) = call(client, body, "legmove-orders")
    if answered:
        feedback(client, card, "overridden", "legmove-orders")
    open_chart_again(app, card, 2000)
    assert len(events(app, rule_id="R3", patient_hash=events(app, card_uuid=card["uuid"])[0]["patient_hash"])) > 2000
    caplog.set_level("INFO", logger="cds_service.web.api")
    shown: list[list[dict]] = []
    reads = reads_during(app, lambda: shown.append(call(client, body, "legmove-orders")))
    assert rules_of(shown[0]) == ([] if answered else ["R3"])
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert line.suppressed == ([{"rule": "R3", "reason": "overridden"}] if answered else [])
    (lookup,) = [s for s in reads if "patient_feedback" in s]
    assert [s for s in reads if "card_event" in s] == [], reads
    if store_url.startswith("sqlite"):
        engine = app.extensions["legmove_ledger"].engine()
        with engine.connect() as conn:
            who = events(app, card_uuid=card["uuid"])[0]["patient_hash"]
            since = (datetime.now(UTC) - timedelta(days=90)).isoformat(" ")
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + lookup, (who, since)).all()
        details = " ".join(row[-1] for row in plan)
        assert "patient_feedback_lookup" in details and "card_event" not in details, details
    app.extensions["legmove_ledger"].close()


def test_retention_ends_a_suppression_with_the_card_row_it_rests_on(tmp_path):
    """Feedback on a card issued 400 days ago still suppresses it today; once retention (365 days)
    deletes that card's row, the card is shown again, as when the lookup joined card_event."""
    app = make_app(f"sqlite:///{tmp_path / 'retention.sqlite3'}")
    client = app.test_client()
    gov = app.extensions["legmove_governance"]
    long_ago = datetime.now(UTC) - timedelta(days=400)
    gov.clock = lambda: long_ago
    body = new_patient(R3)
    (card,) = call(client, body, "legmove-orders")
    gov.clock = lambda: datetime.now(UTC)
    feedback(client, card, "overridden", "legmove-orders")  # received now
    assert call(client, body, "legmove-orders") == []
    removed = governance.prune_rows(app.extensions["legmove_ledger"].engine(), datetime.now(UTC), 365)
    assert (removed["card_event"], removed["card_feedback"], removed["patient_feedback"]) == (1, 0, 1)
    assert rules_of(call(client, body, "legmove-orders")) == ["R3"]
    app.extensions["legmove_ledger"].close()


def test_critical_cards_are_never_suppressed(store_url):
    app = make_app(store_url)
    client = app.test_client()
    body = new_patient(R8)
    (card,) = call(client, body, "legmove-patient-view")
    assert card["indicator"] == "critical"
    feedback(client, card, "overridden", "legmove-patient-view")
    assert rules_of(call(client, body, "legmove-patient-view")) == ["R8"]
    app.extensions["legmove_ledger"].close()


def test_store_down_shows_every_card(caplog):
    app = create_app(
        "test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE="postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=1"
    )
    assert rules_of(call(app.test_client(), R3["request"], "legmove-orders")) == ["R3"]
    app.extensions["legmove_ledger"].close()


# ---- order-select -> order-sign --------------------------------------------------------


def order_select(body: dict) -> dict:
    selected = copy.deepcopy(body)
    selected["hook"] = "order-select"
    selected["hookInstance"] = str(uuid.uuid4())
    draft = selected["context"]["draftOrders"]["entry"][0]["resource"]
    selected["context"]["selections"] = [f"{draft['resourceType']}/{draft['id']}"]
    return selected


@pytest.mark.parametrize("outcome", ["overridden", "accepted"])
def test_feedback_at_order_select_is_not_repeated_at_order_sign(store_url, caplog, outcome):
    # no override/accept windows: only the de-duplication can keep the card away
    app = make_app(store_url, caplog, KNOWLEDGE_OVERRIDES={"suppress_overridden_days": 0, "suppress_accepted_days": 0})
    client = app.test_client()
    sign = new_patient(R3)
    (card,) = call(client, order_select(sign), "legmove-orders")
    feedback(client, card, outcome, "legmove-orders")
    caplog.set_level("INFO", logger="cds_service.web.api")
    assert call(client, sign, "legmove-orders") == []
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "hook_call"]
    assert line.suppressed == [{"rule": "R3", "reason": "answered-at-order-select"}]
    # another draft at signing is new evidence
    other = copy.deepcopy(sign)
    other["context"]["draftOrders"]["entry"][0]["resource"]["id"] += "-b"
    assert rules_of(call(client, other, "legmove-orders")) == ["R3"]
    move_clock(app, 2)  # order_sign_dedup_hours is 24
    assert rules_of(call(client, sign, "legmove-orders")) == ["R3"]
    app.extensions["legmove_ledger"].close()


def test_a_card_without_feedback_at_order_select_is_shown_again_at_order_sign(sqlite_app):
    client = sqlite_app.test_client()
    sign = new_patient(R3)
    assert rules_of(call(client, order_select(sign), "legmove-orders")) == ["R3"]
    assert rules_of(call(client, sign, "legmove-orders")) == ["R3"]
    assert [c["hook"] for c in calls(sqlite_app)] == ["order-select", "order-sign"]
