"""One hook call end to end: data -> facts -> engine -> cards. No Flask in here.

Import direction is one-way: this module uses prefetch, facts, engine and cards; none of them
uses it. `Knowledge` is everything built once per process in `create_app`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from cds_service.authoring.rulebook import RenderContext, RuleSpec
from cds_service.cards.render import EXTENSION_KEY, render_cards
from cds_service.engine.wrapper import RuleEngine
from cds_service.facts.build import PatientData, build_facts
from cds_service.facts.medications import unresolved_medication_references
from cds_service.fhir import url_policy
from cds_service.fhir.fhir_client import FhirClient, FhirUnavailable, budget_for
from cds_service.fhir.prefetch import FhirAccess, PreconditionFailed, Resolved, resolve, server_searches
from cds_service.fhir.scopes import parse_scopes
from cds_service.hook_request import HookRequest
from cds_service.knowledge.terminology import Terminology
from cds_service.services import Service

log = logging.getLogger(__name__)


@dataclass
class Knowledge:
    terminology: Terminology
    specs: dict[str, RuleSpec]
    engine: RuleEngine
    services: dict[tuple[str, str], Service]
    # card rule -> "active" | "silent"; rules that are off are not compiled, unlisted ones are active
    modes: dict[str, str] = field(default_factory=dict)
    knowledge_version: str = ""


@dataclass
class Advice:
    cards: list[dict]
    rule_ids: list[str]
    timings_ms: dict[str, float]
    fetched_keys: list[str]
    incomplete_keys: list[str]
    missing_keys: dict[str, str] = field(default_factory=dict)  # key -> why (log text, may name exceptions)
    silent: list[dict] = field(default_factory=list)  # cards of silent-mode rules: recorded, never shown


def advise(req: HookRequest, service: Service, knowledge: Knowledge, config) -> Advice:
    """Partial data policy: a key that could not be read at all is *missing*; every card rule
    that depends on it (directly or through a finding) stays silent, and absence logic sees it
    as a data gap. The other rules run. Only when no card rule of the service is left is the
    call a 412: then nothing at all could be evaluated."""
    clock = _Stopwatch()
    if req.hook == "patient-view" and req.user_id.startswith(("Patient/", "RelatedPerson/")):
        return Advice([], [], {}, [], [])  # our cards are written for clinicians (CDS Hooks 2.0 patient-view)
    access = fhir_access(req, config)
    clients: list[FhirClient] = []
    try:
        return _advise(req, service, knowledge, config, clock, access, clients)
    finally:
        for client in clients:  # the memory budget covers the read resources until the call ends
            client.release_memory()


def _advise(req: HookRequest, service: Service, knowledge: Knowledge, config, clock, access, clients) -> Advice:
    def client_for(granted: FhirAccess, deadline: float | None = None) -> FhirClient:
        clients.append(_client(granted, config, deadline))
        return clients[-1]

    searches = server_searches(knowledge.terminology, service.prefetch, evaluation_date(config), service.analytes)
    resolved = resolve(service.prefetch, req.prefetch, req.context, access, client_for, searches)
    read_referenced_medications(resolved, req.draft_orders, access, config, clock.started, client_for)
    clock.lap("data")
    missing = set(resolved.unknown)
    evaluable = service.evaluable(missing)
    if not evaluable:
        raise PreconditionFailed(_precondition_message(access, resolved), resolved.unknown)
    data = PatientData(
        req.hook, req.patient_id, resolved.resources, resolved.incomplete | missing, req.draft_orders, req.selections
    )
    term = knowledge.terminology
    fact_set = build_facts(data, term, evaluation_date(config))
    clock.lap("facts")
    if fact_set.deceased:
        log.info("the patient is recorded as deceased: no cards")
        return Advice([], [], clock.laps, resolved.fetched, sorted(resolved.incomplete))
    evaluation = knowledge.engine.evaluate(fact_set.facts)
    clock.lap("engine")
    ctx = RenderContext(
        hook=req.hook,
        patient_id=req.patient_id,
        settings=term.settings,
        class_title=term.class_title,
        groups=term.groups,
        facts=fact_set.facts,
        incomplete_keys=tuple(sorted(resolved.incomplete)),
        missing_keys=tuple(sorted(missing)),
        knowledge_version=knowledge.knowledge_version,
        base_url=public_base_url(config),
    )
    # the service lists the card rules registered for this hook that its data lets it evaluate:
    # the one place hooks and missing data are filtered
    matches = {rule: found for rule, found in evaluation.card_matches.items() if rule in evaluable}
    active = {rule: found for rule, found in matches.items() if knowledge.modes.get(rule, "active") == "active"}
    cards = render_cards(knowledge.specs, active, evaluation.facts_by_id, ctx)
    silent = _silent_cards(knowledge, matches, active, evaluation.facts_by_id, ctx)
    clock.lap("cards")
    if fact_set.skipped or fact_set.dropped:  # skipped: data a rule could use, refused (listed at DEBUG)
        log.info(
            "%d resources or values were not used (see debug log); %d resources no rule reads were left out",
            len(fact_set.skipped),
            fact_set.dropped,
        )
    return Advice(
        cards, sorted(active), clock.laps, resolved.fetched, sorted(resolved.incomplete), resolved.unknown, silent
    )


def _silent_cards(
    knowledge: Knowledge, matches: dict, active: dict, facts_by_id: dict, ctx: RenderContext
) -> list[dict]:
    """Cards silent-mode rules would have added. Rendered with every rule as if all were active,
    so a silent rule counts only where its card would really have shown; but it never supersedes
    an active rule's card in the response: a silent rule changes nothing clinicians see."""
    if len(matches) == len(active):
        return []
    return [
        card
        for card in render_cards(knowledge.specs, matches, facts_by_id, ctx)
        if knowledge.modes.get(card["extension"][EXTENSION_KEY]["rule"]) == "silent"
    ]


