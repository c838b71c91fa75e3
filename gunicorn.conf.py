"""Gunicorn settings for `make run` and deployments: `gunicorn -c gunicorn.conf.py 'cds_service.app:create_app()'`.

Worker model: gevent. A client that sends its request slowly (one header line every few seconds,
whether by a bad network or on purpose) holds whatever serves it until the request is complete.
With sync workers that is a whole worker; with gthread a thread (and 50 such clients need 50
threads per worker). With gevent it is a greenlet of a few KiB, so a normal call keeps answering
while thousands wait. Measured, and why the engine, the stores and `requests` are safe under it:
README.md, section "Serving".

Loaded by the gunicorn master only (workers inherit what it set up).

No `preload_app`: each worker builds the app after gevent has patched threading, so every lock
the app creates (the engine's, the ledger's, the JWKS cache's) is cooperative.
"""

import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile


def _port(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise SystemExit(f"PORT must be a number from 1 to 65535, got {raw!r}")
    return int(raw)


def _workers(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise SystemExit(f"WORKERS must be a number from 1 to 64, got {raw!r}")
    return int(raw)


def _host(raw: str) -> str:
    if not raw or any(c.isspace() or c in "/@" for c in raw):
        raise SystemExit(f"HOST must be a host name or address, got {raw!r}")
    return f"[{raw}]" if ":" in raw and not raw.startswith("[") else raw


# ---- worker model (issue 10) -------------------------------------------------------------
# Loopback unless HOST says otherwise: in open mode nothing checks who calls.
bind = f"{_host(os.environ.get('HOST', '127.0.0.1'))}:{_port(os.environ.get('PORT', '8080'))}"
workers = _workers(os.environ.get("WORKERS", "2"))  # about one per core: the engine is CPU-bound
# gevent, taking turns between keep-alive connections after each response (a pipelining client
# would otherwise keep its worker to itself): cds_service/web/gevent_worker.py
worker_class = "cds_service.web.gevent_worker.FairGeventWorker"
worker_connections = 1000  # open connections per worker (slow ones included)
timeout = 30  # a worker silent this long is restarted
graceful_timeout = 10
keepalive = 5
max_requests = 5000
max_requests_jitter = 500
accesslog = "-"
# gunicorn >= 25 opens an admin control socket at one fixed path per user: several instances on a
# host would fight over it, and nothing here uses it
control_socket_disable = True


def on_starting(server):
    """Once, in the master, before any worker: refuse unsafe settings and bring the feedback
    store's schema to the newest revision (workers only check it). See cds_service/cli/prestart.py."""
    if subprocess.run([sys.executable, "-m", "cds_service.cli.prestart"]).returncode != 0:
        raise SystemExit(1)


# ---- Prometheus multiprocess metrics (cds_service/metrics.py) --------------------------------
# Every worker writes its metric values to files in PROMETHEUS_MULTIPROC_DIR and /metrics sums
# them, so a scrape answered by any worker covers the whole instance. The directory must be set
# before the app (and prometheus_client) is imported, which is why it happens here at config load
# and not in a server hook (with preload_app the app is imported before on_starting runs). Files
# of a previous run would be summed as if they were live, so the directory is emptied once per
# master (not again when a HUP re-reads this file). Without the variable a fresh temporary
# directory is used; in a container give it an emptyDir/tmpfs (see deploy/).
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _metrics_dir:
    _metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="legmove-metrics-")
    _master_pid = os.getpid()
    # remove the directory we made when the master exits (forked workers inherit this handler: skip there)
    atexit.register(lambda: os.getpid() == _master_pid and shutil.rmtree(_metrics_dir, ignore_errors=True))
if os.environ.get("GUNICORN_METRICS_WIPED_BY") != str(os.getpid()):
    os.environ["GUNICORN_METRICS_WIPED_BY"] = str(os.getpid())
    os.makedirs(_metrics_dir, exist_ok=True)
    for _stale in glob.glob(os.path.join(_metrics_dir, "*.db")):  # only prometheus_client's own files
        os.remove(_stale)


def post_worker_init(worker):
    """In each worker, once the app, its rules and its knowledge are built: move every object that
    exists now into the permanent generation (`gc.freeze`). They live as long as the worker, and a
    full collection would otherwise walk them all again (hundreds of thousands of objects: the
    FHIR models, SQLAlchemy, the rule registry) whenever a large chart's parse triggers one."""
    import gc

    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    """A worker ended (recycled by max_requests, killed, or timed out): drop its live gauges, or
    `legmove_http_requests_in_flight` would count a dead worker's requests forever. Its counters
    and histograms stay in the sum, as counters must."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# ---- end of the Prometheus block ---------------------------------------------------------------
