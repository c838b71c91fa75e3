"""Large charts: the same answer buried in 20,000 resources no rule uses, and the parsing and memory
measures that keep a large body cheap (cyclic GC paused while it parses, long-lived objects frozen
in each worker)."""

import ast
import copy
import gc
import json

import pytest

from cds_service.app import create_app
from cds_service.web import api
from conftest import ROOT, load_fixture

R2_FIRES = load_fixture(ROOT / "fhir_fixtures/R2/fires-low-ferritin-ugl.json")
EXTENSION = "org.legmove-cds.explanation"


@pytest.fixture(scope="module")
def big_client():
    """The body limit is a setting; a 20,000-resource chart is about 7 MB."""
    return create_app(
        "test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, MAX_CONTENT_LENGTH=64 * 1024 * 1024
    ).test_client()


def _noise(patient_id: str, count: int) -> dict[str, list[dict]]:
    """Resources of every prefetched type whose codes no rule knows (height, hypertension,
    metformin, an appendectomy, a CBC report, a CMP order), by prefetch key."""
    subject = {"reference": f"Patient/{patient_id}"}
    makers = {
        "labs": lambda i: {
            "resourceType": "Observation",
            "id": f"n-obs-{i}",
            "status": "final",
            "subject": subject,
            "effectiveDateTime": "2026-01-02",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body height"}]},
            "valueQuantity": {"value": 170 + i % 5, "unit": "cm"},
        },
        "conditions": lambda i: {
            "resourceType": "Condition",
            "id": f"n-cond-{i}",
            "subject": subject,
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "recordedDate": "2020-01-01",
            "code": {
                "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}],
                "text": "Essential hypertension",
            },
        },
        "medication_requests": lambda i: {
            "resourceType": "MedicationRequest",
            "id": f"n-med-{i}",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "authoredOn": "2025-01-01",
            "medicationCodeableConcept": {
                "coding": [
                    {
                        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                        "code": "861007",
                        "display": "metformin 500 MG Oral Tablet",
                    }
                ]
            },
        },
        "procedures": lambda i: {
            "resourceType": "Procedure",
            "id": f"n-proc-{i}",
            "status": "completed",
            "subject": subject,
            "performedDateTime": "2010-05-05",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002", "display": "Appendectomy"}]},
        },
        "reports": lambda i: {
            "resourceType": "DiagnosticReport",
            "id": f"n-rep-{i}",
            "status": "final",
            "subject": subject,
            "effectiveDateTime": "2024-03-03",
            "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel"}]},
        },
        "service_requests": lambda i: {
            "resourceType": "ServiceRequest",
            "id": f"n-sr-{i}",
            "status": "completed",
            "intent": "order",
            "subject": subject,
            "authoredOn": "2024-03-03",
            "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8", "display": "CMP panel"}]},
        },
    }
    keys = list(makers)
    out: dict[str, list[dict]] = {key: [] for key in keys}
    for i in range(count):
        key = keys[i % len(keys)]
        out[key].append(makers[key](i))
    return out


def _buried(request: dict, count: int) -> dict:
    request = copy.deepcopy(request)
    for key, resources in _noise(request["context"]["patientId"], count).items():
        bundle = request["prefetch"].get(key) or {"resourceType": "Bundle", "type": "searchset", "entry": []}
        bundle.setdefault("entry", [])
        bundle["entry"] = [{"resource": r} for r in resources] + bundle["entry"]
        request["prefetch"][key] = bundle
    return request


def _answer(body: dict) -> list:
    """The cards without their uuids (fresh per call)."""
    cards = copy.deepcopy(body["cards"])
    for card in cards:
        card.pop("uuid", None)
        for suggestion in card.get("suggestions", []):
            suggestion.pop("uuid", None)
    return cards


def test_twenty_thousand_irrelevant_resources_give_the_same_cards(big_client):
    plain = big_client.post("/cds-services/legmove-patient-view", json=R2_FIRES["request"])
    assert plain.status_code == 200 and plain.get_json()["cards"]
    buried = _buried(R2_FIRES["request"], 20_000)
    assert sum(len(b.get("entry", [])) for b in buried["prefetch"].values() if isinstance(b, dict)) > 20_000
    body = json.dumps(buried)
    assert len(body) > 5 * 1024 * 1024  # over the default body limit: the setting is what lets it in
    answer = big_client.post("/cds-services/legmove-patient-view", data=body, content_type="application/json")
    assert answer.status_code == 200
    assert _answer(answer.get_json()) == _answer(plain.get_json())


