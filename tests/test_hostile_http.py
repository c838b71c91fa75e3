"""Hostile clients and unsafe defaults, against the service as `make run` starts it (gunicorn
with gunicorn.conf.py): slow-header clients, oversized chunked bodies, response headers, the
bind address, PORT checks, and a production configuration that does not say who may call."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cds_service.app import UnsafeConfiguration, create_app
from conftest import FIXTURES, ROOT, _free_port, fired_rules, load_fixture, patient_variant
from serving import Service

R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
SLOW_CLIENTS = 50


class SlowClients:
    """Connections that send a request's headers one line every 2 s and never finish."""

    def __init__(self, port: int, count: int):
        self.sockets = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /cds-services/legmove-patient-view HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            self.sockets.append(sock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        line = 0
        while not self._stop.wait(2.0):
            line += 1
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(f"X-Slow-{line}: 1\r\n".encode())

    def still_open(self) -> int:
        """How many the server has not closed (a closed one reads EOF at once)."""
        alive = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                alive += sock.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The service exactly as `make run` starts it (2 workers, the development default)."""
    service = Service(tmp_path_factory.mktemp("make-run"), workers=2, command=["make", "--no-print-directory", "run"])
    yield service
    service.stop()


@pytest.mark.slow
def test_slow_header_clients_do_not_block_normal_calls(made):
    """With 2 sync workers, 2 slow-header clients made a normal call take 30.5 s and 4 took 61.7 s.
    With 50 connected, normal calls answer in under 2 s, and the slow ones are still being served."""
    slow = SlowClients(made.port, SLOW_CLIENTS)
    try:
        time.sleep(2.5)  # every slow client has sent at least two lines by now
        timings = []
        for _ in range(5):
            started = time.monotonic()
            response = requests.post(f"{made.base}/cds-services/legmove-patient-view", json=R1["request"], timeout=30)
            timings.append(time.monotonic() - started)
            assert response.status_code == 200 and fired_rules(response.json()) == {"R1"}
        assert max(timings) < 2.0, timings
        assert slow.still_open() == SLOW_CLIENTS
    finally:
        slow.close()


def test_mixed_patients_under_the_async_worker_never_see_each_other(made, app):
    """The engine evaluates under a lock, and the worker is gevent: 160 concurrent calls for 80
    patients, with 50 slow clients connected, each equal to that patient's answer in process."""
    fixtures = [load_fixture(p) for p in FIXTURES]
    calls = []
    for number in range(80):
        fixture = fixtures[number % len(fixtures)]
        call, pid = patient_variant(fixture["request"], 5000 + number)
        quiet = app.test_client().post(f"/cds-services/{fixture['service']}", json=call).get_json()
        calls.append((fixture["service"], call, pid, sorted(c["summary"] for c in quiet["cards"])))
    slow = SlowClients(made.port, SLOW_CLIENTS)

    def one(entry):
        service, call, pid, expected = entry
        response = requests.post(f"{made.base}/cds-services/{service}", json=call, timeout=30)
        assert response.status_code == 200, response.text
        text = response.text
        others = [p for _, _, p, _ in calls if p != pid and f"{p}-" in text or f'Patient/{p}"' in text and p != pid]
        return sorted(c["summary"] for c in response.json()["cards"]) == expected and not others

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, calls * 2))
    finally:
        slow.close()
    assert all(results), f"{results.count(False)} answers differ from the quiet run"


def test_make_run_binds_loopback(made):
    assert f"Listening at: http://127.0.0.1:{made.port}" in made.log_path.read_text()
    assert "Using worker: cds_service.web.gevent_worker.FairGeventWorker" in made.log_path.read_text()


