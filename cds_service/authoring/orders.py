"""Builders for the FHIR resources that card suggestions propose.

Proposed orders are drafts (`status: draft`, `intent: proposal`) for the context patient,
with no dose prefilled: the clinician completes the order. `cards/render.py` validates every one
against the FHIR R4 models before it leaves the service.
"""

from __future__ import annotations

from cds_service.authoring.rulebook import ActionDraft
from cds_service.knowledge.codesets import LOINC, RXNORM
from cds_service.knowledge.settings import OrderCode


def lab_order(patient_id: str, loinc: str, display: str, note: str | None = None) -> ActionDraft:
    resource: dict[str, object] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display},
    }
    if note:
        resource["note"] = [{"text": note}]
    return ActionDraft(type="create", description=f"Create a draft order for {display}", resource=resource)


def procedure_order(
    patient_id: str, code: OrderCode, priority: str = "routine", note: str | None = None
) -> ActionDraft:
    """A ServiceRequest for a procedure or referral; `code` is a configured setting: a coding
    (system, code, display) or only a text. Sites replace the unverified defaults (docs/knowledge.md)."""
    concept: dict[str, object] = {"text": code.label}
    if code.system and code.code:
        concept["coding"] = [{"system": code.system, "code": code.code, "display": code.display}]
    resource: dict[str, object] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "priority": priority,
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": concept,
    }
    if note:
        resource["note"] = [{"text": note}]
    return ActionDraft(
        type="create", description=f"Create a draft {priority} order: {concept['text']}", resource=resource
    )


def medication_proposal(patient_id: str, rxcui: str, display: str) -> ActionDraft:
    resource: dict[str, object] = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": rxcui, "display": display}],
            "text": display,
        },
    }
    return ActionDraft(
        type="create", description=f"Propose {display} (dose to be completed by the prescriber)", resource=resource
    )


def remove_draft(resource_ref: str, name: str) -> ActionDraft:
    return ActionDraft(type="delete", description=f"Remove the draft order for {name}", resource_id=resource_ref)
