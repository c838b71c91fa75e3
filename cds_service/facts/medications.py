"""Medications: resolving medication references, classifying chart medications, and the draft orders' facts."""

from __future__ import annotations

from functools import cached_property

from cds_service.facts.project import UNKNOWN_DAYS, _Projection
from cds_service.facts.schema import MEDICATION
from cds_service.fhir.fhir_read import (
    as_list,
    clip,
    codings_of,
    mapping,
    reference_of,
    refers_to_patient,
    string,
    text_of,
)

CHART_MED_REQUEST_INTENTS = {"order", "plan", "original-order"}
ACTIVE_STATEMENT = {"active", "intended"}
RECENT_MED_REQUEST = {"completed", "stopped", "on-hold"}  # "recent therapy" for new-start checks (R20)
DROPPED_DRAFT_STATUS = {"entered-in-error", "cancelled"}


class _Medications(_Projection):
    """The fact builder's medication steps; mixed into `_Builder`."""

    def _chart_medication(self, res: dict) -> dict | None:
        status = string(res.get("status"))
        origin = "chart"
        if res.get("resourceType") == "MedicationRequest":
            if (
                string(res.get("intent")) not in CHART_MED_REQUEST_INTENTS
                or status not in {"active"} | RECENT_MED_REQUEST
            ):
                if status == "entered-in-error":
                    self._skip(res, "entered-in-error")
                return None
            if status != "active":
                origin = "recent"  # stopped or completed: history for new-start checks, never "on it now"
        elif status not in ACTIVE_STATEMENT:
            return None
        fact = self._medication(res, origin=origin, selected=False)
        if (
            fact
            and origin == "recent"
            and not 0 <= fact["started_days_ago"] <= self.term.settings.new_start_window_days
        ):
            return None
        return fact

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
            fact = self._medication(res, origin="draft", selected=selected, extra=self._indications)
        elif res.get("resourceType") == "ServiceRequest":
            fact = self._service_request(res, "draft", selected)
        else:
            self._skip(ref, f"draft type {res.get('resourceType')} not used by any rule")
            return []
        return ([fact] if fact else []) + self._reason_conditions(res)

    def _indications(self, order: dict) -> dict:
        """What the order is for, as coded: labels for the card ("Generalized anxiety disorder
        (F41.1)") and the code sets they fall in (an allergic indication, say)."""
        labels: list[str] = []
        sets: set[str] = set()
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
        return self._coded_conditions(
            order,
            as_list(order.get("reasonCode")),
            "active",
            "reason for this order",
            dates,
            every=True,
            windowed=False,
        )  # the reason is current by definition

    @cached_property
    def medications(self) -> dict[str, dict]:
        """The Medications supplied with the call, by `Medication/{id}`: built on the first
        `medicationReference` to resolve, so a chart whose orders carry their own code never
        walks its resources for it."""
        return supplied_medications(self.data.resources, self.data.draft_orders)

    def _medication(self, res: dict, origin: str, selected: bool, extra=None) -> dict | None:
        """The medication fact, or None when it matches no known class. `extra(res)`: further
        fields (a draft's indications), asked for only when there is a fact."""
        codings, texts = self._resolve_medication(res)
        routes = [
            t
            for d in as_list(res.get("dosageInstruction") or res.get("dosage"))
            if isinstance(d, dict)
            for t in [text_of(d.get("route")), *(c.get("display") for c in codings_of(d.get("route")))]
            if t
        ]
        if not codings and not texts:
            self._skip(res, "medication has no code and no text")
            return None
        key = (tuple((c.get("system"), c.get("code")) for c in codings), tuple(texts), tuple(routes))
        if key not in self._matches:  # refills repeat one product: classify it once per call
            self._matches[key] = self.term.match_medication(codings, texts, routes)
        match = self._matches[key]
        if match is None:
            return None
        for note in match.notes:
            self._skip(reference_of(res), note)
        groups = sorted(g for g, classes in self.term.groups.items() if classes & set(match.classes))
        period = mapping(res.get("effectivePeriod"))
        started = (
            res.get("authoredOn") or res.get("effectiveDateTime") or period.get("start") or res.get("dateAsserted")
        )
        return MEDICATION.new(
            origin=origin,
            selected=selected,
            resource_ref=reference_of(res),
            resource_type=res.get("resourceType"),
            name=clip(match.name),
            classes=list(match.classes),
            groups=groups,
            ingredients=list(match.ingredients),
            matched_by=match.matched_by,
            code=match.code or "none",
            since=clip(str(started or ""), 10) or "undated",
            started_days_ago=self._days_ago(started),
            **(extra(res) if extra else {}),
        )

    def _resolve_medication(self, res: dict) -> tuple[list[dict], list[str]]:
        """Step 0 of section 9: the concept itself, a contained or supplied Medication, or a display."""
        concept = res.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return codings_of(concept), [
                t for t in [text_of(concept), *(c.get("display") for c in codings_of(concept))] if t
            ]
        reference = res.get("medicationReference")
        if not isinstance(reference, dict):
            return [], []
        target = reference.get("reference")
        med = None
        if isinstance(target, str) and target.startswith("#"):
            med = next(
                (c for c in as_list(res.get("contained")) if isinstance(c, dict) and c.get("id") == target[1:]), None
            )
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
    referenced: dict[str, set[str]] = {}
    supplied: set[str] = set()
    for key, group in [("draftOrders", draft_orders), *resources.items()]:
        for res in group:  # one walk of the chart: most resources are neither orders nor Medications
            kind = res.get("resourceType")
            if kind == "Medication":
                if isinstance(res.get("id"), str):
                    supplied.add(f"Medication/{res['id']}")
            elif kind == "MedicationRequest" or kind == "MedicationStatement":
                reference = res.get("medicationReference")
                target = reference.get("reference") if isinstance(reference, dict) else None
                if isinstance(target, str) and not target.startswith("#"):
                    referenced.setdefault(target, set()).add(key)
    return {target: keys for target, keys in referenced.items() if medication_key(target) not in supplied}
