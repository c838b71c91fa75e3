"""The CDS services this deployment offers, derived from the rule registry.

A service is an (id, hook) pair. Its prefetch templates are the union of what its rules read,
so discovery and rule inputs cannot drift apart. `legmove-orders` serves both order hooks under
one id, so a client replaces its order-select cards with the order-sign answer (spec: Update
stale guidance).
"""
from __future__ import annotations

from dataclasses import dataclass

from .prefetch import QUERIES
from .rulebook import CARD, RuleSpec

SERVICE_TEXT = {
    ("legmove-patient-view", "patient-view"): (
        "Leg movements: chart review",
        "On opening a chart with restless legs syndrome, PLMD or a leg-movement complaint: checks iron stores "
        "(ferritin) and lists active medications that can worsen restless legs."),
    ("legmove-orders", "order-select"): (
        "Leg movements: order check",
        "When a drug is selected for a patient with restless legs syndrome or PLMD: flags drugs that can worsen "
        "RLS, and checks iron stores when an RLS drug or iron is chosen."),
    ("legmove-orders", "order-sign"): (
        "Leg movements: order check at signing",
        "Before signing: re-checks every order for drugs that can worsen restless legs syndrome or PLMD."),
}


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    rule_ids: tuple[str, ...]  # card rules that can answer on this hook
    prefetch_keys: tuple[str, ...]

    def discovery_entry(self) -> dict:
        entry = {"hook": self.hook, "id": self.id, "title": self.title, "description": self.description,
                 "prefetch": {key: QUERIES[key] for key in self.prefetch_keys},
                 "usageRequirements": "Needs read access to Condition, Observation, ServiceRequest, MedicationRequest "
                                      "and MedicationStatement for the context patient (prefetch or fhirServer)."}
        if not entry["prefetch"]:
            del entry["prefetch"]
        return entry


def build_services(specs: list[RuleSpec]) -> dict[tuple[str, str], Service]:
    derivation_needs = {key for spec in specs if spec.stratum != CARD for key in spec.needs}
    services = {}
    for (service_id, hook), (title, description) in SERVICE_TEXT.items():
        cards = [s for s in specs if s.stratum == CARD and hook in s.hooks]
        keys = derivation_needs | {key for s in cards for key in s.needs}
        services[(service_id, hook)] = Service(service_id, hook, title, description, tuple(s.id for s in cards),
                                               tuple(k for k in QUERIES if k in keys))
    return services
