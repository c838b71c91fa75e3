"""The benchmark's floor: an endpoint in the same server that does the unavoidable part of a
hook call (receive the body, parse it as the hook endpoint does, answer JSON) and nothing else.

Latency and throughput of the real hook endpoints are reported against it, so a benchmark run
says how much the service adds on top of Flask, gunicorn and JSON. Registered only when
`BENCH_FLOOR` is true; never in a deployment.
"""

from __future__ import annotations

from flask import Blueprint

from cds_service.web.api import json_response, read_json

bp = Blueprint("bench_floor", __name__)


@bp.post("/bench/floor")
def floor():
    """Parse the body like a hook call, return no cards."""
    body = read_json()
    return json_response({"cards": [], "parsedKeys": len(body) if isinstance(body, dict) else 0})


def init_app(app) -> None:
    if app.config.get("BENCH_FLOOR"):
        app.register_blueprint(bp)
