"""Numbered schema migrations, applied in order by Peewee's ``playhouse.migrations`` runner.

``zenthor migrate`` calls :func:`migrate`. A Postgres advisory lock makes two migrate processes
started at once (two containers, say) harmless: the second waits, then finds nothing to do.
"""

from __future__ import annotations

from pathlib import Path

from playhouse.migrations import Runner

from zenthor.db import database

MIGRATIONS_DIR = Path(__file__).resolve().parent
_LOCK_KEY = 0x5A454E54  # "ZENT": the advisory lock that serialises migrate runs


def runner() -> Runner:
    """The migration runner for this package's scripts."""
    return Runner(database.obj, str(MIGRATIONS_DIR), table_name="schema_migration")


def migrate() -> list[str]:
    """Apply every pending migration; returns the names applied."""
    with database.connection_context():
        database.execute_sql("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            return runner().up()
        finally:
            database.execute_sql("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
