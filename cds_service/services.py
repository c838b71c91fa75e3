"""The CDS services this deployment offers, derived from the rule registry.

A service is an (id, hook) pair. Its prefetch templates are the union of what its rules read,
so discovery and rule inputs cannot drift apart. `legmove-orders` serves both order hooks under
one id, so a client replaces its order-select cards with the order-sign answer (spec: Update
stale guidance).
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
    ("legmove-orders", "order-select"): (
        "Leg movements: order check",
        "When an order is selected: drugs that worsen RLS or cause myoclonus, dopaminergic drugs, quinine or "
        "polysomnography for simple cramps, repeat EMG or imaging in benign fasciculations; iron, mimics and "
        "akathisia when an RLS drug is chosen."),
    ("legmove-orders", "order-sign"): (
        "Leg movements: order check at signing",
        "Before signing: re-checks every draft order with the order-select checks that apply to all drafts."),
}


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
