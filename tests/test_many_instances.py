"""Many instances behind a load balancer, as production runs them.

Two service instances (real gunicorn masters with two workers each, gunicorn.conf.py as shipped)
on loopback, behind a real nginx started as a user process with the shipped proxy rules
(deploy/nginx/legmove-proxy.conf), sharing a fresh database on the local PostgreSQL (feedback)
and the local Redis (JWT replay store), with client auth on (ES384). Proves: the balancer spreads
calls and each instance's /metrics sums its workers; a token spent on one instance is refused by
the other; feedback given through one instance finds the card issued by the other; a worker
killed mid-request leaves no phantom in-flight request; calls keep answering when one instance
is killed. Tests run in file order and share the cluster: the last one kills instance A.
"""

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from cds_service.store.feedback import CardLedger
from conftest import ROOT, _free_port, fired_rules, load_fixture
from ops_support import WORKERS, Instance, children, metric, wait_for
from test_client_auth import EHR_JWKS, token
from test_fhir_faults import faulty_fhir

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
ISSUER = "https://ehr.example.org"
R3 = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
pytestmark = pytest.mark.slow  # nginx in front of several gunicorn instances

if NGINX is None:
    if os.environ.get("CI"):
        raise RuntimeError("nginx is required in CI (.ci/run installs the Debian package)")
    pytest.skip("nginx is not installed (Debian package nginx; .ci/run installs it)", allow_module_level=True)


