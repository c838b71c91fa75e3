"""`legmove-cds rules`: the rule catalog, read from the code, as Markdown for clinical review."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .rulebook import CARD, REGISTRY

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fhir_fixtures"


def _natural(rule_id: str) -> tuple:
    """R2 before R10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", rule_id))


def catalog_markdown() -> str:
    import rules

    rules.load_all()
    fixtures = _fixtures_by_rule()
    lines = ["# legmove-cds rule catalog", "",
             "Generated from the rule modules by `legmove-cds rules`. Findings are derived first; cards are made from them.",
             "", "| Rule | Kind | Hooks | Logic | Citation | Module | Fixtures (fire / silent, by file name under fhir_fixtures/R<n>/) |",
             "|---|---|---|---|---|---|---|"]
    for spec in sorted(REGISTRY.values(), key=lambda s: (s.stratum != "derive", _natural(s.id))):
        kind = "card" if spec.stratum == CARD else f"finding `{spec.produces}`"
        if spec.stratum == CARD and not spec.enabled_by_default:
            kind += " (**off by default**)"
        if spec.supersedes:
            kind += f", replaces {', '.join(spec.supersedes)}"
        fires, silent = fixtures.get(spec.id, ([], []))
        listed = (f"fires: {', '.join(fires)}<br>silent: {', '.join(silent)}" if spec.stratum == CARD
                  else f"{len(fires)} / {len(silent)}")
        lines.append(f"| **{spec.id}** {spec.title} | {kind} | {', '.join(spec.hooks) or '(any hook)'} | {spec.logic} | "
                     f"{spec.citation} | `{spec.module}` | {listed} |")
    return "\n".join(lines) + "\n"


def _fixtures_by_rule() -> dict[str, tuple[list[str], list[str]]]:
    found: dict[str, tuple[list[str], list[str]]] = {}
    for path in sorted(FIXTURE_DIR.glob("R*/*.json")):
        expect = json.loads(path.read_text(encoding="utf-8"))["expect"]
        for rule in expect["fires"]:
            found.setdefault(rule, ([], []))[0].append(path.stem)
        for rule in expect["silent"]:
            found.setdefault(rule, ([], []))[1].append(path.stem)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="legmove-cds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    catalog = commands.add_parser("rules", help="print the rule catalog as Markdown")
    catalog.add_argument("--lock", action="store_true", help="regenerate rules/versions.json (rule versions) instead")
    catalog.add_argument("--accept-unbumped", action="store_true", help="with --lock: lock changed rules without a bump")
    report = commands.add_parser("report", help="governance report per rule and version (cds_service.governance_report)")
    report.add_argument("--since", help="first day (YYYY-MM-DD, UTC) of cards counted")
    report.add_argument("--until", help="last day (YYYY-MM-DD, UTC) of cards counted")
    report.add_argument("--csv", help="also write the table as CSV to this file")
    report.add_argument("--png", help="also draw the table as a PNG chart (needs the `report` extra: matplotlib)")
    commands.add_parser("prune", help="delete call, card and feedback rows older than RETENTION_DAYS")
    db = commands.add_parser("db", help="feedback store schema (Alembic): upgrade to the newest revision, or show it")
    db.add_argument("action", choices=["upgrade", "current"])
    args = parser.parse_args(argv)
    if args.command == "rules" and args.lock:
        from .rule_versions import run

        raise SystemExit(run(write=True, accept_unbumped=args.accept_unbumped))
    if args.command == "rules":
        print(catalog_markdown(), end="")
    elif args.command in ("report", "prune"):
        from . import governance_report

        raise SystemExit(governance_report.command(args))
    elif args.command == "db":
        from .migrations.__main__ import main as migrate

        raise SystemExit(migrate([args.action]))


if __name__ == "__main__":
    main()

