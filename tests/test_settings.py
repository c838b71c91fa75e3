"""The clinical settings as one typed object: every key of settings.json, checked once at start-up,
read by rules as attributes (never `ctx.settings[...]` with casts)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.app import create_app
from cds_service.authoring.rulebook import RenderContext, RuleSpec
from cds_service.cli.config_report import report
from cds_service.knowledge import settings as knowledge_settings
from cds_service.knowledge.settings import Aasm2024Profile, OrderCode, SeedProfile, Settings, SettingsError, load
from cds_service.knowledge.terminology import Terminology
from cds_service.store import rule_versions
from cds_service.store.governance import knowledge_version
from conftest import ROOT

SETTINGS_JSON = ROOT / "cds_service" / "knowledge" / "settings.json"


def _defaults() -> dict:
    return {k: v for k, v in json.loads(SETTINGS_JSON.read_text(encoding="utf-8")).items() if not k.startswith("_")}


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_every_key_of_settings_json_is_a_typed_field_and_nothing_else():
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert fields == list(_defaults()), "Settings lists the keys of settings.json, in its order"
    settings = load()
    assert _without_nulls(settings.as_dict()) == _without_nulls(_defaults())  # unset optional fields are null
    assert isinstance(settings.ferritin_lookback_days, int) and settings.ferritin_lookback_days == 365
    assert settings.rls_worsening_additions == ("snri", "mirtazapine")
    assert isinstance(settings.profiles.seed, SeedProfile) and isinstance(settings.profiles.aasm2024, Aasm2024Profile)
    assert settings.profiles.aasm2024.iv_only_up_to == 100 and settings.profiles.seed.tsat_iron_indicated_below is None
    assert isinstance(settings.emg_order_code, OrderCode) and settings.emg_order_code.code == "42803009"
    assert settings.iron is settings.profiles.seed  # the active profile
    assert load({"iron_profile": "aasm2024"}).iron is not None and load(
        {"iron_profile": "aasm2024"}
    ).iron.title.startswith("AASM")
    assert all(f.metadata.get("meaning") for f in dataclasses.fields(Settings)), "every setting says what it means"


def test_the_settings_cannot_be_changed_after_start_up():
    settings = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ferritin_lookback_days = 30  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.profiles.seed.ferritin_iron_indicated_below = 10  # type: ignore[misc]
    with pytest.raises(TypeError):
        load({"suppress_days_by_rule": {"R3": {"overridden": 7}}}).suppress_days_by_rule["R4"] = {}  # type: ignore[index]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"ferritin_lookback_days": "a year"},
            r"^knowledge setting ferritin_lookback_days must be a whole number, got 'a year'",
        ),
        ({"ferritin_lookback_days": 180.5}, "ferritin_lookback_days must be a whole number"),
        ({"ferritin_lookback_days": True}, "ferritin_lookback_days must be a whole number"),
        ({"ferritin_lookback_days": -1}, "ferritin_lookback_days must be a number of days from 0"),
        (
            {"ferritn_lookback_days": 180},
            r"unknown knowledge setting 'ferritn_lookback_days' \(did you mean 'ferritin_lookback_days'\?\)",
        ),
        ({"show_guideline_disagreement": "yes"}, "show_guideline_disagreement must be true or false"),
        ({"rls_worsening_additions": "snri"}, "rls_worsening_additions must be a list"),
        ({"rls_worsening_additions": ["snri", 3]}, r"rls_worsening_additions\[1\] must be a string"),
        ({"iron_profile": "nice2023"}, "iron_profile 'nice2023' is not one of"),
        (
            {"profiles": {"seed": {"title": "x", "source": "y", "ferritin_iron_indicated_below": 50}}},
            "knowledge setting profiles.aasm2024 is missing",
        ),
        (
            {
                "profiles": {
                    **_defaults()["profiles"],
                    "seed": {**_defaults()["profiles"]["seed"], "ferritin_below": 45},
                }
            },
            r"unknown knowledge setting 'profiles.seed.ferritin_below' "
            r"\(did you mean 'ferritin_iron_indicated_below'\?\)",
        ),
        ({"plms_index_code": {"system": "http://example.org/site"}}, "plms_index_code.code is missing"),
        ({"emg_order_code": {"status": "to do"}}, "emg_order_code needs a system and a code, or a text"),
        ({"renal_dose_egfr_threshold": "60"}, "renal_dose_egfr_threshold must be a number, got '60'"),
    ],
)
def test_a_wrong_type_or_unknown_key_names_the_key(overrides, message):
    with pytest.raises(SettingsError, match=message):
        load(overrides)


def test_numbers_keep_the_form_they_were_given_in():
    assert load({"renal_dose_egfr_threshold": 45.5}).renal_dose_egfr_threshold == 45.5
    assert repr(load().renal_dose_egfr_threshold) == "60"  # printed as given: "below 60", not "below 60.0"
    assert load({"ferritin_lookback_days": 180.0}).ferritin_lookback_days == 180  # a whole number of days
    assert "_note" not in load({"_note": "comments are allowed"}).as_dict()


def _write(tmp_path: Path, content: str) -> str:
    path = tmp_path / "overrides.json"
    path.write_text(content, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"ferritin_lookback_days": "a year"}', "ferritin_lookback_days must be a whole number"),
        ('{"ferritin_lookback_dayz": 180}', "unknown knowledge setting 'ferritin_lookback_dayz'"),
        ('{"ferritin_lookback_days": 180,}', "is not JSON"),
        ('["iron_profile", "aasm2024"]', "must be a JSON object of settings, got list"),
    ],
)
def test_a_bad_override_file_stops_create_app_naming_the_key(tmp_path, content, message):
    with pytest.raises(SettingsError, match=message):
        create_app("test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, KNOWLEDGE_OVERRIDES=_write(tmp_path, content))


def test_a_missing_override_file_stops_create_app(tmp_path):
    with pytest.raises(SettingsError, match="overrides.json' cannot be read"):
        create_app(
            "test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, KNOWLEDGE_OVERRIDES=str(tmp_path / "overrides.json")
        )


def test_an_override_file_is_used_like_the_same_object(tmp_path):
    overrides = {"iron_profile": "aasm2024", "ferritin_lookback_days": 180}
    app = create_app(
        "test", LOG_LEVEL="CRITICAL", FEEDBACK_STORE=None, KNOWLEDGE_OVERRIDES=_write(tmp_path, json.dumps(overrides))
    )
    knowledge = app.extensions["legmove"]
    assert knowledge.terminology.settings.iron_profile == "aasm2024"
    assert knowledge.terminology.settings.ferritin_lookback_days == 180
    assert knowledge.knowledge_version == knowledge_version(overrides)  # the file's content, not its path
    assert app.config["KNOWLEDGE_OVERRIDES"] == overrides


def _start(tmp_path: Path, overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LEGMOVE_CONFIG": "development",
        "LEGMOVE_KNOWLEDGE_OVERRIDES": overrides,
        "LEGMOVE_FEEDBACK_STORE": f"sqlite:///{tmp_path / 'feedback.sqlite3'}",
    }
    return subprocess.run(
        [sys.executable, "-m", "cds_service.cli.prestart"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_start_up_refuses_a_bad_override_file_in_one_line_without_a_stack_trace(tmp_path):
    """What gunicorn's on_starting runs before any worker: one clear line, exit 1."""
    result = _start(tmp_path, _write(tmp_path, '{"ferritin_lookback_days": "a year"}'))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "legmove-cds refuses to start: knowledge setting ferritin_lookback_days must be a "
        "whole number, got 'a year' (str)"
    )
    assert "Traceback" not in result.stderr + result.stdout
    inline = _start(tmp_path, '{"iron_profile": "nice2023"}')  # the variable may also hold the JSON itself
    assert inline.returncode == 1 and "iron_profile 'nice2023' is not one of" in inline.stderr
    assert "Traceback" not in inline.stderr
    broken = _start(tmp_path, '{"iron_profile": aasm2024}')  # not JSON: not taken for a file name either
    assert broken.returncode == 1 and "KNOWLEDGE_OVERRIDES is not valid JSON" in broken.stderr
    good = _start(tmp_path, _write(tmp_path, '{"iron_profile": "aasm2024"}'))
    assert good.returncode == 0, good.stderr


