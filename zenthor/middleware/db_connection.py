"""Give each message a pooled database connection and take it back afterwards.

Peewee keeps one connection per thread; returning it to the pool after every message means a
connection broken while idle (Postgres restarted) is replaced on the next message instead of
failing every message that thread handles.
"""

from __future__ import annotations

import logging

from dramatiq.middleware import Middleware

from zenthor.db import database

_logger = logging.getLogger(__name__)


class DbConnection(Middleware):
    """Returns the thread's connection to the pool after each message, processed or skipped."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if database.obj is None or database.is_closed():
            return
        try:
            database.close()
        except Exception:  # noqa: BLE001 - a broken connection must not fail the message
            _logger.warning("could not return a database connection to the pool", exc_info=True)

    after_skip_message = after_process_message
