"""The CDS services this deployment offers, derived from the rule registry.

A service is an (id, hook) pair and every hook has its own id: clients such as the CDS Hooks
Sandbox key services by URL and keep only one service per URL, so two hooks under one id made
one of them unreachable. Its prefetch templates are the union of what its rules read, so
discovery and rule inputs cannot drift apart.

`legmove-orders`, the id both order hooks shared before, is a deprecated alias: it still answers
order-select and order-sign (with a `Deprecation` header) and accepts feedback on cards of either
order service, but discovery no longer lists it (listing it would bring back the shared URL).
"""
from __future__ import annotations

from dataclasses import dataclass

from .engine import findings_read
from .prefetch import queries
from .rulebook import CARD, RuleSpec
from .terminology import Terminology

SERVICE_TEXT = {
    ("legmove-patient-view", "patient-view"): (
        "Leg movements: chart review",
        "On opening a chart: iron stores and worsening drugs in restless legs syndrome, its mimics and secondary "
        "causes; PLMS/PLMD criteria; red flags and work-up in fasciculations; causes and work-up of myoclonus."),
    ("legmove-order-select", "order-select"): (
        "Leg movements: order check",
        "When an order is selected: drugs that worsen RLS or cause myoclonus, dopaminergic drugs, quinine or "
        "polysomnography for simple cramps, repeat EMG or imaging in benign fasciculations; iron, mimics and "
        "akathisia when an RLS drug is chosen. The former shared id legmove-orders is a deprecated alias."),
    ("legmove-order-sign", "order-sign"): (
        "Leg movements: order check at signing",
        "Before signing: re-checks every draft order with the order-select checks that apply to all drafts. "
        "The former shared id legmove-orders is a deprecated alias."),
}

# deprecated id -> the ids it stands for (each serving one hook)
ALIASES = {"legmove-orders": ("legmove-order-select", "legmove-order-sign")}


def canonical_ids(service_id: str) -> tuple[str, ...]:
    """The service ids an endpoint id stands for: itself, or an alias's targets."""
    return ALIASES.get(service_id, (service_id,))


def services_at(services: dict[tuple[str, str], "Service"], service_id: str) -> dict[str, "Service"]:
    """hook -> Service answered at the URL of `service_id` (empty when the id is unknown)."""
    ids = canonical_ids(service_id)
    return {hook: service for (sid, hook), service in services.items() if sid in ids}


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    rule_ids: tuple[str, ...]  # card rules that can answer on this hook
    prefetch: dict[str, str]  # key -> template, for the data its rules read

    def discovery_entry(self) -> dict:
        entry = {"hook": self.hook, "id": self.id, "title": self.title, "description": self.description,
                 "prefetch": dict(self.prefetch),
                 "usageRequirements": "Needs read access to Patient, Condition, Observation, ServiceRequest, Procedure, "
                                      "DiagnosticReport, MedicationRequest and MedicationStatement for the context "
                                      "patient (prefetch or fhirServer). The PLMS index is read by the local code "
                                      "in setting plms_index_code (no LOINC code exists)."}
        if not entry["prefetch"]:
            del entry["prefetch"]
        return entry


def build_services(specs: list[RuleSpec], term: Terminology) -> dict[tuple[str, str], Service]:
    templates = queries(term)
    services = {}
    for (service_id, hook), (title, description) in SERVICE_TEXT.items():
        cards = [s for s in specs if s.stratum == CARD and hook in s.hooks]
        keys = {key for s in _with_derivations(cards, specs) for key in s.needs}
        services[(service_id, hook)] = Service(service_id, hook, title, description, tuple(s.id for s in cards),
                                               {k: t for k, t in templates.items() if k in keys})
    return services


def _with_derivations(cards: list[RuleSpec], specs: list[RuleSpec]) -> list[RuleSpec]:
    """The card rules plus every derivation whose finding they read, directly or through another
    derivation: a hook's prefetch asks only for what its own rules can use."""
    producers: dict[str, list[RuleSpec]] = {}
    for spec in specs:
        if spec.stratum != CARD:
            producers.setdefault(spec.produces, []).append(spec)
    needed, queue = list(cards), list(cards)
    while queue:
        for finding in findings_read(queue.pop()):
            for producer in producers.get(finding, []):
                if producer not in needed:
                    needed.append(producer)
                    queue.append(producer)
    return needed
