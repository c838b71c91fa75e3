"""Alembic environment: run the migrations on the URL handed in by `cds_service.store.migrations`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from cds_service.store.feedback import metadata
from cds_service.store.migrations import _engine

# any fixed 64-bit number: the advisory lock that lets one process migrate at a time
_PG_LOCK = 7_310_452_214


def run() -> None:
    url = context.config.attributes["url"]
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # two processes upgrading a fresh database would both try CREATE TABLE
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK})
                connection.commit()
            try:
                context.configure(connection=connection, target_metadata=metadata)
                with context.begin_transaction():
                    context.run_migrations()
                connection.commit()
            finally:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK})
                    connection.commit()
    finally:
        engine.dispose()


run()
