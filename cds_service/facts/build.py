"""FHIR R4 resources -> compact, typed facts for the rule engine.

This is the safety boundary. Entered-in-error, refuted, inactive, stale, foreign-patient and
unparseable data stop here and are logged with the reason; only clean projections reach the
rules. Resources are read as plain JSON (leniently, as real EHRs send them). Before any
projection, a resource whose type no projection reads, or whose concept names nothing any rule
knows, is dropped (relevance.py): it could not have yielded a fact, so it is counted, not listed
with a reason, and the cost follows the data the rules use, not the chart size. Everything else,
including what cannot be read, takes the full projection with its checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from cds_service.facts.medications import _Medications
from cds_service.facts.project import UNKNOWN_DAYS
from cds_service.facts.relevance import for_terminology
from cds_service.facts.schema import CONTEXT, DATA_GAP, PARAMS, PATIENT, FactSchemaError
from cds_service.fhir.fhir_read import fhir_date_range
from cds_service.knowledge.terminology import Terminology

log = logging.getLogger(__name__)


@dataclass
class PatientData:
    """Everything one evaluation may reason over, already resolved (prefetch or fhirServer)."""

    hook: str
    patient_id: str
    resources: dict[str, list[dict]]  # prefetch key -> resources
    incomplete_keys: set[str] = field(default_factory=set)
    draft_orders: list[dict] = field(default_factory=list)
    selections: list[str] | None = None  # order-select only


@dataclass
class FactSet:
    facts: list[dict]
    skipped: list[tuple[str, str]]  # (resource reference, reason): logged, never shown to rules
    dropped: int = 0  # resources whose code no rule knows, left out before projection (relevance.py)

    @property
    def deceased(self) -> bool:
        """No advice for a deceased patient: the chart is being reviewed, not treated."""
        return any(f["kind"] == "patient" and f["deceased"] for f in self.facts)


def build_facts(data: PatientData, terminology: Terminology, today: date) -> FactSet:
    builder = _Builder(data, terminology, today)
    return builder.build()


class _Builder(_Medications):
    def __init__(self, data: PatientData, terminology: Terminology, today: date):
        self.data = data
        self.term = terminology
        self.today = today
        self.skipped: list[tuple[str, str]] = []
        self.dropped = 0
        self._matches = {}  # lives for this call only, like all patient data

    def build(self) -> FactSet:
        facts: list[dict] = [CONTEXT.new(hook=self.data.hook), params_fact(self.term)]
        facts += [DATA_GAP.new(key=key) for key in sorted(self.data.incomplete_keys)]
        seen: set[str] = set()
        by_type: dict[str, list[dict]] = {}
        may_matter = for_terminology(self.term).for_one_call()
        for resources in self.data.resources.values():
            for res in resources:
                rid = res.get("id")  # reference_of, inline: this loop sees every resource of the chart
                ref = f"{res.get('resourceType')}/{rid if isinstance(rid, str) else '(no id)'}"
                if ref in seen:
                    continue  # the same resource may come in two prefetch keys: the first copy counts
                seen.add(ref)
                if not may_matter(res):
                    self.dropped += 1  # no rule knows its code: counted, not listed (see relevance.py)
                    continue
                if not self._belongs_to_patient(res, ref):
                    continue
                by_type.setdefault(str(res.get("resourceType")), []).append(res)
        facts.append(self._patient(by_type.get("Patient", [])))
        facts += self._capped("condition", self._convert(by_type.get("Condition", []), self._condition))
        facts += self._observations(by_type.get("Observation", []))
        facts += self._capped(
            "order",
            self._convert(by_type.get("ServiceRequest", []), lambda r: self._service_request(r, "chart", False)),
        )
        facts += self._capped(
            "procedure_done",
            self._convert(by_type.get("Procedure", []) + by_type.get("DiagnosticReport", []), self._procedure_done),
        )
        chart_meds = by_type.get("MedicationRequest", []) + by_type.get("MedicationStatement", [])
        facts += self._capped("medication", self._convert(chart_meds, self._chart_medication))
        self._check_selections()
        facts += self._convert(self.data.draft_orders, self._draft_facts, many=True)
        for ref, reason in self.skipped:
            log.debug("skipped %s: %s", ref, reason)  # references identify a patient: never at INFO
        return FactSet(facts, self.skipped, self.dropped)

    def _patient(self, patients: list[dict]) -> dict:
        """Always one patient fact, so rules can test age without an optional match.

        A partial birthDate ("2016", "2016-05") is a range of ages; the age group is known only
        when the whole range falls on one side of 18 (born in 2016 is a child in 2026). Without a
        readable birthDate the age is unknown: `age_known` is false and `child` false, and the
        rules that depend on age say so (R2, R7) or withhold advice (R20). `age_years` is -1
        unless the age is exact. `deceased` is read from `deceased[x]`; a patient whose resource
        could not be had is treated as alive (logged)."""
        patient = patients[0] if patients else None
        if patient is None:
            log.info("no Patient resource: age unknown, patient treated as alive")
        span = fhir_date_range(patient.get("birthDate")) if patient else None
        fact = {
            "kind": "patient",
            "age_years": UNKNOWN_DAYS,
            "age_min": UNKNOWN_DAYS,
            "age_max": UNKNOWN_DAYS,
            "child": False,
            "age_known": False,
            "deceased": _deceased(patient),
        }
        if span is None or span[0] > self.today:
            return PATIENT.new(**fact)
        youngest, oldest = _age(span[1], self.today), _age(span[0], self.today)
        youngest = max(youngest, 0)
        fact.update(age_min=youngest, age_max=oldest, age_years=oldest if oldest == youngest else UNKNOWN_DAYS)
        if oldest < 18:
            fact.update(child=True, age_known=True)
        elif youngest >= 18:
            fact.update(age_known=True)
        return PATIENT.new(**fact)


def _age(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _deceased(patient: dict | None) -> bool:
    """`deceasedBoolean` true, or any `deceasedDateTime` at all: a chart that records a death
    (even with a date we cannot read) is reviewed, not treated."""
    if not patient:
        return False
    when = patient.get("deceasedDateTime")
    return patient.get("deceasedBoolean") is True or (isinstance(when, str) and bool(when.strip()))


def params_fact(term: Terminology) -> dict:
    """Configuration as a fact, so rules compare against data, not literals: every numeric or
    yes/no setting (windows in days, thresholds), the active iron profile, and the numbers of both
    profiles (R2 shows the other profile's verdict)."""
    settings = term.settings.as_dict()
    name = settings["iron_profile"]
    if name not in settings["profiles"]:
        raise ValueError(f"iron_profile {name!r} is not one of {sorted(settings['profiles'])}")
    fact: dict[str, object] = {
        k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        for k, v in settings.items()
        if isinstance(v, (int, float, bool))
    }
    fact.update(
        kind="params",
        profile=name,
        profile_title=settings["profiles"][name]["title"],
        profile_source=settings["profiles"][name]["source"],
    )
    for profile, numbers in settings["profiles"].items():
        fact.update({f"{profile}_{k}": float(v) for k, v in numbers.items() if isinstance(v, (int, float))})
    try:
        return PARAMS.new(**fact)
    except FactSchemaError as exc:  # a setting the fact model does not declare (an override's typo?)
        raise FactSchemaError(
            f"the settings do not fit the params fact ({exc}); declare a new setting in cds_service/facts/schema.py"
        ) from exc
