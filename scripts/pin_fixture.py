"""Print (or write) the `expect` block a fixture's current answer pins.

    .venv/bin/python scripts/pin_fixture.py fhir_fixtures/R1/fires-no-ferritin.json
    .venv/bin/python scripts/pin_fixture.py --write fhir_fixtures/R19/*.json

Runs each fixture's request through the prefetch path (with the fixture's `config`) at the test
configuration's evaluation date, and prints `expect` with `cards` as the service gives them now
(`{rule, indicator, variant, suggestions}`, see tests/fixture_pins.py). For a silent fixture
(`silent-*.json`) it also prints `near_miss`: `derived` is the findings the rule under test reads
that were derived from the chart for this request (or, when none was, every finding that was;
findings that rest on the hook alone, such as a review due on patient-view, do not count);
`varies` keeps the fixture's own choice, or suggests the firing fixture of the same folder whose
chart differs least (check it: the suggestion is by data, not by
meaning). `--write` puts the block into the file and keeps everything else as it was.

Pinning records what the service does, not what it should do: read every card the block lists
and state in the fixture's description why each card beyond the rule under test is right.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixture_pins import DerivedFindings, card_keys, is_silent_fixture, rule_of  # noqa: E402

_IGNORED = {"id", "fullUrl", "subject", "patient", "meta", "hookInstance"}


@cache
def _client(config_json: str):
    from cds_service.app import create_app

    return create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **json.loads(config_json)).test_client()


def answer(fixture: dict, spy: DerivedFindings) -> tuple[int, dict, set[str]]:
    spy.clear()
    client = _client(json.dumps(fixture.get("config") or {}, sort_keys=True))
    response = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    return response.status_code, response.get_json(), spy.from_chart()


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _IGNORED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _chart(fixture: dict) -> set[str]:
    """The fixture's data as comparable items: resources without ids, the drafts, selections, config."""
    request = fixture["request"]
    items = set()
    for key, value in (request.get("prefetch") or {}).items():
        entries = (
            value.get("entry", [])
            if isinstance(value, dict) and value.get("resourceType") == "Bundle"
            else [{"resource": value}]
        )
        items |= {json.dumps([key, _strip(e.get("resource"))], sort_keys=True) for e in entries}
    context = request["context"]
    for entry in (context.get("draftOrders") or {}).get("entry", []):
        items.add(json.dumps(["draft", _strip(entry.get("resource"))], sort_keys=True))
    items.add(json.dumps(["selections", len(context.get("selections") or [])]))
    items.add(json.dumps(["hook", request["hook"], fixture.get("config") or {}], sort_keys=True))
    return items


def closest_firing(path: Path, fixture: dict) -> str | None:
    rule, mine = path.parent.name, _chart(fixture)
    best = None
    for other in sorted(path.parent.glob("*.json")):
        candidate = json.loads(other.read_text(encoding="utf-8"))
        if rule not in rule_of(candidate.get("expect", {}).get("cards", [])):
            continue
        distance = len(mine ^ _chart(candidate))
        if best is None or distance < best[0]:
            best = (distance, other.stem)
    return best and best[1]


def pin(path: Path, spy: DerivedFindings) -> tuple[dict, str | None]:
    from cds_service.authoring.rulebook import REGISTRY
    from cds_service.engine.lint import findings_read

    fixture = json.loads(path.read_text(encoding="utf-8"))
    status, body, derived = answer(fixture, spy)
    if status != 200:
        raise SystemExit(f"{path}: the service answered {status}: {json.dumps(body)[:300]}")
    expect = dict(fixture.get("expect") or {})
    expect["cards"] = card_keys(body)
    near_miss = note = None
    if is_silent_fixture(path.stem):
        rule = path.parent.name
        near_miss = dict(fixture.get("near_miss") or {})
        if "varies" not in near_miss:
            suggestion = closest_firing(path, fixture)
            if suggestion:
                near_miss["varies"] = suggestion
                note = f"{path}: near_miss.varies suggested as {suggestion!r}; check it"
        # the findings of the rule under test that did derive; when none did, every finding that did
        near_miss["derived"] = sorted(
            (derived & findings_read(REGISTRY[rule]) if rule in REGISTRY else set()) or derived
        )
        if rule in rule_of(expect["cards"]):
            note = f"{path}: a silent fixture, but {rule} gives a card"
    block = {"expect": expect} | ({"near_miss": near_miss} if near_miss is not None else {})
    return block, note


def write(path: Path, block: dict) -> None:
    text = path.read_text(encoding="utf-8")
    fixture = json.loads(text)
    out = {}
    for key, value in fixture.items():
        out[key] = block.get(key, value)
        if key == "expect" and "near_miss" in block:
            out["near_miss"] = block["near_miss"]
    out |= {k: v for k, v in block.items() if k not in out}
    path.write_text(
        json.dumps(out, indent=2, ensure_ascii=False) + ("\n" if text.endswith("\n") else ""), encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="+", type=Path)
    parser.add_argument("--write", action="store_true", help="write the block into each fixture file")
    args = parser.parse_args(argv)
    spy = DerivedFindings()
    with spy.recording():
        for path in args.fixtures:
            block, note = pin(path, spy)
            if note:
                print(note, file=sys.stderr)
            if args.write:
                write(path, block)
            else:
                if len(args.fixtures) > 1:
                    print(f"// {path}")
                print(json.dumps(block, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