def test_serve_refuses_a_bad_override_file_before_gunicorn_starts(tmp_path):
    """`legmove-cds serve` from any directory (with or without gunicorn.conf.py): one line, exit 1."""
    env = {
        **os.environ,
        "LEGMOVE_CONFIG": "development",
        "LEGMOVE_KNOWLEDGE_OVERRIDES": _write(tmp_path, '{"ferritin_lookback_dayz": 180}'),
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "legmove-cds"), "serve", "--port", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "refuses to start: unknown knowledge setting 'ferritin_lookback_dayz'" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_reports_a_bad_override_file(tmp_path):
    from cds_service.config import CONFIGS

    config = {k: getattr(CONFIGS["development"], k) for k in dir(CONFIGS["development"]) if k.isupper()}
    path = _write(tmp_path, '{"ferritin_lookback_days": "a year"}')
    [item] = [i for i in report({**config, "KNOWLEDGE_OVERRIDES": path}) if "knowledge overrides" in i.says]
    assert item.unsafe and "stop start-up" in item.says and "ferritin_lookback_days" in item.says
    [item] = [
        i
        for i in report({**config, "KNOWLEDGE_OVERRIDES": {"iron_profile": "aasm2024"}})
        if "knowledge overrides" in i.says
    ]
    assert not item.unsafe and item.says == "knowledge overrides: iron_profile"


