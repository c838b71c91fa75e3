"""The written fact model (cds_service/facts/schema.py): facts are built from it, findings are checked
against it, and the start-up lint rejects rules that name a kind, field or finding it does not have."""

from __future__ import annotations

import json
import sys
import textwrap
from functools import cache, lru_cache

import pytest
from durable.lang import all as all_of
from durable.lang import c, item, m, none, when_all, when_any

import rules
from cds_service.app import create_app
from cds_service.authoring.rulebook import CARD, DERIVE, REGISTRY, RuleSpec
from cds_service.engine import wrapper
from cds_service.engine.lint import RuleDefinitionError, fact_model_problems
from cds_service.engine.wrapper import RuleEngine, RuleError
from cds_service.facts import schema
from cds_service.facts.schema import FINDINGS, KINDS, FactKind, FactSchemaError, Field, declare_finding
from cds_service.fhir.prefetch import OPTIONAL, queries
from cds_service.knowledge.settings import SettingsError
from cds_service.knowledge.terminology import Terminology
from conftest import FIXTURES, ROOT, load_fixture

FERRITIN = {
    "kind": "lab",
    "analyte": "ferritin",
    "resource_ref": "Observation/f1",
    "loinc": "2276-4",
    "matched_by": "code",
    "date": "2026-10-01",
    "days_ago": 52,
    "usable": True,
    "raw_value": 30.0,
    "raw_unit": "ng/mL",
    "comparator": "=",
    "value_source": "quantity",
    "value": 30.0,
    "unit": "ng/mL",
}


# ---- every fact of every fixture, as the engine saw it ---------------------------------------


@cache
def _client(config_json: str):
    return create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **json.loads(config_json)).test_client()


@lru_cache(maxsize=1)
def fixture_facts() -> tuple[dict, ...]:
    """Base facts and stored findings of every fixture's evaluation (fixture config included)."""
    seen: list[dict] = []
    original = wrapper.RuleEngine.evaluate

    def spy(self, facts):
        evaluation = original(self, facts)
        seen.extend(f for f in evaluation.facts_by_id.values() if f["kind"] != wrapper.SENTINEL_KIND)
        return evaluation

    wrapper.RuleEngine.evaluate = spy
    try:
        for path in FIXTURES:
            fixture = load_fixture(path)
            client = _client(json.dumps(fixture.get("config") or {}, sort_keys=True))
            assert client.post(f"/cds-services/{fixture['service']}", json=fixture["request"]).status_code == 200
    finally:
        wrapper.RuleEngine.evaluate = original
    return tuple(seen)


def _sample(kind: str) -> dict:
    """A real fact of `kind` from the fixtures, without the engine's id and sid."""
    fact = next(f for f in fixture_facts() if f["kind"] == kind)
    return {k: v for k, v in fact.items() if k not in ("id", "sid")}


def test_every_fact_the_fixtures_produce_fits_the_model():
    facts = fixture_facts()
    assert len(facts) > 1000
    for fact in facts:
        kind = FINDINGS[fact["name"]] if fact["kind"] == "finding" else KINDS[fact["kind"]]
        kind.check(fact)


def test_the_fixtures_produce_every_kind_and_every_finding():
    """So the model is exercised by real data, not only by hand-written examples."""
    facts = fixture_facts()
    assert {f["kind"] for f in facts} == set(KINDS)
    assert {f["name"] for f in facts if f["kind"] == "finding"} == set(FINDINGS)


# ---- new() and check() reject what does not fit ------------------------------------------------

BASE_KINDS = sorted(set(KINDS) - {"finding"})


