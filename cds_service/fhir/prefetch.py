"""Prefetch templates and how each key's data is obtained (CDS Hooks 2.0, Prefetch and FHIR
Resource Access).

For every key a service needs: a prefetched value is used as sent (`null` and an empty search
mean "no data" and are never re-fetched); an absent key, or one that carries an error
OperationOutcome, is fetched from `fhirServer`. A key that can be had neither way (no usable
fhirServer, a type the token does not grant, a failed or too slow query) is *unknown*: it is
reported, never read as empty, and the rules that read it stay silent (see advice.py). Real
EHRs fill only some templates and grant only some types, so one such key must not cost the
other rules their answer. A search whose `next` link could not be followed is *incomplete*:
what was read is used, but never as proof of absence.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta

from cds_service.fhir.fhir_client import (
    FhirClient,
    FhirUnavailable,
    bundle_defect,
    next_link,
    read_entries,
)
from cds_service.fhir.scopes import Grant, Scopes
from cds_service.knowledge.terminology import Terminology

log = logging.getLogger(__name__)

_PATIENT = "patient={{context.patientId}}"


PLACEHOLDER_SYSTEMS = ("http://example.org/",)  # shipped defaults a deployment must replace


def observation_codes(
    term: Terminology, placeholders: bool = True, analytes: frozenset[str] | None = None
) -> list[tuple[str, str, str]]:
    """(system, code, lookback setting) of every Observation of `analytes` (None: of every analyte
    a rule may read). Discovery leaves out the local PLMS-index code while it is the shipped
    placeholder (`placeholders=False`): an EHR cannot fill a template for a system nobody owns.
    Our own fhirServer searches keep it, since a test or pilot deployment may have data under it."""
    return sorted(
        (system, code, analyte.lookback_setting)
        for (system, code), analyte in term.observation_codes.items()
        if (placeholders or not system.startswith(PLACEHOLDER_SYSTEMS))
        and (analytes is None or analyte.name in analytes)
    )


def queries(term: Terminology, analytes: frozenset[str] | None = None) -> dict[str, str]:
    """Every data key a rule may need, as a CDS Hooks prefetch template within the 2.0
    recommended query subset (reads, patient searches, token equality, _count, _sort; no
    relative dates, no _include), but for the best-effort `:text` search. Observations are
    filtered by the codes of `analytes`, the ones a hook's rules can use (None: all), and every
    search carries a _count, so payloads follow what rules need. Without a code to ask for
    there is no `labs` key (a search without `code` would return the whole chart)."""
    codes = ",".join(f"{system}|{code}" for system, code, _ in observation_codes(term, False, analytes))
    labs = {"labs": f"Observation?{_PATIENT}&code={codes}&_sort=-date&_count=100"} if codes else {}
    return {
        "patient": "Patient/{{context.patientId}}",
        "conditions": f"Condition?{_PATIENT}&clinical-status=active,recurrence,relapse&_count=100",
        **labs,
        # a result known only by its name (a PLMS index without the local code) never matches a code
        # filter; `:text` lies outside the recommended subset, so this key is best effort (below)
        "plms_index_by_text": f"Observation?{_PATIENT}&code:text={term.text_query('plms_index')}&_sort=-date&_count=20",
        "service_requests": f"ServiceRequest?{_PATIENT}&status=active,draft,completed&_count=100",
        "procedures": f"Procedure?{_PATIENT}&status=completed&_count=100",
        "reports": f"DiagnosticReport?{_PATIENT}&status=final,amended,corrected&_count=100",
        "medication_requests": f"MedicationRequest?{_PATIENT}&status=active,completed,stopped,on-hold&_count=100",
        "medication_statements": f"MedicationStatement?{_PATIENT}&status=active,intended&_count=100",
    }


# Optional keys use what lies outside the recommended query subset (_include). A client may drop
# them; nothing is then missing, and they are never fetched from fhirServer (the searches there
# include the referenced Medications themselves). key -> (template, the key it completes)
OPTIONAL = {
    "medication_request_medications": (
        f"MedicationRequest?{_PATIENT}&status=active,completed,stopped,on-hold&_include=MedicationRequest:medication"
        "&_count=100",
        "medication_requests",
    ),
    "medication_statement_medications": (
        f"MedicationStatement?{_PATIENT}&status=active,intended&_include=MedicationStatement:medication&_count=100",
        "medication_statements",
    ),
}


def optional_queries(keys: set[str]) -> dict[str, str]:
    """The optional templates that complete some of `keys`."""
    return {key: template for key, (template, completes) in OPTIONAL.items() if completes in keys}


CODES_PER_SEARCH = 8  # a many-code OR search is what made large charts slow (3.3 s for 37 codes)
SERVER_COUNT = 200  # page size on the fhirServer path: 254 completed Procedures fit in two pages


def server_searches(
    term: Terminology, templates: dict[str, str], today: date, analytes: frozenset[str] | None = None
) -> dict[str, list[str]]:
    """How the `fhirServer` path reads the same keys more cheaply than the prefetch templates:
    Observations in several small searches (codes that share a lookback, a few at a time, run
    in parallel), each limited to its lookback window (`date=ge`, computed here because prefetch
    templates may not hold relative dates; one day of margin for time zones) and without a
    server-side sort; larger pages. Data outside the windows is data no rule may use (the facts package
    drops it as stale), so both paths give the same cards. Codes go without their system: an
    OR list of system|code pairs is many times slower than one of plain codes on servers that
    index the two apart (sekmet-fhir: 2.7-4 s against 0.8 s for the largest Synthea chart), and
    over-fetching is harmless because the facts package matches every coding by system and code. Only
    the codes of `analytes` are searched, the hook's own (None: all), as in its template."""
    searches = {
        key: [template.replace("_count=100", f"_count={SERVER_COUNT}")]
        for key, template in templates.items()
        if key not in OPTIONAL
    }
    for key, kind in (("medication_requests", "MedicationRequest"), ("medication_statements", "MedicationStatement")):
        if key in searches:  # Medications an order or statement points to (medicationReference)
            searches[key] = [f"{q}&_include={kind}:medication" for q in searches[key]]
    if "labs" in templates:
        by_window: dict[str, list[str]] = {}
        for _system, code, lookback in observation_codes(term, analytes=analytes):
            by_window.setdefault(lookback, []).append(code)
        searches["labs"] = []
        for lookback, codes in sorted(by_window.items()):
            since = (today - timedelta(days=term.settings.days(lookback) + 1)).isoformat()
            unique = sorted(set(codes))
            for start in range(0, len(unique), CODES_PER_SEARCH):
                chunk = ",".join(unique[start : start + CODES_PER_SEARCH])
                searches["labs"].append(f"Observation?{_PATIENT}&code={chunk}&date=ge{since}&_count={SERVER_COUNT}")
    return searches


