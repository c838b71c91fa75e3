"""Real processes for the hostile-network tests: the service under gunicorn.conf.py (the command
`make run` uses) and misbehaving servers on loopback built on raw sockets, so they can do what a
well-behaved HTTP framework would never do (drip bytes under a Content-Length, stall headers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from conftest import ROOT, _free_port


def worker_pids(master: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Service:
    """`gunicorn -c gunicorn.conf.py 'cds_service.app:create_app()'` with extra environment."""

    def __init__(self, tmp: Path, workers: int = 1, command: list[str] | None = None, **env):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            LEGMOVE_CONFIG="test",
            LEGMOVE_LOG_LEVEL="WARNING",
            PORT=str(self.port),
            WORKERS=str(workers),
            LEGMOVE_FEEDBACK_STORE=f"sqlite:///{tmp / 'feedback.sqlite3'}",
            LEGMOVE_REPLAY_STORE=f"sqlite:///{tmp / 'replay.sqlite3'}",
            PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "support"), str(ROOT)]),
        )
        self.env.pop("HOST", None)  # the default bind address is part of what is tested
        self.env.update(env)
        self.log_path = tmp / f"service-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - the process writes it until stop() closes it
        command = command or [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "cds_service.app:create_app()",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT if command[0] == "make" else tmp,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers = workers
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early: {self.log_path.read_text()[-2000:]}")
            try:
                if (
                    requests.get(f"{self.base}/cds-services", timeout=2).status_code == 200
                    and len(self.worker_pids()) >= self.workers
                ):
                    return
            except (requests.RequestException, FileNotFoundError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"service did not start: {self.log_path.read_text()[-2000:]}")

    def master_pid(self) -> int:
        """gunicorn's master: the process itself, or under `make run` its first gunicorn descendant."""
        pending = [self.process.pid]
        while pending:
            pid = pending.pop(0)
            if Path(f"/proc/{pid}/comm").read_text().startswith("gunicorn"):
                return pid
            pending += worker_pids(pid)
        raise FileNotFoundError("no gunicorn process yet")

    def worker_pids(self) -> list[int]:
        return worker_pids(self.master_pid())

    def kill(self) -> None:
        """kill -9 of every process of the service: nothing gets to flush or clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        self.log.close()


class RawServer:
    """A TCP server on loopback whose `handle(conn, request_head)` does anything it likes.
    It records every request head it read (to count requests and see where tokens went)."""

    def __init__(self, handle, host: str = "127.0.0.1"):
        self.handle = handle
        self.heads: list[str] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://{host}:{self.port}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            text = head.split(b"\r\n\r\n")[0].decode("latin-1")
            self.heads.append(text)
            self.handle(conn, text)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def send_json(conn: socket.socket, body: bytes, status: str = "200 OK", extra: str = "") -> None:
    conn.sendall(
        f"HTTP/1.1 {status}\r\nContent-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n".encode()
        + body
    )
