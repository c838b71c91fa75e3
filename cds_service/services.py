"""The CDS services this deployment offers, derived from the rule registry.

A service is an (id, hook) pair and every hook has its own id: clients such as the CDS Hooks
Sandbox key services by URL and keep only one service per URL, so two hooks under one id made
one of them unreachable. Its prefetch templates are the union of what its rules read (and its
`labs` template lists only the analytes they can use), so discovery and rule inputs cannot drift apart.

`legmove-orders`, the id both order hooks shared before, is a deprecated alias: it still answers
order-select and order-sign (with a `Deprecation` header) and accepts feedback on cards of either
order service, but discovery no longer lists it (listing it would bring back the shared URL).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cds_service.authoring.rulebook import CARD, RuleSpec
from cds_service.engine.lint import findings_read
from cds_service.fhir.prefetch import optional_queries, queries
from cds_service.knowledge.terminology import Terminology

SERVICE_TEXT = {
    ("legmove-patient-view", "patient-view"): (
        "Leg movements: chart review",
        "On opening a chart: iron stores and worsening drugs in restless legs syndrome, its mimics and secondary "
        "causes; PLMS/PLMD criteria; red flags and work-up in fasciculations; causes and work-up of myoclonus.",
    ),
    ("legmove-order-select", "order-select"): (
        "Leg movements: order check",
        "When an order is selected: drugs that worsen RLS or cause myoclonus, dopaminergic drugs, quinine or "
        "polysomnography for simple cramps, repeat EMG or imaging in benign fasciculations; iron, mimics and "
        "akathisia when an RLS drug is chosen. The former shared id legmove-orders is a deprecated alias.",
    ),
    ("legmove-order-sign", "order-sign"): (
        "Leg movements: order check at signing",
        "Before signing: re-checks every draft order with the order-select checks that apply to all drafts. "
        "The former shared id legmove-orders is a deprecated alias.",
    ),
}

# deprecated id -> the ids it stands for (each serving one hook)
ALIASES = {"legmove-orders": ("legmove-order-select", "legmove-order-sign")}


def canonical_ids(service_id: str) -> tuple[str, ...]:
    """The service ids an endpoint id stands for: itself, or an alias's targets."""
    return ALIASES.get(service_id, (service_id,))


def services_at(services: dict[tuple[str, str], Service], service_id: str) -> dict[str, Service]:
    """hook -> Service answered at the URL of `service_id` (empty when the id is unknown)."""
    ids = canonical_ids(service_id)
    return {hook: service for (sid, hook), service in services.items() if sid in ids}


# Which data keys each fact kind comes from (see the facts package); "draft" facts come from the hook context.
KIND_KEYS = {
    "condition": ("conditions",),
    "lab": ("labs",),
    "pending_test": ("labs", "service_requests"),
    "order": ("service_requests",),
    "procedure_done": ("procedures", "reports"),
    "medication": ("medication_requests", "medication_statements"),
    "patient": ("patient",),
}
ORIGIN_KEYS = {"draft": (), "recent": ("medication_requests",), "result": ("labs",), "chart": None}


def keys_matched(spec: RuleSpec) -> set[str]:
    """Data keys whose facts a rule's own conditions match, read from the compiled condition:
    a kind stands for all its keys unless the condition pins the fact to the hook context
    (origin "draft") or to one source."""
    compiled = spec.condition.define()
    keys: set[str] = set()
    for condition in compiled.get("all", compiled.get("any")) or []:
        for expression in condition.values():
            kinds, origins = _literals(expression, "kind"), _literals(expression, "origin")
            pinned = origins and not _literals(_negated(expression), "origin")  # not `origin != "draft"`
            for kind in kinds & set(KIND_KEYS):
                if pinned and all(ORIGIN_KEYS.get(o) is not None for o in origins):
                    keys.update(k for o in origins for k in ORIGIN_KEYS[o] or () if k in KIND_KEYS[kind])
                else:
                    keys.update(KIND_KEYS[kind])
    return keys


# Fact kinds that carry an `analyte` (facts package) and can come from the `labs` key
LAB_KINDS = ("lab", "pending_test", "unreadable_result")


def analytes_read(spec: RuleSpec) -> set[str] | None:
    """Analytes whose results a rule can use: those its compiled conditions compare lab facts
    with, plus those it declares (`analytes=`, read by its render function from the call's facts).
    None means every analyte: a condition on a lab fact that names no analyte, or names one only
    under a `!=`, may match any result, so the safe reading is all of them."""
    compiled = spec.condition.define()
    found = set(spec.analytes)
    for condition in compiled.get("all", compiled.get("any")) or []:
        for expression in condition.values():
            if not _literals(expression, "kind") & set(LAB_KINDS):
                continue
            named = _literals(expression, "analyte")
            if not named or _literals(_negated(expression), "analyte"):
                return None
            found |= named
    return found


