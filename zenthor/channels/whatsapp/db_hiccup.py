"""One way to live through a database hiccup on the runtime's threads: say so, drop the pooled
connection (it may be the broken one), let the caller's loop try again."""

from __future__ import annotations

from zenthor.db import database
from zenthor.observability import emit
from zenthor.observability import events as ev


def database_hiccup(operation: str, error: Exception) -> None:
    """Report ``error`` as ``queue.database.unavailable`` and hand this thread's connection back."""
    emit(
        ev.DATABASE_UNAVAILABLE,
        operation=operation,
        job_id=None,
        error=f"{type(error).__name__}: {str(error)[:200]}",
    )
    if not database.is_closed():
        database.close()