def test_an_unknown_drug_class_in_the_rls_worsening_additions_stops_start_up():
    with pytest.raises(SettingsError, match=r"rls_worsening_additions names unknown drug classes \['snir'\]"):
        Terminology({"rls_worsening_additions": ["snir", "mirtazapine"]})
    assert "mirtazapine" in Terminology({"rls_worsening_additions": ["mirtazapine"]}).groups["rls_worsening"]


def test_a_data_file_naming_a_window_that_is_not_a_setting_stops_start_up(monkeypatch):
    settings = load()
    assert settings.days("pregnancy_max_days") == 300
    with pytest.raises(SettingsError, match="'ferritin_lookback' is not a knowledge setting in days"):
        settings.days("ferritin_lookback")
    with pytest.raises(SettingsError, match="not a knowledge setting in days"):
        settings.days("iron_profile")
    term = Terminology()
    assert {a.lookback_setting for a in term.analytes.values()} <= set(knowledge_settings._DAY_FIELDS)


# ---- the render context ---------------------------------------------------------------------------


def _ctx(facts: list[dict]) -> RenderContext:
    return RenderContext(hook="patient-view", patient_id="p", settings=load(), class_title=str, groups={}, facts=facts)


def test_render_context_accessors():
    params = {"kind": "params", "profile": "seed"}
    patient = {"kind": "patient", "child": False}
    ferritin = {"kind": "lab", "analyte": "ferritin", "usable": True, "value": 20.0}
    unusable = {"kind": "lab", "analyte": "tsat", "usable": False}
    pregnancy = {"kind": "condition", "sets": ["PREGNANCY"], "display": "Pregnancy"}
    ctx = _ctx([{"kind": "context", "hook": "patient-view"}, params, patient, ferritin, unusable, pregnancy])
    assert ctx.params is params and ctx.patient is patient
    assert ctx.labs("ferritin") == [ferritin] and ctx.labs("tsat", usable=True) == [] and ctx.labs("cmp") == []
    assert ctx.facts_of("lab", usable=False) == [unusable] and ctx.facts_of("order") == []
    assert ctx.conditions_in("PREGNANCY", "ESRD_DIALYSIS") == [pregnancy] and ctx.conditions_in("ESRD_DIALYSIS") == []
    assert ctx.settings.ferritin_lookback_days == 365
    with pytest.raises(LookupError, match="no params fact"):
        _ = _ctx([]).params