def _wrong_value(spec: Field):
    if bool in spec.types:
        return 1  # an int is not a bool
    if int in spec.types or float in spec.types:
        return "42"  # a numeric string is not a number
    if list in spec.types:
        return "RLS"  # a string is not a list
    return 42


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_new_accepts_a_real_fact_and_keeps_its_field_order(kind):
    sample = _sample(kind)
    assert KINDS[kind].new(**sample) == sample
    assert list(KINDS[kind].new(**sample)) == list(sample)


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_new_rejects_an_unknown_field_and_suggests_the_close_one(kind):
    sample = _sample(kind)
    with pytest.raises(FactSchemaError, match=rf"'no_such_field' is not a field of '{kind}' facts"):
        KINDS[kind].new(**sample, no_such_field=1)
    field_name = next(name for name in sample if name != "kind")
    typo = dict(sample)
    typo[field_name[:-1]] = typo.pop(field_name)
    with pytest.raises(FactSchemaError, match=rf"did you mean '{field_name}'\?"):
        KINDS[kind].new(**typo)


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_new_rejects_every_missing_required_field(kind):
    sample = _sample(kind)
    required = [name for name, spec in KINDS[kind].fields.items() if spec.required and name != "kind"]
    assert required
    for name in required:
        partial = {k: v for k, v in sample.items() if k != name}
        with pytest.raises(FactSchemaError, match=rf"missing required field '{name}'"):
            KINDS[kind].new(**partial)


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_new_rejects_a_wrong_type_in_every_field(kind):
    sample = _sample(kind)
    for name, spec in KINDS[kind].fields.items():
        if name == "kind":
            continue
        with pytest.raises(FactSchemaError, match=rf"field '{name}' holds"):
            KINDS[kind].new(**{**sample, name: _wrong_value(spec)})


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_new_rejects_values_outside_every_closed_set(kind):
    sample = _sample(kind)
    closed = [spec for spec in KINDS[kind].fields.values() if spec.values is not None and spec.name != "kind"]
    for spec in closed:
        bad = ["not-a-value"] if list in spec.types else "not-a-value"
        with pytest.raises(FactSchemaError, match=rf"field '{spec.name}' holds 'not-a-value', not one of"):
            KINDS[kind].new(**{**sample, spec.name: bad})
    with pytest.raises(FactSchemaError, match="cannot have kind"):
        KINDS[kind].new(**{**sample, "kind": "something_else"})


def test_numbers_and_flags_are_not_confused():
    lab = KINDS["lab"]
    with pytest.raises(FactSchemaError, match="'days_ago' holds bool True, not int"):
        lab.new(**{**FERRITIN, "days_ago": True})
    with pytest.raises(FactSchemaError, match="'usable' holds int 1, not bool"):
        lab.new(**{**FERRITIN, "usable": 1})
    with pytest.raises(FactSchemaError, match="list items are strings"):
        KINDS["condition"].check({**_sample("condition"), "sets": ["RLS", 7]})
    assert lab.new(**{**FERRITIN, "value": 30})["value"] == 30  # an int is a number


def test_field_lookup_names_the_kind_and_a_close_match():
    assert KINDS["lab"].field("analyte").values == schema.ANALYTES
    with pytest.raises(FactSchemaError) as info:
        KINDS["lab"].field("anlyte")
    assert str(info.value) == "field 'anlyte' is not a field of 'lab' facts (did you mean 'analyte'?)"
    with pytest.raises(FactSchemaError, match="not a field of 'iron_stores' findings \\(did you mean 'verdict'\\?\\)"):
        FINDINGS["iron_stores"].field("verdikt")


def test_every_field_says_what_it_means():
    kinds = [*KINDS.values(), *FINDINGS.values()]
    for kind in kinds:
        assert len(kind.meaning) > 20, kind.name
        for spec in kind.fields.values():
            assert spec.meaning.endswith((".", ")")) and len(spec.meaning) > 15, (kind.name, spec.name)
            assert spec.types and all(isinstance(t, type) for t in spec.types), (kind.name, spec.name)


def test_closed_sets_follow_the_knowledge_files_and_the_prefetch_keys():
    term = Terminology()
    assert set(term.analytes) == schema.ANALYTES
    assert set(term.procedures.titles) == schema.PROCEDURES
    assert set(term.groups) == schema.DRUG_GROUPS
    assert set(term.drugs["class_titles"]) <= schema.DRUG_CLASSES
    assert set(queries(term)) | set(OPTIONAL) == schema.DATA_KEYS


