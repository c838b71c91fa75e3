"""The feedback store's schema, as Alembic migrations (https://alembic.sqlalchemy.org/).

Schema changes never happen on the request path: two gunicorn workers creating tables on the
first call of a fresh PostgreSQL database raced, and the loser's issued cards were lost.
Instead the schema is brought to the newest revision once, before any worker serves:

- `legmove-cds db upgrade` (any time, e.g. in a deployment step), or
- gunicorn's `on_starting` hook in `gunicorn.conf.py` (the master, before it forks workers).

Every process then checks at start-up (`require_current`) and refuses to start on a database
whose revision this build does not know, or one that is behind.

Revision 0001 is the schema that `metadata.create_all` made before migrations existed: on such
a database it creates nothing and only records the revision ("stamps" it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-step INFO lines are noise in the service log

HERE = Path(__file__).resolve().parent


class SchemaMismatch(Exception):
    """The database's schema revision is unknown to this build, or behind it."""


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["url"] = url
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config("")).get_current_head()
    if revision is None:  # the package ships its revisions: only a broken install has none
        raise SchemaMismatch("this build has no schema revisions (cds_service/store/migrations/versions is empty)")
    return revision


def _engine(url: str):
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)  # relative path
    elif url.startswith("sqlite:////"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url)


def current(url: str) -> str | None:
    """The revision recorded in the database (None: never migrated)."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str) -> str:
    """Bring the database to the newest revision; safe to run from several processes at once
    (PostgreSQL: an advisory lock serialises them, see env.py)."""
    before = current(url)
    known = {rev.revision for rev in ScriptDirectory.from_config(_config(url)).walk_revisions()}
    if before is not None and before not in known:
        raise SchemaMismatch(f"the feedback store is at revision {before}, which this build does not know")
    command.upgrade(_config(url), "head")
    after = current(url)
    if after is None:
        raise SchemaMismatch("the feedback store records no revision after the upgrade")
    if after != before:
        log.info("feedback store migrated from %s to %s", before or "empty", after)
    return after


def require_current(url: str) -> None:
    """Start-up check: refuse to serve on a schema this build did not make."""
    found, wanted = current(url), head()
    if found != wanted:
        state = "has no schema" if found is None else f"is at revision {found}"
        raise SchemaMismatch(
            f"the feedback store {state}; this build needs {wanted}: "
            "run `legmove-cds db upgrade` (or start through gunicorn.conf.py, which does it)"
        )
