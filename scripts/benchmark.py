"""Latency benchmark for one hook call, in process (no network), with medians and ratios.

Run with `make bench`. Series:
- the R1/R2/R4 fixtures as sent (a small chart);
- the same patient with a large chart of irrelevant data (conditions, labs, medications no rule
  reads), to show that cost follows the relevant data rather than the chart size;
- the engine alone on the same facts.
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service.app import create_app  # noqa: E402
from cds_service.facts import PatientData, build_facts  # noqa: E402

REPEAT = 300


def timed(fn, repeat=REPEAT) -> list[float]:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(name: str, samples: list[float]) -> float:
    samples = sorted(samples)
    median = statistics.median(samples)
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(f"{name:<58} median {median:7.2f} ms   p95 {p95:7.2f} ms")
    return median


def large_chart(request: dict, noise: int) -> dict:
    """Add `noise` irrelevant resources of each kind: what a long chart looks like to us."""
    call = copy.deepcopy(request)
    pid = call["context"]["patientId"]
    subject = {"reference": f"Patient/{pid}"}
    conditions = [{"resourceType": "Condition", "id": f"n-c{i}", "subject": subject,
                   "clinicalStatus": {"coding": [{"code": "active"}]},
                   "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": f"Z{i % 90:02d}.{i % 9}"}]}}
                  for i in range(noise)]
    labs = [{"resourceType": "Observation", "id": f"n-o{i}", "status": "final", "subject": subject,
             "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}, "effectiveDateTime": "2026-10-01",
             "valueQuantity": {"value": 90 + i % 40, "unit": "mg/dL"}} for i in range(noise)]
    meds = [{"resourceType": "MedicationRequest", "id": f"n-m{i}", "status": "active", "intent": "order",
             "subject": subject, "medicationCodeableConcept": {"coding": [
                 {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "861007"}], "text": "metformin 500 mg"}}
            for i in range(noise)]
    for key, extra in (("conditions", conditions), ("labs", labs), ("medication_requests", meds)):
        call["prefetch"][key]["entry"] += [{"resource": r} for r in extra]
    return call


def main() -> None:
    app = create_app("test", LOG_LEVEL="ERROR")
    client = app.test_client()
    knowledge = app.extensions["legmove"]
    fixture = json.loads((ROOT / "fhir_fixtures/R4/fires-chart-review.json").read_text())
    request = fixture["request"]
    url = f"/cds-services/{fixture['service']}"
    print(f"{REPEAT} runs each after 20 warm-up runs; Python {sys.version.split()[0]}\n")

    base = summary("patient-view, fixture R4/fires-chart-review (HTTP, in process)", timed(lambda: client.post(url, json=request)))
    for noise in (100, 1000):
        big = large_chart(request, noise)
        body = json.dumps(big)
        median = summary(f"  same + {noise} irrelevant each of Condition/Obs/MedRequest",
                         timed(lambda: client.post(url, data=body, content_type="application/json"), repeat=100))
        print(f"{'':<58} ratio to base {median / base:5.2f}x ({3 * noise} extra resources, {len(body) // 1024} KiB)")

    data = PatientData("patient-view", request["context"]["patientId"],
                       {k: [e["resource"] for e in v.get("entry", [])] for k, v in request["prefetch"].items()
                        if isinstance(v, dict) and v.get("resourceType") == "Bundle"})
    from datetime import date
    facts = build_facts(data, knowledge.terminology, date(2026, 11, 22)).facts
    summary(f"engine only ({len(facts)} facts)", timed(lambda: knowledge.engine.evaluate(facts)))
    summary("facts only", timed(lambda: build_facts(data, knowledge.terminology, date(2026, 11, 22))))
    order = json.loads((ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json").read_text())
    summary("order-sign, fixture R3/fires-sertraline-order-sign", timed(lambda: client.post("/cds-services/legmove-order-sign", json=order["request"])))


if __name__ == "__main__":
    main()
