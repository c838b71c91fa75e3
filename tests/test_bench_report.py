"""The benchmark's budget verdicts (bench/run.py): a run that answered nothing never meets a budget."""

import sys
from argparse import Namespace
from datetime import UTC, datetime

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench.run import REST, STAGES, Series, render  # noqa: E402


def _run(rps=100.0, p99_ms=10.0, requests=1000, non2xx=0, errors=0) -> dict:
    return {
        "requests": requests,
        "rps": rps,
        "p50_us": 1000,
        "p95_us": 2000,
        "p99_us": int(p99_ms * 1000),
        "non2xx": non2xx,
        "socket_errors": errors,
        "wrk_cpu": 0.1,
        "workers_cpu": 1.9,
    }


def _series(pv200: dict, pv20k: dict[int, dict]) -> list[Series]:
    floor = Series("floor (no-op, 200-resource body)", "/bench/floor", [], 200)
    floor.runs = {1: _run(rps=300), 8: _run(rps=600)}
    s200 = Series("patient-view, 200 resources", "/cds-services/x", [], 200)
    s200.runs = {8: pv200}
    s20k = Series("patient-view, 20,000 resources", "/cds-services/x", [], 20000)
    s20k.runs = pv20k
    return [floor, s200, s20k]


def _verdicts(series, peaks=None) -> dict[str, str]:
    split = {"patient-view, 200 resources": {**{k: 1.0 for k in STAGES}, "json parse": 1.0, REST: 1.0, "total": 7.0}}
    text = render(
        series,
        split,
        peaks or {1: 150.0},
        "make run",
        datetime(2026, 12, 3, tzinfo=UTC),
        Namespace(duration=5),
    )
    rows = [line.strip("|").split("|") for line in text.split("## Budgets")[1].splitlines() if line.startswith("| ")]
    return {name.strip(): met.strip() for name, _, met in rows[1:]}


def test_budgets_met_when_the_numbers_are():
    verdicts = _verdicts(_series(_run(rps=400, p99_ms=40), {1: _run(p99_ms=800), 8: _run(p99_ms=5000)}))
    assert set(verdicts.values()) == {"met"}, verdicts  # the 20,000 budget reads the 1-connection run


def test_a_series_that_answered_nothing_meets_no_budget():
    nothing = _run(rps=0, p99_ms=0, requests=0)
    verdicts = _verdicts(_series(nothing, {1: nothing}))
    assert [v for k, v in verdicts.items() if "memory" not in k] == ["**not met**"] * 3, verdicts


def test_failed_calls_fail_the_budget():
    verdicts = _verdicts(_series(_run(rps=400, p99_ms=1, non2xx=5), {1: _run(p99_ms=1, errors=1)}), {1: 0.0})
    assert set(verdicts.values()) == {"**not met**"}, verdicts


def test_a_report_of_some_series_marks_the_other_budgets_not_run():
    """`make bench BENCH_ARGS="--only 200"` runs the floor and the 200-resource series: the report is
    printed with the 20,000-resource budget marked "not run" (it used to stop with StopIteration)."""
    floor, s200, _ = _series(_run(rps=400, p99_ms=40), {})
    verdicts = _verdicts([floor, s200])
    assert verdicts[next(k for k in verdicts if k.startswith("20,000"))] == "not run"
    assert verdicts[next(k for k in verdicts if k.startswith("p99"))] == "met"
    assert set(_verdicts([floor]).values()) == {"not run", "met"}  # memory is always measured


def test_each_run_reports_worker_cpu_per_call():
    floor, s200, s20k = _series(_run(rps=400, p99_ms=40), {1: _run(rps=0, requests=0)})
    text = render(
        [floor, s200, s20k], {}, {1: 150.0}, "make run", datetime(2026, 12, 4, tzinfo=UTC), Namespace(duration=5)
    )
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line.split("|") for line in text.splitlines()}
    assert rows[("patient-view, 200 resources", "8")][-3].strip() == "4.75"  # 1.9 CPU-s/s over 400 calls/s
    assert rows[("patient-view, 20,000 resources", "1")][-3].strip() == ""  # nothing answered: no figure


def test_the_memory_budget_reads_the_highest_peak_of_any_run():
    """A worker recycled by max_requests takes its peak with it: the peak sampled during a run counts."""
    series = _series(_run(rps=400, p99_ms=40), {1: _run(p99_ms=800)})
    series[2].runs[1]["peak_rss_mb"] = 230.0  # the worker that held the 20,000-resource bodies
    verdicts = _verdicts(series, {1: 118.0})  # the workers alive at the end
    assert verdicts["worker memory under 200 MB"] == "**not met**"
