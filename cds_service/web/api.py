"""HTTP surface: discovery and hook calls (CDS Hooks 2.0), as a Flask blueprint."""

from __future__ import annotations

import gc
import json
import logging
import math
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import orjson
from flask import Blueprint, Response, abort, current_app, request
from werkzeug.exceptions import HTTPException

from cds_service import metrics
from cds_service.advice import Knowledge, advise
from cds_service.fhir.prefetch import BadPrefetch, PreconditionFailed
from cds_service.hook_request import BadRequest, parse_hook_request
from cds_service.services import ALIASES, canonical_ids, services_at
from cds_service.store.feedback import BadFeedback, StoreUnavailable, parse_feedback
from cds_service.store.governance import draft_references, service_version
from cds_service.web.client_auth import ReplayStoreUnavailable, Unauthorized

log = logging.getLogger(__name__)
bp = Blueprint("cds", __name__)
OPENAPI = json.loads((Path(__file__).parent / "openapi.json").read_text(encoding="utf-8"))


def knowledge() -> Knowledge:
    return current_app.extensions["legmove"]


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def outcome(status: int, code: str, diagnostics: str) -> Response:
    """Every non-2xx carries an OperationOutcome without internals (CDS Hooks 2.0, section Error handling)."""
    issue = {"severity": "error", "code": code, "diagnostics": diagnostics}
    return json_response({"resourceType": "OperationOutcome", "issue": [issue]}, status)


