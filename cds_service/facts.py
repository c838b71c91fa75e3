"""FHIR R4 resources -> compact, typed facts for the rule engine.

This is the safety boundary. Entered-in-error, refuted, inactive, stale, foreign-patient and
unparseable data stop here and are logged with the reason; only clean projections reach the
rules. Resources are read as plain JSON (leniently, as real EHRs send them) and only the kinds
the rules use are looked at, so the cost follows the relevant data, not the chart size.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from .terminology import LOINC, UCUM, Terminology

log = logging.getLogger(__name__)

ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"entered-in-error", "refuted"}
FINAL_OBSERVATION = {"final", "amended", "corrected"}
CHART_MED_REQUEST_INTENTS = {"order", "plan", "original-order"}
ACTIVE_STATEMENT = {"active", "intended"}
DROPPED_DRAFT_STATUS = {"entered-in-error", "cancelled"}
PENDING_ORDER_STATUS = {"active", "draft"}
MAX_TEXT = 120  # longest free text copied into a fact (card detail escapes it later)
MAX_FACTS_PER_KIND = 200


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


def build_facts(data: PatientData, terminology: Terminology, today: date) -> FactSet:
    builder = _Builder(data, terminology, today)
    return builder.build()


class _Builder:
    def __init__(self, data: PatientData, terminology: Terminology, today: date):
        self.data = data
        self.term = terminology
        self.today = today
        self.skipped: list[tuple[str, str]] = []
        self.medications = self._index_medications()
        self._matches: dict[tuple, object] = {}  # lives for this call only, like all patient data

    def build(self) -> FactSet:
        facts: list[dict] = [{"kind": "context", "hook": self.data.hook}, params_fact(self.term)]
        facts += [{"kind": "data_gap", "key": key} for key in sorted(self.data.incomplete_keys)]
        seen: set[str] = set()
        by_type: dict[str, list[dict]] = {}
        for key, resources in self.data.resources.items():
            for res in resources:
                ref = reference_of(res)
                if ref in seen:
                    continue  # the same resource may come in two prefetch keys
                seen.add(ref)
                if not self._belongs_to_patient(res, ref):
                    continue
                by_type.setdefault(res.get("resourceType"), []).append(res)
        facts += self._capped("condition", self._convert(by_type.get("Condition", []), self._condition))
        facts += self._latest_labs(by_type.get("Observation", []))
        facts += self._capped("pending_lab_order",
                              self._convert(by_type.get("ServiceRequest", []), lambda r: self._pending_order(r, "chart")))
        chart_meds = by_type.get("MedicationRequest", []) + by_type.get("MedicationStatement", [])
        facts += self._capped("medication", self._convert(chart_meds, self._chart_medication))
        self._check_selections()
        facts += self._convert(self.data.draft_orders, self._draft_facts, many=True)
        for ref, reason in self.skipped:
            log.debug("skipped %s: %s", ref, reason)  # references identify a patient: never at INFO
        return FactSet(facts, self.skipped)

    def _convert(self, resources: list[dict], convert, many: bool = False) -> list[dict]:
        """Apply a converter to each resource. A resource whose shape defeats the converter (a list
        where a code belongs, say) is skipped and logged like any other unusable data: one bad
        resource never costs the call, and never yields a fact."""
        facts: list[dict] = []
        for res in resources:
            try:
                result = convert(res)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                self._skip(res, f"unparseable ({type(exc).__name__})")
                continue
            if result:
                facts += result if many else [result]
        return facts

    def _skip(self, res: dict | str, reason: str) -> None:
        self.skipped.append((res if isinstance(res, str) else reference_of(res), reason))

    def _capped(self, kind: str, facts: list[dict]) -> list[dict]:
        if len(facts) > MAX_FACTS_PER_KIND:
            self._skip(kind, f"{len(facts) - MAX_FACTS_PER_KIND} {kind} facts over the cap of {MAX_FACTS_PER_KIND}")
            return facts[:MAX_FACTS_PER_KIND]
        return facts

    # ---- patient identity ---------------------------------------------------------------

    def _belongs_to_patient(self, res: dict, ref: str) -> bool:
        if res.get("resourceType") == "Patient":
            ok = res.get("id") == self.data.patient_id
        elif res.get("resourceType") == "Medication":
            return False  # indexed separately; never a fact of its own
        else:
            owner = res.get("subject") or res.get("patient")
            ok = isinstance(owner, dict) and refers_to_patient(owner.get("reference"), self.data.patient_id)
        if not ok:
            self._skip(ref, "not the context patient's resource")
        return ok

    # ---- conditions ---------------------------------------------------------------------

    def _condition(self, res: dict) -> dict | None:
        verification = first_code(res.get("verificationStatus"))
        if verification in EXCLUDED_VERIFICATION:
            return self._skip(res, f"verificationStatus {verification}")
        clinical = first_code(res.get("clinicalStatus"))
        if clinical not in ACTIVE_CONDITION:
            return self._skip(res, f"clinicalStatus {clinical or 'missing'}")
        recorded = clip(str(res.get("recordedDate") or res.get("onsetDateTime") or ""), 10) or "undated"
        facts = self._coded_conditions(res, [res.get("code")], clinical, verification or "unconfirmed", recorded)
        return facts[0] if facts else None  # a condition no rule knows: not a fact, not worth a log line

    # ---- observations -------------------------------------------------------------------

    def _latest_labs(self, observations: list[dict]) -> list[dict]:
        latest: dict[str, dict] = {}
        for res in observations:
            fact = self._lab(res)
            if fact and (fact["analyte"] not in latest or fact["days_ago"] < latest[fact["analyte"]]["days_ago"]):
                latest[fact["analyte"]] = fact
        return list(latest.values())

    def _lab(self, res: dict) -> dict | None:
        analyte, loinc = None, None
        for coding in codings_of(res.get("code")):
            if coding.get("system") == LOINC and coding.get("code") in self.term.loinc_to_analyte:
                loinc = coding["code"]
                analyte = self.term.loinc_to_analyte[loinc]
                break
        if analyte is None:
            return None
        status = string(res.get("status"))
        if status not in FINAL_OBSERVATION:
            return self._skip(res, f"status {status}")
        if res.get("dataAbsentReason"):
            return self._skip(res, "dataAbsentReason set")
        when = observation_date(res)
        if when is None:
            return self._skip(res, "no parseable effective date")
        days_ago = (self.today - when).days
        if days_ago < -1:
            return self._skip(res, "effective date in the future")
        lookback = int(self.term.settings[analyte.lookback_setting])
        if days_ago > lookback:
            return self._skip(res, f"older than the {lookback}-day lookback")
        fact = {
            "kind": "lab",
            "analyte": analyte.name,
            "resource_ref": reference_of(res),
            "loinc": loinc,
            "date": when.isoformat(),
            "days_ago": max(days_ago, 0),
            "usable": False,
        }
        value = quantity_of(res)
        if value is None:
            self._skip(res, "value missing or not a number")
            return fact  # a result exists (suppresses "never measured") but carries no value
        raw, comparator, unit = value
        converted = analyte.to_canonical(raw, unit)
        fact.update(raw_value=raw, raw_unit=clip(unit or "(none)", 20), comparator=comparator)
        if converted is None:
            self._skip(res, f"unknown unit {unit!r} for {analyte.name}")
            return fact
        fact.update(value=round(converted, 3), unit=analyte.unit, usable=True)
        return fact

    # ---- orders and medications ---------------------------------------------------------

    def _pending_order(self, res: dict, origin: str) -> dict | None:
        status = string(res.get("status"))
        if status not in PENDING_ORDER_STATUS:
            return None
        for coding in codings_of(res.get("code")):
            analyte = self.term.loinc_to_analyte.get(coding.get("code")) if coding.get("system") == LOINC else None
            if analyte:
                return {"kind": "pending_lab_order", "analyte": analyte.name, "resource_ref": reference_of(res),
                        "status": status, "origin": origin}
        return None

    def _chart_medication(self, res: dict) -> dict | None:
        status = string(res.get("status"))
        if res.get("resourceType") == "MedicationRequest":
            if status != "active" or string(res.get("intent")) not in CHART_MED_REQUEST_INTENTS:
                return None if status != "entered-in-error" else self._skip(res, "entered-in-error")
        elif status not in ACTIVE_STATEMENT:
            return None
        return self._medication(res, origin="chart", selected=False)

    def _check_selections(self) -> None:
        draft_refs = {reference_of(r) for r in self.data.draft_orders}
        for sel in self.data.selections or ():
            if sel not in draft_refs:
                self._skip(sel, "selection does not resolve to an entry of draftOrders")

    def _draft_facts(self, res: dict) -> list[dict]:
        """Facts from one draft order: the medication or test, and its coded reasons."""
        ref = reference_of(res)
        owner = res.get("subject") or res.get("patient")
        if isinstance(owner, dict) and not refers_to_patient(owner.get("reference"), self.data.patient_id):
            self._skip(ref, "draft order for another patient")
            return []
        if string(res.get("status")) in DROPPED_DRAFT_STATUS:
            self._skip(ref, f"draft status {res['status']}")
            return []
        selected = self.data.selections is None or ref in self.data.selections
        if res.get("resourceType") == "MedicationRequest":
            fact = self._medication(res, origin="draft", selected=selected)
            return ([fact] if fact else []) + self._reason_conditions(res)
        if res.get("resourceType") == "ServiceRequest":
            fact = self._pending_order(dict(res, status="draft"), "draft")
            return [fact] if fact else []
        self._skip(ref, f"draft type {res.get('resourceType')} not used by any rule")
        return []

    def _reason_conditions(self, order: dict) -> list[dict]:
        """Catalog 2.2: a coded reason on the order being placed counts as present for the patient."""
        return self._coded_conditions(order, as_list(order.get("reasonCode")), "active", "reason for this order",
                                      "undated", every=True)

    def _coded_conditions(self, res: dict, concepts: list, clinical: str, verification: str, recorded: str,
                          every: bool = False) -> list[dict]:
        """Condition facts for the codings that fall in a known code set (the first only, unless `every`)."""
        facts = []
        for concept in concepts:
            for coding in codings_of(concept):
                sets = self.term.codesets.sets_for(coding.get("system"), coding.get("code"))
                if not sets:
                    continue
                facts.append({"kind": "condition", "resource_ref": reference_of(res), "system": coding["system"],
                              "code": coding["code"],
                              "display": clip(coding.get("display") or text_of(concept) or coding["code"]),
                              "sets": sorted(sets), "clinical_status": clinical, "verification_status": verification,
                              "recorded": recorded})
                if not every:
                    return facts
        return facts

    def _index_medications(self) -> dict[str, dict]:
        meds = {}
        for res in [*self.data.draft_orders, *(r for rs in self.data.resources.values() for r in rs)]:
            if res.get("resourceType") == "Medication" and isinstance(res.get("id"), str):
                meds[f"Medication/{res['id']}"] = res
        return meds

    def _medication(self, res: dict, origin: str, selected: bool) -> dict | None:
        codings, texts = self._resolve_medication(res)
        routes = [t for d in as_list(res.get("dosageInstruction") or res.get("dosage")) if isinstance(d, dict)
                  for t in [text_of(d.get("route")), *(c.get("display") for c in codings_of(d.get("route")))] if t]
        if not codings and not texts:
            return self._skip(res, "medication has no code and no text")
        key = (tuple((c.get("system"), c.get("code")) for c in codings), tuple(texts), tuple(routes))
        if key not in self._matches:  # refills repeat one product: classify it once per call
            self._matches[key] = self.term.match_medication(codings, texts, routes)
        match = self._matches[key]
        if match is None:
            return None
        for note in match.notes:
            self._skip(reference_of(res), note)
        groups = sorted(g for g, classes in self.term.groups.items() if classes & set(match.classes))
        return {
            "kind": "medication",
            "origin": origin,
            "selected": selected,
            "resource_ref": reference_of(res),
            "resource_type": res.get("resourceType"),
            "name": clip(match.name),
            "classes": list(match.classes),
            "groups": groups,
            "ingredients": list(match.ingredients),
            "matched_by": match.matched_by,
            "code": match.code or "none",
            "since": clip(str(res.get("authoredOn") or res.get("effectiveDateTime") or res.get("dateAsserted") or ""), 10) or "undated",
        }

    def _resolve_medication(self, res: dict) -> tuple[list[dict], list[str]]:
        """Step 0 of section 9: the concept itself, a contained or supplied Medication, or a display."""
        concept = res.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return codings_of(concept), [t for t in [text_of(concept), *(c.get("display") for c in codings_of(concept))] if t]
        reference = res.get("medicationReference")
        if not isinstance(reference, dict):
            return [], []
        target = reference.get("reference")
        med = None
        if isinstance(target, str) and target.startswith("#"):
            med = next((c for c in as_list(res.get("contained")) if isinstance(c, dict) and c.get("id") == target[1:]), None)
        elif isinstance(target, str):
            med = self.medications.get("/".join(target.split("/_history")[0].split("/")[-2:]))
        display = reference.get("display") if isinstance(reference.get("display"), str) else None
        if med is None:
            return [], [display] if display else []
        code = med.get("code")
        codings = codings_of(code)
        for ingredient in as_list(med.get("ingredient")):
            if isinstance(ingredient, dict):
                codings += codings_of(ingredient.get("itemCodeableConcept"))
        texts = [t for t in [text_of(code), *(c.get("display") for c in codings_of(code)), display] if t]
        return codings, texts


def params_fact(term: Terminology) -> dict:
    """The active threshold profile as a fact, so rules compare against data, not literals."""
    name = term.settings["iron_profile"]
    profile = term.settings["profiles"][name]
    return {"kind": "params", "profile": name, "profile_title": profile["title"], "profile_source": profile["source"],
            "ferritin_iron_indicated_below": float(profile["ferritin_iron_indicated_below"])}


# ---- lenient FHIR readers -----------------------------------------------------------------


def as_list(value) -> list:
    """FHIR arrays sometimes arrive as single objects (the sandbox's category, reasonCode)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def codings_of(concept) -> list[dict]:
    if not isinstance(concept, dict):
        return []
    return [c for c in as_list(concept.get("coding")) if isinstance(c, dict) and isinstance(c.get("code"), str)]


def text_of(concept) -> str | None:
    text = concept.get("text") if isinstance(concept, dict) else None
    return text if isinstance(text, str) and text.strip() else None


def string(value) -> str | None:
    """A FHIR primitive that must be a string, or None: a status sent as a list is not a status."""
    return value if isinstance(value, str) else None


def first_code(concept) -> str | None:
    codes = codings_of(concept)
    return codes[0]["code"] if codes else None


def reference_of(res: dict) -> str:
    rid = res.get("id")
    return f"{res.get('resourceType')}/{rid if isinstance(rid, str) else '(no id)'}"


def refers_to_patient(reference, patient_id: str) -> bool:
    if not isinstance(reference, str):
        return False
    return reference == f"Patient/{patient_id}" or reference.endswith(f"/Patient/{patient_id}")


def clip(text: str, limit: int = MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_fhir_date(value) -> date | None:
    """A full date or dateTime; partial dates (year, year-month) are too vague to compare."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", value):
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(timezone.utc)
        return parsed.date()
    except ValueError:
        return None


def observation_date(res: dict) -> date | None:
    period = res.get("effectivePeriod")
    for candidate in (res.get("effectiveDateTime"), period.get("end") if isinstance(period, dict) else None, res.get("issued")):
        parsed = parse_fhir_date(candidate)
        if parsed:
            return parsed
    return None


_TEXT_VALUE = re.compile(r"\s*(<=|>=|<|>)?\s*(\d+(?:\.\d+)?)\s*$")
_MAX_ABS_VALUE = 1e9  # every analyte we read is a non-negative amount far below this


def quantity_of(res: dict) -> tuple[float, str, str | None] | None:
    """(value, comparator, unit) from valueQuantity, or a ">60"-style valueString; None if unusable."""
    quantity = res.get("valueQuantity")
    if isinstance(quantity, dict):
        value = quantity.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not (0 <= value <= _MAX_ABS_VALUE):  # NaN, inf, huge ints and negative amounts are misreads
            return None
        value = float(value)
        comparator = quantity.get("comparator") if quantity.get("comparator") in ("<", "<=", ">", ">=") else "="
        unit = quantity.get("code") if quantity.get("system") == UCUM and isinstance(quantity.get("code"), str) else None
        if unit is None and isinstance(quantity.get("unit"), str):
            unit = quantity["unit"]
        return value, comparator, unit
    return None  # valueString has no unit for these analytes, so it cannot be converted
