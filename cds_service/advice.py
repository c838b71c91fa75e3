"""One hook call end to end: data -> facts -> engine -> cards. No Flask in here.

Import direction is one-way: this module uses prefetch, facts, engine and cards; none of them
uses it. `Knowledge` is everything built once per process in `create_app`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from . import url_policy
from .cards import EXTENSION_KEY, render_cards
from .engine import RuleEngine
from .facts import PatientData, build_facts
from .fhir_client import FhirClient, budget_for
from .hook_request import HookRequest
from .prefetch import FhirAccess, resolve
from .rulebook import RenderContext, RuleSpec
from .services import Service
from .terminology import Terminology

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
    silent: list[dict] = field(default_factory=list)  # cards of silent-mode rules: recorded, never shown


def advise(req: HookRequest, service: Service, knowledge: Knowledge, config) -> Advice:
    clock = _Stopwatch()
    if req.hook == "patient-view" and req.user_id.startswith(("Patient/", "RelatedPerson/")):
        return Advice([], [], {}, [], [])  # our cards are written for clinicians (checklist 12)
    access = fhir_access(req, config)
    clients: list[FhirClient] = []
    try:
        return _advise(req, service, knowledge, config, clock, access, clients)
    finally:
        for client in clients:  # the memory budget covers the read resources until the call ends
            client.release_memory()


def _advise(req: HookRequest, service: Service, knowledge: Knowledge, config, clock, access, clients) -> Advice:
    def client_for(granted: FhirAccess) -> FhirClient:
        clients.append(_client(granted, config))
        return clients[-1]

    resolved = resolve(service.prefetch, req.prefetch, req.context, access, client_for)
    clock.lap("data")
    data = PatientData(req.hook, req.patient_id, resolved.resources, resolved.incomplete, req.draft_orders,
                       req.selections)
    term = knowledge.terminology
    fact_set = build_facts(data, term, evaluation_date(config))
    clock.lap("facts")
    evaluation = knowledge.engine.evaluate(fact_set.facts)
    clock.lap("engine")
    ctx = RenderContext(hook=req.hook, patient_id=req.patient_id, settings=term.settings,
                        class_title=term.class_title, groups=term.groups, facts=fact_set.facts,
                        incomplete_keys=tuple(sorted(resolved.incomplete)),
                        knowledge_version=knowledge.knowledge_version)
    # the service lists the card rules registered for this hook: the one place hooks are filtered
    matches = {rule: found for rule, found in evaluation.card_matches.items() if rule in service.rule_ids}
    active = {rule: found for rule, found in matches.items() if knowledge.modes.get(rule, "active") == "active"}
    cards = render_cards(knowledge.specs, active, evaluation.facts_by_id, ctx)
    silent = _silent_cards(knowledge, matches, active, evaluation.facts_by_id, ctx)
    clock.lap("cards")
    if fact_set.skipped:
        log.info("%d resources or values were not used (see debug log)", len(fact_set.skipped))
    return Advice(cards, sorted(active), clock.laps, resolved.fetched, sorted(resolved.incomplete), silent)


def _silent_cards(knowledge: Knowledge, matches: dict, active: dict, facts_by_id: dict, ctx: RenderContext) -> list[dict]:
    """Cards silent-mode rules would have added. Rendered with every rule as if all were active,
    so a silent rule counts only where its card would really have shown; but it never supersedes
    an active rule's card in the response: a silent rule changes nothing clinicians see."""
    if len(matches) == len(active):
        return []
    return [card for card in render_cards(knowledge.specs, matches, facts_by_id, ctx)
            if knowledge.modes.get(card["extension"][EXTENSION_KEY]["rule"]) == "silent"]


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
        return FhirAccess(req.fhir_server, req.access_token, True)
    if config["FHIR_UNAUTHENTICATED_READS"] and url_policy.under_any(req.fhir_server,
                                                                     config["FHIR_UNAUTHENTICATED_ALLOWLIST"]):
        return FhirAccess(req.fhir_server, None, True)
    return FhirAccess(req.fhir_server, None, False, "no fhirAuthorization and unauthenticated reads are off")


def evaluation_date(config) -> date:
    fixed = config.get("EVALUATION_DATE")
    return date.fromisoformat(fixed) if fixed else datetime.now(timezone.utc).date()


def _client(access: FhirAccess, config) -> FhirClient:
    return FhirClient(access.base_url, access.token, connect_timeout=config["FHIR_CONNECT_TIMEOUT"],
                      read_timeout=config["FHIR_READ_TIMEOUT"], deadline=config["FHIR_DEADLINE"],
                      max_pages=config["FHIR_MAX_PAGES"], max_response_bytes=config["FHIR_MAX_RESPONSE_BYTES"],
                      budget=budget_for(config["FHIR_BUFFER_BUDGET"]))


class _Stopwatch:
    """Milliseconds per stage, for the request log."""

    def __init__(self):
        self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round((now - self.last) * 1000, 2)
        self.last = now
