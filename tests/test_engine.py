"""The durable-rules wrapper against the defects measured in durable-rules-notes.md (R10)."""

import logging
import random
import re
import threading

import pytest
from durable.lang import c, m, none, when_all

from cds_service.advice import Knowledge
from cds_service.authoring.rulebook import CARD, DERIVE, RuleSpec
from cds_service.engine.hygiene import MAX_PROPERTIES, EngineError, fact_json, general_fact_json
from cds_service.engine.lint import RuleDefinitionError
from cds_service.engine.wrapper import RuleEngine as _RuleEngine
from cds_service.engine.wrapper import RuleError
from conftest import ROOT, load_fixture


def RuleEngine(specs, name, fact_model=False):  # noqa: N802 - the engine under test
    """These probes test the wrapper over toy facts ('a', 'warfarin'), not the fact model
    (tests/test_fact_model.py): the model's checks are off unless a test asks for them."""
    return _RuleEngine(specs, name=name, fact_model=fact_model)


def card(rule_id, condition):
    return RuleSpec(
        id=rule_id,
        title=f"test {rule_id}",
        citation="test",
        stratum=CARD,
        condition=condition,
        module=__name__,
        hooks=("patient-view",),
        render=lambda matches, ctx: None,
    )


def derive(rule_id, condition, produces, fn=lambda match: {}):
    return RuleSpec(
        id=rule_id,
        title=f"test {rule_id}",
        citation="test",
        stratum=DERIVE,
        condition=condition,
        module=__name__,
        derive=fn,
        produces=produces,
    )


def test_no_background_threads_are_started():
    before = {t.ident for t in threading.enumerate()}
    engine = RuleEngine([card("T1", when_all(c.x << (m.kind == "a")))], name="threads_probe")
    engine.evaluate([{"kind": "a"}])
    assert {t.ident for t in threading.enumerate()} == before


def test_action_exception_names_the_rule_and_returns_no_cards():
    def broken(match):
        raise ZeroDivisionError("boom")

    engine = RuleEngine(
        [
            derive("BROKEN", when_all(c.x << (m.kind == "a")), "never", broken),
            card("CONSUMER", when_all(c.f << ((m.kind == "finding") & (m.name == "never")))),
        ],
        name="broken_probe",
    )
    with pytest.raises(RuleError) as info:
        engine.evaluate([{"kind": "a"}])
    assert info.value.rule_id == "BROKEN"
    assert engine.evaluate([{"kind": "b"}]).card_matches == {}  # the engine is still healthy


def test_more_sessions_than_the_engine_limit(app):
    """The stock engine allows 1024 live sessions; every evaluation must delete its own."""
    engine = RuleEngine([card("J", when_all(c.a << (m.kind == "a"), c.b << (m.kind == "b")))], name="sessions_probe")
    for i in range(2000):
        facts = [{"kind": "a", "n": i}] if i % 2 else []  # half a join, or nothing: only the sentinel fires
        assert engine.evaluate(facts).card_matches == {}


@pytest.mark.parametrize("alias", ["w", "med", "a", "x", "warf", "al", "be"])
def test_none_sees_a_negating_fact_asserted_in_any_order(alias):
    rule = when_all(getattr(c, alias) << (m.kind == "warfarin"), none(m.kind == "inr"))
    engine = RuleEngine([card("NEG", rule)], name=f"none_probe_{alias}")
    assert engine.evaluate([{"kind": "warfarin"}, {"kind": "inr"}]).card_matches == {}
    assert "NEG" in engine.evaluate([{"kind": "warfarin"}]).card_matches


def test_chained_findings_reach_card_rules():
    engine = RuleEngine(
        [
            derive("D", when_all(c.x << (m.kind == "a")), "seen", lambda match: {"v": 1}),
            card("C", when_all(c.f << ((m.kind == "finding") & (m.name == "seen")))),
        ],
        name="chain_probe",
    )
    evaluation = engine.evaluate([{"kind": "a"}])
    finding = evaluation.card_matches["C"][0]["f"]
    assert finding["rule"] == "D" and evaluation.facts_by_id[finding["basis"][0]]["kind"] == "a"


def test_floats_the_engine_parser_rejects_are_rewritten():
    engine = RuleEngine([card("SMALL", when_all(c.x << ((m.kind == "v") & (m.value < 0.001))))], name="float_probe")
    assert "SMALL" in engine.evaluate([{"kind": "v", "value": 1e-05}]).card_matches
    assert fact_json({"value": 1e-05}) == '{"value":1.0e-05}'
    assert fact_json({"value": 1e16}) == '{"value":1.0e+16}'


