"""Measure a normal hook call's latency while N slow-header clients are connected, for a worker
class: `python scripts/slow_clients.py gevent 50` (or sync, gthread). Used to choose the worker
model in gunicorn.conf.py; the numbers are in README.md, section "Serving"."""

import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from conftest import load_fixture  # noqa: E402
from serving import Service  # noqa: E402
from test_hostile_http import SlowClients  # noqa: E402


def main(worker_class: str, clients: int) -> None:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    extra = {"sync": ["-k", "sync"], "gthread": ["-k", "gthread", "--threads", "4"], "gevent": []}[worker_class]
    request = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")["request"]
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(
            Path(tmp),
            workers=2,
            command=[gunicorn, "-c", str(ROOT / "gunicorn.conf.py"), *extra, "cds_service.app:create_app()"],
        )
        try:
            slow = SlowClients(service.port, clients)
            time.sleep(2.5)
            timings = []
            for _ in range(3):
                started = time.monotonic()
                try:
                    status = requests.post(
                        f"{service.base}/cds-services/legmove-patient-view", json=request, timeout=70
                    ).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                timings.append((status, round(time.monotonic() - started, 2)))
            slow.close()
            print(f"{worker_class}, 2 workers, {clients} slow-header clients: {timings}")
        finally:
            service.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
