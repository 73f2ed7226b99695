"""Keep the leases of long-running turns alive, shaped like Dramatiq's TimeLimit middleware.

One daemon thread per worker process extends every lease the process holds, every
``AGENT_JOB_HEARTBEAT_MS``, in one statement. An actor registers its lease with :meth:`hold`
right after claiming; the lease leaves the registry when the message is processed or skipped
(Dramatiq calls ``after_skip_message`` instead of ``after_process_message``). A heartbeat that
finds a lease gone marks it lost, so the turn stops at its next checkpoint and writes nothing.
On warm shutdown the process releases what it still holds, so another worker takes it at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from dramatiq.middleware import Middleware

from zenthor.db import ZenthorDatabase, database, own_pool
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue import Lease, heartbeat, release

_logger = logging.getLogger(__name__)


class LeaseHeartbeat(Middleware):
    """Extends the process's leases periodically; releases them on warm shutdown.

    Parameters:
      interval_ms: how often to extend the leases (``AGENT_JOB_HEARTBEAT_MS``).
      on_released: called with each job id released at shutdown (re-publishes its dispatch).
      on_tick: called after each heartbeat (the overdue-sweep watchdog).
    """

    def __init__(
        self,
        *,
        interval_ms: int,
        on_released: Callable[[int], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.interval_ms = interval_ms
        self.on_released = on_released
        self.on_tick = on_tick
        self._leases: dict[int, Lease] = {}
        self._mu = threading.RLock()
        self._stop_beating = threading.Event()  # ends the heartbeat thread
        self._draining = threading.Event()  # between the start and the end of a warm shutdown
        self._thread: threading.Thread | None = None
        self._db: ZenthorDatabase | None = None  # the heartbeat's own pool, opened at its first beat
        self._tick_thread: threading.Thread | None = None

    # --- the registry, used by actors ---------------------------------------------------------
    def hold(self, lease: Lease) -> None:
        """Keep ``lease`` alive until the current message is done."""
        with self._mu:
            self._leases[threading.get_ident()] = lease

    def drop(self) -> Lease | None:
        """Stop extending the current thread's lease (before it is completed or failed)."""
        with self._mu:
            return self._leases.pop(threading.get_ident(), None)

    @property
    def stopping(self) -> bool:
        """True once the worker process began its warm shutdown: take no new leases."""
        return self._draining.is_set()

    def held(self) -> list[Lease]:
        """The leases this process holds now."""
        with self._mu:
            return list(self._leases.values())

    # --- Dramatiq hooks -----------------------------------------------------------------------
    def after_worker_boot(self, broker, worker) -> None:
        # A process may boot a worker again after stopping one (tests, benchmarks): start afresh.
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=10)  # the previous worker's thread is on its way out
        self._stop_beating.clear()
        self._draining.clear()
        self._thread = threading.Thread(target=self._run, name="zenthor-lease-heartbeat", daemon=True)
        self._thread.start()

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self.drop()

    after_skip_message = after_process_message

    def before_worker_shutdown(self, broker, worker) -> None:
        self._draining.set()
        self._stop_beating.set()
        held = self.held()
        emit(ev.WORKER_STOPPING, held_leases=len(held), pid=os.getpid())
        self.release_all(reason="shutdown")

    def after_worker_shutdown(self, broker, worker) -> None:
        # Code in this process that runs turns without a worker (tests, `zenthor ops`) may go on.
        self._draining.clear()

    # --- work ---------------------------------------------------------------------------------
    def beat(self) -> list[Lease]:
        """Extend every held lease once, on the heartbeat's own connection; returns the leases
        found lost."""
        if self._db is None:
            # Its own pool: a beat never waits behind worker threads that took every connection
            # of the main pool (DATABASE_POOL_SIZE is independent of the thread count).
            self._db = own_pool("heartbeat")
        return heartbeat(self.held(), db=self._db)

    def release_all(self, *, reason: str) -> list[int]:
        """Give back every lease this process holds and re-publish their jobs."""
        released = []
        # On the heartbeat's own pool (once it beat): the main one may be taken by threads still
        # finishing.
        for lease in self.held():
            try:
                if release(lease, reason=reason, db=self._db):
                    released.append(lease.job_id)
            except Exception:  # noqa: BLE001 - the sweep takes the lease back when it expires
                _logger.warning("could not release job %s at shutdown", lease.job_id, exc_info=True)
        for job_id in released:
            if self.on_released is not None:
                self.on_released(job_id)
        return released

    def _run(self) -> None:
        try:
            self._beat_until_stopped()
        finally:
            if self._db is not None and not self._db.is_closed():
                self._db.close()  # hand this thread's connection back to its pool

    def _beat_until_stopped(self) -> None:
        while not self._stop_beating.wait(self.interval_ms / 1000):
            try:
                self.beat()
            except Exception as error:  # noqa: BLE001 - keep beating; leases expire if the DB stays down
                emit(ev.DATABASE_UNAVAILABLE, operation="heartbeat", job_id=None, error=str(error)[:200])
                try:
                    if self._db is not None:
                        self._db.manual_close()  # likely dead: not back to the pool
                except Exception:  # noqa: BLE001
                    pass
            self._start_tick()

    def _start_tick(self) -> None:
        # The tick (the overdue-sweep watchdog) publishes and deletes in bulk; on its own thread
        # a slow broker or a big prune can never hold back the next heartbeat. One at a time.
        if self.on_tick is None or (self._tick_thread is not None and self._tick_thread.is_alive()):
            return
        self._tick_thread = threading.Thread(target=self._tick, name="zenthor-sweep-watchdog", daemon=True)
        self._tick_thread.start()

    def _tick(self) -> None:
        try:
            self.on_tick()
        except Exception:  # noqa: BLE001 - the next tick tries again
            _logger.warning("the overdue-sweep watchdog failed", exc_info=True)
        finally:
            if not database.is_closed():
                database.close()
