"""The hook calls the benchmark sends: generated charts of a chosen size, the Synthea charts, an
order-select with a draft, and the same patients on a FHIR server for the `fhirServer` path.

Prefetch is filled the way an EHR that ignores search filters would fill it: every resource of a
key's type goes into that key. That is the worst case the service must stay fast for: cost should
follow the data that matters, not what the EHR happened to send.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
import re
from datetime import date, timedelta
from pathlib import Path

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"

# Irrelevant to every rule: body height, a blood pressure, metformin, an appendectomy, a CBC report.
_NOISE_OBSERVATION = ("8302-2", "Body height", 170, "cm")
_NOISE_CONDITIONS = ("I10", "E78.5", "K21.9", "M54.5", "J30.9", "Z00.00", "E66.9", "N39.0")


def template_types(discovery: dict, hook: str) -> dict[str, str]:
    """key -> resource type, for the service that answers `hook`."""
    for service in discovery["services"]:
        if service["hook"] == hook:
            return {
                key: re.split(r"[/?]", template, maxsplit=1)[0]
                for key, template in (service.get("prefetch") or {}).items()
            }
    raise LookupError(f"no service for {hook}")


def service_id(discovery: dict, hook: str) -> str:
    return next(s["id"] for s in discovery["services"] if s["hook"] == hook)


def prefetch_for(resources: list[dict], patient: dict, types: dict[str, str]) -> dict:
    by_type: dict[str, list[dict]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch = {}
    for key, kind in types.items():
        if kind == "Patient":
            prefetch[key] = patient
            continue
        entries = [
            {"fullUrl": f"{kind}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in by_type.get(kind, [])
        ]
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    return prefetch


def generated_patient(number: int, size: int, today: date) -> tuple[dict, list[dict]]:
    """An RLS patient with a low ferritin and an active SSRI (three relevant facts, so R2 and R4
    fire), buried in `size` resources of which about 1 in 50 more is relevant (older ferritins,
    sodium values), the rest noise spread over the types the service reads."""
    rng = random.Random(number * 7919 + size)
    pid = f"bench-{size}-{number}"
    subject = {"reference": f"Patient/{pid}"}
    patient = {"resourceType": "Patient", "id": pid, "birthDate": "1961-05-04", "gender": "female"}
    day = lambda n: (today - timedelta(days=n)).isoformat()  # noqa: E731
    resources: list[dict] = [
        {
            "resourceType": "Condition",
            "id": f"{pid}-rls",
            "subject": subject,
            "recordedDate": day(400),
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "verificationStatus": {"coding": [{"code": "confirmed"}]},
            "code": {"coding": [{"system": ICD10, "code": "G25.81", "display": "Restless legs syndrome"}]},
        },
        _lab(pid, subject, "2276-4", "Ferritin", 32, "ng/mL", day(30), "fer"),
        {
            "resourceType": "MedicationRequest",
            "id": f"{pid}-sertraline",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "authoredOn": day(90),
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "312941", "display": "sertraline 50 MG Oral Tablet"}]
            },
        },
    ]
    for i in range(max(0, size - len(resources) - 1)):
        kind = i % 7
        rid = f"{pid}-n{i}"
        relevant = rng.random() < 0.02
        if kind in (0, 1):
            if relevant:
                resources.append(
                    _lab(
                        pid,
                        subject,
                        "2951-2",
                        "Sodium",
                        rng.randint(135, 145),
                        "mmol/L",
                        day(rng.randint(1, 3000)),
                        f"na{i}",
                    )
                )
            else:
                code, name, value, unit = _NOISE_OBSERVATION
                resources.append(
                    _lab(pid, subject, code, name, value + rng.randint(-3, 3), unit, day(rng.randint(1, 5000)), f"n{i}")
                )
        elif kind == 2:
            resources.append(
                {
                    "resourceType": "Condition",
                    "id": rid,
                    "subject": subject,
                    "recordedDate": day(rng.randint(1, 9000)),
                    "clinicalStatus": {"coding": [{"code": rng.choice(["active", "resolved"])}]},
                    "code": {"coding": [{"system": ICD10, "code": rng.choice(_NOISE_CONDITIONS)}]},
                }
            )
        elif kind == 3:
            resources.append(
                {
                    "resourceType": "MedicationRequest",
                    "id": rid,
                    "intent": "order",
                    "subject": subject,
                    "status": rng.choice(["active", "stopped", "completed"]),
                    "authoredOn": day(rng.randint(1, 6000)),
                    "medicationCodeableConcept": {
                        "coding": [{"system": RXNORM, "code": "861007", "display": "metformin 500 MG Oral Tablet"}]
                    },
                }
            )
        elif kind == 4:
            resources.append(
                {
                    "resourceType": "Procedure",
                    "id": rid,
                    "status": "completed",
                    "subject": subject,
                    "performedDateTime": day(rng.randint(1, 9000)),
                    "code": {"coding": [{"system": SNOMED, "code": "80146002", "display": "Appendectomy"}]},
                }
            )
        elif kind == 5:
            resources.append(
                {
                    "resourceType": "DiagnosticReport",
                    "id": rid,
                    "status": "final",
                    "subject": subject,
                    "effectiveDateTime": day(rng.randint(1, 5000)),
                    "code": {"coding": [{"system": LOINC, "code": "58410-2", "display": "CBC panel"}]},
                }
            )
        else:
            resources.append(
                {
                    "resourceType": "ServiceRequest",
                    "id": rid,
                    "status": "completed",
                    "intent": "order",
                    "subject": subject,
                    "authoredOn": day(rng.randint(1, 5000)),
                    "code": {"coding": [{"system": LOINC, "code": "24323-8", "display": "CMP panel"}]},
                }
            )
    return patient, resources


def _lab(pid, subject, code, name, value, unit, when, suffix) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-{suffix}",
        "status": "final",
        "subject": subject,
        "effectiveDateTime": when,
        "code": {"coding": [{"system": LOINC, "code": code, "display": name}]},
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def patient_view(pid: str, prefetch: dict | None, number: int) -> dict:
    call = {
        "hook": "patient-view",
        "hookInstance": f"00000000-0000-4000-8000-{number:012d}",
        "context": {"userId": "Practitioner/bench", "patientId": pid},
    }
    if prefetch is not None:
        call["prefetch"] = prefetch
    return call


def order_select(patient: dict, resources: list[dict], types: dict[str, str], number: int) -> dict:
    """The chart plus a draft sertraline order, selected (an RLS-worsening drug: R3 fires)."""
    pid = patient["id"]
    draft = {
        "resourceType": "MedicationRequest",
        "id": f"draft-{number}",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "312941", "display": "sertraline 50 MG Oral Tablet"}]
        },
    }
    chart = [r for r in resources if not r["id"].endswith("-sertraline")]
    return {
        "hook": "order-select",
        "hookInstance": f"00000000-0000-4000-9000-{number:012d}",
        "context": {
            "userId": "Practitioner/bench",
            "patientId": pid,
            "selections": [f"MedicationRequest/{draft['id']}"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
        },
        "prefetch": prefetch_for(chart, patient, types),
    }


# ---- Synthea -------------------------------------------------------------------------------


def synthea_files(root: Path) -> list[Path]:
    return sorted(root.glob("*.json.gz"))


def synthea_chart(path: Path) -> tuple[dict, list[dict]]:
    """A transaction bundle as stored (urn:uuid references) turned into resources with ids, as a
    FHIR server would return them: `urn:uuid:X` becomes `Type/X`."""
    with gzip.open(path) as stream:
        bundle = json.load(stream)
    kinds = {}
    for entry in bundle["entry"]:
        uuid = entry["fullUrl"].removeprefix("urn:uuid:")
        kinds[uuid] = entry["resource"]["resourceType"]
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    text = re.sub(r'"urn:uuid:([0-9a-f-]{36})"', lambda m: f'"{kinds.get(m.group(1), "Unknown")}/{m.group(1)}"', text)
    resources = json.loads(text)
    for entry, resource in zip(bundle["entry"], resources, strict=True):
        resource["id"] = entry["fullUrl"].removeprefix("urn:uuid:")
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return patient, [r for r in resources if r["resourceType"] != "Patient"]


def synthea_transaction(path: Path) -> tuple[str, dict]:
    """The stored bundle as it is (server assigns ids) and the identifier that finds the patient."""
    with gzip.open(path) as stream:
        bundle = json.load(stream)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    uuid = next(
        i["value"]
        for i in patient.get("identifier", [])
        if i.get("system") == "https://github.com/synthetichealth/synthea"
    )
    return uuid, copy.deepcopy(bundle)
