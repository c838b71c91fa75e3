"""Real synthetic charts (Synthea, 126 patients beside the clone in ../shared/data/synthea): the stale
"active" data seen there must not make cards. Each chart is loaded whole into a real sekmet-fhir
server, enriched with an RLS diagnosis (Synthea has no RLS module), and read through fhirServer.

Skipped with a reason when the charts are not there (set LEGMOVE_SYNTHEA_DIR to point elsewhere).
"""

import gzip
import json
import os
import uuid
from pathlib import Path

import pytest
import requests

from conftest import EXTENSION, FHIR_TOKEN, ROOT

SYNTHEA = Path(os.environ.get("LEGMOVE_SYNTHEA_DIR", ROOT.parent / "shared" / "data" / "synthea"))
IDENTIFIER = "https://github.com/synthetichealth/synthea"

pytestmark = [
    pytest.mark.fhir_server,
    pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"Synthea charts not found at {SYNTHEA}"),
]


def _load(server, stem: str, ferritin: float | None = None) -> str:
    """POST the chart as Synthea wrote it, then add an active RLS Condition (and a ferritin); the patient id."""
    bundle = json.loads(gzip.decompress((SYNTHEA / f"{stem}.json.gz").read_bytes()))
    response = requests.post(server.base_url, json=bundle, headers=server.headers(), timeout=120)
    assert response.status_code == 200, response.text[:300]
    found = requests.get(
        f"{server.base_url}/Patient",
        params={"identifier": f"{IDENTIFIER}|{stem.rsplit('_', 1)[1]}"},
        headers=server.headers(),
        timeout=30,
    ).json()
    pid = found["entry"][0]["resource"]["id"]
    extra = [
        {
            "resourceType": "Condition",
            "id": f"rls-{uuid.uuid4().hex[:12]}",
            "subject": {"reference": f"Patient/{pid}"},
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "verificationStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                ]
            },
            "code": {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/sid/icd-10-cm",
                        "code": "G25.81",
                        "display": "Restless legs syndrome",
                    }
                ]
            },
            "recordedDate": "2026-03-01",
        }
    ]
    if ferritin is not None:
        extra.append(
            {
                "resourceType": "Observation",
                "id": f"fer-{uuid.uuid4().hex[:12]}",
                "status": "final",
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": "2026-10-01",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
                "valueQuantity": {
                    "value": ferritin,
                    "unit": "ug/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "ug/L",
                },
            }
        )
    server.transaction(extra)
    return pid


def _patient_view(client, server, pid: str) -> dict:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": server.base_url,
        "fhirAuthorization": {
            "access_token": FHIR_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "legmove-cds",
            "patient": pid,
        },
        "context": {"userId": "Practitioner/dr-ada", "patientId": pid},
    }
    response = client.post("/cds-services/legmove-patient-view", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


@pytest.mark.parametrize(
    "stem", ["Juliette_Padberg_4acd4ca8-d54b-47f4-bd13-051276711265"]
)  # pregnancy of 2021, "active"
def test_pregnancies_long_past_give_no_secondary_rls_card(client, fhir_server, stem):
    cards = _patient_view(client, fhir_server, _load(fhir_server, stem))["cards"]
    assert "R19" not in {c["extension"][EXTENSION]["rule"] for c in cards}
    assert "R1" in {c["extension"][EXTENSION]["rule"] for c in cards}, "the enriched RLS is seen: the chart was read"


@pytest.mark.parametrize(
    "stem",
    [
        "Emeline_Hilll_7ed502b9-471a-4d6f-8cb0-aa96a156878a",  # died 1959, pregnancy "active"
        "Alejandro_Riojas_a9fcc685-c7a2-4474-bf25-26c8fe4b48f9",
    ],
)  # died 2008
def test_deceased_patients_get_no_cards(client, fhir_server, stem):
    assert _patient_view(client, fhir_server, _load(fhir_server, stem, ferritin=20))["cards"] == []
