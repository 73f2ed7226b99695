"""Hand a worker thread's database connection back to the pool after every message.

Peewee keeps one connection per thread. A thread holds one only while it works with the
database: after each message (and before each model call, :func:`zenthor.db.give_back`) it goes
back to the pool, so ``DATABASE_POOL_SIZE`` bounds the process's connections whatever
``--threads`` is, and idle threads hold none (issue 13, item 4). A checkout of a connection handed
back moments ago costs no round trip (``zenthor.db.ZenthorDatabase``). A connection that Postgres
dropped (a restart) is closed instead of pooled, so the next message gets a fresh one. A thread
that exits hands its connection back too, or the pool would count it as in use forever.
"""

from __future__ import annotations

import logging

from dramatiq.middleware import Middleware

from zenthor.db import return_to_pool

_logger = logging.getLogger(__name__)


class DbConnection(Middleware):
    """Returns a thread's connection to the pool after each message, and when the thread exits."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        return_to_pool(_logger)

    after_skip_message = after_process_message

    def before_worker_thread_shutdown(self, broker, thread):
        return_to_pool(_logger)  # runs in the exiting thread
