"""FHIR R4 resources -> compact, typed facts for the rule engine.

This is the safety boundary. Entered-in-error, refuted, inactive, stale, foreign-patient and
unparseable data stop here and are logged with the reason; only clean projections reach the
rules. Resources are read as plain JSON (leniently, as real EHRs send them) and only the kinds
the rules use are looked at, so the cost follows the relevant data, not the chart size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from cds_service.fhir.fhir_read import (as_list, clip, codings_of, fhir_date_range, first_code, observation_date, parse_fhir_date,
                        quantity_of, reference_of, refers_to_patient, string, text_of)
from cds_service.knowledge.terminology import Terminology

log = logging.getLogger(__name__)

ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"entered-in-error", "refuted"}
FINAL_OBSERVATION = {"final", "amended", "corrected"}
PENDING_OBSERVATION = {"preliminary", "registered"}  # drawn, not resulted: counts as a pending test only
CHART_MED_REQUEST_INTENTS = {"order", "plan", "original-order"}
ACTIVE_STATEMENT = {"active", "intended"}
RECENT_MED_REQUEST = {"completed", "stopped", "on-hold"}  # "recent therapy" for new-start checks (R20)
DROPPED_DRAFT_STATUS = {"entered-in-error", "cancelled"}
PENDING_ORDER_STATUS = {"active", "draft"}
DONE_ORDER_STATUS = {"completed"}
DONE_PROCEDURE = {"completed"}
FINAL_REPORT = {"final", "amended", "corrected"}
MAX_FACTS_PER_KIND = 200
UNKNOWN_DAYS = -1  # a date we could not read: rules that need a date treat -1 as "unknown"


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

    @property
    def deceased(self) -> bool:
        """No advice for a deceased patient: the chart is being reviewed, not treated."""
        return any(f["kind"] == "patient" and f["deceased"] for f in self.facts)


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
        facts.append(self._patient(by_type.get("Patient", [])))
        facts += self._capped("condition", self._convert(by_type.get("Condition", []), self._condition))
        facts += self._observations(by_type.get("Observation", []))
        facts += self._capped("order", self._convert(by_type.get("ServiceRequest", []),
                                                     lambda r: self._service_request(r, "chart", False)))
        facts += self._capped("procedure_done", self._convert(
            by_type.get("Procedure", []) + by_type.get("DiagnosticReport", []), self._procedure_done))
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

    def _days_ago(self, value) -> int:
        when = parse_fhir_date(value)
        return (self.today - when).days if when else UNKNOWN_DAYS

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
        fact = {"kind": "patient", "age_years": UNKNOWN_DAYS, "age_min": UNKNOWN_DAYS, "age_max": UNKNOWN_DAYS,
                "child": False, "age_known": False, "deceased": _deceased(patient)}
        if span is None or span[0] > self.today:
            return fact
        youngest, oldest = _age(span[1], self.today), _age(span[0], self.today)
        youngest = max(youngest, 0)
        fact.update(age_min=youngest, age_max=oldest, age_years=oldest if oldest == youngest else UNKNOWN_DAYS)
        if oldest < 18:
            fact.update(child=True, age_known=True)
        elif youngest >= 18:
            fact.update(age_known=True)
        return fact

    # ---- conditions ---------------------------------------------------------------------

    def _condition(self, res: dict) -> dict | None:
        verification = first_code(res.get("verificationStatus"))
        if verification in EXCLUDED_VERIFICATION:
            return self._skip(res, f"verificationStatus {verification}")
        clinical = first_code(res.get("clinicalStatus"))
        if clinical not in ACTIVE_CONDITION:
            return self._skip(res, f"clinicalStatus {clinical or 'missing'}")
        onset = res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start")
        dates = {"recorded": clip(str(res.get("recordedDate") or onset or ""), 10) or "undated",
                 "recorded_days_ago": self._days_ago(res.get("recordedDate") or onset),
                 "onset_days_ago": self._days_ago(onset or res.get("recordedDate"))}
        span = fhir_date_range(onset or res.get("recordedDate"))
        age_days = (self.today - span[0]).days if span else None  # from the earliest day a partial date allows
        facts = self._coded_conditions(res, [res.get("code")], clinical, verification or "unconfirmed", dates,
                                       age_days=age_days)
        return facts[0] if facts else None  # a condition no rule knows: not a fact, not worth a log line

    # ---- observations -------------------------------------------------------------------

    def _observations(self, observations: list[dict]) -> list[dict]:
        """The latest readable final result per analyte, plus pending (preliminary) results and
        results that exist but cannot be read (which rules name, and never count as "on file")."""
        latest: dict[str, dict] = {}
        pending: list[dict] = []
        unreadable: list[dict] = []
        for fact in self._convert(observations, self._observation):
            if fact["kind"] == "pending_test":
                pending.append(fact)
            elif fact["kind"] == "unreadable_result":
                unreadable.append(fact)
            elif fact["analyte"] not in latest or fact["days_ago"] < latest[fact["analyte"]]["days_ago"]:
                latest[fact["analyte"]] = fact
        return list(latest.values()) + self._capped("pending_test", pending) + self._capped("unreadable_result", unreadable)

    def _observation(self, res: dict) -> dict | None:
        code = res.get("code")
        found = self.term.observation_analyte(codings_of(code), [t for t in [text_of(code), *(
            c.get("display") for c in codings_of(code))] if isinstance(t, str)])
        if found is None:
            return None
        analyte, code_value, how = found
        status = string(res.get("status"))
        if status in PENDING_OBSERVATION:
            return {"kind": "pending_test", "analyte": analyte.name, "resource_ref": reference_of(res),
                    "status": status, "origin": "result"}
        if status not in FINAL_OBSERVATION:
            return self._skip(res, f"status {status}")
        when = observation_date(res)
        if when is None:
            return self._skip(res, "no parseable effective date")
        days_ago = (self.today - when).days
        if days_ago < -1:
            return self._skip(res, "effective date in the future")
        lookback = int(self.term.settings[analyte.lookback_setting])
        if days_ago > lookback:
            return self._skip(res, f"older than the {lookback}-day lookback")
        fact = {"kind": "lab", "analyte": analyte.name, "resource_ref": reference_of(res), "loinc": clip(code_value, 40),
                "matched_by": how, "date": when.isoformat(), "days_ago": max(days_ago, 0), "usable": False}
        if res.get("dataAbsentReason"):
            return self._unreadable(res, fact, "no value (dataAbsentReason)")
        if analyte.panel:
            return fact  # a resulted panel or questionnaire: done, no single value to compare
        value = quantity_of(res)
        if value is None:
            return self._unreadable(res, fact, "no number could be read from the value")
        unit = value.unit
        if unit is None and value.source == "text":
            unit = analyte.unit  # "<10" reported as text for an analyte with one canonical unit
            fact["unit_assumed"] = True
        converted = analyte.to_canonical(value.number, unit)
        fact.update(raw_value=value.number, raw_unit=clip(unit or "(none)", 20), comparator=value.comparator,
                    value_source=value.source)
        if converted is None:
            return self._unreadable(res, fact, f"unit {clip(unit or '(none)', 20)!r} is not one {analyte.title} is "
                                               "reported in")
        fact.update(value=round(converted, 3), unit=analyte.unit, usable=True)
        low = _reference_low(res)
        if low is not None and low[1] == unit:
            fact["below_reference"] = value.number < low[0]
        return fact

    def _unreadable(self, res: dict, fact: dict, reason: str) -> dict:
        """A result that exists and counts by status and date but cannot be used: never "on file"
        for an absence rule, and named by the rule that then fires."""
        self._skip(res, f"{fact['analyte']}: {reason}")
        raw = res.get("valueString") if isinstance(res.get("valueString"), str) else fact.get("raw_value")
        quantity = res.get("valueQuantity") if isinstance(res.get("valueQuantity"), dict) else {}
        unit = quantity.get("code") or quantity.get("unit") or fact.get("raw_unit")
        return {"kind": "unreadable_result", "analyte": fact["analyte"], "resource_ref": fact["resource_ref"],
                "loinc": fact["loinc"], "matched_by": fact["matched_by"], "date": fact["date"],
                "days_ago": fact["days_ago"], "reason": clip(reason, 80),
                "raw_text": clip(f"{raw:g}" if isinstance(raw, float) else str(raw if raw is not None else "(none)"), 40),
                "raw_unit": clip(str(unit) if isinstance(unit, str) else "(none)", 20)}

    # ---- orders, procedures and medications ---------------------------------------------

    def _service_request(self, res: dict, origin: str, selected: bool) -> dict | None:
        """A lab order (pending test) or a procedure order (PSG, EMG, imaging, referral)."""
        status = "draft" if origin == "draft" else string(res.get("status"))
        if status not in PENDING_ORDER_STATUS | DONE_ORDER_STATUS:
            return None
        code = res.get("code")
        codings = codings_of(code)
        texts = [t for t in [text_of(code), *(c.get("display") for c in codings)] if isinstance(t, str)]
        lab = self.term.observation_analyte(codings, texts)
        if lab and status in PENDING_ORDER_STATUS:
            return {"kind": "pending_test", "analyte": lab[0].name, "resource_ref": reference_of(res),
                    "status": status, "origin": origin}
        procedure = self.term.procedures.match(codings, texts)
        if procedure is None:
            return None
        reasons = [c for concept in as_list(res.get("reasonCode")) for c in codings_of(concept)]
        unclassified = sum(1 for c in reasons if not self.term.codesets.sets_for(c.get("system"), c.get("code")))
        return {"kind": "order", "procedure": procedure[0], "matched_by": procedure[1], "origin": origin,
                "selected": selected, "status": status, "resource_ref": reference_of(res),
                "name": clip(texts[0] if texts else self.term.procedures.titles[procedure[0]], 60),
                "days_ago": self._days_ago(res.get("authoredOn")), "unclassified_reasons": unclassified}

    def _procedure_done(self, res: dict) -> dict | None:
        """A completed Procedure or a final DiagnosticReport (prior EMG, R12)."""
        status = string(res.get("status"))
        if status not in (DONE_PROCEDURE if res.get("resourceType") == "Procedure" else FINAL_REPORT):
            return None
        code = res.get("code")
        codings = codings_of(code)
        procedure = self.term.procedures.match(codings, [t for t in [text_of(code), *(
            c.get("display") for c in codings)] if isinstance(t, str)])
        if procedure is None:
            return None
        period = res.get("performedPeriod") if isinstance(res.get("performedPeriod"), dict) else {}
        effective = res.get("effectivePeriod") if isinstance(res.get("effectivePeriod"), dict) else {}
        when = (res.get("performedDateTime") or period.get("end") or period.get("start") or res.get("effectiveDateTime")
                or effective.get("end") or res.get("issued"))
        days_ago = self._days_ago(when)
        if days_ago < 0:
            return self._skip(res, "no parseable date (or a future one) on a procedure")
        return {"kind": "procedure_done", "procedure": procedure[0], "matched_by": procedure[1],
                "resource_ref": reference_of(res), "date": clip(str(when), 10), "days_ago": days_ago}

    def _chart_medication(self, res: dict) -> dict | None:
        status = string(res.get("status"))
        origin = "chart"
        if res.get("resourceType") == "MedicationRequest":
            if string(res.get("intent")) not in CHART_MED_REQUEST_INTENTS or status not in {"active"} | RECENT_MED_REQUEST:
                return None if status != "entered-in-error" else self._skip(res, "entered-in-error")
            if status != "active":
                origin = "recent"  # stopped or completed: history for new-start checks, never "on it now"
        elif status not in ACTIVE_STATEMENT:
            return None
        fact = self._medication(res, origin=origin, selected=False)
        if fact and origin == "recent" and not 0 <= fact["started_days_ago"] <= int(self.term.settings["new_start_window_days"]):
            return None
        return fact

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
            if fact:
                fact.update(self._indications(res))
        elif res.get("resourceType") == "ServiceRequest":
            fact = self._service_request(res, "draft", selected)
        else:
            self._skip(ref, f"draft type {res.get('resourceType')} not used by any rule")
            return []
        return ([fact] if fact else []) + self._reason_conditions(res)

    def _indications(self, order: dict) -> dict:
        """What the order is for, as coded: labels for the card ("Generalized anxiety disorder
        (F41.1)") and the code sets they fall in (an allergic indication, say)."""
        labels, sets = [], set()
        for concept in as_list(order.get("reasonCode"))[:5]:
            codings = codings_of(concept)
            text = text_of(concept) or next((c["display"] for c in codings if isinstance(c.get("display"), str)), None)
            if not codings and not text:
                continue
            code = f" ({clip(codings[0]['code'], 20)})" if codings else ""
            labels.append(clip(f"{text or 'coded reason'}{code}", 80))
            for coding in codings:
                sets |= self.term.codesets.sets_for(coding.get("system"), coding["code"])
        return {"indications": labels, "indication_sets": sorted(sets)}

    def _reason_conditions(self, order: dict) -> list[dict]:
        """Catalog 2.2: a coded reason on the order being placed counts as present for the patient."""
        dates = {"recorded": "undated", "recorded_days_ago": UNKNOWN_DAYS, "onset_days_ago": UNKNOWN_DAYS}
        return self._coded_conditions(order, as_list(order.get("reasonCode")), "active", "reason for this order",
                                      dates, every=True, windowed=False)  # the reason is current by definition

    def _coded_conditions(self, res: dict, concepts: list, clinical: str, verification: str, dates: dict,
                          every: bool = False, age_days: int | None = None, windowed: bool = True) -> list[dict]:
        """Condition facts for the codings that fall in a known code set (the first only, unless
        `every`); a concept with no known coding may still match a code set's listed phrases.
        A set with a window (pregnancy) counts only while the condition's onset, else recorded
        date, is within it; an undated one never does (charts leave pregnancies active for years)."""
        facts = []
        for concept in concepts:
            matches = [(c["system"], c["code"], c.get("display"),
                        self._windowed(res, self.term.codesets.sets_for(c.get("system"), c["code"]), age_days, windowed))
                       for c in codings_of(concept)]
            matches = [m for m in matches if m[3]]
            text = text_of(concept) or next((c.get("display") for c in codings_of(concept)
                                             if isinstance(c.get("display"), str)), None)
            text_sets = self._windowed(res, self.term.codesets.sets_for_text(text), age_days, windowed) if not matches else frozenset()
            if text_sets:
                matches = [("text", "text", text, text_sets)]
            for system, code, display, sets in matches:
                facts.append({"kind": "condition", "resource_ref": reference_of(res), "system": system, "code": code,
                              "display": clip(display if isinstance(display, str) else (text or code)),
                              "sets": sorted(sets), "clinical_status": clinical, "verification_status": verification,
                              **dates})
                if not every:
                    return facts
        return facts

    def _windowed(self, res: dict, sets: frozenset[str], age_days: int | None, windowed: bool) -> frozenset[str]:
        if not windowed:
            return sets
        for name, setting in self.term.codesets.windows:
            limit = int(self.term.settings[setting])
            if name in sets and (age_days is None or age_days > limit):
                self._skip(res, f"{name} dated more than {limit} days ago, or undated: does not count")
                sets = sets - {name}
        return sets

    def _index_medications(self) -> dict[str, dict]:
        return supplied_medications(self.data.resources, self.data.draft_orders)

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
        period = res.get("effectivePeriod") if isinstance(res.get("effectivePeriod"), dict) else {}
        started = res.get("authoredOn") or res.get("effectiveDateTime") or period.get("start") or res.get("dateAsserted")
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
            "since": clip(str(started or ""), 10) or "undated",
            "started_days_ago": self._days_ago(started),
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
            med = self.medications.get(medication_key(target))
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


def medication_key(reference: str) -> str:
    """`Medication/123` for a relative, absolute or versioned reference to a Medication."""
    return "/".join(reference.split("/_history")[0].split("/")[-2:])


def supplied_medications(resources: dict[str, list[dict]], draft_orders: list[dict]) -> dict[str, dict]:
    """Medication resources that came with the call: in any key's Bundle (an `_include`, say) or
    in draftOrders, whatever the key is called."""
    meds = {}
    for res in [*draft_orders, *(r for rs in resources.values() for r in rs)]:
        if res.get("resourceType") == "Medication" and isinstance(res.get("id"), str):
            meds[f"Medication/{res['id']}"] = res
    return meds


def unresolved_medication_references(resources: dict[str, list[dict]], draft_orders: list[dict]) -> dict[str, set[str]]:
    """Step 0 of medication matching, what is left for a read: each `medicationReference` that is
    neither contained nor supplied with the call -> the data keys whose resources use it
    ("draftOrders" for a draft). Only relative `Medication/{id}` references qualify."""
    supplied = supplied_medications(resources, draft_orders)
    wanted: dict[str, set[str]] = {}
    sources = [("draftOrders", r) for r in draft_orders] + [(k, r) for k, rs in resources.items() for r in rs]
    for key, res in sources:
        if res.get("resourceType") not in ("MedicationRequest", "MedicationStatement"):
            continue
        reference = res.get("medicationReference")
        target = reference.get("reference") if isinstance(reference, dict) else None
        if isinstance(target, str) and not target.startswith("#") and medication_key(target) not in supplied:
            wanted.setdefault(target, set()).add(key)
    return wanted


def _age(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _deceased(patient: dict | None) -> bool:
    """`deceasedBoolean` true, or any `deceasedDateTime` at all: a chart that records a death
    (even with a date we cannot read) is reviewed, not treated."""
    if not patient:
        return False
    when = patient.get("deceasedDateTime")
    return patient.get("deceasedBoolean") is True or (isinstance(when, str) and bool(when.strip()))


def _reference_low(res: dict) -> tuple[float, str | None] | None:
    """The lower reference limit, when the lab sent one as a plain number with a unit."""
    ranges = as_list(res.get("referenceRange"))
    low = ranges[0].get("low") if ranges and isinstance(ranges[0], dict) else None
    if not isinstance(low, dict) or isinstance(low.get("value"), bool) or not isinstance(low.get("value"), (int, float)):
        return None
    return float(low["value"]), (low.get("code") or low.get("unit"))


def params_fact(term: Terminology) -> dict:
    """Configuration as a fact, so rules compare against data, not literals: every numeric or
    yes/no setting (windows in days, thresholds), the active iron profile, and the numbers of both
    profiles (R2 shows the other profile's verdict)."""
    settings = term.settings
    name = settings["iron_profile"]
    if name not in settings["profiles"]:
        raise ValueError(f"iron_profile {name!r} is not one of {sorted(settings['profiles'])}")
    fact = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in settings.items() if isinstance(v, (int, float, bool))}
    fact.update(kind="params", profile=name, profile_title=settings["profiles"][name]["title"],
                profile_source=settings["profiles"][name]["source"])
    for profile, numbers in settings["profiles"].items():
        fact.update({f"{profile}_{k}": float(v) for k, v in numbers.items() if isinstance(v, (int, float))})
    return fact