@pytest.mark.parametrize(
    "fact",
    [
        {"kind": "v", "value": float("inf")},
        {"kind": "v", "value": float("nan")},
        {"kind": "v", **{f"p{i}": i for i in range(300)}},
        {"kind": "v", "nested": {"a": 1}},
        {"kind": "v", "$hidden": 1},
        {"kind": "v", "items": 1},
    ],
)
def test_unsafe_facts_are_rejected_before_the_engine(fact):
    engine = RuleEngine([card("ANY", when_all(c.x << (m.kind == "v")))], name="unsafe_probe")
    with pytest.raises(EngineError):
        engine.evaluate([fact])
    assert "ANY" in engine.evaluate([{"kind": "v"}]).card_matches  # and the process carries on


@pytest.mark.parametrize(
    "specs, message",
    [
        ([card("EMPTY", when_all(m.alias == "x"))], "empty condition list"),
        ([card("ALIAS", when_all(c.s << (m.kind == "a")))], "reserved alias"),
        (
            [
                derive("D2", when_all(c.x << (m.kind == "a")), "f2"),
                card("NEGF", when_all(c.y << (m.kind == "b"), none((m.kind == "finding") & (m.name == "f2")))),
            ],
            "none() over a derived kind",
        ),
        ([derive("LONELY", when_all(c.x << (m.kind == "a")), "nobody_reads_this")], "consumed by no rule"),
        (
            [
                card(
                    "ORREF",
                    when_all(
                        c.p << (m.kind == "p"), c.x << ((m.kind == "a") & ((m.u == 1) | (m.u == 2)) & (m.v < c.p.limit))
                    ),
                )
            ],
            "follows an | group",
        ),
    ],
)
def test_registration_lint_stops_start_up(specs, message):
    with pytest.raises(RuleDefinitionError, match=re.escape(message)):
        RuleEngine(specs, name="lint_probe")


def test_or_then_alias_comparison_defect_is_real():
    """Why the lint exists: the engine drops the comparison in this shape (measured here)."""
    bad = when_all(c.p << (m.kind == "p"), c.x << ((m.kind == "a") & ((m.u == 1) | (m.u == 2)) & (m.v < c.p.limit)))
    good = when_all(c.p << (m.kind == "p"), c.x << ((m.kind == "a") & (m.v < c.p.limit) & ((m.u == 1) | (m.u == 2))))
    from cds_service.engine import wrapper as engine_module

    original = engine_module.lint
    engine_module.lint = lambda specs, definition: None
    try:
        probe = RuleEngine([card("BAD", bad), card("GOOD", good)], name="or_defect_probe")
    finally:
        engine_module.lint = original
    matched = probe.evaluate([{"kind": "p", "limit": 50.0}, {"kind": "a", "u": 1, "v": 111.0}]).card_matches
    assert "BAD" in matched and "GOOD" not in matched


def test_a_rule_that_raises_gives_one_clean_500_and_the_app_keeps_working(app):
    knowledge = app.extensions["legmove"]

    def explode(matches, ctx):
        raise RuntimeError("renderer bug")

    def derive_explode(match):
        raise KeyError("missing field")

    specs = dict(knowledge.specs)
    specs["X-BOOM"] = RuleSpec(
        id="X-BOOM",
        title="boom",
        citation="test",
        stratum=DERIVE,
        module=__name__,
        condition=when_all(c.ctx << ((m.kind == "context") & (m.hook == "patient-view"))),
        derive=derive_explode,
        produces="iron_check_due",
    )
    broken = Knowledge(
        knowledge.terminology, specs, RuleEngine(list(specs.values()), name="boom_app"), knowledge.services
    )
    fixture = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
    client = app.test_client()
    app.extensions["legmove"] = broken
    try:
        response = client.post("/cds-services/legmove-patient-view", json=fixture["request"])
    finally:
        app.extensions["legmove"] = knowledge
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    assert "OperationOutcome" in text and "KeyError" not in text and "Traceback" not in text
    assert client.post("/cds-services/legmove-patient-view", json=fixture["request"]).status_code == 200


def test_rule_catalog_page_is_current():
    from cds_service.cli.main import catalog_markdown

    page = (ROOT / "docs/rules.md").read_text(encoding="utf-8")
    assert page == catalog_markdown(), "regenerate with: legmove-cds rules > docs/rules.md"