MAX_PARALLEL_SEARCHES = 6  # searches in flight per hook call: enough for a split key, gentle on the EHR

# Best-effort keys use a search a client may not fill and a server may refuse (a `:text`
# modifier). Such a key that cannot be read is *incomplete* (what it would have found is
# unknown, so no rule concludes absence from it), not *unknown*: the rules that also read it
# still run on the other keys.
BEST_EFFORT_KEYS = frozenset({"plms_index_by_text"})

_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")


class PreconditionFailed(Exception):
    """412: no rule of the service can be evaluated with the data that could be had. The
    message is for the client: no PHI and no internals (exception names go to the log)."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.reasons = reasons or {}  # key -> why, for the log only


class BadPrefetch(Exception):
    """400: a prefetch value that is not a FHIR resource, a Bundle or null."""


@dataclass
class FhirAccess:
    """How (and whether) this call may read the client's FHIR server."""

    base_url: str | None
    token: str | None
    allowed: bool
    reason: str = ""
    scopes: Scopes | None = None  # None: the request said nothing about scopes


@dataclass
class Resolved:
    resources: dict[str, list[dict]] = field(default_factory=dict)
    incomplete: set[str] = field(default_factory=set)  # first pages read, later ones not
    fetched: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # key -> why nothing could be read (log text)


def expected_type(template: str) -> str:
    """The resource type a template returns: the part before '/' (a read) or '?' (a search)."""
    return re.split(r"[/?]", template, maxsplit=1)[0]


def expand(template: str, context: dict) -> str | None:
    """Replace `{{context.x}}` tokens; None when a token cannot be resolved (client rule, too)."""
    missing = False

    def token(match: re.Match) -> str:
        nonlocal missing
        path = match.group(1)
        value = context.get(path[len("context.") :]) if path.startswith("context.") else None
        if not isinstance(value, str) or not value:
            missing = True
            return ""
        return value

    text = _TOKEN.sub(token, template)
    return None if missing else text


def resolve(
    templates: dict[str, str],
    prefetch: dict,
    context: dict,
    access: FhirAccess,
    client_factory,
    searches: dict[str, list[str]] | None = None,
) -> Resolved:
    """`searches`: per key, the fhirServer searches that replace its template (server_searches)."""
    resolved = _resolve(templates, prefetch, context, access, client_factory, searches)
    for key in BEST_EFFORT_KEYS & set(resolved.unknown):
        log.info("best-effort key %s could not be read (%s): incomplete", key, resolved.unknown.pop(key))
        resolved.incomplete.add(key)
        resolved.resources[key] = []
    return resolved


