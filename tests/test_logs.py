"""Logs: one JSON object per line, a hook_call record per call, no patient data at INFO+."""

import io
import json
import logging
import re

import pytest
from durable.lang import c, m, when_all

from cds_service.advice import Knowledge
from cds_service.authoring.rulebook import DERIVE, RuleSpec
from cds_service.engine.wrapper import RuleEngine
from cds_service.web.logs import JsonFormatter
from conftest import FIXTURES, load_fixture, prefetched_resources


@pytest.fixture()
def log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # DEBUG records exist, but this INFO handler must not show them
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def patient_strings(request: dict) -> set[str]:
    """Identifiers and clinical text of one request, as they could leak into a log."""
    found = {request["context"]["patientId"]}
    for resource in prefetched_resources(request) + [
        e["resource"] for e in request["context"].get("draftOrders", {}).get("entry", [])
    ]:
        found.add(resource["id"])
        for coding in resource.get("code", {}).get("coding", []) + resource.get("medicationCodeableConcept", {}).get(
            "coding", []
        ):
            found.add(coding.get("display", ""))
    return {s for s in found if s and len(s) > 3}


def test_every_line_is_json_and_carries_no_patient_data(client, log_lines):
    fixtures = [load_fixture(p) for p in FIXTURES]
    for fixture in fixtures:
        client.post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    bad = dict(fixtures[0]["request"], hook=None)
    client.post("/cds-services/legmove-patient-view", json=bad)
    lines = log_lines()
    calls = [line for line in lines if line.get("event") == "hook_call"]
    assert len(calls) == len(fixtures) + 1
    for call in calls[:-1]:
        assert {"request_id", "service", "hook", "rules", "timings_ms", "status", "outcome", "total_ms"} <= set(call)
        assert call["status"] == 200
    assert calls[-1]["status"] == 400
    text = "\n".join(json.dumps(line) for line in lines)
    for fixture in fixtures:
        for secret in patient_strings(fixture["request"]):
            assert secret not in text, f"{secret!r} from {fixture['description'][:40]} reached an INFO log"
    assert not re.search(r"\b\d+(\.\d+)? ?(ng/mL|ug/L|pmol/L|g/dL)", text), "no clinical values at INFO"


def test_a_failing_rule_logs_its_id_not_the_data(app, log_lines):
    knowledge = app.extensions["legmove"]

    def leaky(match):
        runtime_secret = "-".join(["secret", "patient", str(6 * 7)])  # not in any source line
        raise ValueError(f"bad value for {match['ctx']['hook']} patient {runtime_secret}")

    specs = dict(knowledge.specs)
    specs["X-LEAK"] = RuleSpec(
        id="X-LEAK",
        title="leak",
        citation="test",
        stratum=DERIVE,
        module=__name__,
        condition=when_all(c.ctx << (m.kind == "context")),
        derive=leaky,
        produces="iron_check_due",
    )
    app.extensions["legmove"] = Knowledge(
        knowledge.terminology, specs, RuleEngine(list(specs.values()), name="leak_app"), knowledge.services
    )
    try:
        fixture = load_fixture(FIXTURES[0])
        assert app.test_client().post(f"/cds-services/{fixture['service']}", json=fixture["request"]).status_code == 500
    finally:
        app.extensions["legmove"] = knowledge
    lines = log_lines()
    assert any(line.get("rule") == "X-LEAK" and line["level"] == "ERROR" for line in lines)
    assert "secret-patient-42" not in json.dumps(lines)
    assert any(line.get("event") == "hook_call" and line["status"] == 500 for line in lines)
