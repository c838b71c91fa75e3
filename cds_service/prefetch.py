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

from .terminology import Terminology
from .fhir_client import FhirClient, FhirUnavailable, bundle_defect, entries_of, failed_outcome, next_link

log = logging.getLogger(__name__)

_PATIENT = "patient={{context.patientId}}"


def queries(term: Terminology) -> dict[str, str]:
    """Every data key a rule may need, as a CDS Hooks prefetch template. Observations are
    filtered by the codes the rules know (including the deployment's local PLMS-index code),
    and every search carries a _count, so payloads follow what rules need (checklist 5)."""
    observation_codes = ",".join(f"{system}|{code}" for system, code in sorted(term.observation_codes))
    return {
        "patient": "Patient/{{context.patientId}}",
        "conditions": f"Condition?{_PATIENT}&clinical-status=active,recurrence,relapse&_count=100",
        "labs": f"Observation?{_PATIENT}&code={observation_codes}&_sort=-date&_count=100",
        "service_requests": f"ServiceRequest?{_PATIENT}&status=active,draft,completed&_count=100",
        "procedures": f"Procedure?{_PATIENT}&status=completed&_count=50",
        "reports": f"DiagnosticReport?{_PATIENT}&status=final,amended,corrected&_count=50",
        "medication_requests": f"MedicationRequest?{_PATIENT}&status=active,completed,stopped,on-hold&_count=100",
        "medication_statements": f"MedicationStatement?{_PATIENT}&status=active,intended&_count=100",
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


def expected_type(template: str) -> str:
    """The resource type a template returns: the part before '/' (a read) or '?' (a search)."""
    return re.split(r"[/?]", template, maxsplit=1)[0]


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


def resolve(templates: dict[str, str], prefetch: dict, context: dict, access: FhirAccess, client_factory) -> Resolved:
    resolved = Resolved()
    to_fetch: list[str] = []
    partial: dict[str, dict] = {}
    for key, template in templates.items():
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
        elif value["resourceType"] not in ("Bundle", expected_type(template)):
            raise BadPrefetch(f"prefetch key '{key}' holds a {value['resourceType'][:40]}, not a Bundle of "
                              f"{expected_type(template)}")
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
    _fetch(resolved, {k: templates[k] for k in to_fetch}, partial, context, access, client_factory)
    return resolved


def _fetch(resolved: Resolved, to_fetch: dict[str, str], partial: dict[str, dict], context: dict, access: FhirAccess,
           client_factory) -> None:
    client: FhirClient = client_factory(access)
    jobs = {}
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(to_fetch) + len(partial)))) as pool:
        # closing the client inside the pool's block stops the other fetches at once when one
        # fails, so leaving the block never waits for them
        try:
            for key, template in to_fetch.items():
                query = expand(template, context)
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
                    # the reason stays in the log: naming the error class in the body lets a caller probe ports
                    log.warning("prefetch key %s: FHIR server query failed: %s", key, exc)
                    raise PreconditionFailed(f"prefetch key {key} missing and the FHIR server is unavailable") from exc
                resolved.resources[key] = result.resources
                resolved.fetched.append(key)
                if not result.complete:
                    resolved.incomplete.add(key)
        finally:
            client.close()
