"""Benchmark of the running service, side by side with a floor. Run with `make bench`.

It starts the service the way `make run` does (same recipe, read from the Makefile; feedback
store and card recording on), drives it over loopback with wrk at several connection counts,
and prints median, p95 and p99 latency and throughput for:

- the floor: `POST /bench/floor` in the same server, which parses the same body and answers no cards;
- patient-view for generated patients with 20, 200, 2,000 and 20,000 prefetched resources;
- the Synthea charts (every chart in turn, prefetch filled from the whole chart);
- order-select with a selected draft order;
- the `fhirServer` path: the same Synthea patients on a sekmet-fhir server, no prefetch.

It then measures the in-process split of one call per series (parse, data, facts, engine, cards,
the rest: validation, recording, logging), peak memory per worker, and how the two cores were
shared between wrk and the workers. Results go to docs/benchmarks.md with a latency chart.
Budgets are reported, never asserted: a benchmark is not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workload  # noqa: E402
from bench.processes import ROOT, FhirServer, Service, cpu_seconds, peak_rss_mb  # noqa: E402

LUA = Path(__file__).with_name("wrk_bodies.lua")
SIZES = (20, 200, 2000, 20000)
BODY_LIMIT = 64 * 1024 * 1024  # LEGMOVE_MAX_CONTENT_LENGTH for the run: a 20,000-resource chart is ~7 MB


@dataclass
class Series:
    name: str
    path: str
    bodies: list[Path]
    resources: int | None = None  # prefetched resources per call, for the chart
    connections: tuple[int, ...] = (1, 8, 32)
    runs: dict[int, dict] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", default="1,8,32")
    parser.add_argument("--synthea", type=Path, default=ROOT.parent / "shared" / "data" / "synthea")
    parser.add_argument("--fhir-charts", type=int, default=24, help="Synthea charts loaded into the FHIR server")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated words: run only the series whose name contains "
        "one of them (the floor always runs); the report is then printed, not written",
    )
    args = parser.parse_args()
    connections = tuple(int(c) for c in args.connections.split(","))
    if not _have("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="legmove-bench-"))
    env = {
        "LEGMOVE_FEEDBACK_STORE": json.dumps(f"sqlite:///{work / 'feedback.sqlite3'}"),
        "LEGMOVE_REPLAY_STORE": json.dumps(f"sqlite:///{work / 'replay.sqlite3'}"),
        "LEGMOVE_MAX_CONTENT_LENGTH": str(BODY_LIMIT),
        "LEGMOVE_BENCH_FLOOR": "true",
    }
    os.environ.update(env)  # the in-process split below builds the same app
    service = Service(work, env)
    fhir = FhirServer(work / "sekmet")
    try:
        discovery = requests.get(f"{service.base_url}/cds-services", timeout=5).json()
        series = build_series(discovery, work, args.synthea, fhir, args.fhir_charts, connections)
        if args.only:
            words = [w.strip() for w in args.only.split(",") if w.strip()]
            series = [s for s in series if s is series[0] or any(w in s.name for w in words)]
        started = datetime.now(UTC)
        for s in series:
            for c in s.connections:
                s.runs[c] = drive(service, s, c, args.duration)
                _print_run(s, c)
        split = in_process_split(series)
        peaks = {pid: peak_rss_mb(pid) for pid in service.workers()}
        report = render(series, split, peaks, service.command, started, args)
        if args.only:
            print(report)
            return
        args.out.write_text(report + kept_notes(args.out), encoding="utf-8")
        chart(series, args.out.with_name("benchmarks-latency.png"))
        print(f"\nwrote {args.out} and {args.out.with_name('benchmarks-latency.png')}")
    finally:
        service.stop()
        fhir.stop()


def _have(tool: str) -> bool:
    return subprocess.run(["which", tool], capture_output=True).returncode == 0


def build_series(
    discovery: dict, work: Path, synthea: Path, fhir: FhirServer, fhir_charts: int, connections: tuple[int, ...]
) -> list[Series]:
    today = date.today()
    pv_types = workload.template_types(discovery, "patient-view")
    os_types = workload.template_types(discovery, "order-select")
    pv_path = f"/cds-services/{workload.service_id(discovery, 'patient-view')}"
    os_path = f"/cds-services/{workload.service_id(discovery, 'order-select')}"
    n = 0

    def write(name: str, call: dict) -> Path:
        nonlocal n
        n += 1
        path = work / f"{name}-{n}.json"
        path.write_text(json.dumps(call), encoding="utf-8")
        return path

    out: list[Series] = []
    floor_patient, floor_resources = workload.generated_patient(0, 200, today)
    floor_body = write(
        "floor",
        workload.patient_view(floor_patient["id"], workload.prefetch_for(floor_resources, floor_patient, pv_types), 0),
    )
    out.append(Series("floor (no-op, 200-resource body)", "/bench/floor", [floor_body], 200, connections))
    for size in SIZES:
        bodies = []
        for i in range(2 if size >= 20000 else 8):
            patient, resources = workload.generated_patient(i, size, today)
            bodies.append(
                write(
                    f"pv{size}",
                    workload.patient_view(patient["id"], workload.prefetch_for(resources, patient, pv_types), i),
                )
            )
        out.append(
            Series(f"patient-view, {size:,} resources", pv_path, bodies, size, connections if size < 20000 else (1, 8))
        )
    drafts = []
    for i in range(8):
        patient, resources = workload.generated_patient(100 + i, 200, today)
        drafts.append(write("order-select", workload.order_select(patient, resources, os_types, i)))
    out.append(Series("order-select with a draft, 200 resources", os_path, drafts, 200, connections))
    files = workload.synthea_files(synthea)
    if files:
        bodies = []
        for i, path in enumerate(files):
            patient, resources = workload.synthea_chart(path)
            bodies.append(
                write(
                    "synthea",
                    workload.patient_view(patient["id"], workload.prefetch_for(resources, patient, pv_types), i),
                )
            )
        sizes = [len(json.loads(b.read_text())["prefetch"].get("labs", {}).get("entry", [])) for b in bodies]
        out.append(
            Series(
                f"patient-view, {len(files)} Synthea charts (whole chart in prefetch)",
                pv_path,
                bodies,
                None,
                connections,
            )
        )
        print(f"Synthea: {len(files)} charts, {statistics.median(sizes):.0f} Observations median")
        fhir_bodies = []
        for i, path in enumerate(files[:fhir_charts]):
            uuid, bundle = workload.synthea_transaction(path)
            fhir.post_transaction(bundle)
            call = workload.patient_view(fhir.patient_id(uuid), None, 1000 + i)
            call["fhirServer"] = fhir.base_url
            call["fhirAuthorization"] = {
                "access_token": fhir.TOKEN,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "legmove-bench",
                "patient": call["context"]["patientId"],
            }
            fhir_bodies.append(write("fhir", call))
        out.append(
            Series(
                f"patient-view via fhirServer, {len(fhir_bodies)} Synthea charts on sekmet-fhir",
                pv_path,
                fhir_bodies,
                None,
                connections,
            )
        )
    else:
        print(f"no Synthea charts under {synthea}: those series are skipped")
    return out


class _WorkerSampler(threading.Thread):
    """Reads every worker's CPU time and VmHWM five times a second while wrk runs.

    gunicorn recycles a worker after max_requests calls (as `make run` does): the old process
    exits mid-run, and reading /proc only after the run would lose its CPU time and its peak
    memory (a 20,000-resource run once reported a 118 MB peak because the workers that had
    held the large bodies were gone). Sampled, an exited worker loses at most its last 0.2 s."""

    def __init__(self, service: Service):
        super().__init__(daemon=True)
        self.service = service
        self.first: dict[int, float] = {pid: cpu_seconds(pid) for pid in service.workers()}
        self.last: dict[int, float] = dict(self.first)
        self.peak_mb = 0.0
        self.stopping = threading.Event()

    def sample(self) -> None:
        for pid in self.service.workers():
            cpu = cpu_seconds(pid)
            if cpu:
                self.first.setdefault(pid, 0.0)  # a worker started during the run counts from zero
                self.last[pid] = cpu
            self.peak_mb = max(self.peak_mb, peak_rss_mb(pid))

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            self.sample()

    def finish(self) -> tuple[float, float]:
        """(worker CPU seconds during the run, highest VmHWM of any worker)."""
        self.stopping.set()
        self.join()
        self.sample()
        return sum(self.last[pid] - self.first[pid] for pid in self.last), self.peak_mb


def drive(service: Service, s: Series, connections: int, duration: int) -> dict:
    """One wrk run; CPU time of wrk (this process's children) is read around it, the workers'
    CPU time and peak memory sampled during it (`_WorkerSampler`)."""
    probe = speed_probe()
    sampler = _WorkerSampler(service)
    sampler.start()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        f"{service.base_url}{s.path}",
        "--",
        *map(str, s.bodies),
    ]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    finally:
        workers_cpu, peak_mb = sampler.finish()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    result = json.loads(line[len("WRKJSON ") :])
    seconds = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / seconds if seconds else 0.0
    result["wrk_cpu"] = (
        (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    ) / seconds
    result["workers_cpu"] = workers_cpu / seconds
    result["peak_rss_mb"] = peak_mb
    result["probe"] = probe
    return result


def speed_probe(seconds: float = 0.2) -> float:
    """Millions of iterations per second of a fixed Python loop, run on one core just before a run
    while the service is idle. On a shared host the same code has run 1.6 times slower in one
    minute than in the next (every stage alike); a probe that moves between rows says the host's
    speed changed, not the service's."""
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            count += 1
    return count / seconds / 1e6


def _print_run(s: Series, c: int) -> None:
    r = s.runs[c]
    print(
        f"{s.name:<62} c={c:<3} p50 {r['p50_us'] / 1000:8.2f} ms  p95 {r['p95_us'] / 1000:8.2f}  "
        f"p99 {r['p99_us'] / 1000:8.2f}  {r['rps']:8.1f} req/s  non-2xx {r['non2xx']}  "
        f"cpu wrk {r['wrk_cpu']:.2f} workers {r['workers_cpu']:.2f}"
    )


# ---- in-process split ----------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "hook_call":
            self.records.append({"total_ms": record.total_ms, **(getattr(record, "timings_ms", None) or {})})


# stages the hook_call log record times; "store" is suppression plus recording the call and its cards
STAGES = ("data", "facts", "engine", "cards", "store")
REST = "rest (request, validation, log)"


def in_process_split(series: list[Series]) -> dict[str, dict[str, float]]:
    """Median milliseconds per stage over up to ten bodies of each series, through the app in this
    process (the hook_call log record carries the stages; JSON parsing is timed on its own, the way
    the service parses)."""
    import gc

    from cds_service.app import create_app
    from cds_service.web.api import _parse

    app = create_app("development", LOG_LEVEL="INFO")
    gc.collect()
    gc.freeze()  # as each worker does once its app is built (gunicorn.conf.py, post_worker_init)
    handler = _Records()
    logging.getLogger().addHandler(handler)
    for h in logging.getLogger().handlers:
        if h is not handler:
            h.setLevel(logging.ERROR)  # keep the console quiet; the records still reach `handler`
    client = app.test_client()
    split = {}
    for s in series:
        if s.path == "/bench/floor" or "fhirServer" in s.name:
            continue
        bodies = [b.read_bytes() for b in s.bodies[:10]]  # several patients: one may be deceased, say
        repeat = 5 if len(bodies[0]) > 2_000_000 else 40
        handler.records.clear()
        parse = []
        for number in range(repeat):
            body = bodies[number % len(bodies)]
            started = time.perf_counter()
            _parse(body)  # what the service's read_json does (orjson; the GC paused for a large body)
            parse.append((time.perf_counter() - started) * 1000)
            client.post(s.path, data=body, content_type="application/json")
        records = handler.records[1:] or handler.records
        stages = {key: statistics.median(r.get(key, 0.0) for r in records) for key in STAGES}
        total = statistics.median(r["total_ms"] for r in records)
        stages["json parse"] = statistics.median(parse)
        stages[REST] = max(0.0, total - sum(stages.values()))
        stages["total"] = total
        split[s.name] = {k: round(v, 2) for k, v in stages.items()}
    logging.getLogger().removeHandler(handler)
    return split


# ---- report --------------------------------------------------------------------------------


def render(series: list[Series], split: dict, peaks: dict, command: str, started: datetime, args) -> str:
    floor = series[0]
    # with --only, a budget's series may not have run: that budget is then reported as not run
    pv200 = next((s for s in series if s.name.startswith("patient-view, 200 ")), None)
    pv20k = next((s for s in series if s.name.startswith("patient-view, 20,000")), None)
    lines = [
        "# Benchmarks",
        "",
        f"Run of {started:%Y-%m-%d %H:%M} UTC with `make bench` on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {args.duration} s per run, wrk over loopback. The service was started "
        f"with the `make run` recipe:",
        "",
        f"    {command}",
        "",
        "Feedback store (SQLite) and card recording were on, as in `make run`. Latency in milliseconds; "
        "throughput in requests per second; CPU is the share of one core used by wrk and by all workers "
        "together during the run (2.00 = both cores), and per answered call. Load average when the report "
        "was written (1, 5, 15 min): "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + " (above 2, other work shared the cores). The speed probe is a fixed Python loop on one core just "
        "before each run (millions of iterations per second): where it moves, the host's speed moved.",
        "",
        "| series | conns | p50 | p95 | p99 | req/s | % of floor | non-2xx | CPU wrk | CPU workers "
        "| worker CPU ms per call | speed probe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in series:
        for c, r in s.runs.items():
            base = floor.runs.get(c, {}).get("rps")
            share = f"{100 * r['rps'] / base:.0f} %" if base and s is not floor else ""
            lines.append(
                f"| {s.name} | {c} | {r['p50_us'] / 1000:.1f} | {r['p95_us'] / 1000:.1f} | "
                f"{r['p99_us'] / 1000:.1f} | {r['rps']:.0f} | {share} | {r['non2xx']} | "
                f"{r['wrk_cpu']:.2f} | {r['workers_cpu']:.2f} | {_cpu_per_call(r)} | {r.get('probe', 0):.1f} |"
            )
    lines += [
        "",
        "![p50 and p99 latency against prefetch size, 8 connections](benchmarks-latency.png)",
        "",
        "## Where one call spends its time (in process, median ms)",
        "",
        "Stages: json parse (orjson, timed on its own), data (prefetch and FHIR reads), facts, engine, cards "
        "(rendering and validating suggestions), store (suppression lookups and recording the call and its "
        "cards), rest (Flask, request checks, logging).",
        "",
        "| series | json parse | data | facts | engine | cards | store | rest | total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, st in split.items():
        lines.append(
            f"| {name} | {st['json parse']} | {st['data']} | {st['facts']} | {st['engine']} | {st['cards']} | "
            f"{st['store']} | {st[REST]} | {st['total']} |"
        )
    lines += [
        "",
        "Peak resident memory (VmHWM) of the workers alive after all runs: "
        + ", ".join(f"{mb:.0f} MB" for mb in peaks.values())
        + f"; the highest of any worker during the runs (sampled, recycled workers included): "
        f"{highest_peak(series, peaks):.0f} MB.",
        "",
        "## Budgets",
        "",
    ]
    lines += ["| budget | measured | met |", "|---|---|---|"]
    verdicts = budgets(floor, pv200, pv20k, highest_peak(series, peaks))
    lines += [f"| {name} | {value} | {verdict} |" for name, value, verdict in verdicts]
    lines.append("")
    return "\n".join(lines)


def highest_peak(series: list[Series], peaks: dict) -> float:
    """The memory budget's figure: the highest VmHWM seen during any run or after the last."""
    during = [r.get("peak_rss_mb", 0.0) for s in series for r in s.runs.values()]
    return max([*during, *peaks.values()], default=0.0)


def _cpu_per_call(run: dict) -> str:
    """Worker CPU milliseconds per answered call: what the throughput ratio comes down to, and a
    figure that holds when wrk or other work takes part of the cores (the ratio does not)."""
    return f"{1000 * run['workers_cpu'] / run['rps']:.2f}" if run.get("rps") else ""


def budgets(floor: Series, pv200: Series | None, pv20k: Series | None, memory: float) -> list[tuple[str, str, str]]:
    """(budget, measured, verdict) for the four budgets; a series left out by --only is "not run"."""
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    pv200_8, floor_8 = (pv200.runs.get(8) if pv200 else None), floor.runs.get(8)
    if pv200 is None or pv200_8 is None:
        for name in (THROUGHPUT_BUDGET, P99_BUDGET):
            out.append((name, "not run", "not run"))
    else:
        share = pv200_8["rps"] / floor_8["rps"] if _answered(pv200_8) and _answered(floor_8) else 0
        p99 = pv200_8["p99_us"] / 1000 if _answered(pv200_8) else float("inf")
        out.append((THROUGHPUT_BUDGET, f"{100 * share:.0f} %", verdict(share >= 0.6)))
        out.append((P99_BUDGET, f"{p99:.1f} ms", verdict(p99 < 50)))
    # one call at a time: at 8 connections a 20,000-resource call also waits for the 7 ahead of it
    big_run = pv20k.runs.get(1) if pv20k else None
    if big_run is None:
        out.append((LARGE_BUDGET, "not run", "not run"))
    else:
        big = big_run["p99_us"] / 1000 if _answered(big_run) else float("inf")
        errors = big_run["non2xx"] + big_run["socket_errors"]
        measured = f"{big:.0f} ms, {errors} errors" + ("" if _answered(big_run) else ", no call answered")
        out.append((LARGE_BUDGET, measured, verdict(big < 1000 and errors == 0)))
    out.append(("worker memory under 200 MB", f"{memory:.0f} MB", verdict(0 < memory < 200)))
    return out


THROUGHPUT_BUDGET = "throughput at 200 resources, 8 connections, at least 60 % of the floor"
P99_BUDGET = "p99 under 50 ms at 200 resources, 8 connections"
LARGE_BUDGET = "20,000 resources answered in under 1 s (p99 at 1 connection, every call answered 200)"


NOTES = "<!-- notes: written by hand, kept by bench/run.py when it rewrites the tables above -->"


def kept_notes(path: Path) -> str:
    """The hand-written part of the report (from the NOTES marker on), carried over to the new run."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return "\n" + text[text.index(NOTES) :] if NOTES in text else ""


def _answered(run: dict | None) -> bool:
    """A run counts towards a budget only if it answered at least one call, and every call with a 2xx:
    a series whose calls all failed has no latency worth comparing (wrk reports 0 for it)."""
    return bool(run) and run["requests"] > 0 and run["non2xx"] + run["socket_errors"] == 0


def chart(series: list[Series], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sized = [s for s in series if s.resources and s.path != "/bench/floor" and s.name.startswith("patient-view")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("p50_us", "p50"), ("p99_us", "p99")):
        points = [(s.resources, s.runs[8][key] / 1000) for s in sized if 8 in s.runs]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"patient-view {label}")
    floor = series[0].runs.get(8)
    if floor:
        ax.axhline(floor["p50_us"] / 1000, color="grey", linestyle="--", label="floor p50 (200 resources)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prefetched resources per call")
    ax.set_ylabel("latency (ms), 8 connections")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
