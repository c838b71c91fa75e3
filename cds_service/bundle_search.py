"""Answer prefetch templates from resources held locally (a Bundle file, a bundled example chart).

A CDS client that has the chart in hand, instead of a FHIR server, still has to send each
prefetch key what the template asks for. This evaluates the few search parameters our
templates use (patient, status, clinical-status, code) the way a FHIR server would; `_sort`
and `_count` are accepted and ignored (everything that matches is returned, on one page).
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
    for name, value in parse_qsl(params, keep_blank_values=True):
        test = _TESTS.get(name)
        if test is None:
            if name not in IGNORED:
                unused.append(name)
            continue
        wanted = [v for v in value.split(",") if v]
        matches = [r for r in matches if test(r, wanted)]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
              "entry": [{"fullUrl": f"{r['resourceType']}/{r.get('id')}", "resource": r,
                         "search": {"mode": "match"}} for r in matches]}
    return bundle, unused


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


_TESTS = {"patient": _patient, "subject": _patient, "status": _status, "clinical-status": _clinical_status,
          "code": _code}
