"""Publishing nudges after commit, and re-sending the ones the broker refused (I6).

RabbitMQ only carries nudges: the rows in Postgres are the truth, so a lost publish never loses a
job. A refused publish is remembered by the process (:class:`OwedNudges`, bounded) and re-sent as
soon as the broker takes a message again: at once when another publish of this process succeeds,
else by a short-lived retry thread that probes the broker with a short backoff. So after a broker
restart the backlog moves within seconds, in the gateway (which has no sweep) as in the workers.
What a process still owes when it dies is left to the sweep's re-publish grace period.

Messages are sent by actor and queue *name* through the process's broker, so this module imports
no actor: dispatch, deliver and the sweep all publish through it without an import circle.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import dramatiq

from zenthor.channels import queue_for
from zenthor.db import execute
from zenthor.middleware.idle_publisher import quiet_pika
from zenthor.observability import emit
from zenthor.observability import events as ev

_logger = logging.getLogger(__name__)

DISPATCH_ACTOR = DISPATCH_QUEUE = "dispatch"
DELIVER_ACTOR = "deliver"


def _send(actor_name: str, queue_name: str, args: tuple, delay_ms: int | None) -> None:
    message = dramatiq.Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={})
    # A refused publish is reported by the caller as one event; pika would add thirty ERROR lines
    # (five for each of Dramatiq's six connection attempts).
    with quiet_pika():
        dramatiq.get_broker().enqueue(message, delay=delay_ms)


@dataclass(frozen=True)
class _Owed:
    actor_name: str
    queue_name: str
    row_id: int
    failed_at: float  # time.monotonic() of the first refused publish
    due_at: float | None  # when a delayed nudge is due (monotonic), None for "now"


class OwedNudges:
    """The nudges this process could not publish, re-sent once the broker is back.

    At most ``limit`` are kept (what does not fit waits for the sweep's grace period). A nudge is
    owed once however often its publish failed, and forgotten when a later publish for the same
    row succeeds, so a row gets at most one extra nudge; a duplicate is harmless anyway (the
    claim refuses it). The retry thread lives only while something is owed.
    """

    def __init__(
        self, *, limit: int = 20_000, min_backoff_s: float = 0.2, max_backoff_s: float = 2.0
    ) -> None:
        self.limit = limit
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._owed: dict[tuple[str, int], _Owed] = {}
        self._mu = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._owed)

    def add(self, actor_name: str, queue_name: str, row_id: int, delay_ms: int | None) -> None:
        """Remember a refused publish and make sure the retry thread runs."""
        now = time.monotonic()
        due_at = now + delay_ms / 1000 if delay_ms else None
        with self._mu:
            key = (actor_name, row_id)
            if key not in self._owed and len(self._owed) < self.limit:
                self._owed[key] = _Owed(actor_name, queue_name, row_id, now, due_at)
            # is_alive: a forked child inherits the reference to a thread it does not have.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="zenthor-owed-nudges", daemon=True)
                self._thread.start()

    def published(self, actor_name: str, row_id: int) -> None:
        """A publish succeeded: that row is owed nothing, and the broker is back for the rest."""
        if not self._owed:  # the common case, without the lock
            return
        with self._mu:
            self._owed.pop((actor_name, row_id), None)
            if self._owed:
                self._wake.set()

    def flush(self) -> bool:
        """Re-send what is owed, oldest first; stops at the first refusal. True if all went."""
        with self._mu:
            pending = sorted(self._owed.values(), key=lambda owed: (owed.failed_at, owed.row_id))
        if not pending:
            return True
        sent: list[_Owed] = []
        try:
            for owed in pending:
                delay_ms = None
                if owed.due_at is not None:
                    delay_ms = max(0, int((owed.due_at - time.monotonic()) * 1000)) or None
                _send(owed.actor_name, owed.queue_name, (owed.row_id,), delay_ms)
                sent.append(owed)
        except Exception as error:  # noqa: BLE001 - the broker is still away: probe again later
            _logger.debug("owed nudges: the broker is still away: %s", error)
        with self._mu:
            for owed in sent:
                if self._owed.get((owed.actor_name, owed.row_id)) is owed:
                    del self._owed[(owed.actor_name, owed.row_id)]
            still_owed = len(self._owed)
        if sent:
            emit(
                ev.OWED_NUDGES_REPUBLISHED,
                jobs=sum(1 for owed in sent if owed.actor_name == DISPATCH_ACTOR),
                deliveries=sum(1 for owed in sent if owed.actor_name == DELIVER_ACTOR),
                waited_ms=int((time.monotonic() - min(owed.failed_at for owed in sent)) * 1000),
                still_owed=still_owed,
            )
        return len(sent) == len(pending)

    def _run(self) -> None:
        backoff = self.min_backoff_s
        try:
            while True:
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = self.min_backoff_s if self.flush() else min(backoff * 2, self.max_backoff_s)
                with self._mu:
                    if not self._owed:
                        self._thread = None  # under the lock: add() starts a new one from here
                        return
        finally:
            with self._mu:
                if self._thread is threading.current_thread():
                    self._thread = None  # died: the next refused publish starts a new one
            drop = getattr(dramatiq.get_broker(), "drop_thread_connection", None)
            if drop is not None:
                drop()  # this thread's publisher connection ends with it

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's owed nudges and its retry thread are the parent's; a
        lock held by that thread at the fork would never be released here."""
        self._owed = {}
        self._mu = threading.Lock()
        self._wake = threading.Event()
        self._thread = None


owed_nudges = OwedNudges()
os.register_at_fork(after_in_child=owed_nudges.forget_after_fork)


def publish_dispatch(job_id: int, *, delay_ms: int | None = None) -> bool:
    """Nudge the dispatch actor about ``job_id``; False (and an event) when the broker refused."""
    try:
        _send(DISPATCH_ACTOR, DISPATCH_QUEUE, (job_id,), delay_ms)
    except Exception as error:  # noqa: BLE001 - any broker failure: re-sent once the broker is back
        emit(ev.PUBLISH_FAILED, actor="dispatch", job_id=job_id, error=str(error)[:200])
        owed_nudges.add(DISPATCH_ACTOR, DISPATCH_QUEUE, job_id, delay_ms)
        return False
    owed_nudges.published(DISPATCH_ACTOR, job_id)
    return True


def publish_delivery(outbound_id: int, *, channel: str | None = None, delay_ms: int | None = None) -> bool:
    """Nudge delivery of row ``outbound_id`` on its channel's queue; False (and an event) when the
    broker refused (re-sent once the broker is back, see :class:`OwedNudges`). A channel whose
    owning process polls its rows (terminal, WhatsApp) gets no nudge."""
    if channel is None:
        rows = execute("SELECT channel FROM outbound_message WHERE id = %s", (outbound_id,))
        if not rows:
            return False
        channel = rows[0][0]
    queue_name = queue_for(channel)
    if queue_name is None:
        return True  # delivered by the owning process's own polling
    try:
        _send(DELIVER_ACTOR, queue_name, (outbound_id,), delay_ms)
    except Exception as error:  # noqa: BLE001 - any broker failure: re-sent once the broker is back
        emit(ev.OUTBOUND_PUBLISH_FAILED, outbound_id=outbound_id, queue=queue_name, error=str(error)[:200])
        owed_nudges.add(DELIVER_ACTOR, queue_name, outbound_id, delay_ms)
        return False
    owed_nudges.published(DELIVER_ACTOR, outbound_id)
    return True


def publish_deliveries(outbound_ids: list[int], channel: str | None = None) -> None:
    """Nudge delivery for each outbox row (a refused one is owed and re-sent later)."""
    for outbound_id in outbound_ids:
        publish_delivery(outbound_id, channel=channel)


def publish_job_deliveries(outbound_ids: list[int], channel: str | None = None) -> bool:
    """Nudge delivery of the rows one job wrote (one conversation, written in id order): one
    nudge, for the first row. The deliver actor sends a conversation's rows one at a time and
    nudges the next row as it finishes one (``finish_sent``, and after a final failure), so a
    nudge per row only bought refusals (``behind_older``). A refused or lost nudge is re-sent as
    for any row (owed nudges, then the outbox sweep). False when the broker refused it."""
    if not outbound_ids:
        return True
    return publish_delivery(min(outbound_ids), channel=channel)