RULE_SOURCES = sorted([*(ROOT / "rules").glob("*.py"), ROOT / "cds_service" / "cards" / "render.py"])
OLD_IDIOMS = re.compile(
    r"ctx\.settings\[|int\(ctx\.settings|next\(\(?f for f in ctx\.facts|facts_of\(ctx, \"params\"\)"
    r"|facts_of\(ctx, \"patient\"\)\[0\]|\.settings\.get\("
)


@pytest.mark.parametrize("path", RULE_SOURCES, ids=lambda p: p.name)
def test_rules_read_settings_and_facts_through_the_typed_context(path):
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OLD_IDIOMS.search(line)
    ]
    assert not found, "use ctx.settings.x, ctx.params, ctx.patient, ctx.facts_of(), ctx.labs():\n" + "\n".join(found)


# ---- the rule-version fingerprint sees settings read as attributes ------------------------------


def _spec_reading(source_line: str) -> RuleSpec:
    namespace: dict = {}
    exec(compile(f"def render(matches, ctx):\n    return {source_line}\n", "<rule>", "exec"), namespace)
    render = namespace["render"]
    render.__module__ = "rules.fake"
    spec = RuleSpec(
        id="RX", title="x", citation="x", stratum="card", condition=_NoCriteria(), module="rules.fake", render=render
    )
    return spec


class _NoCriteria:
    def define(self):
        return {}


@pytest.mark.parametrize(
    "line, expected",
    [
        ("ctx.settings.akathisia_window_days", {"akathisia_window_days": 90}),
        ("ctx.settings.profiles.aasm2024.iv_only_up_to", {"aasm2024_iv_only_up_to": 100}),
        ("ctx.params['aasm2024_tsat_iron_indicated_below']", {"aasm2024_tsat_iron_indicated_below": 20}),
        (
            "ctx.settings.iron.title",
            {
                "iron_profile": "seed",
                "seed_title": "Seed articles (000, 001, 002)",
                "aasm2024_title": "AASM 2024 clinical practice guideline",
            },
        ),
    ],
)
def test_settings_read_as_attributes_are_part_of_the_fingerprint(monkeypatch, line, expected):
    import inspect

    spec = _spec_reading(line)
    monkeypatch.setattr(inspect, "getsource", lambda fn: line)  # exec'd code has no file to read
    assert rule_versions.fingerprint_parts(spec)["settings"] == expected
    before = rule_versions.fingerprint(spec)
    name = next(iter(expected))
    changed = {**rule_versions._settings_by_name(), name: "another default"}
    monkeypatch.setattr(rule_versions, "_settings_by_name", lambda: changed)
    assert rule_versions.fingerprint(spec) != before


# ---- the knowledge page ------------------------------------------------------------------------------

KNOWLEDGE_PAGE = ROOT / "docs" / "knowledge.md"


def test_the_settings_table_of_the_knowledge_page_is_current():
    text = KNOWLEDGE_PAGE.read_text(encoding="utf-8")
    assert knowledge_settings.with_table(text) == text, (
        "docs/knowledge.md's settings table is out of date: "
        "python -m cds_service.knowledge.settings --write docs/knowledge.md"
    )
    listed = set(re.findall(r"^\| `([\w.]+)` \|", text, re.M))
    assert {"ferritin_lookback_days", "profiles.aasm2024.iv_only_up_to", "emg_order_code"} <= listed
    assert {f.name for f in dataclasses.fields(Settings)} - {"profiles"} <= listed, "every setting is in the table"


def test_the_readme_and_the_knowledge_readme_link_the_knowledge_page():
    assert "(docs/knowledge.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(../../docs/knowledge.md)" in (ROOT / "cds_service" / "knowledge" / "README.md").read_text(encoding="utf-8")
    assert (ROOT / "cds_service" / "knowledge" / "README.md").exists()  # the page links it back
    assert "(../cds_service/knowledge/README.md)" in KNOWLEDGE_PAGE.read_text(encoding="utf-8")
