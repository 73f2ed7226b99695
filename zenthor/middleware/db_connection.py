"""Hand a worker thread's database connection back to the pool when it may be broken.

Peewee keeps one connection per thread. A healthy connection stays with its thread (a pool
checkout per message costs a liveness check). When Postgres restarts, that connection breaks;
handing it back after the message that found it broken means the thread's next message gets a
fresh one instead of failing on the broken connection forever. A thread that exits hands its
connection back too, or the pool would count it as in use forever.
"""

from __future__ import annotations

import logging

from dramatiq.middleware import Middleware

from zenthor.db import database

_logger = logging.getLogger(__name__)


class DbConnection(Middleware):
    """Returns a thread's connection to the pool after a failed message, a broken connection, or
    when the thread exits."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is not None or _broken():
            _give_back()

    after_skip_message = after_process_message

    def before_worker_thread_shutdown(self, broker, thread):
        _give_back()  # runs in the exiting thread


def _broken() -> bool:
    # psycopg2 marks a connection closed (without a round trip) once the server dropped it.
    conn = getattr(getattr(database.obj, "_state", None), "conn", None)
    return conn is not None and bool(conn.closed)


def _give_back() -> None:
    if database.obj is None or database.is_closed():
        return
    try:
        database.close()
    except Exception:  # noqa: BLE001 - a broken connection must not fail the message
        _logger.warning("could not return a database connection to the pool", exc_info=True)