def _resolve(
    templates: dict[str, str],
    prefetch: dict,
    context: dict,
    access: FhirAccess,
    client_factory,
    searches: dict[str, list[str]] | None,
) -> Resolved:
    resolved = Resolved()
    to_fetch: list[str] = []
    partial: dict[str, dict] = {}
    for key, template in templates.items():
        if key not in prefetch:
            if key not in OPTIONAL:
                to_fetch.append(key)
            continue
        value = prefetch[key]
        if value is None:
            resolved.resources[key] = []
        elif not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise BadPrefetch(f"prefetch key '{key}' is not a FHIR resource, a Bundle or null")
        elif value["resourceType"] == "Bundle" and bundle_defect(value):
            raise BadPrefetch(f"prefetch key '{key}': {bundle_defect(value)}")
        elif value["resourceType"] == "Bundle":
            entries, failed = read_entries(value)  # one walk of the entries for both answers
            if failed:
                _refetch(key, to_fetch)
            else:
                resolved.resources[key] = entries
                if next_link(value):
                    partial[key] = value
        elif value["resourceType"] == "OperationOutcome":
            _refetch(key, to_fetch)
        elif value["resourceType"] != expected_type(template):
            raise BadPrefetch(
                f"prefetch key '{key}' holds a {value['resourceType'][:40]}, not a Bundle of {expected_type(template)}"
            )
        else:
            resolved.resources[key] = [value]
    if not to_fetch and not partial:
        return resolved
    if not access.allowed:
        resolved.unknown.update({key: f"not prefetched and {access.reason}" for key in to_fetch})
        resolved.incomplete.update(partial)
        return resolved
    queries_by_key: dict[str, list[str]] = {}
    for key in to_fetch:
        expanded = [expand(q, context) for q in (searches or {}).get(key, [templates[key]])]
        grant = _grant(access, templates[key])
        if None in expanded:
            resolved.unknown[key] = "not prefetched and its query needs a context field the request lacks"
        elif grant is None:
            resolved.unknown[key] = (
                f"not prefetched and the token's scopes do not grant {expected_type(templates[key])}"
            )
        else:
            queries_by_key[key] = [q for query in expanded if query is not None for q in grant.queries(query)]
            if not grant.unrestricted:  # only what the granular scope lets us see: never proof of absence
                resolved.incomplete.add(key)
    for key in list(partial):
        grant = _grant(access, templates[key])
        if grant is None or not grant.unrestricted:  # the next link would leave what the token grants
            resolved.incomplete.add(key)
            del partial[key]
    if queries_by_key or partial:
        _fetch(resolved, queries_by_key, partial, access, client_factory)
    return resolved


def _refetch(key: str, to_fetch: list[str]) -> None:
    """A prefetched value that is an error OperationOutcome (or a Bundle holding one)."""
    if key not in OPTIONAL:  # an optional key that failed is as good as one left out
        log.info("prefetch key %s carries an error OperationOutcome; querying the FHIR server", key)
        to_fetch.append(key)


def _grant(access: FhirAccess, query: str) -> Grant | None:
    if access.scopes is None:
        return Grant(True)
    return access.scopes.grant(expected_type(query), search="?" in query)


def _fetch(
    resolved: Resolved, to_fetch: dict[str, list[str]], partial: dict[str, dict], access: FhirAccess, client_factory
) -> None:
    """All searches of all keys run in parallel under the client's one deadline; a key whose
    search (any of its searches) fails or runs out of time is unknown, the others are kept."""
    client: FhirClient = client_factory(access)
    jobs: list[tuple[str, Future]] = []
    try:
        searches = sum(len(q) for q in to_fetch.values()) + len(partial)
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_SEARCHES, searches))) as pool:
            for key, queries_ in to_fetch.items():
                jobs += [(key, pool.submit(client.query, query)) for query in queries_]
            jobs += [(key, pool.submit(client.continue_bundle, bundle)) for key, bundle in partial.items()]
            results: dict[str, list] = {}
            failures: dict[str, str] = {}
            for key, job in jobs:
                try:
                    results.setdefault(key, []).append(job.result())
                except FhirUnavailable as exc:
                    failures.setdefault(key, str(exc))
    finally:
        client.close()
    for key, reason in failures.items():
        if key in partial:  # we have the first page: use it, but never as proof of absence
            resolved.incomplete.add(key)
            log.warning("could not page prefetch key %s: %s", key, reason)
        else:
            resolved.unknown[key] = f"not prefetched and the FHIR server query failed: {reason}"
            log.warning("prefetch key %s unknown: %s", key, reason)
    for key, parts in results.items():
        if key in failures:
            continue
        resolved.resources[key] = _merged(parts)
        resolved.fetched.append(key)
        if not all(part.complete for part in parts):
            resolved.incomplete.add(key)


def _merged(parts) -> list[dict]:
    """One key's resources from several searches (split searches, granular scopes), each once."""
    if len(parts) == 1:
        return parts[0].resources
    seen, resources = set(), []
    for part in parts:
        for resource in part.resources:
            ref = (resource.get("resourceType"), resource.get("id"))
            if ref not in seen:
                seen.add(ref)
                resources.append(resource)
    return resources
