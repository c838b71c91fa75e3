"""The criteria vocabulary (cds_service/authoring/criteria.py): what each function compiles to, the
names it refuses, how all_of negates exclusions, and that rules/ is written in it alone."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from durable.lang import c, item, m, none, when_all

from cds_service.authoring import criteria as k
from cds_service.authoring.criteria import CriteriaError
from cds_service.authoring.rulebook import CARD, REGISTRY, RuleSpec
from cds_service.engine.wrapper import RuleEngine

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"


def compiled(*conditions) -> dict:
    return when_all(*conditions).define()


# ---- each function compiles to the DSL a rule author would have written ------------------------

EXPECTED = {
    "finding": (lambda: k.finding("rls", alias="rls"), lambda: c.rls << ((m.kind == "finding") & (m.name == "rls"))),
    "finding, alternatives": (
        lambda: k.finding("rls", "plmd", alias="dx"),
        lambda: c.dx << ((m.kind == "finding") & ((m.name == "rls") | (m.name == "plmd"))),
    ),
    "finding, filters": (
        lambda: k.finding("iron_stores", alias="iron", verdict=k.any_of("indicated", "iv_only")),
        lambda: (
            c.iron
            << (
                (m.kind == "finding")
                & (m.name == "iron_stores")
                & ((m.verdict == "indicated") | (m.verdict == "iv_only"))
            )
        ),
    ),
    "finding, boolean and other_than": (
        lambda: k.finding("dopaminergic_draft", alias="d", selected=True, origin=k.other_than("chart")),
        lambda: (
            c.d
            << (
                (m.kind == "finding")
                & (m.name == "dopaminergic_draft")
                & (m.selected == True)  # noqa: E712
                & (m.origin != "chart")
            )
        ),
    ),
    "coded": (
        lambda: k.coded("RLS", "PLMD", alias="dx"),
        lambda: c.dx << ((m.kind == "condition") & m.sets.anyItem((item == "RLS") | (item == "PLMD"))),
    ),
    "coded, excluding": (
        lambda: k.coded("RED_FLAG", excluding="WEAK_RED_FLAG", alias="flag"),
        lambda: (
            c.flag
            << ((m.kind == "condition") & m.sets.anyItem(item == "RED_FLAG") & m.sets.allItems(item != "WEAK_RED_FLAG"))
        ),
    ),
    "coded, onset within a setting": (
        lambda: k.coded("GBS", onset_within=k.setting("gbs_onset_window_days"), alias="gbs"),
        lambda: (
            c.gbs
            << (
                (m.kind == "condition")
                & m.sets.anyItem(item == "GBS")
                & (m.onset_days_ago >= 0)
                & (m.onset_days_ago <= c.params.gbs_onset_window_days)
            )
        ),
    ),
    "coded, recorded since another fact": (
        lambda: k.coded("RED_FLAG", recorded_since=k.value_of("prior", "days_ago")),
        lambda: (m.kind == "condition") & m.sets.anyItem(item == "RED_FLAG") & (m.recorded_days_ago < c.prior.days_ago),
    ),
    "order_reason_other_than": (
        lambda: k.order_reason_other_than("LEG_CRAMP"),
        lambda: (
            (m.kind == "condition")
            & (m.verification_status == "reason for this order")
            & m.sets.allItems(item != "LEG_CRAMP")
        ),
    ),
    "result": (
        lambda: k.result("glucose", "hba1c"),
        lambda: (m.kind == "lab") & ((m.analyte == "glucose") | (m.analyte == "hba1c")),
    ),
    "result, within": (
        lambda: k.result("cmp", within=k.setting("metabolic_lookback_days")),
        lambda: (m.kind == "lab") & (m.analyte == "cmp") & (m.days_ago <= c.params.metabolic_lookback_days),
    ),
    "readable_result, below": (
        lambda: k.readable_result("egfr", below=30, alias="egfr"),
        lambda: (
            c.egfr
            << (
                (m.kind == "lab")
                & (m.analyte == "egfr")
                & (m.usable == True)  # noqa: E712
                & (m.value < 30)
                & ((m.comparator != ">") & (m.comparator != ">="))
            )
        ),
    ),
    "readable_result, above": (
        lambda: k.readable_result("plms_index", above=k.setting("plms_index_threshold_adult"), alias="idx"),
        lambda: (
            c.idx
            << (
                (m.kind == "lab")
                & (m.analyte == "plms_index")
                & (m.usable == True)  # noqa: E712
                & (m.value > c.params.plms_index_threshold_adult)
                & ((m.comparator != "<") & (m.comparator != "<="))
            )
        ),
    ),
    "no_result": (lambda: k.no_result("ferritin"), lambda: none((m.kind == "lab") & (m.analyte == "ferritin"))),
    "pending": (
        lambda: k.pending("ferritin", alias="p"),
        lambda: c.p << ((m.kind == "pending_test") & (m.analyte == "ferritin")),
    ),
    "nothing_pending": (
        lambda: k.nothing_pending("ferritin"),
        lambda: none((m.kind == "pending_test") & (m.analyte == "ferritin")),
    ),
    "data_gap": (
        lambda: k.data_gap("labs", "service_requests"),
        lambda: (m.kind == "data_gap") & ((m.key == "labs") | (m.key == "service_requests")),
    ),
    "data_complete": (lambda: k.data_complete("labs"), lambda: none((m.kind == "data_gap") & (m.key == "labs"))),
    "not_coded": (
        lambda: k.not_coded("ALS_MND"),
        lambda: none((m.kind == "condition") & m.sets.anyItem(item == "ALS_MND")),
    ),
    "selected_draft": (
        lambda: k.selected_draft(group=("rls_drug", "iron"), alias="drug"),
        lambda: (
            c.drug
            << (
                (m.kind == "medication")
                & (m.origin == "draft")
                & (m.selected == True)  # noqa: E712
                & m.groups.anyItem((item == "rls_drug") | (item == "iron"))
            )
        ),
    ),
    "selected_draft, ingredient": (
        lambda: k.selected_draft(ingredient="746741", alias="drug"),
        lambda: (
            c.drug
            << (
                (m.kind == "medication")
                & (m.origin == "draft")
                & (m.selected == True)  # noqa: E712
                & m.ingredients.anyItem(item == "746741")
            )
        ),
    ),
    "draft_medication, not_class": (
        lambda: k.draft_medication(group="dopaminergic", not_class="prolactin_lowering", alias="drug"),
        lambda: (
            c.drug
            << (
                (m.kind == "medication")
                & (m.origin == "draft")
                & m.groups.anyItem(item == "dopaminergic")
                & m.classes.allItems(item != "prolactin_lowering")
            )
        ),
    ),
    "chart_medication, start dated": (
        lambda: k.chart_medication(group="dopamine_antagonist", start_dated=True, alias="drug"),
        lambda: (
            c.drug
            << (
                (m.kind == "medication")
                & (m.origin == "chart")
                & (m.started_days_ago >= 0)
                & m.groups.anyItem(item == "dopamine_antagonist")
            )
        ),
    ),
    "chart_or_recent_medication": (
        lambda: k.chart_or_recent_medication(group="dopaminergic"),
        lambda: (m.kind == "medication") & (m.origin != "draft") & m.groups.anyItem(item == "dopaminergic"),
    ),
    "selected_draft_order": (
        lambda: k.selected_draft_order("psg", only_known_reasons=True, alias="psg"),
        lambda: (
            c.psg
            << (
                (m.kind == "order")
                & (m.origin == "draft")
                & (m.selected == True)  # noqa: E712
                & (m.procedure == "psg")
                & (m.unclassified_reasons == 0)
            )
        ),
    ),
    "ordered, within": (
        lambda: k.ordered("brain_imaging", within=2),
        lambda: (m.kind == "order") & (m.procedure == "brain_imaging") & (m.days_ago >= 0) & (m.days_ago <= 2),
    ),
    "procedure_done": (
        lambda: k.procedure_done("emg", within=k.setting("prior_emg_window_days"), alias="prior"),
        lambda: (
            c.prior
            << ((m.kind == "procedure_done") & (m.procedure == "emg") & (m.days_ago <= c.params.prior_emg_window_days))
        ),
    ),
    "hook_is": (
        lambda: k.hook_is("patient-view"),
        lambda: c.ctx << ((m.kind == "context") & (m.hook == "patient-view")),
    ),
    "order_hook": (
        lambda: k.order_hook(),
        lambda: c.ctx << ((m.kind == "context") & ((m.hook == "order-select") | (m.hook == "order-sign"))),
    ),
    "patient": (lambda: k.patient(child=True), lambda: c.patient << ((m.kind == "patient") & (m.child == True))),  # noqa: E712
    "params": (lambda: k.params(), lambda: c.params << (m.kind == "params")),
    "params, a switch": (
        lambda: k.params(r8_weak_red_flags=True),
        lambda: c.params << ((m.kind == "params") & (m.r8_weak_red_flags == True)),
    ),  # noqa: E712
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_function_compiles_to_the_expected_dsl(name):
    ours, dsl = EXPECTED[name]
    assert compiled(ours()) == compiled(dsl())


def _named_fields(expression) -> set[str]:
    """Fact fields a compiled condition names (`{"$lt": {"value": ...}}`, `{"$iany": {"sets": ...}}`)."""
    names: set[str] = set()
    for key, value in expression.items():
        if key in ("$and", "$or"):
            for term in value:
                names |= _named_fields(term)
        elif key.startswith("$"):
            names |= {field for field in value if not field.startswith("$")}
        else:
            names.add(key)
    return names


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_field_the_vocabulary_compiles_is_in_the_fact_schema(name):
    from cds_service.facts.schema import FINDINGS, KINDS

    expression = next(iter(compiled(EXPECTED[name][0]())["all"][0].values()))
    terms = expression.get("$and", [expression])
    kind = next(t["kind"] for t in terms if "kind" in t)
    if kind == "finding":  # one name, or an $or of names
        names = [t["name"] for t in terms if "name" in t] or [o["name"] for t in terms for o in t.get("$or", [])]
        fields = set.intersection(*(set(FINDINGS[n].fields) for n in names))
    else:
        fields = set(KINDS[kind].fields)
    assert _named_fields(expression) <= fields
    assert set(k.COMPILED_FIELDS[kind]) <= set(KINDS[kind].fields)


def test_all_of_puts_exclusions_after_inclusions_as_none():
    ours = k.all_of(
        inclusion=[k.finding("rls", alias="rls"), k.params()], exclusion=[k.result("ferritin"), k.data_gap("labs")]
    )
    dsl = when_all(
        c.rls << ((m.kind == "finding") & (m.name == "rls")),
        c.params << (m.kind == "params"),
        none((m.kind == "lab") & (m.analyte == "ferritin")),
        none((m.kind == "data_gap") & (m.key == "labs")),
    )
    assert ours.define() == dsl.define()


def test_a_comparison_with_another_fact_never_follows_an_or_group():
    """durable-rules 2.0.28 ignores `m.x < c.p.y` after an `|` group: the vocabulary puts the group last."""
    expression = k.result("glucose", "hba1c", within=k.setting("metabolic_lookback_days")).define()
    terms = expression["$and"]
    assert "$or" in terms[-1] and "$lte" in terms[1]


# ---- misspelt names fail at import, naming the name and a close match ------------------------------

TYPOS = [
    (lambda: k.coded("ALS_MDN"), "unknown code set 'ALS_MDN'; did you mean 'ALS_MND'?"),
    (lambda: k.coded("RLS", excluding="WEAK_REDFLAG"), "did you mean 'WEAK_RED_FLAG'?"),
    (lambda: k.result("ferittin"), "unknown analyte 'ferittin'; did you mean 'ferritin'?"),
    (lambda: k.pending("feritin"), "did you mean 'ferritin'?"),
    (lambda: k.readable_result("plms_idx"), "did you mean 'plms_index'?"),
    (lambda: k.data_gap("lab"), "unknown data key 'lab'; did you mean 'labs'?"),
    (lambda: k.selected_draft(group="rls_drugs"), "unknown drug group 'rls_drugs'; did you mean 'rls_drug'?"),
    (lambda: k.selected_draft(drug_class="quinnine"), "unknown drug class 'quinnine'; did you mean 'quinine'?"),
    (lambda: k.selected_draft(ingredient="7467411"), "unknown ingredient '7467411'"),
    (lambda: k.draft_medication(group="dopaminergic", not_class="prolactin"), "did you mean 'prolactin_lowering'?"),
    (lambda: k.selected_draft_order("eeg"), "unknown procedure 'eeg'; did you mean 'emg'?"),
    (lambda: k.procedure_done("emgg"), "did you mean 'emg'?"),
    (lambda: k.hook_is("patient_view"), "unknown hook 'patient_view'; did you mean 'patient-view'?"),
    (lambda: k.setting("gbs_onset_windw_days"), "did you mean 'gbs_onset_window_days'?"),
    (lambda: k.params(r8_weak_redflags=True), "did you mean 'r8_weak_red_flags'?"),
    (lambda: k.params(r8_weak_red_flags=1), "r8_weak_red_flags= holds int 1, not bool"),
    (lambda: k.finding("rsl", alias="x"), "unknown finding 'rsl'; did you mean 'rls'?"),
    (lambda: k.finding("iron_check_due", alias="d", triger="iron"), "did you mean 'trigger'?"),
    (lambda: k.finding("iron_stores", alias="i", verdict=k.any_of("iv-only")), "did you mean 'iv_only'?"),
    (lambda: k.finding("dopaminergic_draft", alias="d", selected="yes"), "selected= holds str 'yes', not bool"),
    (lambda: k.patient(chlid=True), "did you mean 'child'?"),
    (
        lambda: k.all_of(
            inclusion=[k.params(), k.procedure_done("emg", alias="prior")],
            exclusion=[k.coded("RED_FLAG", recorded_since=k.value_of("prior", "day_ago"))],
        ),
        "value_of('prior', 'day_ago'): field 'day_ago' is not a field of 'procedure_done' facts "
        "(did you mean 'days_ago'?)",
    ),
    (
        lambda: k.all_of(
            inclusion=[k.procedure_done("emg", alias="prior")],
            exclusion=[k.coded("RED_FLAG", recorded_since=k.value_of("prio", "days_ago"))],
        ),
        "compares with 'prio', which no earlier inclusion binds; did you mean 'prior'?",
    ),
    (
        lambda: k.all_of(
            inclusion=[k.finding("myoclonus", alias="myo")],
            exclusion=[k.result("cmp", within=k.setting("metabolic_lookback_days"))],
        ),
        "compares with 'params', which no earlier inclusion binds (add params() to the inclusion criteria)",
    ),
]


@pytest.mark.parametrize("make, message", TYPOS, ids=[t[1][:40] for t in TYPOS])
def test_a_misspelt_argument_raises_with_a_close_match(make, message):
    with pytest.raises(CriteriaError, match=re.escape(message)):
        make()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: k.all_of(inclusion=[]), "at least one inclusion criterion"),
        (lambda: k.all_of(inclusion=[k.result("ferritin")]), "needs an alias="),
        (lambda: k.all_of(inclusion=[k.finding("rls", alias="x"), k.finding("plmd", alias="x")]), "bound twice"),
        (lambda: k.all_of(inclusion=[k.finding("rls", alias="x"), k.not_coded("ALS_MND")]), "belongs under exclusion="),
        (
            lambda: k.all_of(inclusion=[k.finding("rls", alias="x")], exclusion=[k.not_coded("ALS_MND")]),
            "written positively",
        ),
        (
            lambda: k.all_of(inclusion=[k.finding("rls", alias="x")], exclusion=[k.coded("ALS_MND", alias="als")]),
            "drop the alias",
        ),
        (lambda: k.finding("rls", alias="s"), "clashes with the engine's action closure"),
        (lambda: k.coded("RLS", onset_within="14"), "expected a number"),
        (lambda: k.selected_draft(alias="drug"), "say which drugs"),
        (lambda: k.params(alias="settings"), "keep that alias"),
        (
            lambda: k.setting("r8_weak_red_flags"),
            "is not a number; a yes/no setting goes in params(r8_weak_red_flags=True)",
        ),
        (lambda: k._equal("alias", "x"), "m.alias is a member of the durable-rules DSL"),
    ],
)
def test_shapes_that_cannot_work_are_refused(make, message):
    with pytest.raises(CriteriaError, match=re.escape(message)):
        make()


def test_a_rule_module_with_a_typo_fails_at_import(tmp_path, monkeypatch):
    """The issue's example: `none((m.kind == "lab") & (m.anlyte == "ferritin"))` was always true and
    fired with a ferritin on file; written in the vocabulary, the module does not import."""
    (tmp_path / "site_rules_with_typo.py").write_text(
        "from cds_service.authoring.criteria import all_of, finding, result\n"
        "WHEN = all_of(inclusion=[finding('rls', alias='rls')], exclusion=[result('ferittin')])\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CriteriaError, match=re.escape("unknown analyte 'ferittin'; did you mean 'ferritin'?")):
        __import__("site_rules_with_typo")
    sys.modules.pop("site_rules_with_typo", None)


# ---- all_of through the real engine: exclusions hold only while their fact is absent -----------------


def _card(rule_id: str, condition) -> RuleSpec:
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


@pytest.fixture(scope="module")
def probe():
    """One small engine for every semantic check (rulesets are a scarce per-process resource)."""
    return RuleEngine(
        [
            _card(
                "NO-FERRITIN",
                k.all_of(
                    inclusion=[k.finding("rls", alias="rls")],
                    exclusion=[k.result("ferritin"), k.pending("ferritin"), k.data_gap("labs")],
                ),
            ),
            _card(
                "RECENT-GLUCOSE",
                k.all_of(
                    inclusion=[
                        k.params(),
                        k.result("glucose", "hba1c", alias="lab", within=k.setting("metabolic_lookback_days")),
                    ]
                ),
            ),
            _card(
                "REPEAT",
                k.all_of(
                    inclusion=[k.procedure_done("emg", alias="prior")],
                    exclusion=[k.coded("RED_FLAG", recorded_since=k.value_of("prior", "days_ago"))],
                ),
            ),
        ],
        name="criteria_probe",
    )


RLS = {"kind": "finding", "name": "rls", "rule": "F-RLS", "basis": []}


@pytest.mark.parametrize(
    "extra, fires",
    [
        ([], True),
        ([{"kind": "lab", "analyte": "ferritin", "usable": False}], False),  # on file, even unreadable: not "no result"
        ([{"kind": "lab", "analyte": "tsat", "usable": True}], True),
        ([{"kind": "pending_test", "analyte": "ferritin"}], False),
        ([{"kind": "data_gap", "key": "labs"}], False),
        ([{"kind": "data_gap", "key": "conditions"}], True),
    ],
)
def test_exclusions_block_the_rule_only_when_their_fact_is_present(probe, extra, fires):
    matched = probe.evaluate([RLS, *extra]).card_matches
    assert ("NO-FERRITIN" in matched) is fires


@pytest.mark.parametrize(
    "days_ago, analyte, fires", [(10, "hba1c", True), (200, "hba1c", False), (10, "glucose", True), (10, "tsh", False)]
)
def test_a_reference_with_alternatives_is_applied(probe, days_ago, analyte, fires):
    facts = [
        {"kind": "params", "metabolic_lookback_days": 90.0},
        {"kind": "lab", "analyte": analyte, "days_ago": days_ago},
    ]
    assert ("RECENT-GLUCOSE" in probe.evaluate(facts).card_matches) is fires


@pytest.mark.parametrize("recorded_days_ago, fires", [(300, True), (100, False)])
def test_an_exclusion_compares_with_an_inclusion(probe, recorded_days_ago, fires):
    facts = [
        {"kind": "procedure_done", "procedure": "emg", "days_ago": 200},
        {"kind": "condition", "sets": ["RED_FLAG"], "recorded_days_ago": recorded_days_ago},
    ]
    assert ("REPEAT" in probe.evaluate(facts).card_matches) is fires


# ---- rules/ is written in the vocabulary ----------------------------------------------------------------

DSL_PRIMITIVES = {
    "m.": re.compile(r"(?<![\w.])m\."),
    "c.": re.compile(r"(?<![\w.])c\.[A-Za-z_]"),
    "none(": re.compile(r"(?<![\w.])none\("),
    "when_all(": re.compile(r"(?<![\w.])when_all\("),
    "== True / == False": re.compile(r"==\s*(True|False)\b"),
    "item ==": re.compile(r"(?<![\w.])item\s*[!=]="),
    "anyItem / allItems": re.compile(r"\.(anyItem|allItems)\("),
}


@pytest.mark.parametrize("path", sorted(RULES.glob("*.py")), ids=lambda p: p.name)
def test_no_dsl_primitives_are_left_in_rules(path):
    text = path.read_text(encoding="utf-8")
    found = [
        f"{name} at line {text[: hit.start()].count(chr(10)) + 1}"
        for name, pattern in DSL_PRIMITIVES.items()
        for hit in pattern.finditer(text)
    ]
    assert not found, f"{path.name}: write these in cds_service.authoring.criteria: {found}"
    imports = {node.module for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.startswith("durable") for name in imports), f"{path.name} imports durable-rules"


def test_the_primitive_check_sees_the_old_style():
    old = (
        'when=when_all(c.rls << ((m.kind == "finding") & (m.name == "rls")), none(m.kind == "x"), (m.selected == True))'
    )
    assert all(
        pattern.search(old) for name, pattern in DSL_PRIMITIVES.items() if name not in ("item ==", "anyItem / allItems")
    )


def test_every_registered_rule_id_is_a_literal_in_rules():
    import rules

    rules.load_all()
    literals = {
        node.value
        for path in RULES.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    bundled = sorted(rule_id for rule_id, spec in REGISTRY.items() if spec.module.startswith("rules."))
    assert len(bundled) > 70
    assert [rule_id for rule_id in bundled if rule_id not in literals] == []
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_-]*", rule_id) for rule_id in bundled), "ids are single words"


def test_docs_name_every_function_of_the_vocabulary():
    import inspect

    page = (ROOT / "docs/criteria.md").read_text(encoding="utf-8")
    public = [
        name
        for name, fn in inspect.getmembers(k, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == k.__name__
    ]
    assert len(public) > 20
    assert [name for name in public if f"`{name}(" not in page] == []