def test_the_params_fact_declares_every_setting_and_a_typo_in_an_override_stops_start_up():
    from cds_service.facts.build import params_fact

    assert set(params_fact(Terminology())) == set(KINDS["params"].fields)
    # the typed settings refuse the misspelt key before the params fact is built from them
    with pytest.raises(
        SettingsError,
        match="unknown knowledge setting 'feritin_lookback_days' \\(did you mean 'ferritin_lookback_days'\\?\\)",
    ):
        create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, KNOWLEDGE_OVERRIDES={"feritin_lookback_days": 200})


def test_a_projection_that_breaks_the_model_is_an_error_not_a_skipped_resource(monkeypatch):
    """The facts layer skips unparseable resources; a fact that does not fit the model is a bug and must surface."""
    from cds_service.facts import project
    from cds_service.facts.build import PatientData, build_facts

    fixture = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
    request = fixture["request"]
    resources = {
        key: [e["resource"] for e in value.get("entry", [])] if value.get("resourceType") == "Bundle" else [value]
        for key, value in request["prefetch"].items()
        if isinstance(value, dict)
    }
    data = PatientData("patient-view", request["context"]["patientId"], resources)
    assert any(f["kind"] == "condition" for f in build_facts(data, Terminology(), _today()).facts)
    broken = FactKind("condition", "broken", {k: v for k, v in KINDS["condition"].fields.items() if k != "display"})
    monkeypatch.setattr(project, "CONDITION", broken)
    with pytest.raises(FactSchemaError, match="'display' is not a field of 'condition' facts"):
        build_facts(data, Terminology(), _today())


def _today():
    from datetime import date

    return date(2026, 11, 22)


# ---- findings ----------------------------------------------------------------------------------


def test_every_built_in_derivation_produces_a_declared_finding():
    rules.load_all()
    produced = {s.produces for s in REGISTRY.values() if s.stratum == DERIVE}
    assert produced == set(schema.BUILTIN_FINDINGS)


def test_a_derivation_result_that_does_not_fit_its_finding_fails_the_rule():
    def sloppy(match):
        return {"trigger": "patient-view", "resource_rf": "Condition/x"}  # a typo in a field name

    specs = [
        RuleSpec(
            id="F-SLOPPY",
            title="sloppy",
            citation="test",
            stratum=DERIVE,
            module=__name__,
            condition=when_all(c.ctx << ((m.kind == "context") & (m.hook == "patient-view"))),
            derive=sloppy,
            produces="iron_check_due",
        ),
        _card("USES-DUE", when_all(c.due << ((m.kind == "finding") & (m.name == "iron_check_due")))),
    ]
    engine = RuleEngine(specs, name="fact_model_sloppy_probe")
    with pytest.raises(RuleError) as info:
        engine.evaluate([KINDS["context"].new(hook="patient-view")])
    assert info.value.rule_id == "F-SLOPPY"
    cause = info.value.__cause__
    assert isinstance(cause, FactSchemaError) and "did you mean 'resource_ref'" in str(cause)


def test_declare_finding_rejects_redeclaring_and_misnamed_fields():
    with pytest.raises(FactSchemaError, match="already declared with other fields"):
        declare_finding("rls", "Something else entirely, with a field.", extra=Field("extra", (str,), "An extra."))
    with pytest.raises(FactSchemaError, match="declared with the name 'other'"):
        declare_finding("site_probe_misnamed", "A finding for this test only.", x=Field("other", (str,), "Misnamed."))
    with pytest.raises(FactSchemaError, match="may not redeclare"):
        declare_finding("site_probe_reserved", "A finding for this test only.", rule=Field("rule", (str,), "Clash."))
    assert "site_probe_misnamed" not in FINDINGS and "site_probe_reserved" not in FINDINGS


# ---- the start-up lint ------------------------------------------------------------------------


def _card(rule_id, condition):
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


def _problems(*specs) -> list[str]:
    return fact_model_problems(list(specs), {s.id: s.condition.define() for s in specs})


