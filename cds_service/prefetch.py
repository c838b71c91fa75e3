"""Prefetch templates and how each key's data is obtained (checklist sections 5-7).

For every key a service needs: a prefetched value is used as sent (`null` and an empty search
mean "no data" and are never re-fetched); an absent key, or one that carries an error
OperationOutcome, is fetched from `fhirServer`; data that can be had neither way is a 412.
A search whose `next` link could not be followed is marked incomplete, so rules that fire on
absence stay silent ("missing means unknown, never none").
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .fhir_client import FhirClient, FhirUnavailable, bundle_defect, entries_of, failed_outcome, next_link

log = logging.getLogger(__name__)

_LOINC = "http://loinc.org|"
_IRON_LAB_CODES = ",".join(_LOINC + c for c in ("2276-4", "20567-4", "24373-3", "2502-3", "14801-5", "718-7"))
_FERRITIN_CODES = ",".join(_LOINC + c for c in ("2276-4", "20567-4", "24373-3"))

# Every search carries a _count or a code filter, so payloads follow what rules need (checklist 5).
QUERIES = {
    "conditions": "Condition?patient={{context.patientId}}&clinical-status=active,recurrence,relapse&_count=100",
    "labs": "Observation?patient={{context.patientId}}&code=" + _IRON_LAB_CODES + "&_sort=-date&_count=50",
    "lab_orders": "ServiceRequest?patient={{context.patientId}}&status=active,draft&code=" + _FERRITIN_CODES + "&_count=20",
    "medication_requests": "MedicationRequest?patient={{context.patientId}}&status=active&_count=100",
    "medication_statements": "MedicationStatement?patient={{context.patientId}}&status=active,intended&_count=100",
}

_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")


class PreconditionFailed(Exception):
    """412: required data neither prefetched nor obtainable. The message carries no PHI."""


class BadPrefetch(Exception):
    """400: a prefetch value that is not a FHIR resource, a Bundle or null."""


@dataclass
class FhirAccess:
    """How (and whether) this call may read the client's FHIR server."""

    base_url: str | None
    token: str | None
    allowed: bool
    reason: str = ""


@dataclass
class Resolved:
    resources: dict[str, list[dict]] = field(default_factory=dict)
    incomplete: set[str] = field(default_factory=set)
    fetched: list[str] = field(default_factory=list)


def expected_type(key: str) -> str:
    """The resource type a key's query returns: the part of the template before '?'."""
    return QUERIES[key].split("?", 1)[0]


def expand(template: str, context: dict) -> str | None:
    """Replace `{{context.x}}` tokens; None when a token cannot be resolved (client rule, too)."""
    missing = False

    def token(match: re.Match) -> str:
        nonlocal missing
        path = match.group(1)
        value = context.get(path[len("context."):]) if path.startswith("context.") else None
        if not isinstance(value, str) or not value:
            missing = True
            return ""
        return value

    text = _TOKEN.sub(token, template)
    return None if missing else text


def resolve(keys: tuple[str, ...], prefetch: dict, context: dict, access: FhirAccess, client_factory) -> Resolved:
    resolved = Resolved()
    to_fetch: list[str] = []
    partial: dict[str, dict] = {}
    for key in keys:
        if key not in prefetch:
            to_fetch.append(key)
            continue
        value = prefetch[key]
        if value is None:
            resolved.resources[key] = []
        elif not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise BadPrefetch(f"prefetch key '{key}' is not a FHIR resource, a Bundle or null")
        elif value["resourceType"] == "Bundle" and bundle_defect(value):
            raise BadPrefetch(f"prefetch key '{key}': {bundle_defect(value)}")
        elif value["resourceType"] == "OperationOutcome" or (value["resourceType"] == "Bundle" and failed_outcome(value)):
            log.info("prefetch key %s carries an error OperationOutcome; querying the FHIR server", key)
            to_fetch.append(key)
        elif value["resourceType"] not in ("Bundle", expected_type(key)):
            raise BadPrefetch(f"prefetch key '{key}' holds a {value['resourceType'][:40]}, not a Bundle of "
                              f"{expected_type(key)}")
        elif value["resourceType"] == "Bundle":
            resolved.resources[key] = entries_of(value)
            if next_link(value):
                partial[key] = value
        else:
            resolved.resources[key] = [value]
    if not to_fetch and not partial:
        return resolved
    if not access.allowed:
        if to_fetch:
            raise PreconditionFailed(f"prefetch key(s) {', '.join(to_fetch)} missing and the FHIR server cannot be "
                                     f"queried: {access.reason}")
        resolved.incomplete.update(partial)
        return resolved
    _fetch(resolved, to_fetch, partial, context, access, client_factory)
    return resolved


def _fetch(resolved: Resolved, to_fetch: list[str], partial: dict[str, dict], context: dict, access: FhirAccess,
           client_factory) -> None:
    client: FhirClient = client_factory(access)
    try:
        jobs = {}
        with ThreadPoolExecutor(max_workers=max(1, min(4, len(to_fetch) + len(partial)))) as pool:
            for key in to_fetch:
                query = expand(QUERIES[key], context)
                if query is None:
                    raise PreconditionFailed(f"prefetch key {key} needs a context field the request lacks")
                jobs[key] = pool.submit(client.query, query)
            for key, bundle in partial.items():
                jobs[key] = pool.submit(client.continue_bundle, bundle)
            for key, job in jobs.items():
                try:
                    result = job.result()
                except FhirUnavailable as exc:
                    if key in partial:  # we have the first page: use it, but never as proof of absence
                        resolved.incomplete.add(key)
                        log.warning("could not page prefetch key %s: %s", key, exc)
                        continue
                    raise PreconditionFailed(f"prefetch key {key} missing and the FHIR server query failed: {exc}") from exc
                resolved.resources[key] = result.resources
                resolved.fetched.append(key)
                if not result.complete:
                    resolved.incomplete.add(key)
    finally:
        client.close()