def _precondition_message(access: FhirAccess, resolved) -> str:
    """What the client may read in a 412: which keys, and in words why (no exception names)."""
    keys = ", ".join(sorted(resolved.unknown))
    if not access.allowed:
        return f"prefetch key(s) {keys} missing and the FHIR server cannot be queried: {access.reason}"
    return f"prefetch key(s) {keys} missing and the FHIR server did not provide them (unavailable, too slow or refused)"


def public_base_url(config) -> str:
    """Where this service's public pages are: PUBLIC_BASE_URL when configured (behind a proxy the
    request's host may not be the public one), else the host the request came to."""
    from flask import has_request_context, request

    configured = config.get("PUBLIC_BASE_URL")
    if configured:
        return configured.rstrip("/")
    return request.host_url.rstrip("/") if has_request_context() else ""


MAX_MEDICATION_READS = 20


def read_referenced_medications(
    resolved: Resolved, draft_orders: list[dict], access: FhirAccess, config, started: float, client_for
) -> None:
    """Medications known only by reference (`medicationReference: Medication/123`, as many EHRs
    send them) that came neither contained nor in any Bundle of the call: read each from
    fhirServer within what is left of the call's FHIR deadline. One that cannot be had is
    unknown; for chart data (not a draft) its key is marked incomplete, so no rule reads the
    medication list as complete (a new-start check, say)."""
    wanted = unresolved_medication_references(resolved.resources, draft_orders)
    if not wanted:
        return
    found: list[dict] = []
    remaining = config["FHIR_DEADLINE"] - (time.perf_counter() - started)
    client = client_for(access, remaining) if access.allowed and remaining > 0 else None
    try:
        for number, (reference, keys) in enumerate(sorted(wanted.items())):
            medication = None
            resource_id = _medication_id(reference, access.base_url)
            if client and resource_id and number < MAX_MEDICATION_READS:
                try:
                    medication = client.read("Medication", resource_id)
                except FhirUnavailable as exc:
                    log.info("could not read a referenced Medication: %s", exc)
            if medication:
                found.append(medication)
            else:
                resolved.incomplete.update(keys - {"draftOrders"})
    finally:
        if client:
            client.close()
    if found:
        resolved.resources["medication_reads"] = found
    log.info("referenced medications: %d read, %d unresolved", len(found), len(wanted) - len(found))


def _medication_id(reference: str, base_url: str | None) -> str | None:
    """The id of a `Medication/{id}` reference, relative or under the fhirServer base; None otherwise."""
    if base_url and reference.startswith(base_url.rstrip("/") + "/"):
        reference = reference[len(base_url.rstrip("/")) + 1 :]
    parts = reference.split("/")
    return parts[1] if len(parts) == 2 and parts[0] == "Medication" and parts[1] else None


def fhir_access(req: HookRequest, config) -> FhirAccess:
    if not req.fhir_server:
        return FhirAccess(None, None, False, "no fhirServer in the request")
    if not url_policy.acceptable(req.fhir_server) or "?" in req.fhir_server:
        # userinfo (`https://ehr.example.org:443@attacker.example/`) or dot segments hide the real target
        return FhirAccess(req.fhir_server, None, False, "fhirServer is not a plain http(s) base URL")
    if req.fhir_server.lower().startswith("http://") and not config["FHIR_ALLOW_HTTP"]:
        return FhirAccess(req.fhir_server, None, False, "fhirServer is not https")
    known = config["FHIR_SERVER_ALLOWLIST"]
    if known is None or not url_policy.under_any(req.fhir_server, known):
        # without this any caller could make the service send requests (and tokens) anywhere (SSRF)
        return FhirAccess(req.fhir_server, None, False, "fhirServer is not on the configured allowlist")
    if req.access_token:
        return FhirAccess(req.fhir_server, req.access_token, True, scopes=parse_scopes(req.scope))
    if not config["FHIR_UNAUTHENTICATED_READS"]:
        return FhirAccess(req.fhir_server, None, False, "no fhirAuthorization and unauthenticated reads are off")
    if not url_policy.under_any(req.fhir_server, config["FHIR_UNAUTHENTICATED_ALLOWLIST"]):
        return FhirAccess(
            req.fhir_server,
            None,
            False,
            "no fhirAuthorization and fhirServer is not on the unauthenticated-reads allowlist",
        )
    return FhirAccess(req.fhir_server, None, True)


def evaluation_date(config) -> date:
    fixed = config.get("EVALUATION_DATE")
    return date.fromisoformat(fixed) if fixed else datetime.now(UTC).date()


def _client(access: FhirAccess, config, deadline: float | None = None) -> FhirClient:
    if access.base_url is None:  # resolve() reads a server only when the call named one
        raise ValueError("no fhirServer to read")
    return FhirClient(
        access.base_url,
        access.token,
        connect_timeout=config["FHIR_CONNECT_TIMEOUT"],
        read_timeout=config["FHIR_READ_TIMEOUT"],
        deadline=config["FHIR_DEADLINE"] if deadline is None else deadline,
        max_pages=config["FHIR_MAX_PAGES"],
        max_response_bytes=config["FHIR_MAX_RESPONSE_BYTES"],
        budget=budget_for(config["FHIR_BUFFER_BUDGET"]),
    )


class _Stopwatch:
    """Milliseconds per stage, for the request log."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round((now - self.last) * 1000, 2)
        self.last = now