@bp.before_request
def authenticate_client():
    """Every call but the CORS preflight (and discovery, unless configured) needs a valid client JWT."""
    verifier = current_app.extensions.get("legmove_client_verifier")
    if verifier is None or request.method == "OPTIONS":
        return None
    if request.path == "/openapi.json":
        return None  # describes the API, holds nothing about patients
    if request.path.rstrip("/") == "/cds-services" and not current_app.config["DISCOVERY_REQUIRES_AUTH"]:
        return None
    try:
        claims = verifier.verify(request.headers.get("Authorization"), request.path)
    except Unauthorized as exc:
        log.warning("401 on %s %s: %s", request.method, request.path, exc)
        return outcome(401, "security", "unauthorized")
    except ReplayStoreUnavailable as exc:
        log.error(
            "503 on %s %s: the JWT replay store (REPLAY_STORE) is unreachable: %s", request.method, request.path, exc
        )
        return outcome(503, "transient", "the service cannot verify callers right now; retry later")
    log.debug("client %s authenticated (jti %s)", claims["iss"], claims["jti"])
    return None


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 description of this surface (tests run schemathesis against it)."""
    return json_response(OPENAPI)


@bp.get("/cds-services", strict_slashes=False)
def discovery():
    versions = {"org.legmove-cds.versions": {"service": service_version(), "knowledge": knowledge().knowledge_version}}
    services = [{**s.discovery_entry(), "extension": versions} for s in knowledge().services.values()]
    return json_response({"services": services})


@bp.post("/cds-services/<service_id>", strict_slashes=False)
def call_service(service_id: str):
    started = time.perf_counter()
    record: dict[str, object] = {"event": "hook_call", "service": service_id}
    status = 500
    try:
        with GC_PAUSE.held(_large_call()):
            response = _call_service(service_id, record)
        status = response.status_code
        if service_id in ALIASES:
            response.headers["Deprecation"] = "true"  # RFC 9745: use the per-hook ids from discovery
            record["deprecated_alias"] = True
        return response
    except HTTPException as exc:
        # an abort() carrying a ready response (e.g. 413) has no code of its own
        status = exc.response.status_code if exc.response is not None else (exc.code or 500)
        record.setdefault("outcome", exc.name.lower() if exc.response is None else "rejected")
        raise
    finally:
        record.update(status=status, total_ms=round((time.perf_counter() - started) * 1000, 2))
        if status == 500:
            record.setdefault("outcome", "internal error")
        log.info("hook call answered %s", status, extra=record)
        metrics.hook_call_answered(record, {sid for (sid, _) in knowledge().services})


def _call_service(service_id: str, record: dict) -> Response:
    served = services_at(knowledge().services, service_id)
    if not served:
        record["outcome"] = "unknown service id"
        return outcome(404, "not-found", f"no CDS service with id '{service_id[:60]}'")
    if not request.mimetype or request.mimetype.lower() != "application/json":
        record["outcome"] = "not application/json"
        return outcome(415, "not-supported", "send the hook call as application/json")
    try:
        hook_request = parse_hook_request(read_json(), set(served))
    except (BadBody, BadRequest) as exc:
        record["outcome"] = str(exc)
        return outcome(400, "invalid", str(exc))
    record.update(hook=hook_request.hook, request_id=hook_request.hook_instance[:64])
    service = served[hook_request.hook]
    try:
        result = advise(hook_request, service, knowledge(), current_app.config)
    except BadPrefetch as exc:
        record["outcome"] = str(exc)
        return outcome(400, "invalid", str(exc))
    except PreconditionFailed as exc:
        record.update(outcome=str(exc), missing=sorted(exc.reasons), missing_reasons=exc.reasons)
        return outcome(412, "not-found", str(exc))
    cards = result.cards
    stored = time.perf_counter()
    governance = current_app.extensions.get("legmove_governance")
    if governance is not None:  # suppression by earlier feedback, and the call and card log
        decided = governance.apply(
            service.id,
            hook_request.hook,
            hook_request.patient_id,
            hook_request.fhir_server,
            draft_references(hook_request.draft_orders),
            result.cards,
            result.silent,
            record_issued=True,
        )  # the cards shown, in the call log's transaction
        cards = decided.cards
        record.update(silent=decided.silent, suppressed=decided.suppressed)
    else:
        ledger = current_app.extensions["legmove_ledger"]
        if cards and ledger is not None:
            ledger.record_issued(service.id, hook_request.hook, cards)  # the per-hook id, also via the alias
    # "store": suppression lookups and recording the call and its cards (governance, ledger)
    timings = {**result.timings_ms, "store": round((time.perf_counter() - stored) * 1000, 2)}
    record.update(
        rules=result.rule_ids,
        cards=len(cards),
        timings_ms=timings,
        fetched=result.fetched_keys,
        incomplete=result.incomplete_keys,
        missing=sorted(result.missing_keys),
        missing_reasons=result.missing_keys,
        outcome="cards",
    )
    metrics.advice_given(hook_request.hook, cards, timings)
    return json_response({"cards": cards})


@bp.post("/cds-services/<service_id>/feedback", strict_slashes=False)
def feedback(service_id: str):
    """CDS Hooks 2.0 Feedback: 200 with an empty body (and so no content type); unknown card
    uuids are counted and skipped. A card is matched at the id that issued it and, while it
    exists, at the deprecated alias standing for that id."""
    ledger = current_app.extensions["legmove_ledger"]
    if ledger is None or not services_at(knowledge().services, service_id):
        return outcome(404, "not-found", f"no feedback endpoint for '{service_id[:60]}'")
    if not request.mimetype or request.mimetype.lower() != "application/json":
        return outcome(415, "not-supported", "send feedback as application/json")
    try:
        items = parse_feedback(read_json())
        counts = ledger.record_feedback(service_id, canonical_ids(service_id), items)
    except (BadBody, BadFeedback) as exc:
        return outcome(400, "invalid", str(exc))
    except StoreUnavailable:
        log.error("feedback store unavailable")
        return outcome(503, "transient", "feedback could not be stored; retry later")
    log.info("feedback received", extra={"event": "feedback", "service": service_id, **counts})
    response = Response(status=200)
    del response.headers["Content-Type"]  # an empty body is no text/html document
    return response


class BadBody(Exception):
    """400: the body is not the JSON document it claims to be."""


def read_json():
    """Parse the body once; malformed, non-UTF-8, NaN- or infinity-bearing (`1e999`) and absurdly
    deep JSON is a 400. orjson refuses all of those itself, and parses a large prefetch several
    times faster than the standard library (the parse is most of the cost of a big chart)."""
    try:
        return _parse_owned([_body_bytes()])  # no reference kept here: the parse may free the bytes early
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "UTF-8" in reason:
            raise BadBody("the body is not UTF-8") from None
        if "depth limit" in reason or "recursion" in reason:
            raise BadBody("the JSON is nested too deeply") from None
        if "infinity" in reason:  # 1e999, or an integer of hundreds of digits: no FHIR value is that
            raise BadBody("a number in the body is out of range") from None
        raise BadBody("the body is not valid JSON") from None


# From this body size on, the cyclic garbage collector is paused while the call is parsed and answered
GC_PAUSE_BYTES = 64 * 1024


class _GcPause:
    """Pauses the cyclic GC while at least one large call is in progress (calls interleave under
    gevent, and run in parallel threads under gthread: the last one out resumes it, and only if
    it was on before the first one came in).

    Why: a large body is millions of objects (a 20,000-resource chart), each allocation counts
    towards the next collection, and every generation-2 collection walks the whole document
    again, during the parse and every stage after it; the document holds no cycles, so the
    walks find nothing. Paused, a 7 MB body parses in about a quarter of the time, and the
    stages that read it lose the same overhead. What a call leaves in cycles is collected once
    the collector resumes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holders = 0
        self._resume = False

    @contextmanager
    def held(self, active: bool):
        if not active:
            yield
            return
        with self._lock:
            self._holders += 1
            if self._holders == 1:
                self._resume = gc.isenabled()
                gc.disable()
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._resume:
                    gc.enable()