def hook_analytes(specs: list[RuleSpec]) -> frozenset[str] | None:
    """The union of `analytes_read` over rules (None: all analytes)."""
    found: set[str] = set()
    for spec in specs:
        read = analytes_read(spec)
        if read is None:
            return None
        found |= read
    return frozenset(found)


def _negated(expression) -> list:
    """The parts of a compiled condition under a `!=`."""
    if isinstance(expression, dict):
        return [v for k, v in expression.items() if k == "$neq"] + [x for v in expression.values() for x in _negated(v)]
    if isinstance(expression, list):
        return [x for v in expression for x in _negated(v)]
    return []


def _literals(expression, name: str) -> set[str]:
    if isinstance(expression, dict):
        found = {v for k, v in expression.items() if k == name and isinstance(v, str)}
        return found.union(
            *(_literals(v, name) for k, v in expression.items() if not (k == name and isinstance(v, str)))
        )
    if isinstance(expression, list):
        return set().union(*(_literals(v, name) for v in expression))
    return set()


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    rule_ids: tuple[str, ...]  # card rules that can answer on this hook
    prefetch: dict[str, str]  # key -> template, for the data its rules read
    # lab analytes its rules (and the findings they read) can use; None: all (see analytes_read)
    analytes: frozenset[str] | None = None
    # card rule -> every data key it depends on, through the findings it reads too: when one of
    # them is unknown the rule stays silent (it could fire on part of what it weighs)
    rule_keys: dict[str, frozenset[str]] = field(default_factory=dict)

    def evaluable(self, unknown: set[str]) -> tuple[str, ...]:
        """The card rules none of whose data is unknown."""
        return tuple(rule for rule in self.rule_ids if not self.rule_keys[rule] & unknown)

    def discovery_entry(self) -> dict:
        entry = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": "Needs read access to Patient, Condition, Observation, ServiceRequest, Procedure, "
            "DiagnosticReport, MedicationRequest and MedicationStatement for the context "
            "patient (prefetch or fhirServer); a key left out only silences the rules "
            "that read it. The PLMS index has no LOINC code: it is read by the local code "
            "in setting plms_index_code, which joins the labs template once set to a "
            "system the deployment owns.",
        }
        if not entry["prefetch"]:
            del entry["prefetch"]
        return entry


def build_services(specs: list[RuleSpec], term: Terminology) -> dict[tuple[str, str], Service]:
    """Each hook's templates from its rules: the keys they read and, in `labs`, only the codes of
    the analytes they can use (an order hook reads a few; patient-view nearly all)."""
    unknown = {a for s in specs for a in s.analytes} - set(term.analytes)
    if unknown:
        raise ValueError(f"rules declare analytes the terminology does not know: {sorted(unknown)}")
    for card in (s for s in specs if s.stratum == CARD):
        chain = _with_derivations([card], specs)
        if any("labs" in s.needs for s in chain) and hook_analytes(chain) == frozenset():
            raise ValueError(
                f"rule {card.id} reads labs but neither its conditions nor analytes= name an analyte: "
                "declare the analytes its card reads"
            )
    services = {}
    for (service_id, hook), (title, description) in SERVICE_TEXT.items():
        cards = [s for s in specs if s.stratum == CARD and hook in s.hooks]
        used = _with_derivations(cards, specs)
        keys = {key for s in used for key in s.needs}
        analytes = hook_analytes(used)
        templates = queries(term, analytes)
        rule_keys = {
            card.id: frozenset(key for s in _with_derivations([card], specs) for key in set(s.needs) | keys_matched(s))
            for card in cards
        }
        prefetch = {k: t for k, t in templates.items() if k in keys} | optional_queries(keys)
        services[(service_id, hook)] = Service(
            service_id, hook, title, description, tuple(s.id for s in cards), prefetch, analytes, rule_keys
        )
    return services


def _with_derivations(cards: list[RuleSpec], specs: list[RuleSpec]) -> list[RuleSpec]:
    """The card rules plus every derivation whose finding they read, directly or through another
    derivation: a hook's prefetch asks only for what its own rules can use, and a rule depends
    on the data of every finding it reads."""
    producers: dict[str, list[RuleSpec]] = {}
    for spec in specs:
        if spec.stratum != CARD and spec.produces is not None:  # a derivation always names its finding
            producers.setdefault(spec.produces, []).append(spec)
    needed, queue = list(cards), list(cards)
    while queue:
        for finding in findings_read(queue.pop()):
            for producer in producers.get(finding, []):
                if producer not in needed:
                    needed.append(producer)
                    queue.append(producer)
    return needed