def test_a_large_body_parses_with_the_cyclic_gc_paused_and_it_resumes(monkeypatch):
    seen = []
    real = api.orjson.loads
    monkeypatch.setattr(api.orjson, "loads", lambda raw: seen.append(gc.isenabled()) or real(raw))
    small = b'{"a": 1}'
    large = json.dumps({"a": ["x" * 100] * (api.GC_PAUSE_BYTES // 100 + 10)}).encode()
    assert api._parse(small) == {"a": 1} and api._parse(large)["a"][0] == "x" * 100
    assert seen == [True, False] and gc.isenabled()
    with pytest.raises(api.orjson.JSONDecodeError):
        api._parse(large[:-1])  # broken JSON: the collector is back on all the same
    assert gc.isenabled()
    gc.disable()  # a caller that had paused it keeps it paused
    try:
        api._parse(large)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_broken_large_body_is_still_a_400(big_client):
    body = json.dumps(_buried(R2_FIRES["request"], 2_000))[:-2]
    answer = big_client.post("/cds-services/legmove-patient-view", data=body, content_type="application/json")
    assert answer.status_code == 400 and gc.isenabled()


def test_each_worker_freezes_what_it_built_at_start():
    """gunicorn.conf.py's post_worker_init: everything alive after the app is built goes to the
    permanent generation, so no later collection walks it again."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text(encoding="utf-8"))
    hook = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "post_worker_init")
    namespace: dict = {}
    exec(compile(ast.Module(body=[hook], type_ignores=[]), "gunicorn.conf.py", "exec"), namespace)
    gc.unfreeze()
    try:
        namespace["post_worker_init"](None)
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_a_large_call_is_answered_with_the_gc_paused_throughout(big_client, monkeypatch):
    import cds_service.advice as advice

    seen = []
    real = advice.build_facts
    monkeypatch.setattr(advice, "build_facts", lambda *a, **k: seen.append(gc.isenabled()) or real(*a, **k))
    small = big_client.post("/cds-services/legmove-patient-view", json=R2_FIRES["request"])
    large = big_client.post(
        "/cds-services/legmove-patient-view",
        data=json.dumps(_buried(R2_FIRES["request"], 2_000)),
        content_type="application/json",
    )
    assert small.status_code == large.status_code == 200
    assert seen == [True, False] and gc.isenabled()


def test_overlapping_large_calls_resume_the_gc_only_when_the_last_ends():
    pause = api._GcPause()
    first, second = pause.held(True), pause.held(True)
    first.__enter__()
    second.__enter__()
    assert not gc.isenabled()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second call is still in progress
    second.__exit__(None, None, None)
    assert gc.isenabled()
    with pause.held(False):
        assert gc.isenabled()


def test_code_and_text_lookups_are_remembered_within_a_bound():
    from cds_service.knowledge import codesets
    from cds_service.knowledge.terminology import Terminology

    matcher = Terminology().codesets
    first = matcher.sets_for(codesets.ICD10CM, "G25.81")
    assert first and matcher.sets_for(codesets.ICD10CM, "G25.81") is first  # the remembered answer
    assert matcher.sets_for_text("benign fasciculation syndrome") == matcher._sets_for_text(
        "benign fasciculation syndrome"
    )
    for i in range(codesets.MEMO_SIZE + 10):
        matcher.sets_for(codesets.SNOMED, str(i))
    assert len(matcher._memo) <= codesets.MEMO_SIZE
    with pytest.raises(AttributeError):  # a code that is not a string fails as it did uncached (a skipped resource)
        matcher.sets_for(codesets.ICD10CM, 25)


# ---- the lean parse of very large bodies: exactly what orjson accepts, with the same values ----

HOSTILE = [
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b'{"a": 1e400}',
    b'{"a": -1.8e308}',
    b'{"a": "\\ud800"}',
    b'{"a": "\\udc00x"}',
    b'{"a": "\xed\xa0\x80"}',
    b'\xef\xbb\xbf{"a": 1}',
    b'{"a": "\xff"}',
    b'{"a": "\x01"}',
    b'{"a": 01}',
    b'{"a": 1,}',
    b'{"a": .5}',
    b'{"a": +1}',
    b'{"a": 0x10}',
    b"{'a': 1}",
    b'{"a": 1} x',
    b'\x0c{"a": 1}',
    b"[" * 1100 + b"]" * 1100,
    b'{"a": ' + b"9" * 5000 + b"}",
    b'{"a": 12345678901234567890123}',
    b'{"a": 18446744073709551615}',
    b'{"a": 18446744073709551616}',
    b'{"a": -9223372036854775808}',
    b'{"a": -9223372036854775809}',
    b'{"a": "\\ud83d\\ude00"}',
    b'{"a": -0, "b": -0.0, "c": 1E2, "d": "\\u0000", "a": 2}',
    b'"top"',
    b"[]",
    b"null",
    b"",
]


def _outcome(parse, raw: bytes):
    try:
        return ("value", parse(raw))
    except (ValueError, RecursionError):
        return ("refused", None)


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_the_lean_parser_accepts_nothing_orjson_refuses_and_agrees_on_values(raw):
    lean = _outcome(api._parse_lean, raw)
    fast = _outcome(api.orjson.loads, raw)
    if lean[0] == "value" and not api._SURROGATE_ESCAPE.search(raw):
        assert fast == lean and repr(fast[1]) == repr(lean[1])  # same types too (int vs float)


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_a_very_large_body_gets_the_same_answer_or_error_as_from_orjson(raw):
    padding = b" " * api.LEAN_PARSE_BYTES  # whitespace is JSON: the same document, over the threshold
    large = raw[:1] + padding + raw[1:] if raw[:1] in (b"{", b"[") else raw + padding
    try:
        expected = ("value", repr(api.orjson.loads(large)))
    except api.orjson.JSONDecodeError as exc:
        expected = ("error", str(exc))
    try:
        got = ("value", repr(api._parse(large)))
    except api.orjson.JSONDecodeError as exc:
        got = ("error", str(exc))
    assert got == expected


def test_the_lean_parser_round_trips_what_orjson_reads():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=30,
    )

    @settings(max_examples=300, deadline=None)
    @given(values, st.booleans())
    def check(value, ascii_only):
        raw = json.dumps(value, ensure_ascii=ascii_only).encode()
        if api._SURROGATE_ESCAPE.search(raw):
            return  # orjson decides those (see _parse)
        fast = _outcome(api.orjson.loads, raw)
        lean = _outcome(api._parse_lean, raw)
        assert lean[0] == "refused" or repr(lean) == repr(fast)

    check()


def test_a_very_large_body_allocates_far_less_than_orjson_needs():
    import tracemalloc

    resources = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body height"}]},
            "valueQuantity": {"value": 170.5, "unit": "cm"},
        }
        for i in range(30_000)
    ]
    raw = json.dumps({"entry": [{"resource": r} for r in resources]}).encode()
    del resources
    assert len(raw) > api.LEAN_PARSE_BYTES

    def peak_over_result(parse) -> float:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            value = parse(raw)
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert value["entry"][-1]["resource"]["id"] == "o29999" and after > before
        return (peak - after) / 2**20

    lean, fast = peak_over_result(api._parse), peak_over_result(api.orjson.loads)
    assert lean < 0.25 * fast, f"transient MB above the result: service parse {lean:.0f}, orjson {fast:.0f}"


# ---- what no rule reads is dropped before projection (facts/relevance.py): safe where it could go wrong ----

R4_CHART = load_fixture(ROOT / "fhir_fixtures/R4/fires-chart-review.json")
R4_BY_REFERENCE = load_fixture(ROOT / "fhir_fixtures/R4/fires-lithium-by-reference.json")
R11_FIRES = load_fixture(ROOT / "fhir_fixtures/R11/fires-labs-missing.json")


def _resource(request: dict, key: str, rid: str) -> dict:
    return next(e["resource"] for e in request["prefetch"][key]["entry"] if e["resource"]["id"] == rid)


def _same_buried(client, request: dict, count: int = 700) -> dict:
    """The answer to `request`, after checking that burying it in `count` resources no rule reads
    changes nothing."""
    plain = client.post("/cds-services/legmove-patient-view", json=request)
    buried = client.post("/cds-services/legmove-patient-view", json=_buried(request, count))
    assert plain.status_code == buried.status_code == 200
    assert _answer(buried.get_json()) == _answer(plain.get_json())
    return plain.get_json()


def _fired(body: dict) -> set[str]:
    return {card["extension"][EXTENSION]["rule"] for card in body["cards"]}


def test_a_condition_known_only_by_its_text_is_kept_among_conditions_no_rule_knows(big_client):
    """A local code no code set lists, with a text a code set's phrases name: the cheap test must
    read the text too, or benign fasciculation would be dropped with the hypertensions."""
    request = copy.deepcopy(R11_FIRES["request"])
    _resource(request, "conditions", "fasc-1")["code"] = {
        "coding": [{"system": "http://example.org/local-problems", "code": "FAS-9"}],
        "text": "Benign fasciculation syndrome",
    }
    assert "R11" in _fired(_same_buried(big_client, request))


def test_a_medication_known_only_by_its_text_or_by_reference_is_kept(big_client):
    """Among metformin refills: a sertraline order with no code at all, and a lithium order that
    names a Medication supplied in another key (only the projection can resolve it)."""
    request = copy.deepcopy(R4_CHART["request"])
    for key, rid in (("medication_requests", "mr-sertraline"), ("medication_statements", "ms-sertraline")):
        _resource(request, key, rid)["medicationCodeableConcept"] = {"text": "sertraline 50 MG Oral Tablet"}
    assert "R4" in _fired(_same_buried(big_client, request))
    assert "R4" in _fired(_same_buried(big_client, R4_BY_REFERENCE["request"]))


def test_a_relevant_resource_of_another_patient_still_yields_no_fact_and_is_listed(big_client, caplog):
    request = copy.deepcopy(R2_FIRES["request"])
    _resource(request, "labs", "fer-low")["subject"] = {"reference": "Patient/someone-else"}
    caplog.set_level("DEBUG", logger="cds_service.facts.build")
    assert "R2" not in _fired(_same_buried(big_client, request))
    assert "skipped Observation/fer-low: not the context patient's resource" in caplog.messages


def test_an_unparseable_relevant_resource_is_refused_and_listed_as_before(big_client, caplog):
    """The restless legs diagnosis with an onset its projection cannot read: skipped as
    unparseable and named at DEBUG, so R2 stays silent; noise conditions of the same broken
    shape are dropped unread, counted on the INFO line and not listed."""
    request = copy.deepcopy(R2_FIRES["request"])
    _resource(request, "conditions", "rls-1")["onsetPeriod"] = ["2020-01-01"]
    caplog.set_level("INFO", logger="cds_service.advice")
    caplog.set_level("DEBUG", logger="cds_service.facts.build")  # last: it also sets the capture's level
    assert "R2" not in _fired(_same_buried(big_client, request))
    buried = _buried(request, 70)
    for entry in buried["prefetch"]["conditions"]["entry"]:
        entry["resource"]["onsetPeriod"] = ["2020-01-01"]
    before = len(caplog.records)
    assert big_client.post("/cds-services/legmove-patient-view", json=buried).status_code == 200
    messages = [r.getMessage() for r in caplog.records[before:]]
    skipped = [m for m in messages if m.startswith("skipped ")]
    assert skipped == ["skipped Condition/rls-1: unparseable (AttributeError)"], "dropped ones are counted, not listed"
    assert "1 resources or values were not used (see debug log); 70 resources no rule reads were left out" in messages


def test_one_reference_is_one_resource_even_when_its_first_copy_is_dropped(big_client):
    """Two resources under one reference: the first copy decides, as it always has. Dropping it
    early (no rule knows body height) must not let the second, a low ferritin, take its place."""
    request = copy.deepcopy(R2_FIRES["request"])
    twin = _noise(request["context"]["patientId"], 1)["labs"][0]
    twin["id"] = "fer-low"
    request["prefetch"]["labs"]["entry"].insert(0, {"resource": twin})
    assert "R2" not in _fired(_same_buried(big_client, request))
