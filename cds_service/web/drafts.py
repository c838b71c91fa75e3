"""Draft orders for trying the order hooks: a medication from the bundled RxNorm table, a
procedure from the procedure knowledge, or the orders in a file.

Used by `legmove-cds invoke` and the preview page, which both act as an EHR placing an order.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
from datetime import date
from functools import lru_cache
from pathlib import Path

from cds_service.knowledge.codesets import RXNORM


class DraftError(ValueError):
    """The draft asked for cannot be made; the message says why."""


@lru_cache(maxsize=1)
def medication_products() -> tuple[dict, ...]:
    """Every row of the bundled RxNorm table (products and ingredients), as {rxcui, tty, name}."""
    table = importlib.resources.files("cds_service.knowledge").joinpath("rxnorm_leg_movement_drug_products.csv")
    with table.open("r", encoding="utf-8", newline="") as fh:  # type: ignore[call-overload]  # typeshed's Traversable.open lacks newline; the real file object takes it
        return tuple(
            {"rxcui": r["rxcui"].strip(), "tty": r["tty"].strip(), "name": r["name"].strip()}
            for r in csv.DictReader(fh)
            if r["rxcui"].strip()
        )


def search_medications(text: str, limit: int = 20) -> list[dict]:
    """Rows whose name contains every word of `text` (case-insensitive); products before ingredients."""
    words = text.lower().split()
    if not words:
        return []
    hits = [row for row in medication_products() if all(w in row["name"].lower() for w in words)]
    hits.sort(key=lambda r: (r["tty"] == "IN", len(r["name"]), r["name"]))
    return hits[:limit]


def medication_draft(rxcui: str, patient_id: str) -> dict:
    row = next((r for r in medication_products() if r["rxcui"] == rxcui), None)
    if row is None:
        raise DraftError(f"RxNorm code {rxcui!r} is not in the bundled table; give the order as a file instead")
    return {
        "resourceType": "MedicationRequest",
        "id": f"draft-rxnorm-{rxcui}"[:64],
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": date.today().isoformat(),
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": rxcui, "display": row["name"]}],
            "text": row["name"],
        },
    }


@lru_cache(maxsize=1)
def procedure_kinds() -> dict[str, dict]:
    """Orderable procedures the rules know (polysomnography, EMG, imaging, ...): key -> {title, coding}."""
    data = json.loads(
        importlib.resources.files("cds_service.knowledge").joinpath("procedures.json").read_text(encoding="utf-8")
    )
    kinds = {}
    for key, entry in data.items():
        if key.startswith("_") or not isinstance(entry, dict):
            continue
        codings = [{"system": system, "code": codes[0]} for system, codes in entry.get("codes", {}).items() if codes]
        kinds[key] = {"title": entry["title"], "coding": codings[:1]}
    return kinds


def procedure_draft(kind: str, patient_id: str) -> dict:
    entry = procedure_kinds().get(kind)
    if entry is None:
        raise DraftError(f"unknown procedure {kind!r}; known: {', '.join(procedure_kinds())}")
    code = {"text": entry["title"]}
    if entry["coding"]:
        code["coding"] = [dict(entry["coding"][0], display=entry["title"])]
    return {
        "resourceType": "ServiceRequest",
        "id": f"draft-{kind}".replace("_", "-"),
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": date.today().isoformat(),
        "code": code,
    }


def drafts_from_file(path: Path) -> list[dict]:
    """A MedicationRequest/ServiceRequest, a Bundle of them, or a fixture (its context.draftOrders)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DraftError(f"cannot read draft orders from {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("request"), dict):
        data = data["request"].get("context", {}).get("draftOrders") or {}
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise DraftError(f"{path} holds no FHIR resource")
    resources = [e.get("resource") for e in data.get("entry") or []] if data["resourceType"] == "Bundle" else [data]
    resources = [r for r in resources if isinstance(r, dict) and isinstance(r.get("resourceType"), str)]
    if not resources:
        raise DraftError(f"{path} holds no draft orders")
    for number, resource in enumerate(resources):
        resource.setdefault("id", f"draft-{number + 1}")
    return resources


def draft_bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
