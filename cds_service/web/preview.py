"""The card preview page, `/preview`: a small CDS client in the browser, served by the service.

The page is an EHR stand-in. Its JavaScript reads discovery, sends the hook call to this service's
own `/cds-services/{id}` endpoint and its feedback to `/cds-services/{id}/feedback`, exactly as a
real client does: a FHIR server URL typed into the page reaches the service as `fhirServer` in a
hook call, so it meets the same allowlist and token rules as any other call, and the page never
fetches a chart itself. What this module adds is only what a browser cannot do alone: list the
bundled example patients, answer the prefetch templates from an example's chart, search the
bundled RxNorm table by name and build draft orders.

It is served when PREVIEW_ENABLED is set (on in development and test, off in production) and
client auth is off. With client auth on the page is not served: a browser holds no client key,
and a page that signed for it server-side would let anyone who can load the page call as a
trusted client.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, abort, jsonify, render_template, request

from cds_service.fhir.bundle_search import search
from cds_service.fhir.examples import all_examples
from cds_service.fhir.prefetch import expand
from cds_service.web.drafts import DraftError, medication_draft, procedure_draft, procedure_kinds, search_medications

log = logging.getLogger(__name__)
bp = Blueprint(
    "preview",
    __name__,
    url_prefix="/preview",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

# The page loads its own script and style only; card text is inserted as text, never as HTML.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def register_preview(app: Flask) -> None:
    if not app.config.get("PREVIEW_ENABLED"):
        return
    if app.config.get("CLIENT_AUTH"):
        log.warning(
            "PREVIEW_ENABLED is set but CLIENT_AUTH is on: /preview is not served (a browser holds no client key)"
        )
        return
    app.register_blueprint(bp)
    log.info("card preview page served at /preview")


@bp.after_request
def page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("")
@bp.get("/")
def page():
    groups: dict[str, list] = {}
    for example in all_examples().values():
        groups.setdefault(example.rule, []).append(example)
    return render_template("preview.html", groups=groups, procedures=procedure_kinds())


@bp.get("/medications")
def medications():
    """Products and ingredients of the bundled RxNorm table whose name has every word typed."""
    text = request.args.get("q", "")[:80]
    return jsonify({"medications": search_medications(text)})


@bp.get("/draft")
def draft():
    patient = request.args.get("patient", "")
    if not patient or len(patient) > 64:
        return _problem("give the patient id")
    try:
        if request.args.get("rxnorm"):
            return jsonify(medication_draft(request.args["rxnorm"][:20], patient))
        if request.args.get("procedure"):
            return jsonify(procedure_draft(request.args["procedure"][:40], patient))
    except DraftError as exc:
        return _problem(str(exc))
    return _problem("give rxnorm=CODE or procedure=KIND")


@bp.post("/example-call")
def example_call():
    """For a bundled example: its hook context and each prefetch template answered from its chart.

    Body: {"example": "R3/fires-...", "templates": {key: template}} (the templates of the service
    the page picked from discovery)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("templates"), dict):
        return _problem('send {"example": name, "templates": {key: template}}')
    name = body.get("example")
    example = all_examples().get(name) if isinstance(name, str) else None
    if example is None:
        abort(404)
    chart = example.resources()
    context = example.request["context"]
    prefetch = {}
    for key, template in body["templates"].items():
        query = expand(template, context) if isinstance(template, str) else None
        if query is not None:
            prefetch[str(key)], _ = search(chart, query)
    return jsonify({"context": context, "prefetch": prefetch, "description": example.description, "hook": example.hook})


def _problem(message: str, status: int = 400):
    return jsonify(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": message}],
        }
    ), status