TYPO_IN_NONE = when_all(
    c.rls << ((m.kind == "finding") & (m.name == "rls")), none((m.kind == "lab") & (m.anlyte == "ferritin"))
)


def test_the_typo_inside_none_passed_the_old_lint_and_fired_with_a_ferritin_on_file():
    """What was seen: one wrong letter made the none() always true, so the card fired although a
    ferritin was on file. Without the fact-model check (the lint as it was) that still happens."""
    rls = {"kind": "finding", "name": "rls", "rule": "F-RLS", "basis": [], "resource_ref": "Condition/rls-1"}
    engine = RuleEngine([_card("R1-TYPO", TYPO_IN_NONE)], name="fact_model_typo_probe", fact_model=False)
    assert "R1-TYPO" in engine.evaluate([rls, FERRITIN]).card_matches  # the false positive
    correct = when_all(
        c.rls << ((m.kind == "finding") & (m.name == "rls")), none((m.kind == "lab") & (m.analyte == "ferritin"))
    )
    engine = RuleEngine([_card("R1-RIGHT", correct)], name="fact_model_right_probe", fact_model=False)
    assert "R1-RIGHT" not in engine.evaluate([rls, FERRITIN]).card_matches


def test_the_typo_inside_none_now_stops_the_engine_build():
    with pytest.raises(RuleDefinitionError) as info:
        RuleEngine([_card("R1", TYPO_IN_NONE)], name="fact_model_typo_stop")
    assert "R1: inside none(), field 'anlyte' is not a field of 'lab' facts (did you mean 'analyte'?)" in str(
        info.value
    )


@pytest.mark.parametrize(
    "condition, message",
    [
        (
            when_all(c.lab << ((m.kind == "lab") & (m.anlyte == "ferritin"))),
            "X: in c.lab, field 'anlyte' is not a field of 'lab' facts (did you mean 'analyte'?)",
        ),
        (
            when_all(c.lab << ((m.kind == "lab") & (m.analyte == "feritin"))),
            "X: in c.lab, field 'analyte' of 'lab' facts never holds 'feritin' (did you mean 'ferritin'?)",
        ),
        (
            when_all(
                c.p << (m.kind == "params"), c.lab << ((m.kind == "lab") & (m.days_ago <= c.p.ferritin_lookback_dayz))
            ),
            "X: in c.lab, c.p.ferritin_lookback_dayz: field 'ferritin_lookback_dayz' is not a field of 'params' facts "
            "(did you mean 'ferritin_lookback_days'?)",
        ),
        (
            when_all(
                c.due << ((m.kind == "finding") & (m.name == "iron_stores")),
                c.lab << ((m.kind == "lab") & (m.value > c.due.feritin + 10)),
            ),
            "X: in c.lab, c.due.feritin: field 'feritin' is not a field of 'iron_stores' findings "
            "(did you mean 'ferritin'?)",
        ),
        (
            when_all(
                c.prior << (m.kind == "procedure_done"),
                none((m.kind == "condition") & (m.recorded_days_ago < c.prior.day_ago)),
            ),
            "X: inside none(), c.prior.day_ago: field 'day_ago' is not a field of 'procedure_done' facts "
            "(did you mean 'days_ago'?)",
        ),
        (
            when_all(c.lab << ((m.kind == "labs") & (m.analyte == "ferritin"))),
            "X: in c.lab, kind 'labs' is not a kind of fact (did you mean 'lab'?)",
        ),
        (
            when_all(c.f << ((m.kind == "finding") & (m.name == "rlss"))),
            "X: in c.f, finding 'rlss' is derived by no rule and declared nowhere (did you mean 'rls'?)",
        ),
        (
            when_all(c.f << ((m.kind == "finding") & (m.name == "iron_stores") & (m.verdikt == "indicated"))),
            "X: in c.f, field 'verdikt' is not a field of 'iron_stores' findings (did you mean 'verdict'?)",
        ),
        (
            when_all(c.x << ((m.kind == "condition") & m.sets.anyItem((item == "RLS") | (item == "PLMDD")))),
            "X: in c.x, an item of 'sets' of 'condition' facts never holds 'PLMDD' (did you mean 'PLMD'?)",
        ),
        (
            when_all(c.x << ((m.kind == "condition") & m.setz.allItems(item != "RLS"))),
            "X: in c.x, field 'setz' is not a field of 'condition' facts (did you mean 'sets'?)",
        ),
        (
            when_all(c.x << ((m.kind == "medication") & m.classes.anyItem(item.code == "ssri"))),
            "X: in c.x, items of 'classes' in 'medication' facts are strings: 'item.code' never matches",
        ),
        (
            when_all(c.x << (((m.kind == "lab") | (m.kind == "pending_test")) & (m.usable == True))),
            "X: in c.x, field 'usable' is not a field of 'pending_test' facts",
        ),
        (
            when_all(c.x << ((m.kind == "medication") & (m.selected == "true"))),
            "X: in c.x, field 'selected' of 'medication' facts is compared with 'true', which a bool never equals",
        ),
        (
            when_all(c.x << ((m.kind == "condition") & -m.onset_day_ago)),
            "X: in c.x, field 'onset_day_ago' is not a field of 'condition' facts (did you mean 'onset_days_ago'?)",
        ),
        (
            when_all(c.x << (m.analyte == "ferritin")),
            "X: in c.x, the condition does not say which kind of fact it matches (m.kind == ...)",
        ),
        (
            when_any(all_of(c.a << ((m.kind == "lab") & (m.valu > 3))), all_of(c.b << (m.kind == "context"))),
            "X: in c.a, field 'valu' is not a field of 'lab' facts (did you mean 'value'?)",
        ),
        (
            when_all(c.ctx << ((m.kind == "context") & ((m.hook == "patient_view") | (m.hook == "order-sign")))),
            "X: in c.ctx, field 'hook' of 'context' facts never holds 'patient_view' (did you mean 'patient-view'?)",
        ),
        (
            when_all(c.a << (m.kind == "lab"), c.b << ((m.kind == "lab") & (m.value > c.h.value))),
            "X: in c.b, c.h.value refers to an alias no condition of this rule binds",
        ),
    ],
)
def test_the_lint_names_rule_kind_and_field(condition, message):
    assert message in _problems(_card("X", condition))


