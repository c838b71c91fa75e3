"""What the gunicorn master runs once, before it forks any worker (gunicorn.conf.py `on_starting`):
refuse unsafe settings and knowledge settings that cannot be used, then bring the feedback store's
schema to the newest revision.

A separate process (`python -m cds_service.cli.prestart`), so the master imports nothing that gevent
would have to patch later, and an unsafe configuration stops the service in a second with one
clear line instead of every worker failing to boot.
"""

from __future__ import annotations

import sys

from cds_service.config import UnsafeConfiguration, check_safe_to_start, settings
from cds_service.knowledge.settings import SettingsError
from cds_service.knowledge.settings import load as load_knowledge_settings
from cds_service.store.migrations import SchemaMismatch, upgrade


def main() -> int:
    values = settings()
    try:
        check_safe_to_start(values)
        load_knowledge_settings(values["KNOWLEDGE_OVERRIDES"])  # the workers would all fail on a bad setting
        if values["FEEDBACK_STORE"]:
            print(f"feedback store schema revision: {upgrade(values['FEEDBACK_STORE'])}")
    except (UnsafeConfiguration, SettingsError, SchemaMismatch) as exc:
        print(f"legmove-cds refuses to start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
