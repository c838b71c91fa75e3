"""Health checks for load balancers and orchestrators, open without a client JWT.

- `GET /health` is liveness: the process is up and its app was built (knowledge loaded, rules
  compiled; a defect there stops start-up). It never looks at the databases: a database outage
  must take instances out of the load balancer, not make an orchestrator restart all of them.
- `GET /health/ready` is readiness: the rules are registered and the engine evaluates, the
  feedback store answers (and has its tables), and the JWT replay store answers when client auth
  uses one. Any failing check gives 503, so the instance gets no hook calls until it recovers.

Bodies follow the shape of the IETF draft "Health Check Response Format for HTTP APIs"
(draft-inadarei-api-health-check): `status` pass/fail and one entry per check. They name the
kind of failure only (an exception type), never a URL, host or credential.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor, wait

from flask import Blueprint, Response, current_app
from sqlalchemy import inspect

from cds_service.authoring.rulebook import CARD

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)
MEDIA_TYPE = "application/health+json"


class CheckFailed(Exception):
    """A dependency answered, but not as a ready instance needs."""


def _respond(body: dict, status: int) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        mimetype=MEDIA_TYPE,
        headers={"Cache-Control": "no-store"},
    )


@bp.get("/health")
def live():
    return _respond({"status": "pass", "serviceId": current_app.config["SERVICE_NAME"]}, 200)


@bp.get("/health/ready")
def ready():
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # the proxy's target; Flask's stubs type the proxy as Flask
    checks = {
        "rules": lambda: _rules(app),
        "feedback_store": lambda: _feedback_store(app),
        "replay_store": lambda: _replay_store(app),
    }
    timeout = float(app.config["HEALTH_CHECK_TIMEOUT"])
    # the checks run side by side under one deadline, so a hanging database cannot hang the probe
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="legmove-health")
    try:
        futures = {name: pool.submit(check) for name, check in checks.items()}
        wait(futures.values(), timeout=timeout)
        results = {name: _result(name, future, timeout) for name, future in futures.items()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    passed = all(r["status"] in ("pass", "skipped") for r in results.values())
    return _respond({"status": "pass" if passed else "fail", "checks": results}, 200 if passed else 503)


def _result(name: str, future, timeout: float) -> dict:
    if not future.done():
        log.warning("readiness check %s did not answer within %.1f s", name, timeout)
        return {"status": "fail", "output": f"no answer within {timeout:g} s"}
    try:
        output = future.result()
    except CheckFailed as exc:
        log.warning("readiness check %s failed: %s", name, exc)
        return {"status": "fail", "output": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency means "not ready"
        cause = _named_cause(exc)
        log.warning("readiness check %s failed: %s", name, type(cause).__name__)
        return {"status": "fail", "output": type(cause).__name__}
    if output == "skipped":
        return {"status": "skipped", "output": "not used by this configuration"}
    return {"status": "pass", "output": output}


def _named_cause(exc: BaseException) -> BaseException:
    """The failure a readiness check names: through our own wrappers (StoreUnavailable) to the
    library's error (OperationalError), and no further. Libraries chain their own causes too
    (redis-py 8.2 raises its ConnectionError from the socket's ConnectionRefusedError): their error
    is the stable, documented name an operator searches for, so it is where the walk stops."""
    while exc.__cause__ is not None and type(exc).__module__.split(".")[0] == "cds_service":
        exc = exc.__cause__
    return exc


def _rules(app) -> str:
    knowledge = app.extensions["legmove"]
    cards = [s for s in knowledge.specs.values() if s.stratum == CARD]
    if not cards:
        raise CheckFailed("no card rules are registered")
    idle = sorted(f"{sid}/{hook}" for (sid, hook), service in knowledge.services.items() if not service.rule_ids)
    if idle:
        raise CheckFailed(f"services without rules: {', '.join(idle)}")
    knowledge.engine.evaluate([])  # the compiled ruleset still runs (a sentinel rule always fires)
    return f"{len(cards)} card rules and {len(knowledge.specs) - len(cards)} derivations compiled"


def _feedback_store(app) -> str:
    ledger = app.extensions.get("legmove_ledger")
    if ledger is None:
        return "skipped"
    with ledger.engine().connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        missing = [t for t in ("issued_card", "card_feedback") if not inspect(conn).has_table(t)]
    if missing:
        raise CheckFailed(f"feedback tables missing: {', '.join(missing)}")
    return f"{ledger.engine().dialect.name} answers"


def _replay_store(app) -> str:
    verifier = app.extensions.get("legmove_client_verifier")
    if verifier is None:
        return "skipped"
    verifier.store.ping()
    return f"{type(verifier.store).__name__} answers"
