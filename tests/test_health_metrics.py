"""/health and /metrics through the real app: readiness against real stores that are up, down or
hanging (the local PostgreSQL and Redis, closed and black-hole loopback ports), both endpoints
open while client auth is on, and the metrics a hook call and a misbehaving FHIR server leave."""

import copy
import os
import re
import socket
import threading
import time

import promql_parser
import pytest
import requests
from werkzeug.serving import make_server

from cds_service.app import create_app
from conftest import ROOT, _free_port, load_fixture
from ops_support import WORKERS, Instance, children, metric, wait_for
from test_client_auth import EHR_JWKS
from test_fhir_faults import faulty_fhir

R3 = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
AUTH = dict(
    CLIENT_AUTH=True,
    PUBLIC_BASE_URL="https://cds.example.org",
    TRUSTED_ISSUERS={"https://ehr.example.org": {"jwks": EHR_JWKS}},
)


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return response.get_data(as_text=True)


@pytest.fixture()
def black_hole():
    """A loopback port that accepts connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def ready(app):
    response = app.test_client().get("/health/ready")
    assert response.mimetype == "application/health+json"
    return response.status_code, response.get_json()


def test_liveness_and_readiness_with_postgresql_and_redis(postgres_url):
    app = create_app(
        "test", LOG_LEVEL="WARNING", FEEDBACK_STORE=postgres_url, REPLAY_STORE="redis://127.0.0.1:6379/0", **AUTH
    )
    client = app.test_client()
    live = client.get("/health")
    assert live.status_code == 200 and live.get_json()["status"] == "pass"
    status, body = ready(app)
    assert status == 200 and body["status"] == "pass", body
    assert body["checks"]["rules"]["status"] == "pass" and "card rules" in body["checks"]["rules"]["output"]
    assert body["checks"]["feedback_store"] == {"status": "pass", "output": "postgresql answers"}
    assert body["checks"]["replay_store"] == {"status": "pass", "output": "RedisReplayStore answers"}
    app.extensions["legmove_ledger"].close()


def test_open_mode_without_feedback_skips_those_checks():
    status, body = ready(create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None))
    assert status == 200
    assert body["checks"]["feedback_store"]["status"] == body["checks"]["replay_store"]["status"] == "skipped"


def test_health_and_metrics_need_no_client_jwt_while_hook_calls_do(tmp_path):
    app = create_app("test", LOG_LEVEL="CRITICAL", REPLAY_STORE=f"sqlite:///{tmp_path / 'replay.sqlite3'}", **AUTH)
    client = app.test_client()
    assert client.post("/cds-services/legmove-orders", json=R3["request"]).status_code == 401
    assert client.get("/health").status_code == 200
    assert client.get("/health/ready").status_code == 200
    assert ready(app)[1]["checks"]["replay_store"] == {"status": "pass", "output": "SqliteReplayStore answers"}
    assert "legmove_http_responses_total" in scrape(client)


def test_a_database_that_is_down_makes_the_instance_unready_but_alive():
    app = create_app(
        "test",
        LOG_LEVEL="CRITICAL",
        FEEDBACK_STORE=f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/none?connect_timeout=1",
    )
    status, body = ready(app)
    assert status == 503 and body["status"] == "fail"
    assert body["checks"]["feedback_store"] == {"status": "fail", "output": "OperationalError"}
    assert body["checks"]["rules"]["status"] == "pass"
    assert "127.0.0.1" not in str(body), "the probe answer names no host or URL"
    assert app.test_client().get("/health").status_code == 200


def test_a_redis_that_is_down_makes_the_instance_unready():
    app = create_app(
        "test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, REPLAY_STORE=f"redis://127.0.0.1:{_free_port()}/0", **AUTH
    )
    status, body = ready(app)
    assert status == 503 and body["checks"]["replay_store"] == {"status": "fail", "output": "ConnectionError"}


def test_a_hanging_replay_store_cannot_hang_the_probe(black_hole):
    app = create_app(
        "test",
        LOG_LEVEL="CRITICAL",
        FEEDBACK_STORE=None,
        HEALTH_CHECK_TIMEOUT=0.3,
        REPLAY_STORE=f"redis://127.0.0.1:{black_hole}/0",
        **AUTH,
    )
    started = time.monotonic()
    status, body = ready(app)
    assert time.monotonic() - started < 0.9  # the Redis client alone would wait its 1 s socket timeout
    assert status == 503 and body["checks"]["replay_store"] == {"status": "fail", "output": "no answer within 0.3 s"}


def test_a_feedback_store_without_its_tables_is_unready(tmp_path):
    app = create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=f"sqlite:///{tmp_path / 'f.sqlite3'}")
    ledger = app.extensions["legmove_ledger"]
    with ledger.engine().begin() as conn:
        conn.exec_driver_sql("DROP TABLE card_feedback")
    status, body = ready(app)
    assert status == 503 and body["checks"]["feedback_store"]["output"] == "feedback tables missing: card_feedback"
    ledger.close()


def test_no_registered_rules_is_unready():
    status, body = ready(create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, ENABLED_RULES=[]))
    assert status == 503 and body["checks"]["rules"]["status"] == "fail"


def test_a_hook_call_counts_latency_cards_stages_and_status():
    app = create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None)
    client = app.test_client()
    ids = [s["id"] for s in client.get("/cds-services").get_json()["services"] if s["hook"] == "order-sign"]
    service = next((i for i in ids if i != "legmove-orders"), ids[0])  # the per-hook id where there is one
    before = scrape(client)
    for _ in range(3):
        assert client.post(f"/cds-services/{service}", json=R3["request"]).status_code == 200
    assert client.post("/cds-services/no-such-service-" + "x" * 40, json={}).status_code == 404
    after = scrape(client)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("legmove_hook_call_duration_seconds_count", service=service, hook="order-sign", status="200") == 3
    assert grew("legmove_hook_call_duration_seconds_count", service="unknown", hook="unknown", status="404") == 1
    assert grew("legmove_cards_total", hook="order-sign", rule="R3", indicator="warning") == 3
    assert grew("legmove_evaluation_stage_duration_seconds_count", hook="order-sign", stage="engine") == 3
    assert grew("legmove_evaluation_stage_duration_seconds_sum", hook="order-sign", stage="engine") > 0
    assert grew("legmove_http_responses_total", endpoint="/cds-services/<service_id>", status="404") == 1
    assert "no-such-service" not in after, "label values never come from the URL"


@pytest.fixture(scope="module")
def faulty_server():
    server = make_server("127.0.0.1", 0, faulty_fhir, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize(
    "fault, outcome",
    [
        ("fine", "ok"),
        ("hang", "timeout"),
        ("error500", "http_5xx"),
        ("unauthorized", "http_4xx"),
        ("notjson", "invalid_response"),
        ("drip", "deadline"),
        ("closed", "connection_error"),
    ],
)
def test_fhir_fetches_are_timed_and_failures_counted_by_outcome(faulty_server, fault, outcome):
    app = create_app(
        "test",
        LOG_LEVEL="CRITICAL",
        FEEDBACK_STORE=None,
        FHIR_DEADLINE=1.0,
        FHIR_READ_TIMEOUT=0.5,
        FHIR_CONNECT_TIMEOUT=0.5,
    )
    client = app.test_client()
    body = copy.deepcopy(R1["request"])
    body.pop("prefetch")
    body["fhirServer"] = (
        f"http://127.0.0.1:{_free_port()}/fhir" if fault == "closed" else f"{faulty_server}/{fault}/fhir"
    )
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "legmove-cds",
    }
    before = scrape(client)
    status = client.post("/cds-services/legmove-patient-view", json=body).status_code
    after = scrape(client)
    assert status == (200 if fault == "fine" else 412)
    fetched = metric(after, "legmove_fhir_fetch_duration_seconds_count", outcome=outcome) - metric(
        before, "legmove_fhir_fetch_duration_seconds_count", outcome=outcome
    )
    errors = metric(after, "legmove_fhir_fetch_errors_total", outcome=outcome) - metric(
        before, "legmove_fhir_fetch_errors_total", outcome=outcome
    )
    assert fetched >= 1
    assert errors == (0 if fault == "fine" else fetched)
    if fault == "hang":
        assert metric(after, "legmove_fhir_fetch_duration_seconds_sum", outcome="timeout") >= 0.5


def readme_queries() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```promql\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_alert_queries_parse_and_name_only_exported_metrics():
    queries = readme_queries()
    assert len(queries) >= 8
    exported = set()
    for line in scrape(create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None).test_client()).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported |= {name} | ({f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else set())
    for query in queries:
        promql_parser.parse(query)  # raises ValueError on a syntax error
        named = set(re.findall(r"\blegmove_\w+", query))
        assert named <= exported, f"{query} names metrics that do not exist: {named - exported}"


@pytest.mark.slow
def test_metrics_stay_whole_while_gunicorn_recycles_its_workers(tmp_path):
    """max_requests replaces workers all the time in production: counters of retired workers stay in
    the sum, their live gauges leave with them (child_exit), and a scrape sees every worker."""
    env = dict(
        os.environ,
        LEGMOVE_CONFIG="test",
        LEGMOVE_LOG_LEVEL="WARNING",
        LEGMOVE_FEEDBACK_STORE="null",
        PYTHONPATH=str(ROOT),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    instance = Instance("recycling", tmp_path, env, extra_args=("--max-requests", "4", "--max-requests-jitter", "0"))
    try:
        first_workers = children(instance.process.pid)
        path = "/cds-services/legmove-patient-view"
        for _ in range(24):  # hook calls plus the scrapes below retire each worker several times
            response = requests.post(instance.base + path, json=R1["request"], timeout=15)
            assert response.status_code == 200
        # which worker accepts a connection is up to the kernel and gevent: under load one worker can take
        # nearly all 24 calls, so keep asking /health/ready (not a hook call: the count below stays 24)
        # until every first worker has served its 4 requests and been replaced
        wait_for(lambda: instance.ready() and not (children(instance.process.pid) & first_workers), "recycled workers")
        text = instance.metrics()
        assert (
            metric(
                text,
                "legmove_hook_call_duration_seconds_count",
                service="legmove-patient-view",
                hook="patient-view",
                status="200",
            )
            == 24
        )
        assert metric(text, "legmove_http_requests_in_flight") == 1, "only the scrape itself"
        live = {int(f.stem.rsplit("_", 1)[1]) for f in instance.metrics_dir.glob("gauge_livesum_*.db")}
        assert live <= children(instance.process.pid) | {instance.process.pid}, "gauges of retired workers are gone"
        assert len(list(instance.metrics_dir.glob("counter_*.db"))) > WORKERS, "retired workers' counters are kept"
    finally:
        instance.stop()
