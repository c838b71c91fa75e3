"""Prometheus metrics: what an operations team watches, and `GET /metrics` to scrape it.

Instrumentation lives here so that the modules doing the work carry one-line hooks only
(api.py after a hook call, fhir_client.py around each FHIR request). Under gunicorn every worker
is its own process: prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set and
wiped at master start by gunicorn.conf.py) lets each worker write its values to files that
`/metrics` sums, so any worker answers a scrape with the whole instance's numbers. Outside
gunicorn (tests, a threaded dev server) the process-local registry is used.

Label values are bounded: a service id from the URL is a label only when it names one of our
services, hooks only when parsed and accepted, and endpoints are route templates, never paths.
No patient data is ever a label.
"""

from __future__ import annotations

import functools
import os
import re
import time

import requests
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

bp = Blueprint("metrics", __name__)

# A hook call is ~2-30 ms in process and bounded by the FHIR deadline (3 s by default) when it reads
# a server; the buckets resolve both ends.
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0)

HOOK_CALLS = Histogram(
    "legmove_hook_call_duration_seconds",
    "Hook calls by service, hook and HTTP status, end to end inside the service",
    ["service", "hook", "status"],
    buckets=_CALL_BUCKETS,
)
STAGES = Histogram(
    "legmove_evaluation_stage_duration_seconds",
    "Time per stage of a hook call: data (prefetch/FHIR), facts, engine (rule evaluation), cards",
    ["hook", "stage"],
    buckets=_STAGE_BUCKETS,
)
CARDS = Counter("legmove_cards_total", "Cards returned, by hook, rule and indicator", ["hook", "rule", "indicator"])
FHIR_FETCHES = Histogram(
    "legmove_fhir_fetch_duration_seconds",
    "Requests to a client's FHIR server (one per page), by outcome",
    ["outcome"],
    buckets=_CALL_BUCKETS,
)
FHIR_ERRORS = Counter(
    "legmove_fhir_fetch_errors_total",
    "Failed requests to a client's FHIR server, by outcome (timeout, connection_error, "
    "http_4xx, http_5xx, deadline, too_large, invalid_response, transport_error)",
    ["outcome"],
)
RESPONSES = Counter(
    "legmove_http_responses_total", "HTTP responses by route template and status", ["endpoint", "status"]
)
# livesum: a worker that died mid-request is dropped by gunicorn.conf.py's child_exit hook
IN_FLIGHT = Gauge(
    "legmove_http_requests_in_flight",
    "Requests being handled now (summed over live workers)",
    multiprocess_mode="livesum",
)


def init_app(app: Flask) -> None:
    """Count every response (401s from client auth included) and serve `/metrics`."""
    app.before_request(_request_started)
    app.after_request(_response_sent)
    app.teardown_request(_request_finished)
    app.register_blueprint(bp)


def _request_started() -> None:
    g.legmove_metrics_in_flight = True
    IN_FLIGHT.inc()


def _response_sent(response: Response) -> Response:
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    RESPONSES.labels(endpoint, str(response.status_code)).inc()
    return response


def _request_finished(_exc) -> None:
    if g.pop("legmove_metrics_in_flight", False):
        IN_FLIGHT.dec()


# ---- hooks called from the modules doing the work --------------------------------------------


def hook_call_answered(record: dict, known_services) -> None:
    """api.py, once per hook call, from the record it logs (service, hook, status, total_ms)."""
    service = record["service"] if record["service"] in known_services else "unknown"
    HOOK_CALLS.labels(service, record.get("hook", "unknown"), str(record["status"])).observe(record["total_ms"] / 1000)


def advice_given(hook: str, cards: list[dict], timings_ms: dict[str, float]) -> None:
    """api.py, after the advice is computed: cards per rule and indicator, and stage times."""
    for card in cards:
        rule = card.get("extension", {}).get("org.legmove-cds.explanation", {}).get("rule", "unknown")
        CARDS.labels(hook, rule, card.get("indicator", "unknown")).inc()
    for stage, ms in timings_ms.items():
        STAGES.labels(hook, stage).observe(ms / 1000)


def timed_fhir_fetch(get):
    """Decorator for the FHIR client's single-request method: latency and outcome per request."""

    @functools.wraps(get)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        outcome = "ok"
        try:
            return get(*args, **kwargs)
        except Exception as exc:
            outcome = fhir_outcome(exc)
            FHIR_ERRORS.labels(outcome).inc()
            raise
        finally:
            FHIR_FETCHES.labels(outcome).observe(time.perf_counter() - started)

    return wrapper


_HTTP_STATUS = re.compile(r"\bHTTP ([1-5])\d\d\b")


def fhir_outcome(exc: BaseException) -> str:
    """A small fixed set of outcomes, from the transport error behind the failure or its message."""
    cause = exc.__cause__
    if isinstance(cause, requests.Timeout):
        return "timeout"
    if isinstance(cause, requests.ConnectionError):
        return "connection_error"
    if isinstance(cause, requests.RequestException):
        return "transport_error"
    message = str(exc)
    status = _HTTP_STATUS.search(message)
    if status:
        return f"http_{status.group(1)}xx"
    if "deadline" in message:
        return "deadline"
    if "larger than" in message:
        return "too_large"
    return "invalid_response"


# ---- the scrape endpoint ------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


@bp.get("/metrics")
def scrape():
    """Prometheus text format. Not for the public side: see README "Running in production"."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