def test_every_bundled_rule_fits_the_model():
    rules.load_all()
    specs = list(REGISTRY.values())
    assert _problems(*specs) == []


def test_a_derivation_of_an_undeclared_finding_is_rejected():
    spec = RuleSpec(
        id="F-NEW",
        title="new",
        citation="test",
        stratum=DERIVE,
        module=__name__,
        condition=when_all(c.ctx << (m.kind == "context")),
        derive=lambda match: {},
        produces="rsl",
    )
    assert any(
        p.startswith("F-NEW: it derives finding 'rsl', which the fact model does not declare")
        and "did you mean 'rls'?" in p
        for p in _problems(spec)
    )


# ---- site rule modules (EXTRA_RULE_MODULES) ---------------------------------------------------


@pytest.fixture()
def site_module(tmp_path, monkeypatch):
    """Write a site rule module on sys.path; afterwards forget its rules, findings and module."""
    rules.load_all()
    registry, findings = dict(REGISTRY), dict(FINDINGS)
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        written.append(name)
        return name

    yield write
    REGISTRY.clear()
    REGISTRY.update(registry)
    FINDINGS.clear()
    FINDINGS.update(findings)
    for name in written:
        sys.modules.pop(name, None)


def _site_app(module: str):
    return create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, EXTRA_RULE_MODULES=[module])


def test_a_site_module_with_a_typo_stops_start_up(site_module):
    name = site_module(
        "site_typo_rules",
        """
        from durable.lang import c, m, none, when_all
        from cds_service.authoring.rulebook import card_rule

        @card_rule(id="S1", title="Site ferritin check", citation="site", hooks=("patient-view",), logic="test",
                   when=when_all(c.rls << ((m.kind == "finding") & (m.name == "rls")),
                                 none((m.kind == "lab") & (m.anlyte == "ferritin"))))
        def site_card(matches, ctx):
            return None
        """,
    )
    with pytest.raises(RuleDefinitionError) as info:
        _site_app(name)
    assert "S1: inside none(), field 'anlyte' is not a field of 'lab' facts (did you mean 'analyte'?)" in str(
        info.value
    )