def test_findings_with_tiny_floats_reach_card_rules():
    """Derived facts go through the same serialiser as base facts (1e-05 must not become '1e-05')."""
    engine = RuleEngine(
        [
            derive("TINY", when_all(c.x << (m.kind == "a")), "tiny", lambda match: {"ratio": 1e-05}),
            card("USE", when_all(c.f << ((m.kind == "finding") & (m.name == "tiny") & (m.ratio < 0.001)))),
        ],
        name="tiny_probe",
    )
    evaluation = engine.evaluate([{"kind": "a"}])
    assert evaluation.card_matches["USE"][0]["f"]["ratio"] == pytest.approx(1e-05)


def test_a_registration_the_c_engine_refuses_once_is_tried_again(monkeypatch, caplog):
    """The C parser has refused the same, deterministic definition once in a few hundred start-ups
    (error 102); a worker must not fail to boot for it. A definition refused every time still stops."""
    from durable import engine as durable_engine

    real = durable_engine.durable_rules_engine.create_ruleset
    calls = []

    def refuse_first(name, text):
        calls.append(name)
        if len(calls) == 1:
            raise durable_engine.durable_rules_engine.error("Could not create ruleset, error code: 102")
        return real(name, text)

    monkeypatch.setattr(durable_engine.durable_rules_engine, "create_ruleset", refuse_first)
    spec = RuleSpec(
        id="T1",
        title="t",
        citation="c",
        stratum=CARD,
        module=__name__,
        condition=when_all(c.a << (m.kind == "a")),
        render=lambda matches, ctx: None,
    )
    with caplog.at_level(logging.WARNING, logger="cds_service.engine.wrapper"):
        engine = RuleEngine([spec], "retry_once")
    assert len(calls) == 2 and engine is not None
    assert "registering it again (attempt 2 of 3)" in caplog.text

    def refuse_always(name, text):
        raise durable_engine.durable_rules_engine.error("Could not create ruleset, error code: 102")

    monkeypatch.setattr(durable_engine.durable_rules_engine, "create_ruleset", refuse_always)
    with pytest.raises(RuleDefinitionError, match="durable-rules rejected ruleset retry_always: .*102"):
        RuleEngine([spec], "retry_always")


def _text_or_error(write, fact):
    try:
        return write(fact)
    except EngineError as exc:
        return f"EngineError: {exc}"


def test_the_fast_fact_writer_accepts_rejects_and_writes_exactly_like_the_general_one():
    """fact_json's orjson path is taken only where it is indistinguishable from validate-then-json.dumps."""
    rng = random.Random(20261204)

    class Code(str):
        pass

    def value():
        pick = rng.randrange(12)
        if pick == 0:
            return rng.choice([0.0, -0.0, 1e-4, 9.999e15, 1e16, 1e-5, float("inf"), float("nan")])
        if pick in (1, 2, 3):
            return rng.choice([1, -1]) * 10 ** rng.uniform(-8, 20)
        if pick == 4:
            return round(rng.uniform(-500, 500), rng.randrange(4))
        if pick == 5:
            return rng.choice([2**63, -(2**63) - 1, 2**70, 0, -7, 10**6])
        if pick == 6:
            return rng.choice(["", "é ü", "\u2028", "\x00\x1f", "\ud800", "ferritin"])
        if pick == 7:
            return rng.choice([True, False, None])
        if pick == 8:
            items = [1, "a", 2.5, 1e-9, None, True, Code("x")]
            return [rng.choice(items) for _ in range(rng.choice([0, 1, 2, 40, 41]))]
        if pick == 9:
            return Code("G25.81")
        if pick == 10:
            return {"nested": 1}
        return rng.randrange(1000)

    names = ["kind", "value", "unit", "days", "id", "sid", "$x", "_y", "items", "alias", "code", "age"]
    for _ in range(20_000):
        fact = {rng.choice(names): value() for _ in range(rng.randrange(1, 8))}
        assert _text_or_error(fact_json, fact) == _text_or_error(general_fact_json, fact), fact
    big = {f"p{i}": i for i in range(MAX_PROPERTIES + 1)}
    assert _text_or_error(fact_json, big) == _text_or_error(general_fact_json, big)
    for number in [rng.choice([1, -1]) * 10 ** rng.uniform(-4, 16) for _ in range(200_000)]:
        assert fact_json({"v": number}) == general_fact_json({"v": number})