GC_PAUSE = _GcPause()


def _large_call() -> bool:
    return (request.content_length or 0) >= GC_PAUSE_BYTES


# From this body size on, a body is parsed with the standard library first (see _parse_lean)
LEAN_PARSE_BYTES = 4 * 1024 * 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \ud800-\udfff: orjson decides on those


def _parse(raw: bytes):
    """orjson.loads; a large body (a chunked one too, whose size shows only now) with the GC
    paused; a very large one through `_parse_lean`, with orjson deciding whenever that refuses."""
    return _parse_owned([raw])


def _parse_owned(box: list[bytes]):
    """`_parse` of the body in `box`, which it takes out: on the lean path the bytes are let go
    once decoded, so a very large body is not held twice (bytes and text) while its objects are built."""
    raw = box.pop()
    with GC_PAUSE.held(len(raw) >= GC_PAUSE_BYTES):
        if len(raw) < LEAN_PARSE_BYTES or _SURROGATE_ESCAPE.search(raw):
            return orjson.loads(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return orjson.loads(raw)  # the error read_json turns into a 400
        del raw
        try:
            return _parse_lean_text(text)
        except (ValueError, RecursionError):  # not JSON orjson would take, as far as this parser knows
            return orjson.loads(text.encode("utf-8"))  # the same bytes: orjson decides (the answer or the error)


def _lean_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("infinity")
    return value


def _lean_int(text: str):
    value = int(text)
    return value if -(2**63) <= value < 2**64 else _lean_float(text)  # as orjson: a float beyond 64 bits


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _parse_lean(raw: bytes):
    """The standard library's parser, made to accept exactly what orjson accepts and to give the
    same values (or refuse, and orjson then decides). Why: orjson builds a document of its own
    before the Python objects; for a 20,000-resource chart (7-11 MB) it allocates about 130 MB
    beyond the result (tracemalloc), and with it a worker's peak memory (VmHWM) after one such
    call was 221 MB, 194 MB with this parser (and the bytes let go once decoded), at about 1.5
    times the parse time. What differs is pinned: strict UTF-8 (no BOM, no encoded surrogates),
    no NaN or Infinity, no number that overflows to infinity, integers beyond 64 bits as floats,
    and escaped surrogates left to orjson (`_parse` checks the raw bytes for them)."""
    return _parse_lean_text(raw.decode("utf-8"))


def _parse_lean_text(text: str):
    return json.loads(text, parse_float=_lean_float, parse_int=_lean_int, parse_constant=_refuse_constant)


def _body_bytes() -> bytes:
    """The body, at most MAX_CONTENT_LENGTH bytes. With a Content-Length Werkzeug refuses a larger
    body (413); a chunked body has none, and Werkzeug would silently cut it at the limit (then
    a 400 for broken JSON), so it is read up to one byte past the limit and refused the same way."""
    if request.content_length is not None:
        return request.get_data(cache=False)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        abort(outcome(413, "too-costly", f"the body is larger than {limit} bytes"))
    return raw
