"""Numbered schema migrations, applied in order by Peewee's ``playhouse.migrations`` runner.

``zenthor migrate`` calls :func:`migrate`. A Postgres advisory lock makes two migrate processes
started at once (two containers, say) harmless: the second waits, then finds nothing to do. It
waits between statements (``pg_try_advisory_lock`` in a loop), never inside one: a session
blocked in ``pg_advisory_lock`` holds a snapshot, which the first one's ``CREATE INDEX
CONCURRENTLY`` would wait for, while it waits for the lock — a deadlock.

From ``0007`` on a migration sets ``atomic = False`` (the runner then opens no transaction, so
``CREATE INDEX CONCURRENTLY`` is allowed; the advisory lock is a session lock) and every statement
is idempotent, so a run that stopped halfway can simply be run again.
"""

from __future__ import annotations

import time
from pathlib import Path

from peewee import OperationalError
from playhouse.migrations import Runner

from zenthor.db import database

MIGRATIONS_DIR = Path(__file__).resolve().parent
_LOCK_KEY = 0x5A454E54  # "ZENT": the advisory lock that serialises migrate runs


def runner() -> Runner:
    """The migration runner for this package's scripts."""
    return Runner(database.obj, str(MIGRATIONS_DIR), table_name="schema_migration")


def migrate(*, poll_s: float = 0.2) -> list[str]:
    """Apply every pending migration; returns the names applied."""
    with database.connection_context():
        while not database.execute_sql("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()[0]:
            time.sleep(poll_s)  # another migrate runs; no statement (no snapshot) open meanwhile
        try:
            return runner().up()
        finally:
            database.execute_sql("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def create_index_concurrently(db, name: str, ddl: str) -> None:
    """Build index ``name`` with ``ddl`` (a ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` statement)
    outside any transaction, so writers are not blocked while a big table is indexed.

    A concurrent build that was interrupted leaves an INVALID index behind, which ``IF NOT EXISTS``
    would keep for ever: such a leftover is dropped first and built again.
    """
    invalid = db.execute_sql(
        "SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND NOT i.indisvalid",
        (name,),
    ).fetchone()
    if invalid:
        db.execute_sql(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
    db.execute_sql(ddl)


def alter_giving_way(db, statement: str, *, lock_timeout: str = "2s", attempts: int = 30) -> None:
    """Run ``statement`` (an ``ALTER TABLE`` that takes ACCESS EXCLUSIVE for an instant) waiting
    at most ``lock_timeout`` for its lock, then giving way and trying again, up to ``attempts``
    times. Waiting longer would queue every claim, heartbeat and accept behind a long reader (a
    dry-run count, say) and let leases expire."""
    for attempt in range(1, attempts + 1):
        try:
            db.execute_sql(f"SET lock_timeout = '{lock_timeout}'")
            db.execute_sql(statement)
            return
        except OperationalError as error:
            if "lock timeout" not in str(error) or attempt == attempts:
                raise
            time.sleep(min(0.2 * attempt, 2.0))
        finally:
            db.execute_sql("RESET lock_timeout")