def test_a_site_module_deriving_an_undeclared_finding_stops_start_up(site_module):
    name = site_module(
        "site_undeclared_rules",
        """
        from durable.lang import c, m, when_all
        from cds_service.authoring.rulebook import card_rule, derivation

        @derivation(id="F-SITE-X", title="Site finding", citation="site", produces="site_x",
                    when=when_all(c.ctx << ((m.kind == "context") & (m.hook == "patient-view"))))
        def site_x(match):
            return {"note": "x"}

        @card_rule(id="S2", title="Site card", citation="site", hooks=("patient-view",), logic="test",
                   when=when_all(c.x << ((m.kind == "finding") & (m.name == "site_x"))))
        def site_card(matches, ctx):
            return None
        """,
    )
    with pytest.raises(
        RuleDefinitionError, match="F-SITE-X: it derives finding 'site_x', which the fact model does not declare"
    ):
        _site_app(name)


def test_a_site_module_that_declares_its_finding_starts_and_is_checked(site_module):
    name = site_module(
        "site_declared_rules",
        """
        from durable.lang import c, m, when_all
        from cds_service.authoring.rulebook import CardDraft, card_rule, derivation
        from cds_service.facts.schema import Field, declare_finding

        declare_finding("site_ferritin_reviewed", "A site's own review of the latest ferritin.",
                        days=Field("days", (int,), "Days since the ferritin was drawn."))

        @derivation(id="F-SITE-FERRITIN", title="Site ferritin review", citation="site",
                    produces="site_ferritin_reviewed",
                    when=when_all(c.lab << ((m.kind == "lab") & (m.analyte == "ferritin"))))
        def reviewed(match):
            return {"days": match["lab"]["days_ago"]}

        @card_rule(id="S3", title="Site ferritin card", citation="site", hooks=("patient-view",), logic="test",
                   when=when_all(c.f << ((m.kind == "finding") & (m.name == "site_ferritin_reviewed")
                                          & (m.days >= 0))))
        def site_card(matches, ctx):
            return CardDraft(summary="Site ferritin reviewed", indicator="info", why="A ferritin is on file.",
                             evidence=[matches[0]["f"]])
        """,
    )
    app = _site_app(name)
    assert "site_ferritin_reviewed" in FINDINGS
    knowledge = app.extensions["legmove"]
    assert "S3" in knowledge.specs
    engine = knowledge.engine
    patient = KINDS["patient"].new(age_years=50, age_min=50, age_max=50, child=False, age_known=True, deceased=False)
    evaluation = engine.evaluate([KINDS["context"].new(hook="patient-view"), patient, FERRITIN])
    assert evaluation.card_matches["S3"][0]["f"]["days"] == 52
    from cds_service.cli.main import fact_model_markdown

    page = fact_model_markdown((name,))
    assert "### finding `site_ferritin_reviewed`" in page and "Derived by `F-SITE-FERRITIN`" in page


# ---- the docs ---------------------------------------------------------------------------------


def test_the_fact_model_page_is_current():
    from cds_service.cli.main import fact_model_markdown

    page = (ROOT / "docs/fact-model.md").read_text(encoding="utf-8")
    assert page == fact_model_markdown(), "regenerate with: legmove-cds facts > docs/fact-model.md"
    for kind in KINDS.values():
        assert f"### {kind.name}\n" in page
        for name in kind.fields:
            assert f"| `{name}` |" in page, (kind.name, name)


def test_the_facts_command_prints_the_page():
    from click.testing import CliRunner

    from cds_service.cli.main import main

    result = CliRunner().invoke(main, ["facts"])
    assert result.exit_code == 0, result.output
    assert result.output == (ROOT / "docs/fact-model.md").read_text(encoding="utf-8")
