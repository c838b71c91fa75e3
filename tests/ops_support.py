"""Test support for real gunicorn instances and their metrics (not a test module)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, _free_port

WORKERS = 2


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the scraped text (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


class Instance:
    """One gunicorn master, as `make run` and the container image start it (gunicorn.conf.py)."""

    def __init__(self, name: str, workdir: Path, env: dict, extra_args: tuple[str, ...] = ()):
        self.name, self.port = name, _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = workdir / f"metrics-{name}"
        self.metrics_dir.mkdir()
        # a stale file that gunicorn.conf.py must remove at master start (the tests check it is gone)
        (self.metrics_dir / "counter_424242.db").write_bytes(b"left over from a previous run")
        self.runtime_dir = workdir / f"run-{name}"
        self.runtime_dir.mkdir(mode=0o700)
        self.log_path = workdir / f"gunicorn-{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - the process writes it until stop() closes it
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "--workers",
                str(WORKERS),
                "--bind",
                f"127.0.0.1:{self.port}",
                *extra_args,
                "cds_service.app:create_app()",
            ],
            # XDG_RUNTIME_DIR: gunicorn >= 27 puts its control socket there, one per master, not one per user
            cwd=workdir,
            env=dict(env, PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir), XDG_RUNTIME_DIR=str(self.runtime_dir)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ready, f"instance {name} (see {self.log_path})")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"instance {self.name} exited; see {self.log_path}")
        return (
            requests.get(f"{self.base}/health/ready", timeout=2).status_code == 200
            and len(children(self.process.pid)) == WORKERS
        )

    def metrics(self) -> str:
        response = requests.get(f"{self.base}/metrics", timeout=5)
        assert response.status_code == 200
        return response.text

    def hook_calls(self) -> float:
        return sum(
            metric(self.metrics(), "legmove_hook_call_duration_seconds_count", service=s, status="200")
            for s in ("legmove-orders", "legmove-order-sign", "legmove-patient-view")
        )

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=20)
        self.log.close()
