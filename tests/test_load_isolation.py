"""Isolation under load in the production shape: gunicorn with several workers and threads.

Thousands of hook calls for hundreds of patients are fired from many client threads. Every answer
must equal that patient's answer from a quiet in-process run, and no answer may mention another
patient. One rule (tests/support/faulty_rules.py) raises for 'boom-' patients: each such call
must be one clean 500, and no worker may die or stop answering.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cds_service.app import create_app
from conftest import FIXTURES, ROOT, _free_port, fired_rules, load_fixture, patient_variant

PATIENTS = 300
ROUNDS = 10  # 3000 calls
WORKERS, THREADS, CLIENTS = 3, 4, 24
BOOM_EVERY = 25  # every 25th patient triggers the faulty rule
pytestmark = pytest.mark.slow  # 3,000 calls through gunicorn


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn")
    port = _free_port()
    env = dict(
        os.environ,
        LEGMOVE_CONFIG="test",
        LOG_LEVEL="WARNING",
        LEGMOVE_EXTRA_RULE_MODULES='["faulty_rules"]',
        LEGMOVE_LOG_LEVEL="WARNING",
        LEGMOVE_FEEDBACK_STORE=f"sqlite:///{tmp / 'feedback.sqlite3'}",
        LEGMOVE_REPLAY_STORE=f"sqlite:///{tmp / 'replay.sqlite3'}",
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "support"), str(ROOT)]),
    )
    log = open(tmp / "gunicorn.log", "w")  # noqa: SIM115 - gunicorn writes it until the fixture ends
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--preload",
            "--workers",
            str(WORKERS),
            "--threads",
            str(THREADS),
            "--bind",
            f"127.0.0.1:{port}",
            "cds_service.app:create_app()",
        ],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (
                requests.get(f"{base}/cds-services", timeout=1).status_code == 200
                and len(worker_pids(process.pid)) == WORKERS
            ):
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        raise RuntimeError(f"gunicorn did not start; see {log.name}")
    yield base, process.pid, tmp / "gunicorn.log"
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=20)
    log.close()


def patient_calls() -> list[tuple[str, dict, str]]:
    fixtures = [load_fixture(p) for p in FIXTURES]
    calls = []
    for number in range(PATIENTS):
        fixture = fixtures[number % len(fixtures)]
        call, pid = patient_variant(fixture["request"], number)
        if number % BOOM_EVERY == 0 and fixture["service"] == "legmove-patient-view" and not _deceased(fixture):
            text = json.dumps(call).replace(pid, f"boom-{pid}")
            call, pid = json.loads(text), f"boom-{pid}"
        calls.append((fixture["service"], call, pid))
    return calls


def _deceased(fixture: dict) -> bool:
    """No rule runs for a deceased patient (so the faulty rule cannot raise there)."""
    patient = (fixture["request"].get("prefetch") or {}).get("patient") or {}
    return bool(patient.get("deceasedBoolean") or patient.get("deceasedDateTime"))


def test_thousands_of_calls_across_workers_stay_isolated_and_a_faulty_rule_costs_one_call(gunicorn):
    base, master, log_path = gunicorn
    calls = patient_calls()
    quiet = create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None).test_client()
    expected = {}
    for service, call, pid in calls:
        if not pid.startswith("boom-"):
            expected[pid] = fired_rules(quiet.post(f"/cds-services/{service}", json=call).get_json())
    booms = {pid for _, _, pid in calls if pid.startswith("boom-")}
    assert booms and sum(bool(rules) for rules in expected.values()) > PATIENTS / 3
    workers_before = worker_pids(master)

    def run(item):
        service, call, pid = item
        session = requests.Session()
        response = session.post(f"{base}/cds-services/{service}", json=call, timeout=30)
        return pid, response.status_code, response.text

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(run, calls * ROUNDS))
    elapsed = time.monotonic() - started

    outcomes = Counter()
    for pid, status, text in results:
        if pid in booms:
            assert status == 500, text
            assert json.loads(text)["issue"][0]["diagnostics"] == "internal error; the service logged the details"
            outcomes["clean 500"] += 1
            continue
        assert status == 200, text
        body = json.loads(text)
        mentioned = set(re.findall(r"(?:boom-)?p\d{4}", text))
        assert mentioned <= {pid}, f"{pid}'s answer mentions {mentioned - {pid}}"
        assert fired_rules(body) == expected[pid]
        outcomes["cards" if body["cards"] else "no cards"] += 1
    assert outcomes["clean 500"] == len(booms) * ROUNDS
    assert outcomes["cards"] > len(results) / 3
    assert worker_pids(master) == workers_before, "a worker died or was replaced during the run"
    # after the run every worker still answers: enough calls that each worker gets some
    after = [run(calls[1]) for _ in range(3 * WORKERS)]
    assert all(status == 200 for _, status, _ in after)
    errors = [line for line in log_path.read_text().splitlines() if '"level": "ERROR"' in line]
    assert errors and all("unhandled RuntimeError" in line for line in errors)
    print(f"\n{len(results)} calls in {elapsed:.1f} s ({len(results) / elapsed:.0f}/s): {dict(outcomes)}")
