"""The dispatch actor: claim the job a message names, run the turn, complete it token-fenced.

A message is only a nudge. If the job cannot be claimed (done, held by a live lease, behind an
older job of its conversation, unknown) the message is acked and nothing happens. Attempts live
in ``agent_job``; Dramatiq's own retries cover infrastructure errors only (the database or the
broker unreachable), so a failing turn is retried through the table's backoff, never twice at once.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Shutdown, TimeLimitExceeded

from zenthor.actors.publish import DISPATCH_ACTOR, DISPATCH_QUEUE, publish_dispatch, publish_job_deliveries
from zenthor.actors.retry_policy import INFRASTRUCTURE_ERRORS, is_infrastructure_error
from zenthor.agent.replies import WrittenReplies, write_failure_reply, write_replies
from zenthor.agent.turn import TurnContext, TurnError, TurnResult, load_turn
from zenthor.broker import lease_heartbeat
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.observability.metrics import (
    CLAIM_SECONDS,
    DEBOUNCE_HOLD_SECONDS,
    LEASE_LOSSES,
    TURN_MESSAGES,
    TURN_SECONDS,
    TURNS_IN_PROGRESS,
)
from zenthor.queue import (
    ClaimRefused,
    Lease,
    LeaseLost,
    announce_claim,
    claim,
    complete,
    completion_committed,
    fail,
    next_pending_job,
    release,
    release_after_lost_session,
)
from zenthor.settings import get_settings, worker_id

# A job handed over at shutdown is re-published with this delay: a delayed message that the
# stopping worker's own consumer happens to take is held in memory and requeued when that
# consumer closes, instead of being started by a thread of the dying process.
HANDOVER_DELAY_MS = 1000


def hand_over(job_id: int) -> bool:
    """Re-publish a job this stopping process gave back, for another worker to take."""
    return publish_dispatch(job_id, delay_ms=HANDOVER_DELAY_MS)


def parse_job_id(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The job id a dispatch message names; ValueError naming the problem otherwise."""
    if kwargs or len(args) != 1:
        raise ValueError(f"dispatch takes exactly one job id, got args={args!r} kwargs={kwargs!r}")
    value = args[0]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"job id must be an integer, got {type(value).__name__}")
    try:
        job_id = int(value)
    except ValueError:
        raise ValueError(f"job id must be an integer, got {value!r}") from None
    if job_id <= 0:
        raise ValueError(f"job id must be positive, got {job_id}")
    return job_id


@dramatiq.actor(
    actor_name=DISPATCH_ACTOR,
    queue_name=DISPATCH_QUEUE,
    max_retries=10,
    retry_when=is_infrastructure_error,
    time_limit=get_settings().DISPATCH_TIME_LIMIT_MS,
    notify_shutdown=True,
)
def dispatch(*args: Any, **kwargs: Any) -> None:
    """Run the job named by the message, if this worker may take it now."""
    try:
        job_id = parse_job_id(args, kwargs)
    except ValueError as error:
        current = CurrentMessage.get_current_message()
        emit(ev.DISPATCH_BAD_MESSAGE, message_id=current.message_id if current else None, error=str(error))
        return
    process_job(job_id)


def process_job(job_id: int) -> str:
    """Claim, run and complete one job, then the chain of its conversation's next jobs handed
    over by each completion; returns what happened to job ``job_id`` (for logs and tests)."""
    if lease_heartbeat.stopping:
        # This process is shutting down but its consumer still takes messages: hand the job to
        # another worker instead of starting a turn we would abandon.
        hand_over(job_id)
        emit(ev.JOB_CLAIM_REFUSED, job_id=job_id, reason="worker_stopping")
        return "refused:worker_stopping"
    started = time.monotonic()
    try:
        outcome = claim(job_id, worker_id())
    except INFRASTRUCTURE_ERRORS as error:
        emit(ev.DATABASE_UNAVAILABLE, operation="claim", job_id=job_id, error=str(error)[:200])
        raise  # Dramatiq retries the message with backoff; the sweep covers the rest
    CLAIM_SECONDS.observe(time.monotonic() - started)
    if isinstance(outcome, ClaimRefused):
        if outcome.reason == "not_found":
            emit(ev.JOB_NOT_FOUND, job_id=job_id)
        else:
            emit(ev.JOB_CLAIM_REFUSED, job_id=job_id, reason=outcome.reason)
        if outcome.reason == "not_yet_available" and outcome.available_in_ms is not None:
            # A delayed retry arrived early (the publisher's clock runs ahead of the database's):
            # ask again when the database says the job is available.
            publish_dispatch(job_id, delay_ms=outcome.available_in_ms + 50)
        return f"refused:{outcome.reason}"
    chain = _Chain(started)
    what, lease = _run_held(outcome, chain)
    while lease is not None:
        _, lease = _run_held(lease, chain)
    return what


