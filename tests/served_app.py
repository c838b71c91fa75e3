"""The service as a user starts it: `legmove-cds serve` in a subprocess (real gunicorn), on a free
loopback port, with its own feedback database. Used by the CLI and the browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import ROOT, _free_port

LEGMOVE_CDS = str(Path(sys.executable).parent / "legmove-cds")


def cli_env(**extra) -> dict:
    """The environment of a `legmove-cds` subprocess: wide, uncoloured output, no stray LEGMOVE_ keys."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LEGMOVE_") and k not in ("FHIR_TOKEN", "CDS_SERVICE_URL", "HOST", "PORT", "WORKERS")
    }
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    env.update(extra)
    return env


def run_cli(*args, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LEGMOVE_CDS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


class ServedService:
    def __init__(
        self, workdir: Path, cwd: Path = ROOT, options_from_env: bool = False, port: int | None = None, **settings
    ):
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.feedback_store = f"sqlite:///{workdir / 'feedback.sqlite3'}"
        env = cli_env(
            LEGMOVE_CONFIG="test",
            LEGMOVE_FEEDBACK_STORE=self.feedback_store,
            LEGMOVE_LOG_LEVEL="WARNING",
            **{f"LEGMOVE_{k}": v for k, v in settings.items()},
        )
        args = ["--port", str(self.port), "--workers", "1"]
        if options_from_env:  # the way a container passes them
            env.update(PORT=str(self.port), WORKERS="1")
            args = []
        self.log = open(workdir / "serve.log", "w")  # noqa: SIM115 - the process writes it until stop() closes it
        self.process = subprocess.Popen(
            [LEGMOVE_CDS, "serve", *args],
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """/openapi.json needs no client token, whatever the configuration."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"legmove-cds serve exited early; see {self.log.name}")
            try:
                if requests.get(f"{self.base_url}/openapi.json", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"legmove-cds serve did not answer within 90 s; see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            self.log.close()
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()