@pytest.mark.parametrize("port", ["abc", "0", "65536", "80; touch /tmp/x", ""])
def test_make_run_refuses_a_bad_port_before_installing_anything(port):
    result = subprocess.run(
        ["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "PORT must be a number from 1 to 65535" in result.stderr
    assert "pip" not in result.stdout + result.stderr and "gunicorn" not in result.stdout


@pytest.mark.parametrize(
    "settings, says",
    [
        ({}, "OPEN_MODE is not set"),
        ({"OPEN_MODE": True}, "FHIR_SERVER_ALLOWLIST is not set"),
        ({"OPEN_MODE": True, "FHIR_SERVER_ALLOWLIST": ["ehr.example.org"]}, "not http(s) base URLs"),
    ],
)
def test_production_refuses_unsafe_defaults(settings, says):
    with pytest.raises(UnsafeConfiguration, match=says.replace("(", r"\(").replace(")", r"\)")):
        create_app("production", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, **settings)


def test_production_starts_when_it_says_what_it_means(tmp_path):
    """Explicit open mode and "any FHIR server" start (loudly); so does client auth with a list."""
    app = create_app(
        "production", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, OPEN_MODE=True, FHIR_SERVER_ALLOWLIST=["*"]
    )
    assert app.test_client().get("/cds-services").status_code == 200
    create_app(
        "production",
        LOG_LEVEL="CRITICAL",
        FEEDBACK_STORE=None,
        CLIENT_AUTH=True,
        PUBLIC_BASE_URL="https://cds.example.org",
        REPLAY_STORE=f"sqlite:///{tmp_path / 'r.sqlite3'}",
        TRUSTED_ISSUERS={"https://ehr.example.org": {"jwks": {"keys": []}}},
        FHIR_SERVER_ALLOWLIST=["https://ehr.example.org/fhir"],
    )


def test_production_gunicorn_with_no_settings_does_not_start(tmp_path):
    """The real process: no worker ever serves, the log says why."""
    env = dict(os.environ, LEGMOVE_CONFIG="production", PORT=str(_free_port()), LEGMOVE_FEEDBACK_STORE="null")
    env.pop("LEGMOVE_OPEN_MODE", None)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "cds_service.app:create_app()",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "OPEN_MODE is not set" in result.stdout + result.stderr


def test_api_responses_say_nosniff_and_no_store(made):
    """Cards carry patient data: no cache may keep them, no browser may sniff them."""
    responses = [
        requests.post(f"{made.base}/cds-services/legmove-patient-view", json=R1["request"], timeout=10),
        requests.get(f"{made.base}/cds-services", timeout=10),
        requests.post(
            f"{made.base}/cds-services/legmove-patient-view",
            data=b"{",
            timeout=10,
            headers={"Content-Type": "application/json"},
        ),
        requests.post(f"{made.base}/cds-services/nope", json={}, timeout=10),
    ]
    assert responses[0].json()["cards"]
    for response in responses:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"


def test_an_oversized_chunked_body_is_413(made):
    """Werkzeug cut a chunked body at MAX_CONTENT_LENGTH and the call answered 400 (broken JSON)."""

    def chunks():
        for _ in range(600):
            yield b" " * 10_000  # 6 MB, over the 5 MiB limit, with no Content-Length

    response = requests.post(
        f"{made.base}/cds-services/legmove-patient-view",
        data=chunks(),
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413 and response.json()["issue"][0]["code"] == "too-costly"
    small = json.dumps(R1["request"]).encode()
    response = requests.post(
        f"{made.base}/cds-services/legmove-patient-view",
        data=iter([small[:100], small[100:]]),
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200 and fired_rules(response.json()) == {"R1"}


@pytest.mark.slow
def test_redis_replay_store_and_jwt_checks_under_the_async_worker(tmp_path):
    """Client auth through gevent workers with the local Redis as the jti store: 40 concurrent
    calls with fresh tokens all pass, each token replayed once is refused, whichever worker gets it."""
    from test_client_auth import BASE, EHR_JWKS, token

    path = "/cds-services/legmove-patient-view"
    service = Service(
        tmp_path,
        workers=2,
        LEGMOVE_CLIENT_AUTH="true",
        LEGMOVE_PUBLIC_BASE_URL=BASE,
        LEGMOVE_TRUSTED_ISSUERS=json.dumps({"https://ehr.example.org": {"jwks": EHR_JWKS}}),
        LEGMOVE_REPLAY_STORE="redis://127.0.0.1:6379/0",
    )
    try:
        tokens = [token(aud=BASE + path) for _ in range(40)]

        def call(bearer):
            return requests.post(
                f"{service.base}{path}", json=R1["request"], timeout=30, headers={"Authorization": f"Bearer {bearer}"}
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(call, tokens))
            again = list(pool.map(call, tokens))
    finally:
        service.stop()
    assert first == [200] * 40 and again == [401] * 40
