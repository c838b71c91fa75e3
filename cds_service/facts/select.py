"""Which resources belong to this patient and request: conversion with skip reasons, de-duplication checks, caps."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from cds_service.facts.schema import FactSchemaError
from cds_service.fhir.fhir_read import reference_of, refers_to_patient

if TYPE_CHECKING:  # build.py imports this module; the annotation only needs the name
    from cds_service.facts.build import PatientData
    from cds_service.knowledge.medications import MedicationMatch
    from cds_service.knowledge.terminology import Terminology

MAX_FACTS_PER_KIND = 200


class _Selection:
    """The fact builder's selection steps (which resources become facts at all): the first of the
    builder's layers (selection <- projection <- medications <- `_Builder`), and the one that declares
    the state of one build, which `_Builder.__init__` sets."""

    data: PatientData
    term: Terminology
    today: date
    skipped: list[tuple[str, str]]
    dropped: int  # resources left out before projection: no rule knows their code
    _matches: dict[tuple, MedicationMatch | None]  # medication classification per call

    def _convert(self, resources: list[dict], convert, many: bool = False) -> list[dict]:
        """Apply a converter to each resource. A resource whose shape defeats the converter (a list
        where a code belongs, say) is skipped and logged like any other unusable data: one bad
        resource never costs the call, and never yields a fact."""
        facts: list[dict] = []
        for res in resources:
            try:
                result = convert(res)
            except FactSchemaError:
                raise  # a fact the model does not allow is a bug in the projection, not bad data
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

    def _check_selections(self) -> None:
        draft_refs = {reference_of(r) for r in self.data.draft_orders}
        for sel in self.data.selections or ():
            if sel not in draft_refs:
                self._skip(sel, "selection does not resolve to an entry of draftOrders")