class _Chain:
    """How far this dispatch message's chain went: it may hand over one more job while it is
    below ``AGENT_JOB_CHAIN_MAX_JOBS`` jobs and ``AGENT_JOB_CHAIN_MAX_MS`` since the message
    started, so a busy conversation cannot keep a thread from the others for long (and a chained
    turn keeps nearly all of the message's time limit)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.job_started = started  # the current job's: its claim, or the completion that chained it
        self.jobs = 0

    def next_worker(self) -> str | None:
        """The worker id to hand the next job to, or None when the chain ends here."""
        self.jobs += 1
        settings = get_settings()
        if lease_heartbeat.stopping or self.jobs >= settings.AGENT_JOB_CHAIN_MAX_JOBS:
            return None
        if (time.monotonic() - self.started) * 1000 >= settings.AGENT_JOB_CHAIN_MAX_MS:
            return None
        return worker_id()


def _run_held(lease: Lease, chain: _Chain) -> tuple[str, Lease | None]:
    """Run one claimed job under the heartbeat; returns what happened and the job handed over."""
    if lease.waited_ms and lease.attempt == 1 and lease.kind == "turn" and not lease.takeover:
        DEBOUNCE_HOLD_SECONDS.observe(lease.waited_ms / 1000)
    lease_heartbeat.hold(lease)
    TURNS_IN_PROGRESS.inc()
    try:
        if lease_heartbeat.stopping:
            # The shutdown began between the check above and the claim, after the heartbeat
            # middleware released what it held: give this one back too.
            if release(lease, reason="shutdown"):
                hand_over(lease.job_id)
            return "released", None
        return _run_claimed(lease, chain)
    finally:
        TURNS_IN_PROGRESS.dec()
        lease_heartbeat.drop()


def _run_claimed(lease: Lease, chain: _Chain) -> tuple[str, Lease | None]:
    turn = load_turn(get_settings().AGENT_TURN)
    try:
        result = turn(TurnContext(lease))
        if not isinstance(result, TurnResult):
            raise TurnError("format", f"turn returned {type(result).__name__}, not TurnResult")
        written = complete(
            lease,
            status=result.status,
            write=lambda held: _write_result(held, result),
            chain_to=chain.next_worker(),
        )
    except LeaseLost:
        # Another worker owns the job now; we wrote nothing and must not touch it (the event was
        # emitted when the lease was found lost).
        LEASE_LOSSES.labels(lease="agent_job").inc()
        return "lease_lost", None
    except Shutdown:
        # Warm shutdown: give the job back at once so another worker takes it without waiting.
        if release(lease, reason="shutdown"):
            hand_over(lease.job_id)
        elif not lease.lost and completion_committed(lease):
            _after_interrupted_completion(lease)
        return "released", None
    except INFRASTRUCTURE_ERRORS as error:
        emit(ev.DATABASE_UNAVAILABLE, operation="turn", job_id=lease.job_id, error=str(error)[:200])
        # A cut session (Postgres restarted): give the job back now, on a fresh connection, and
        # nudge it. Otherwise the lease stays ours until it expires; the sweep then requeues it.
        if release_after_lost_session(lease):
            publish_dispatch(lease.job_id)
        return "database_unavailable", None
    except TimeLimitExceeded:
        if completion_committed(lease):
            # The limit struck while the completion committed: the job is done, not failed.
            _after_interrupted_completion(lease)
            return result.status, None
        return _fail(lease, TurnError("time_limit", "the turn exceeded its time limit")), None
    except TurnError as error:
        return _fail(lease, error), None
    except Exception as error:  # noqa: BLE001 - a bug in a turn must not lose the job
        return _fail(lease, TurnError("turn_error", f"{type(error).__name__}: {error}")), None
    try:
        _report_finished(lease, result, written, chain)
    except BaseException:
        # A Shutdown or time limit raised into this thread after the commit: the job handed over
        # will not run here; give it back for another worker now rather than at lease expiry.
        if lease.chained is not None:
            _hand_back(lease.chained)
        raise
    return result.status, lease.chained


def _after_interrupted_completion(lease: Lease) -> None:
    """A Shutdown or time limit was raised into the thread while ``complete()`` committed: the job
    is done. A job its hand-over claimed will not run here: give it back and hand it over; else
    nudge the conversation's next job (the replies' delivery nudge is left to the outbox sweep:
    which rows the turn wrote is not known here)."""
    if lease.chained is not None:
        _hand_back(lease.chained)
        return
    lease.next_job_read = False
    _after_finish(lease, None)


def _hand_back(chained: Lease) -> None:
    """Give back a job handed over to this thread that it will not run, for another worker."""
    if release(chained, reason="shutdown"):
        hand_over(chained.job_id)


def _report_finished(lease: Lease, result: TurnResult, written: WrittenReplies, chain: _Chain) -> None:
    duration = time.monotonic() - chain.job_started
    TURN_SECONDS.observe(duration)
    answered = 1 + (lease.answered_merged or 0)
    TURN_MESSAGES.observe(answered)
    emit(
        ev.JOB_COMPLETED,
        job_id=lease.job_id,
        conversation_id=lease.conversation_id,
        status=result.status,
        duration_ms=int(duration * 1000),
        answered=answered,
    )
    if lease.chained is not None:
        announce_claim(lease.chained, chained=True)
        chain.job_started = time.monotonic()
    _after_finish(lease, written)


def _write_result(lease: Lease, result: TurnResult) -> WrittenReplies:
    if result.write is not None:
        result.write(lease)
    return write_replies(
        lease.conversation_id,
        lease.job_id,
        result.replies,
        in_reply_to=lease.reply_to,
        kind=result.reply_kind,
    )


def _fail(lease: Lease, error: TurnError) -> str:
    emit(
        ev.TURN_ERROR,
        job_id=lease.job_id,
        conversation_id=lease.conversation_id,
        error_reason=error.reason,
        error=str(error)[:200],
        retryable=error.retryable,
    )
    written = WrittenReplies()

    def failure_reply(held: Lease) -> None:
        nonlocal written
        written = write_failure_reply(held.conversation_id, held.job_id, in_reply_to=held.message_id)

    try:
        outcome = fail(
            lease, reason=error.reason, message=str(error), retry=error.retryable, on_final=failure_reply
        )
    except LeaseLost:
        LEASE_LOSSES.labels(lease="agent_job").inc()
        return "lease_lost"
    except INFRASTRUCTURE_ERRORS as db_error:
        emit(ev.DATABASE_UNAVAILABLE, operation="fail", job_id=lease.job_id, error=str(db_error)[:200])
        return "database_unavailable"
    if not outcome.final:
        publish_dispatch(lease.job_id, delay_ms=outcome.delay_ms)
        return "retry_scheduled"
    _after_finish(lease, written)
    return "failed"


def _after_finish(lease: Lease, written: WrittenReplies | None) -> None:
    """After commit: deliver the replies, and nudge the conversation's next job at once.

    One delivery nudge per job (its first row; the deliver actor nudges each next row of the
    conversation as it sends one). The next job was read in the completion's COMMIT round trip
    (``lease.next_job_read``); after a final failure it is read here. The job is already finished
    here; if a warm shutdown interrupts these nudges, the outbox and dispatch sweeps re-publish
    what was missed, so the message is still acked as done.
    """
    try:
        if written is not None and written.outbound_ids:
            publish_job_deliveries(written.outbound_ids, written.channel)
        if lease.chained is not None:
            return  # this worker goes on with it: no nudge
        next_job = lease.next_job_id if lease.next_job_read else next_pending_job(lease.conversation_id)
        if next_job is not None:
            publish_dispatch(next_job)
    except Shutdown:
        pass
