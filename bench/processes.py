"""The processes the benchmark measures: the service started exactly as `make run` starts it, a
sekmet-fhir server for the `fhirServer` path, and per-process CPU and memory readings from /proc."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_run_command(port: int) -> str:
    """The recipe of `make run`, read from the Makefile with `make -n`, so the benchmark measures
    the real worker model and flags rather than a copy of them."""
    out = subprocess.run(
        ["make", "-s", "-n", "run", f"PORT={port}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    logical = out.stdout.replace("\\\n", " ").splitlines()
    lines = [line for line in logical if "gunicorn" in line or "legmove-cds serve" in line]
    if not lines:
        raise RuntimeError(f"could not read the `make run` recipe:\n{out.stdout}")
    return lines[-1]


class Service:
    def __init__(self, workdir: Path, env: dict[str, str]):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = make_run_command(self.port)
        self.log = open(workdir / "service.log", "w")  # noqa: SIM115 - the process writes it until stop() closes it
        self.process = subprocess.Popen(
            ["bash", "-c", self.command],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited; see {self.log.name}")
            try:
                if requests.get(f"{self.base_url}/cds-services", timeout=1).status_code == 200 and self.workers():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service did not start; see {self.log.name}")

    def master(self) -> int:
        """The gunicorn master: the shell itself when it exec'd the recipe, else its child."""
        pid = self.process.pid
        while "gunicorn" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            children = _children(pid)
            if not children:
                return pid
            pid = children[0]
        return pid

    def workers(self) -> list[int]:
        """gunicorn's workers are the master's children."""
        try:
            return _children(self.master())
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had since it started."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


class FhirServer:
    """sekmet-fhir on loopback with a bearer token, a fresh data directory, simulator off."""

    TOKEN = "bench-token"

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        workdir.mkdir(parents=True, exist_ok=True)
        settings = workdir / "settings.yaml"
        settings.write_text(
            f"base_url: {self.base_url}\nhost: 127.0.0.1\nport: {self.port}\ndata_dir: {workdir / 'data'}\n"
            "simulator: {enabled: false}\nlog_inbound: false\nvalidation: {inbound: 'off'}\n"
            f"server_auth: {{types: [bearer], tokens: [{self.TOKEN}]}}\n",
            encoding="utf-8",
        )
        executable = shutil.which("sekmet", path=str(Path(sys.executable).parent)) or "sekmet"
        self.log = open(workdir / "sekmet.log", "w")  # noqa: SIM115 - the process writes it until stop() closes it
        self.process = subprocess.Popen(
            [executable, "serve", "-c", str(settings)],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base_url}/metadata", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"sekmet did not start; see {self.log.name}")

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.TOKEN}", "Content-Type": "application/fhir+json"}

    def post_transaction(self, bundle: dict) -> None:
        response = requests.post(self.base_url, json=bundle, headers=self.headers(), timeout=120)
        response.raise_for_status()

    def patient_id(self, synthea_uuid: str) -> str:
        response = requests.get(
            f"{self.base_url}/Patient",
            headers=self.headers(),
            timeout=30,
            params={"identifier": f"https://github.com/synthetichealth/synthea|{synthea_uuid}"},
        )
        response.raise_for_status()
        return response.json()["entry"][0]["resource"]["id"]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def describe(command: str) -> str:
    return " ".join(shlex.split(command))
