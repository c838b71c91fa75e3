"""Gunicorn settings: `gunicorn -c gunicorn.conf.py 'cds_service.app:create_app()'`.

This file is loaded by the gunicorn master only (workers inherit what it set up).
"""
import atexit
import glob
import os
import shutil
import tempfile

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


def child_exit(server, worker):
    """A worker ended (recycled by max_requests, killed, or timed out): drop its live gauges, or
    `legmove_http_requests_in_flight` would count a dead worker's requests forever. Its counters
    and histograms stay in the sum, as counters must."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
# ---- end of the Prometheus block ---------------------------------------------------------------