class Nginx:
    """nginx as a user process: own config, pid, logs and temp paths; never the system service."""

    def __init__(self, workdir: Path, port: int, upstreams: list[int]):
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}"
        prefix = workdir / "nginx"
        prefix.mkdir()
        servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;" for port in upstreams)
        temp = "\n".join(
            f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # as root, nginx would switch its worker to `nobody`, which cannot enter pytest's tmp dirs
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(f"""{user}daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix / "access.log"};
{temp}
    upstream legmove {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        include {ROOT / "deploy/nginx/legmove-proxy.conf"};
    }}
}}
""")
        self.process = subprocess.Popen(
            [NGINX, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: requests.get(f"{self.base}/health", timeout=2).status_code == 200, "nginx", timeout=20)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def faulty_server():
    server = make_server("127.0.0.1", 0, faulty_fhir, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_url):
    workdir = tmp_path_factory.mktemp("cluster")
    nginx_port = _free_port()
    public = f"http://127.0.0.1:{nginx_port}"  # every token's audience, whichever instance verifies it
    env = dict(
        os.environ,
        LEGMOVE_CONFIG="test",
        LEGMOVE_LOG_LEVEL="WARNING",
        LEGMOVE_CLIENT_AUTH="true",
        LEGMOVE_PUBLIC_BASE_URL=public,
        LEGMOVE_TRUSTED_ISSUERS=json.dumps({ISSUER: {"jwks": EHR_JWKS}}),
        LEGMOVE_REPLAY_STORE="redis://127.0.0.1:6379/0",
        LEGMOVE_FEEDBACK_STORE=postgres_url,
        # a call to the hanging FHIR server stays in flight ~5 s, long enough to be seen under load
        LEGMOVE_FHIR_READ_TIMEOUT="6",
        LEGMOVE_FHIR_DEADLINE="8",
        PYTHONPATH=str(ROOT),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    instances = []
    try:
        # one after the other: the first creates the feedback tables (two at once would race)
        for name in ("a", "b"):
            instances.append(Instance(name, workdir, env))
        balancer = Nginx(workdir, nginx_port, [i.port for i in instances])
    except BaseException:
        for instance in instances:
            instance.stop()
        raise
    yield {"a": instances[0], "b": instances[1], "lb": balancer, "public": public, "postgres": postgres_url}
    balancer.stop()
    for instance in instances:
        instance.stop()


def bearer(cluster, path: str) -> dict:
    return {"Authorization": f"Bearer {token(iss=ISSUER, aud=cluster['public'] + path)}"}


def order_sign_service(base: str) -> str:
    """The order-sign service id from discovery (the per-hook id where there is one, not the alias)."""
    ids = [
        s["id"] for s in requests.get(f"{base}/cds-services", timeout=5).json()["services"] if s["hook"] == "order-sign"
    ]
    return next((i for i in ids if i != "legmove-orders"), ids[0])


def hook_call(cluster, base: str, service: str, body=None, headers=None):
    path = f"/cds-services/{service}"
    return requests.post(base + path, json=body or R3["request"], headers=headers or bearer(cluster, path), timeout=15)


def test_the_balancer_spreads_calls_and_each_instance_sums_its_workers(cluster):
    a, b, lb = cluster["a"], cluster["b"], cluster["lb"]
    assert not (a.metrics_dir / "counter_424242.db").exists(), "metric files of a previous run are wiped at start"
    service = order_sign_service(lb.base)
    before = a.hook_calls() + b.hook_calls()
    answers = [hook_call(cluster, lb.base, service) for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    assert all(fired_rules(r.json()) == {"R3"} for r in answers)
    per_instance = {"a": a.hook_calls(), "b": b.hook_calls()}
    # each scrape is answered by one worker, yet counts what both workers of that instance did
    assert [a.hook_calls() for _ in range(4)] == [per_instance["a"]] * 4
    assert sum(per_instance.values()) - before == 20
    assert min(per_instance.values()) >= 5, f"round robin over two instances: {per_instance}"
    assert metric(a.metrics(), "legmove_cards_total", rule="R3", indicator="warning") == per_instance["a"]
    assert requests.get(f"{lb.base}/metrics", timeout=5).status_code == 404, "metrics stay off the public side"
    assert requests.get(f"{lb.base}/health/ready", timeout=5).json()["checks"]["replay_store"]["status"] == "pass"


def test_a_token_spent_on_one_instance_is_refused_by_the_other(cluster):
    a, b, lb = cluster["a"], cluster["b"], cluster["lb"]
    service = order_sign_service(lb.base)
    headers = bearer(cluster, f"/cds-services/{service}")
    assert hook_call(cluster, a.base, service, headers=headers).status_code == 200
    replayed_b = hook_call(cluster, b.base, service, headers=headers)
    replayed_lb = hook_call(cluster, lb.base, service, headers=headers)
    assert (replayed_b.status_code, replayed_lb.status_code) == (401, 401)
    assert replayed_b.json()["issue"][0]["code"] == "security"
    assert hook_call(cluster, b.base, service).status_code == 200  # a fresh token is fine there


def test_feedback_through_one_instance_finds_the_card_issued_by_the_other(cluster):
    a, b = cluster["a"], cluster["b"]
    service = order_sign_service(a.base)
    issued = hook_call(cluster, a.base, service)
    (card,) = issued.json()["cards"]
    path = f"/cds-services/{service}/feedback"
    item = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-11-22T10:05:31Z",
    }
    response = requests.post(b.base + path, json={"feedback": [item]}, headers=bearer(cluster, path), timeout=10)
    assert response.status_code == 200
    ledger = CardLedger(cluster["postgres"])
    rows = ledger.feedback_for(card["uuid"])
    ledger.close()
    assert [(r["rule_id"], r["outcome"]) for r in rows] == [("R3", "accepted")], "instance b knew a's card"
    assert json.loads(rows[0]["accepted_suggestions"]) == [card["suggestions"][0]["uuid"]]


def test_a_worker_killed_mid_request_leaves_no_phantom_in_flight_request(cluster, faulty_server):
    """gunicorn.conf.py's child_exit hook drops a dead worker's live gauge files."""
    b = cluster["b"]
    body = copy.deepcopy(R1["request"])
    body.pop("prefetch")
    body["fhirServer"] = f"{faulty_server}/hang/fhir"  # the FHIR server sleeps 5 s before answering
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "legmove-cds",
    }
    calls_before = b.hook_calls()
    hanging = threading.Thread(
        target=lambda: _ignore_errors(lambda: hook_call(cluster, b.base, "legmove-patient-view", body))
    )
    hanging.start()
    wait_for(
        lambda: metric(b.metrics(), "legmove_http_requests_in_flight") >= 2, "the hanging call to be in flight", 10
    )
    workers = children(b.process.pid)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(children(b.process.pid) - workers) == WORKERS and b.ready(), "replacement workers", 60)
    hanging.join(timeout=20)
    # a real request ends, a dead worker's phantom never does: readiness probes the kill left in the
    # listen backlog are served by the new workers and may be in flight for a moment beside a scrape
    wait_for(
        lambda: metric(b.metrics(), "legmove_http_requests_in_flight") == 1,
        "only the scrape itself to be in flight",
        10,
    )
    assert [f for pid in workers for f in b.metrics_dir.glob(f"gauge_livesum_{pid}.db")] == []
    assert list(b.metrics_dir.glob("gauge_livesum_*.db")), "the live workers' gauge files are there"
    assert b.hook_calls() == calls_before, "counters of dead workers stay in the sum"


def _ignore_errors(call):
    with contextlib.suppress(requests.RequestException):  # the worker serving it was killed: the connection drops
        call()


def test_calls_keep_answering_when_one_instance_is_killed(cluster):
    a, b, lb = cluster["a"], cluster["b"], cluster["lb"]
    service = order_sign_service(lb.base)
    os.killpg(a.process.pid, signal.SIGKILL)
    a.process.wait(timeout=10)
    before = b.hook_calls()
    answers = [hook_call(cluster, lb.base, service).status_code for _ in range(20)]
    assert answers == [200] * 20
    assert b.hook_calls() - before == 20
    assert requests.get(f"{lb.base}/health/ready", timeout=5).status_code == 200
