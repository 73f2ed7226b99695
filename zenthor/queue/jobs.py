"""Every lease statement on ``agent_job``: enqueue, claim, heartbeat, complete, fail, release,
requeue of expired leases, re-publish candidates, and the resume or close of a job awaiting
approval. Nothing else writes the lease columns.

Each operation is one statement or one short transaction, and uses the database clock (``now()``)
so workers on hosts with skewed clocks agree on when a lease expires.

Fencing (I1): a claim hands out a fresh ``lease_token``; every later write names it and matches
only ``status = 'processing' AND lease_token = <token>``. A stale token changes nothing and the
call reports :class:`LeaseLost`.

Order (I2): a claim refuses while an older job of the same conversation is still pending or
another one is processing, and the partial unique index
``agent_job_one_processing_per_conversation`` refuses a second processing job even when two claims
race past that check. A job awaiting approval does not hold the line: it waits for one sender's
answer, and the other members of a group are answered meanwhile; resumed, it is pending again
with its old id, so it goes ahead of every job still pending behind it. An operator's retry of a
failed job is a new job (``retry_of``) at the back of its conversation's line.

Collect (issue 14): in a conversation that collects, the claim also takes the turn jobs queued
behind the job it claims (same sender, up to ``QUEUE_COLLECT_MAX``), marking them with the head's
id and token while they stay pending; the completion finishes exactly those its token still marks.
So a lost lease, a retry or a crash puts the whole batch back as it was.

Writers that add rows to a conversation hold its row (:mod:`zenthor.queue.conversations`): a
completion takes its job row, then the conversation, before the turn's rows are written.

Round trips (issue 13): the claim is a statement prepared once per connection; a completion is
``BEGIN`` + fenced update + conversation lock in one prepared statement, the turn's writes, and
``COMMIT`` with the next-job read, or the hand-over of the next job to the same worker, after it
(``zenthor.db``). A job with one reply costs 4 round trips, a chained one 3.

The statements themselves are in :mod:`zenthor.queue.job_statements`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from peewee import IntegrityError, InterfaceError, OperationalError
from psycopg2.extras import Json

from zenthor.db import (
    Prepared,
    PreparedStatementLost,
    database,
    drop_session,
    execute,
    execute_prepared,
    session_live,
    transaction_then,
)
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue import job_statements as sql
from zenthor.queue.conversations import Route, held_route, lock_conversation, lock_conversations

T = TypeVar("T")


class LeaseLost(Exception):
    """The lease was taken back (expired and requeued, or claimed by another worker)."""

    def __init__(self, job_id: int, operation: str) -> None:
        super().__init__(f"lease on job {job_id} lost during {operation}")
        self.job_id = job_id
        self.operation = operation


@dataclass
class Lease:
    """A claimed job: what a worker holds and must name in every write about the job."""

    job_id: int
    conversation_id: int
    message_id: int | None
    kind: str
    payload: Any
    token: str
    worker_id: str
    attempt: int  # 1-based number of this attempt
    max_attempts: int
    locked_until: datetime
    takeover: bool = False
    # Collect (issue 14): the pending turn jobs behind this one that its turn answers too, merged
    # into it under its token by the claim, and their user messages, both in id order.
    merged_job_ids: tuple[int, ...] = ()
    merged_message_ids: tuple[int, ...] = ()
    queue_mode: str | None = None  # the conversation's mode when it was claimed
    # How long after it was accepted the job became available (debounce; or a retry's backoff).
    waited_ms: int = 0
    # Set by complete(): how many merged jobs it finished with this one (None: not completed).
    answered_merged: int | None = field(default=None, repr=False, compare=False)
    # Set when the holder starts to complete, fail or release: a heartbeat racing with that
    # write must not report the lease as lost.
    finishing: bool = False
    # Set by complete(): the conversation's oldest pending job (None: there is none), read right
    # after the commit in the commit's round trip; next_job_read says whether it was read. With
    # ``chain_to``, ``chained`` is that job when the same round trip also claimed it for us.
    next_job_read: bool = field(default=False, repr=False, compare=False)
    next_job_id: int | None = field(default=None, repr=False, compare=False)
    chained: Lease | None = field(default=None, repr=False, compare=False)
    _lost: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def lost(self) -> bool:
        """True once a heartbeat or write found the lease gone."""
        return self._lost.is_set()

    def mark_lost(self, operation: str) -> None:
        """Record that the lease is gone; the turn stops at its next checkpoint."""
        if not self._lost.is_set():
            self._lost.set()
            emit(ev.LEASE_LOST, job_id=self.job_id, lease_token=self.token, operation=operation)

    def check(self, checkpoint: str = "checkpoint") -> None:
        """Raise :class:`LeaseLost` if the lease is gone (call before each model or tool call)."""
        if self._lost.is_set():
            raise LeaseLost(self.job_id, checkpoint)

    @property
    def reply_to(self) -> int | None:
        """The user message the turn's reply answers: the newest one it read (the highest id:
        ids follow acceptance order; a job's own message may be older than its id, as a retry's)."""
        return max(self.message_ids, default=None)

    @property
    def message_ids(self) -> tuple[int, ...]:
        """Every user message the turn answers, in order (the head's, then the merged ones)."""
        head = (self.message_id,) if self.message_id is not None else ()
        return head + self.merged_message_ids

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now fails the job for good."""
        return self.attempt >= self.max_attempts


@dataclass(frozen=True)
class ClaimRefused:
    """Why a claim did not take the job (nothing was written)."""

    job_id: int
    reason: str  # not_found | finished | not_yet_available | held | conversation_busy | attempts_exhausted
    holder: str | None = None
    conversation_id: int | None = None
    available_in_ms: int | None = None  # for not_yet_available: how long until it is, by the DB clock


@dataclass(frozen=True)
class FailOutcome:
    """What :func:`fail` did: scheduled a retry after ``delay_ms``, or failed the job for good."""

    final: bool
    attempts: int
    delay_ms: int = 0


@dataclass(frozen=True)
class StaleJob:
    """A job whose lease expired and that :func:`requeue_stale` took back."""

    job_id: int
    conversation_id: int
    status: str  # pending (will be retried) or failed (its last attempt)
    attempts: int
    message_id: int | None


def _settings():
    from zenthor.settings import get_settings

    return get_settings()


# How long a fenced write that found its session gone is retried on fresh connections: long
# enough for a Postgres restart, far shorter than a lease.
RECONNECT_BUDGET_S = 15.0


def on_live_session(
    write: Callable[[], T], *, operation: str, job_id: int | None = None, budget_s: float = RECONNECT_BUDGET_S
) -> T:
    """Run ``write`` (one fenced statement or one transaction); when it fails because this
    thread's session is gone, run it again on a fresh connection, with backoff, for up to
    ``budget_s``.

    A thread keeps its pooled connection between messages, so after a Postgres restart the first
    statement of every thread fails. For a claim that only costs a Dramatiq retry, but a turn that
    failed to complete would keep its lease, unrenewed, until the lease expired. Only for writes
    fenced by a lease token, outside any transaction: if the lost attempt did commit, the retry
    matches nothing and reports the lease lost, so nothing is written twice.
    """
    deadline = time.monotonic() + budget_s
    delay = 0.0
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as error:
            if database.in_transaction() or session_live() or time.monotonic() + delay > deadline:
                raise
            if delay == 0.0:
                emit(
                    ev.DATABASE_UNAVAILABLE,
                    _level=logging.WARNING,
                    operation=operation,
                    job_id=job_id,
                    error=f"session lost, retrying on a fresh connection: {str(error)[:160]}",
                )
            drop_session(idle_too=True)
            time.sleep(delay)
            delay = min(max(delay * 2, 0.1), 2.0)


def enqueue_job(
    conversation_id: int,
    message_id: int | None,
    *,
    kind: str = "turn",
    payload: Any = None,
    max_attempts: int | None = None,
) -> int:
    """Insert a pending job (inside the caller's transaction); the caller publishes after commit."""
    return enqueue(conversation_id, message_id, kind=kind, payload=payload, max_attempts=max_attempts).job_id


@dataclass(frozen=True)
class Enqueued:
    """A job just inserted, and whether it waits behind another job of its conversation."""

    job_id: int
    # An older pending job or a processing one goes first (read in the INSERT's own snapshot).
    # Inside a transaction that holds the conversation's lock (accept), that job is certain to
    # nudge or chain this one when it finishes: every way a processing job ends either leaves it
    # ahead (retry, release, requeue) or reads the next job after a commit that took the
    # conversation's lock after ours. So a job behind needs no dispatch nudge of its own.
    behind: bool
    # With a debounce (issue 14): how long until the job may be claimed, by the database's clock;
    # its nudge is published with this delay.
    delay_ms: int = 0


def enqueue(
    conversation_id: int,
    message_id: int | None,
    *,
    kind: str = "turn",
    payload: Any = None,
    max_attempts: int | None = None,
    debounce_ms: int = 0,
    debounce_max_ms: int = 0,
) -> Enqueued:
    """Insert a pending job (inside the caller's transaction) and say whether it waits behind
    another job of its conversation; the caller publishes after commit (see :class:`Enqueued`).

    With ``debounce_ms`` (a ``turn`` only), the conversation's pending turns wait for that long a
    quiet, at most ``debounce_max_ms`` after the oldest of them arrived (``Enqueued.delay_ms``)."""
    debounced = kind == "turn" and debounce_ms > 0
    rows = execute(
        sql.ENQUEUE_DEBOUNCED if debounced else sql.ENQUEUE,
        {
            "conversation_id": conversation_id,
            "message_id": message_id,
            "kind": kind,
            "payload": Json(payload) if payload is not None else None,
            "max_attempts": max_attempts or _settings().AGENT_JOB_MAX_ATTEMPTS,
            "debounce_ms": debounce_ms,
            "max_ms": max(debounce_max_ms, debounce_ms),
        },
    )
    job_id, behind, delay_ms = rows[0]
    emit(ev.JOB_ENQUEUED, job_id=job_id, conversation_id=conversation_id, kind=kind)
    if debounced:
        emit(ev.JOB_DEBOUNCED, job_id=job_id, conversation_id=conversation_id, delay_ms=delay_ms)
    return Enqueued(job_id, bool(behind), int(delay_ms))


def _collect_params(settings: Any) -> dict[str, Any]:
    """The parameters a claim needs to merge a batch (job_statements.MERGE_BEHIND)."""
    return {
        "modes": json.dumps(settings.channel_queue_modes),
        "mode": settings.QUEUE_MODE,
        "collect_max": settings.QUEUE_COLLECT_MAX,
    }


def claim(job_id: int, worker_id: str, *, lock_ms: int | None = None) -> Lease | ClaimRefused:
    """Take job ``job_id`` for ``worker_id`` with a new lease token, or say why not.

    Atomic: of any number of concurrent claims at most one returns a :class:`Lease`. Takes over
    an expired lease (counting the lost attempt); refuses a live lease, a job not yet available,
    and a job with an older open job in its conversation (FIFO). In a conversation that collects
    (issue 14), the same statement merges the turn jobs queued behind it into the lease
    (``Lease.merged_job_ids``): its turn answers them all.
    """
    settings = _settings()
    params = {
        "job_id": job_id,
        "worker": worker_id,
        "token": str(uuid.uuid4()),
        "lock_ms": lock_ms or settings.AGENT_JOB_LOCK_MS,
        "legacy_ms": settings.AGENT_JOB_LEGACY_WINDOW_MS,
        **_collect_params(settings),
    }
    try:
        rows = execute_prepared(sql.CLAIM_PREPARED, params)
    except IntegrityError:
        # Another job of this conversation became processing between our check and our write:
        # the partial unique index refused us (I2).
        return ClaimRefused(job_id, "conversation_busy")
    if not rows:
        return _why_refused(params)
    row = rows[0]
    return _claimed(row[:12], params["token"], worker_id, takeover=row[12] == "processing")


def _claimed(row: tuple, token: str, worker_id: str, *, takeover: bool = False) -> Lease:
    """The lease for a claimed row ``(id, conversation_id, message_id, kind, payload, attempts,
    max_attempts, locked_until, merged job ids, merged message ids, mode, waited_ms)``, announced."""
    lease = _lease_of(row, token, worker_id, takeover=takeover)
    announce_claim(lease)
    return lease


def _lease_of(row: tuple, token: str, worker_id: str, *, takeover: bool = False) -> Lease:
    return Lease(
        job_id=row[0],
        conversation_id=row[1],
        message_id=row[2],
        kind=row[3],
        payload=row[4],
        token=token,
        worker_id=worker_id,
        attempt=row[5] + 1,
        max_attempts=row[6],
        locked_until=row[7],
        takeover=takeover,
        merged_job_ids=tuple(row[8] or ()),
        merged_message_ids=tuple(m for m in row[9] or () if m is not None),
        queue_mode=row[10],
        waited_ms=row[11] or 0,
    )


def announce_claim(lease: Lease, *, chained: bool = False) -> None:
    """Emit the claim of ``lease``; a chained one is announced by its worker after the completion
    that handed it over, so the log reads in the order things happened."""
    emit(
        ev.JOB_CLAIMED,
        job_id=lease.job_id,
        conversation_id=lease.conversation_id,
        attempt=lease.attempt,
        lease_token=lease.token,
        takeover=lease.takeover,
        chained=chained,
        merged=len(lease.merged_job_ids),
        mode=lease.queue_mode,
    )


def _why_refused(params: dict[str, Any]) -> ClaimRefused:
    rows = execute(sql.WHY_REFUSED, params)
    job_id = params["job_id"]
    if not rows:
        return ClaimRefused(job_id, "not_found")
    status, available, expired, available_in_ms, attempts_left, holder, conversation_id, older_open = rows[0]
    if status in ("done", "failed", "awaiting_approval"):
        reason = "finished" if status != "awaiting_approval" else "awaiting_approval"
    elif status == "processing" and not expired:
        reason = "held"
        emit(ev.LEASE_CONTENDED, job_id=job_id, conversation_id=conversation_id, holder=holder)
    elif status == "processing" and not attempts_left:
        reason = "attempts_exhausted"
    elif older_open:
        reason = "conversation_busy"
    elif status == "pending" and not available:
        return ClaimRefused(
            job_id, "not_yet_available", conversation_id=conversation_id, available_in_ms=available_in_ms
        )
    else:
        reason = "conversation_busy"  # lost a race that the snapshot no longer shows
    return ClaimRefused(job_id, reason, holder=holder, conversation_id=conversation_id)


def heartbeat(leases: Iterable[Lease], *, lock_ms: int | None = None, db: Any = None) -> list[Lease]:
    """Extend every lease in ``leases`` in one statement (on ``db``, a pool of the heartbeat's
    own, else the main one); returns (and marks) the ones lost."""
    held = [lease for lease in leases if not lease.lost]
    if not held:
        return []
    rows = execute(
        sql.HEARTBEAT,
        (
            lock_ms or _settings().AGENT_JOB_LOCK_MS,
            [lease.job_id for lease in held],
            [lease.token for lease in held],
        ),
        db=db,
    )
    alive = {row[0] for row in rows}
    lost = [lease for lease in held if lease.job_id not in alive and not lease.finishing]
    for lease in lost:
        lease.mark_lost("heartbeat")
    if alive:
        emit(ev.JOB_HEARTBEAT, job_ids=sorted(alive), count=len(alive))
    return lost


def complete(
    lease: Lease,
    *,
    status: str = "done",
    write: Callable[[Lease], T] | None = None,
    chain_to: str | None = None,
) -> T | None:
    """Finish the job and run ``write`` (the turn's messages and outbox rows) in one transaction.

    ``status`` is ``done`` or ``awaiting_approval`` (the turn waits for the user; the lease ends
    either way). Raises :class:`LeaseLost`, writing nothing, when the token is stale. A session
    cut under it (Postgres restarted) is retried on a fresh connection (:func:`on_live_session`).

    Round trips: ``BEGIN`` + the fenced update + the conversation's lock and route (one
    statement), what ``write`` sends, then ``COMMIT`` + the conversation's next pending job, read
    after the commit into ``lease.next_job_id`` (``lease.next_job_read`` is then True). With
    ``chain_to`` (a worker id), that same statement also claims the next job for that worker when
    it is available (``lease.chained``): the worker goes on with it, with no broker hop and no
    claim of its own.
    """
    if status not in ("done", "awaiting_approval"):
        raise ValueError(f"complete() takes status done or awaiting_approval, not {status!r}")
    lease.check("complete")
    lease.finishing = True

    params = {
        "job_id": lease.job_id,
        "token": lease.token,
        "status": status,
        "merged": list(lease.merged_job_ids),
    }
    hand_over_token: str | None = None
    if chain_to is None:
        then: tuple[str | Prepared, Any] = (sql.NEXT_PENDING, (lease.conversation_id,))
    else:
        hand_over_token = str(uuid.uuid4())
        next_params = {
            "conversation_id": lease.conversation_id,
            "worker": chain_to,
            "token": hand_over_token,
            "lock_ms": _settings().AGENT_JOB_LOCK_MS,
            **_collect_params(_settings()),
        }
        then = (sql.CLAIM_NEXT_PREPARED, next_params)

    def complete_once() -> T | None:
        # The next-job probe rides on the COMMIT's round trip and still runs after the commit: a
        # job accepted while we held the conversation commits after us, so its own nudge finds
        # this job finished, and one accepted before is seen here.
        committing = False
        try:
            with transaction_then(*then) as after:
                result = _complete_in_transaction(lease, params, write)
                committing = True
        except IntegrityError as error:
            if not (committing and chain_to is not None and _constraint(error) == sql.ONE_PROCESSING_INDEX):
                raise
            # The COMMIT went through; the hand-over after it lost a race with another claim in
            # this conversation, which now holds it and nudges what follows.
            lease.next_job_id, lease.next_job_read = None, True
            return result
        except (OperationalError, InterfaceError, PreparedStatementLost):
            # Around the COMMIT: cancelled, cut, or lost after it went through. Ask the database
            # (our token stays on the finished row); if it committed, give back whatever the
            # hand-over may have claimed and let the caller read the next job itself.
            if not committing or not _completion_committed(lease):
                raise
            if hand_over_token is not None:
                _release_hand_over(lease.conversation_id, hand_over_token)
            lease.next_job_id, lease.next_job_read = None, False
            return result
        row = after.rows[0] if after.rows else None
        lease.next_job_id = row[0] if row else None
        lease.next_job_read = True
        if row is not None and len(row) > 1 and row[1] is not None:
            lease.chained = _lease_of(row[1:], hand_over_token, chain_to)  # announced by its worker
        return result

    try:
        try:
            return on_live_session(complete_once, operation="complete", job_id=lease.job_id)
        except PreparedStatementLost:
            # The session lost its prepared statements (reset under us, or a migration made a
            # plan stale) before the COMMIT: the transaction rolled back having written nothing;
            # once more, prepared afresh.
            return on_live_session(complete_once, operation="complete", job_id=lease.job_id)
    except LeaseLost:
        raise  # before the COMMIT: no hand-over ran
    except BaseException:
        # Anything that escapes (a Shutdown or time limit raised into the thread mid-statement,
        # a lost lease) must not leave a hand-over claimed for a worker that will not run it.
        if hand_over_token is not None and lease.chained is None:
            _release_hand_over(lease.conversation_id, hand_over_token)
        raise


def completion_committed(lease: Lease) -> bool:
    """Whether :func:`complete` committed for ``lease``: for its caller when something (a time
    limit, a shutdown) was raised into the thread while it ran."""
    if not lease.finishing:
        return False
    try:
        return _completion_committed(lease)
    except (OperationalError, InterfaceError):
        return False


def _completion_committed(lease: Lease) -> bool:
    """Whether this lease's completion committed, asked on a live session (a completion leaves
    its token on the row; a takeover would have replaced it)."""
    if not session_live():
        drop_session(idle_too=True)
    params = {"job_id": lease.job_id, "token": lease.token}
    rows = on_live_session(lambda: execute(sql.COMMITTED, params), operation="complete", job_id=lease.job_id)
    return bool(rows and rows[0][0])


def _release_hand_over(conversation_id: int, token: str) -> None:
    """Give back the job a hand-over claimed under ``token``, if it did (best effort: if this
    fails too, its lease expires and the sweep takes it back)."""
    try:
        if not session_live():
            drop_session(idle_too=True)
        rows = execute(sql.RELEASE_HAND_OVER, {"conversation_id": conversation_id, "token": token})
    except Exception:  # noqa: BLE001 - already on an error path
        return
    for (job_id,) in rows:
        emit(ev.JOB_RELEASED, job_id=job_id, conversation_id=conversation_id, reason="hand_over_undone")


def _constraint(error: Exception) -> str | None:
    """The constraint a Postgres integrity error names (None when it names none)."""
    diag = getattr(getattr(error, "orig", None), "diag", None) or getattr(error, "diag", None)
    return getattr(diag, "constraint_name", None)


def _complete_in_transaction(
    lease: Lease, params: dict[str, Any], write: Callable[[Lease], T] | None
) -> T | None:
    # The fenced update comes first: it locks the row, so a concurrent takeover waits for us and
    # then finds the job finished. Its BEGIN travels with it (zenthor.db.ZenthorDatabase). Then,
    # in the same statement, the conversation, before anything the turn writes: its outbox rows
    # commit in id order (I5), the approvals it supersedes are locked after the conversation, as
    # accept locks them, so the two cannot deadlock, and an accept of this conversation waits for
    # our commit, which the next-job read after it then sees (queue.Enqueued's promise): so also
    # when nothing is written.
    rows = execute_prepared(sql.COMPLETE_AND_HOLD_PREPARED, params, in_transaction=True)
    if not rows:
        lease.mark_lost("complete")
        raise LeaseLost(lease.job_id, "complete")
    conversation_id, channel, account_id, chat_id, answered = rows[0]
    lease.answered_merged = answered
    if channel is not None:  # the replies' lock_route answers from here, without a round trip
        held_route(conversation_id, Route(channel, account_id, chat_id))
    return write(lease) if write is not None else None


def retry_delay_ms(attempts: int) -> int:
    """Exponential backoff with jitter for the ``attempts``-th failed attempt."""
    settings = _settings()
    base = settings.AGENT_JOB_RETRY_BASE_MS * (2 ** max(attempts - 1, 0))
    return int(min(base, settings.AGENT_JOB_RETRY_MAX_MS) * random.uniform(0.8, 1.2))


def fail(
    lease: Lease,
    *,
    reason: str,
    message: str,
    retry: bool = True,
    on_final: Callable[[Lease], Any] | None = None,
) -> FailOutcome:
    """End this attempt: schedule a retry through ``available_at``, or fail the job for good.

    With ``retry=False`` or on the last attempt the job becomes ``failed`` and ``on_final`` (the
    user's failure reply) runs in the same transaction. Raises :class:`LeaseLost` when stale.
    A session cut under it is retried on a fresh connection, like :func:`complete`.
    """
    params = {"job_id": lease.job_id, "token": lease.token, "reason": reason, "message": message[:2000]}
    lease.finishing = True

    def fail_once() -> FailOutcome:
        with database.atomic():
            if retry and not lease.is_last_attempt:
                params["delay_ms"] = retry_delay_ms(lease.attempt)
                rows = execute(sql.RETRY, params)
                if rows:
                    return FailOutcome(final=False, attempts=rows[0][0], delay_ms=params["delay_ms"])
            rows = execute(sql.FAIL, params)
            if not rows:
                lease.mark_lost("fail")
                raise LeaseLost(lease.job_id, "fail")
            if on_final is not None:
                on_final(lease)
            return FailOutcome(final=True, attempts=rows[0][0])

    outcome = on_live_session(fail_once, operation="fail", job_id=lease.job_id)
    if outcome.final:
        emit(
            ev.JOB_FAILED,
            job_id=lease.job_id,
            conversation_id=lease.conversation_id,
            attempts=outcome.attempts,
            error_reason=reason,
            error_message=message[:200],
        )
    else:
        emit(
            ev.JOB_RETRY_SCHEDULED,
            job_id=lease.job_id,
            conversation_id=lease.conversation_id,
            attempts=outcome.attempts,
            delay_ms=outcome.delay_ms,
            error_reason=reason,
        )
    return outcome


def release(lease: Lease, *, reason: str, db: Any = None) -> bool:
    """Give the job back at once (warm shutdown), without counting an attempt; on ``db`` (the
    heartbeat's own pool at shutdown) else the main pool."""
    if lease.lost:
        return False
    lease.finishing = True
    released = bool(execute(sql.RELEASE, {"job_id": lease.job_id, "token": lease.token}, db=db))
    if released:
        # This process gave the job up (no "lease lost" event): any later write by it must fail.
        lease._lost.set()
        emit(ev.JOB_RELEASED, job_id=lease.job_id, conversation_id=lease.conversation_id, reason=reason)
    return released


def release_after_lost_session(lease: Lease) -> bool:
    """Give the job back at once after its turn failed because this thread's session was cut
    (Postgres restarted, or the session was terminated): released on a fresh connection, no
    attempt counted, so it is taken again now rather than after its lease expires; the caller
    re-publishes it. False, changing nothing, when the session is alive (a statement that failed
    on a live session keeps the lease until it expires, so a turn that keeps failing that way
    cannot loop without counting attempts), when the database is still away, or when the job's
    previous attempt was released this way too (then its lease expires and an attempt is counted:
    a turn that itself cuts its session, e.g. through a proxy's timeout, ends after its attempts).
    """
    if lease.lost or lease.finishing or session_live():
        return False
    drop_session(idle_too=True)

    def release_once() -> bool:
        return bool(execute(sql.RELEASE_SESSION_LOST, {"job_id": lease.job_id, "token": lease.token}))

    lease.finishing = True
    try:
        released = on_live_session(release_once, operation="release", job_id=lease.job_id)
    except (OperationalError, InterfaceError):
        return False
    if released:
        lease._lost.set()  # given up: any later write by this process must fail
        emit(
            ev.JOB_RELEASED, job_id=lease.job_id, conversation_id=lease.conversation_id, reason="session_lost"
        )
    return released


def requeue_stale(*, limit: int = 500, on_failed: Callable[[StaleJob], Any] | None = None) -> list[StaleJob]:
    """Take back jobs whose lease expired: pending again with attempts + 1, or ``failed`` with
    reason ``stale_lease`` after the last attempt (``on_failed`` runs in the same transaction).
    """
    params = {"limit": limit, "legacy_ms": _settings().AGENT_JOB_LEGACY_WINDOW_MS}
    with database.atomic():
        stale = [StaleJob(*row) for row in execute(sql.REQUEUE_STALE, params)]
        failed = [job for job in stale if job.status == "failed"]
        if failed and on_failed is not None:
            # Their conversations in id order, before the first failure reply (see complete()).
            lock_conversations(job.conversation_id for job in failed)
            for job in failed:
                on_failed(job)
    for job in stale:
        if job.status == "failed":
            emit(
                ev.JOB_FAILED,
                job_id=job.job_id,
                conversation_id=job.conversation_id,
                attempts=job.attempts,
                error_reason="stale_lease",
                error_message="lease expired on the last attempt",
            )
        else:
            emit(
                ev.JOB_REQUEUED,
                job_id=job.job_id,
                conversation_id=job.conversation_id,
                attempts=job.attempts,
                reason="stale_lease",
            )
    return stale


def resume_job(job_id: int, payload: Any) -> bool:
    """Put a job that waits for the user's answer back in line as a ``resume`` (caller's
    transaction; publish after commit). It keeps its place: jobs still pending behind it wait for
    it (one already processing finishes first). False when the job is not awaiting approval
    (already resumed).
    """
    rows = execute(sql.RESUME, {"job_id": job_id, "payload": Json(payload)})
    if rows:
        emit(ev.JOB_ENQUEUED, job_id=rows[0][0], conversation_id=rows[0][1], kind="resume")
    return bool(rows)


def close_awaiting(job_id: int, reason: str) -> bool:
    """Close a job that waits for the user's answer without running it again (caller's
    transaction): the question was superseded by another message, which starts its own turn.
    False when the job is not awaiting approval
    (resumed or closed by someone else first).
    """
    rows = execute(sql.CLOSE_AWAITING, {"job_id": job_id, "reason": reason})
    if rows:
        emit(ev.JOB_CLOSED, job_id=rows[0][0], conversation_id=rows[0][1], reason=reason)
    return bool(rows)


@dataclass(frozen=True)
class RetryPreview:
    """What :func:`retry_failed` would do with a job, read before it is asked to."""

    job_id: int
    conversation_id: int
    status: str
    error_reason: str | None
    error_message: str | None
    open_ahead: int  # open jobs of the conversation the retry would queue behind
    answered_since: int  # newer turns of the conversation that the user was already answered
    retried_as: int | None = None
    retried_status: str | None = None


@dataclass(frozen=True)
class RetriedJob:
    """A failed job retried as a new job, ``job_id``, at the back of its conversation's line."""

    old_job_id: int
    job_id: int
    conversation_id: int
    open_ahead: int  # open jobs of the conversation ahead of the new one
    kind: str = "turn"


@dataclass(frozen=True)
class RetryRefused:
    """Why a job was not retried (nothing was written); ``str()`` says it to an operator."""

    job_id: int
    reason: str  # not_found | not_failed | already_retried | pruned
    status: str | None = None
    retried_as: int | None = None
    retried_status: str | None = None

    def __str__(self) -> str:
        if self.reason == "not_found":
            return f"job {self.job_id} does not exist"
        if self.reason == "already_retried":
            return f"job {self.job_id} was already retried as job {self.retried_as} ({self.retried_status})"
        if self.reason == "pruned":
            return (
                f"job {self.job_id} can no longer be retried: retention removed its message or approval "
                "(RETENTION_DAYS, MESSAGE_RETENTION_DAYS)"
            )
        return f"job {self.job_id} is {self.status}, not failed (see `zenthor ops status`)"


def retry_preview(job_id: int) -> RetryPreview | None:
    """What a retry of job ``job_id`` would mean for its conversation (None: no such job)."""
    rows = execute(sql.RETRY_PREVIEW, (job_id,))
    if not rows:
        return None
    conversation_id, status, reason, message, open_now, answered, retried_as, retried_status = rows[0]
    return RetryPreview(
        job_id, conversation_id, status, reason, message, open_now, answered, retried_as, retried_status
    )


def retry_failed(job_id: int) -> RetriedJob | RetryRefused:
    """Retry a failed job (an operator's decision) as a new job at the back of its conversation's
    line, in one transaction; publish the new job after. The old job stays ``failed``; its
    messages (but its failure reply) and approvals move to the new job, which records
    ``retry_of``. A job is retried once: a second retry is refused, naming the first.
    """
    try:
        with database.atomic():
            outcome = _retry_in_transaction(job_id)
    except IntegrityError as error:
        driver_error = getattr(error, "orig", None)  # peewee keeps psycopg2's error here
        if getattr(getattr(driver_error, "diag", None), "constraint_name", None) != "agent_job_retry_of_uq":
            raise  # not a race with another retry: say what really went wrong
        # Another retry of this job committed first.
        outcome = retry_refusal(job_id, retry_preview(job_id)) or RetryRefused(job_id, "already_retried")
    if isinstance(outcome, RetriedJob):
        emit(
            ev.JOB_ENQUEUED, job_id=outcome.job_id, conversation_id=outcome.conversation_id, kind=outcome.kind
        )
        emit(
            ev.JOB_RETRIED,
            old_job_id=outcome.old_job_id,
            job_id=outcome.job_id,
            conversation_id=outcome.conversation_id,
            open_ahead=outcome.open_ahead,
        )
    return outcome


def _retry_in_transaction(job_id: int) -> RetriedJob | RetryRefused:
    # The old job first, then its conversation: the order every writer keeps (see complete()).
    rows = execute(sql.RETRY_TARGET, (job_id,))
    if not rows:
        return RetryRefused(job_id, "not_found")
    _, conversation_id, message_id, kind, payload, max_attempts, status = rows[0]
    retried = execute(sql.RETRIED_AS, (job_id,))
    if retried:
        return RetryRefused(job_id, "already_retried", status, retried[0][0], retried[0][1])
    if status != "failed":
        return RetryRefused(job_id, "not_failed", status)
    if message_id is None or (kind == "resume" and not execute(sql.HAS_APPROVAL, (job_id,))):
        return RetryRefused(job_id, "pruned", status)  # retention took what the turn would read
    lock_conversation(conversation_id)  # the new id is drawn in commit order, behind every job
    ((new_id,),) = execute(
        sql.INSERT_RETRY,
        (
            conversation_id,
            message_id,
            kind,
            Json(payload) if payload is not None else None,
            max_attempts,
            job_id,
        ),
    )
    moves = {"new": new_id, "old": job_id, "message": message_id}
    execute(sql.MOVE_MESSAGES, moves)
    execute(sql.MOVE_APPROVALS, moves)
    ((open_ahead,),) = execute(sql.OPEN_AHEAD, (conversation_id, new_id))
    return RetriedJob(job_id, new_id, conversation_id, open_ahead, kind)


def retry_refusal(job_id: int, preview: RetryPreview | None) -> RetryRefused | None:
    """Why :func:`retry_failed` would refuse job ``job_id``, judged from its ``preview`` (None:
    it would retry it)."""
    if preview is None:
        return RetryRefused(job_id, "not_found")
    if preview.retried_as is not None:
        return RetryRefused(
            job_id, "already_retried", preview.status, preview.retried_as, preview.retried_status
        )
    if preview.status != "failed":
        return RetryRefused(job_id, "not_failed", preview.status)
    return None


def republish_candidates(*, grace_ms: int | None = None, limit: int = 1000) -> list[tuple[int, int]]:
    """Pending heads of line nobody claimed within the grace period, as (job_id, conversation_id)."""
    grace = _settings().DISPATCH_REPUBLISH_GRACE_MS if grace_ms is None else grace_ms
    return [
        (row[0], row[1]) for row in execute(sql.REPUBLISH_CANDIDATES, {"grace_ms": grace, "limit": limit})
    ]


def next_pending_job(conversation_id: int) -> int | None:
    """The conversation's next job to nudge: its oldest pending job, if any.

    A job awaiting approval is passed over (it waits for its asker, not for the line); once
    resumed it is pending again and, being older, comes first.
    """
    rows = execute(sql.NEXT_PENDING, (conversation_id,))
    return rows[0][0] if rows else None
