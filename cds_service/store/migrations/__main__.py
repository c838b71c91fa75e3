"""`python -m cds_service.store.migrations upgrade|current|head`: the feedback store's schema, for the
store configured by LEGMOVE_CONFIG and LEGMOVE_FEEDBACK_STORE (the same settings the app reads)."""

from __future__ import annotations

import sys

from cds_service.config import settings
from cds_service.store.migrations import SchemaMismatch, current, head, upgrade


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command not in ("upgrade", "current", "head"):
        print("usage: python -m cds_service.store.migrations upgrade|current|head", file=sys.stderr)
        return 2
    if command == "head":
        print(head())
        return 0
    url = settings()["FEEDBACK_STORE"]
    if not url:
        print("feedback store is off (FEEDBACK_STORE is null): nothing to migrate")
        return 0
    try:
        revision = upgrade(url) if command == "upgrade" else (current(url) or "none")
        print(f"feedback store schema revision: {revision}")
    except SchemaMismatch as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
