"""Answer prefetch templates from resources held locally (a Bundle file, a bundled example chart).

A CDS client that has the chart in hand, instead of a FHIR server, still has to send each
prefetch key what the template asks for. This evaluates the few search parameters our
templates use (patient, status, clinical-status, code, code:text, _include) the way a FHIR
server would; `_sort` and `_count` are accepted and ignored (everything that matches is
returned, on one page).
Any other parameter is reported back, never silently treated as matched-nothing: returning a
superset is safe because the service applies its own checks to every resource.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

IGNORED = {"_sort", "_count"}


def search(resources: list[dict], query: str) -> tuple[dict | None, list[str]]:
    """(the resource or searchset Bundle the query returns, parameters that were not applied)."""
    path, _, params = query.partition("?")
    kind, _, read_id = path.partition("/")
    if read_id:
        found = next((r for r in resources if r.get("resourceType") == kind and r.get("id") == read_id), None)
        return found, []
    unused: list[str] = []
    matches = [r for r in resources if r.get("resourceType") == kind]
    includes: list[str] = []
    for name, value in parse_qsl(params, keep_blank_values=True):
        if name == "_include":
            includes.append(value)
            continue
        test = _TESTS.get(name)
        if test is None:
            if name not in IGNORED:
                unused.append(name)
            continue
        wanted = [v for v in value.split(",") if v]
        matches = [r for r in matches if test(r, wanted)]
    entries = [
        {"fullUrl": f"{r['resourceType']}/{r.get('id')}", "resource": r, "search": {"mode": "match"}} for r in matches
    ]
    for include in includes:
        included, unknown = _included(resources, matches, include)
        entries += [
            {"fullUrl": f"{r['resourceType']}/{r.get('id')}", "resource": r, "search": {"mode": "include"}}
            for r in included
        ]
        unused += unknown
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "entry": entries}
    return bundle, unused


def _included(resources: list[dict], matches: list[dict], include: str) -> tuple[list[dict], list[str]]:
    """`_include=MedicationRequest:medication`: the resources the matches reference in that element."""
    source, _, element = include.partition(":")
    if element != "medication":
        return [], [f"_include={include}"]
    wanted = {(r.get(f"{element}Reference") or {}).get("reference") for r in matches if r.get("resourceType") == source}
    return [r for r in resources if f"{r.get('resourceType')}/{r.get('id')}" in wanted], []


def _patient(resource: dict, wanted: list[str]) -> bool:
    refs = [(resource.get(field) or {}).get("reference") for field in ("subject", "patient")]
    return any(ref in (w, f"Patient/{w}") for ref in refs if isinstance(ref, str) for w in wanted)


def _status(resource: dict, wanted: list[str]) -> bool:
    return resource.get("status") in wanted


def _codes(concept) -> list[dict]:
    return [c for c in (concept or {}).get("coding") or [] if isinstance(c, dict)] if isinstance(concept, dict) else []


def _clinical_status(resource: dict, wanted: list[str]) -> bool:
    return any(c.get("code") in wanted for c in _codes(resource.get("clinicalStatus")))


def _code(resource: dict, wanted: list[str]) -> bool:
    codings = _codes(resource.get("code"))
    for token in wanted:
        system, bar, code = token.rpartition("|")
        if any(c.get("code") == code and (not bar or c.get("system") == system) for c in codings):
            return True
    return False


def _code_text(resource: dict, wanted: list[str]) -> bool:
    """`code:text`: the code's text or a coding's display starts with a wanted phrase, ignoring case
    (FHIR string matching, which servers apply to `:text`)."""
    code = resource.get("code")
    concept = code if isinstance(code, dict) else {}
    texts = [concept.get("text")] + [c.get("display") for c in _codes(concept)]
    lowered = [t.lower() for t in texts if isinstance(t, str)]
    return any(t.startswith(w.lower()) for t in lowered for w in wanted)


_TESTS = {
    "patient": _patient,
    "subject": _patient,
    "status": _status,
    "clinical-status": _clinical_status,
    "code": _code,
    "code:text": _code_text,
}
