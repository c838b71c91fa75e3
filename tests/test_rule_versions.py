"""The rule version lock: a rule whose criteria, code, texts or settings change needs a version bump."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import pytest
from durable.lang import m, when_all

import rules
from cds_service.authoring.rulebook import REGISTRY
from cds_service.store import rule_versions
from conftest import ROOT


@pytest.fixture(scope="module")
def registry():
    rules.load_all()
    return dict(REGISTRY)


def test_the_committed_lock_file_matches_the_rules(registry):
    problems = rule_versions.check(registry)
    assert problems == [], "\n".join(problems)


def _changed(registry, rule_id, **fields):
    copy_ = dict(registry)
    copy_[rule_id] = dataclasses.replace(registry[rule_id], **fields)
    return copy_


def test_changed_criteria_without_a_bump_fail_with_the_command_to_run(registry):
    stricter = when_all(m.kind == "finding", m.name == "rls")  # R3's criteria, changed
    problems = rule_versions.check(_changed(registry, "R3", condition=stricter))
    assert len(problems) == 1
    assert "R3 changed" in problems[0] and "set version=2" in problems[0] and "legmove-cds rules --lock" in problems[0]
    # bumped but not regenerated: the lock file must follow
    bumped = rule_versions.check(_changed(registry, "R3", condition=stricter, version=2))
    assert len(bumped) == 1 and "regenerate" in bumped[0]
    # bumped and regenerated: clean
    lock = copy.deepcopy(rule_versions.read_lock())
    new = _changed(registry, "R3", condition=stricter, version=2)
    lock["rules"]["R3"] = {"version": 2, "fingerprint": rule_versions.fingerprint(new["R3"])}
    assert rule_versions.check(new, lock) == []


def test_changed_code_text_or_settings_read_change_the_fingerprint(registry, monkeypatch):
    spec = registry["R1"]
    before = rule_versions.fingerprint(spec)
    assert rule_versions.fingerprint(dataclasses.replace(spec, title=spec.title + "!")) != before
    parts = rule_versions.fingerprint_parts(spec)
    assert parts["settings"] == {"ferritin_lookback_days": 365}  # read in its render function
    monkeypatch.setattr(rule_versions, "_settings_by_name", lambda: {"ferritin_lookback_days": 180})
    assert rule_versions.fingerprint(spec) != before
    monkeypatch.undo()

    def render(matches, ctx):  # same name, other body
        return None

    render.__module__, render.__qualname__ = spec.render.__module__, spec.render.__qualname__
    assert rule_versions.fingerprint(dataclasses.replace(spec, render=render)) != before


def test_helpers_a_rule_calls_are_part_of_its_fingerprint(registry):
    sources = rule_versions.fingerprint_parts(registry["R3"])["sources"]
    assert "rules.common.unique_drugs" in sources and "cds_service.authoring.orders.remove_draft" in sources


def test_new_and_removed_rules_need_regeneration(registry):
    lock = copy.deepcopy(rule_versions.read_lock())
    lock["rules"]["R999"] = {"version": 1, "fingerprint": "x"}
    del lock["rules"]["R1"]
    problems = rule_versions.check(registry, lock)
    assert any("R1 is not in the lock file" in p for p in problems)
    assert any("R999 is in the lock file but no longer defined" in p for p in problems)


def test_versions_only_go_up(registry):
    lock = copy.deepcopy(rule_versions.read_lock())
    lock["rules"]["R3"]["version"] = 3
    assert any("versions only go up" in p for p in rule_versions.check(registry, lock))


def test_the_check_command_exits_zero_on_the_repository():
    result = subprocess.run(
        [sys.executable, "-m", "cds_service.store.rule_versions"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match the lock file" in result.stdout


def test_a_version_must_be_a_whole_number():
    from cds_service.authoring.rulebook import card_rule

    with pytest.raises(ValueError, match="version must be a whole number"):
        card_rule(
            id="RX",
            title="t",
            citation="c",
            hooks=("patient-view",),
            when=when_all(m.kind == "x"),
            logic="l",
            version=0,
        )(lambda matches, ctx: None)
