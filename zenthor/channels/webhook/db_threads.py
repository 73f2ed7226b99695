"""The gateway's database threads: each keeps its Postgres connection from one request to the next.

Checking a connection out of Peewee's pool takes one lock shared by every thread and pings the
connection (``SELECT 1``) under it; checking it in takes the lock again. Per request that was two
checkouts (the account, then accept) and two check-ins: a third of the time a request thread
spent, serialised across threads (bench/README.md, bench.ingress). Like a worker's threads (the
DbConnection middleware), these threads keep their connection, and their broker publisher
connection, for as long as they live; a connection that broke is given back and replaced.

A fixed number of threads (:func:`thread_count`) bounds the connections one gateway process holds
for requests, whatever the number of requests in flight; requests beyond it wait in line.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from peewee import InterfaceError, OperationalError

from zenthor.db import database, return_to_pool, session_dropped

_logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_THREADS = 8


def thread_count(pool_size: int) -> int:
    """Threads for a pool of ``pool_size`` connections: at most :data:`MAX_THREADS` (short
    transactions on a few cores gain nothing from more), and at most half the pool, so /healthz
    and /metrics (which check a connection out per call) always find one."""
    return max(1, min(MAX_THREADS, pool_size // 2))


class DbThreads:
    """``size`` threads that run database work for the event loop (:meth:`run`), each on the
    connection it keeps. Threads start with the first call; :meth:`close` ends them and gives
    their connections back."""

    def __init__(self, size: int, *, broker: Any = None, name: str = "zenthor-gateway-db") -> None:
        """``broker``: the broker these threads publish on; each drops its publisher connection
        when it ends."""
        if size < 1:
            raise ValueError(f"size: a DbThreads needs at least 1 thread, got {size}")
        self.size = size
        self.name = name
        self.broker = broker
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._mu = threading.Lock()
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the threads, with its connection open. ``fn`` must be safe to
        run twice: it runs once more on a fresh connection when the kept one turns out to have
        died while the thread was idle (a Postgres restart, a terminated session)."""
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, future, loop))
        # Shielded: a client that goes away does not cancel a transaction half way; it finishes
        # (as with Starlette's thread pool) and its result is dropped.
        return await asyncio.shield(future)

    def close(self, timeout_s: float = 10.0) -> None:
        """End the threads once they finished what they run; each gives its connections back."""
        with self._mu:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(timeout_s)

    def _start(self) -> None:
        if len(self._threads) >= self.size:
            return
        with self._mu:
            if self._closed:
                raise RuntimeError("the gateway's database threads are closed (the app is shutting down)")
            while len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._serve, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _serve(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                fn, args, future, loop = item
                try:
                    result = _call(fn, args)
                except BaseException as error:  # noqa: BLE001 - handed to the awaiting request
                    loop.call_soon_threadsafe(_settle, future, None, error)
                else:
                    loop.call_soon_threadsafe(_settle, future, result, None)
        finally:
            return_to_pool(_logger)
            drop = getattr(self.broker, "drop_thread_connection", None)
            if drop is not None:
                drop()  # this thread's publisher connection ends with it


def _call(fn: Callable[..., T], args: tuple) -> T:
    kept = not database.is_closed()
    try:
        return fn(*args)
    except (OperationalError, InterfaceError):
        if not session_dropped():
            raise
        return_to_pool(_logger)
        if not kept:
            raise  # a fresh connection failed: Postgres is away, the caller answers 503
    # The connection this thread kept had died meanwhile: nothing was written on it (or, if its
    # COMMIT was lost, the retry finds the dedupe key). Once more on a fresh one.
    try:
        return fn(*args)
    except (OperationalError, InterfaceError):
        if session_dropped():
            return_to_pool(_logger)
        raise


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
