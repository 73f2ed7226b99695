"""Every lease statement on ``outbound_message`` (the outbox): claim, mark sent, retry, fail,
requeue stuck rows. Nothing else writes its lease columns (invariant I5, docs/architecture.md).

A row moves ``pending ▸ sending ▸ sent``. A claim hands out a fresh ``lease_token`` and counts an
attempt; every later write names the token, so a sender whose lease expired (and whose row was
taken back) changes nothing. A row already ``sent`` (or ``failed``) is never claimed again.

The provider message id is derived from the row (``zenthor-out-<id>``) and set at the first
claim, so every retry of the row sends the same id and the receiver can dedupe.

Order: a row is claimed only when no older row of its conversation is still pending or sending,
so one chat's replies go out in the order they were written. Every writer holds the conversation
row until it commits (:mod:`zenthor.queue.conversations`), so a conversation's rows commit in id
order: no older row can still be uncommitted when that check runs.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from zenthor.db import database, execute
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue.jobs import on_live_session

PROVIDER_ID_PREFIX = "zenthor-out-"

_CLAIM = """
UPDATE outbound_message AS o
   SET status = 'sending',
       processor_id = %(worker)s,
       lease_token = %(token)s::uuid,
       locked_until = now() + %(lock_ms)s * interval '1 millisecond',
       attempts = o.attempts + 1,
       provider_message_id = coalesce(o.provider_message_id, %(prefix)s || o.id::text)
 WHERE o.id = %(id)s
   AND (   (o.status = 'pending' AND o.available_at <= now())
        OR (o.status = 'sending' AND o.locked_until < now() AND o.attempts < %(max_attempts)s))
   AND NOT EXISTS (
        SELECT 1 FROM outbound_message AS older
         WHERE older.conversation_id = o.conversation_id AND older.id < o.id
           AND older.status IN ('pending', 'sending'))
RETURNING o.id, o.conversation_id, o.job_id, o.in_reply_to, o.channel, o.account_id, o.chat_id,
          o.text, o.attempts, o.provider_message_id
"""

_WHY_REFUSED = """
SELECT o.status, o.available_at <= now(), o.locked_until < now(),
       EXISTS (SELECT 1 FROM outbound_message AS older
                WHERE older.conversation_id = o.conversation_id AND older.id < o.id
                  AND older.status IN ('pending', 'sending'))
  FROM outbound_message AS o WHERE o.id = %s
"""

_FENCE = "o.id = %(id)s AND o.lease_token = %(token)s::uuid AND o.status = 'sending'"

_MARK_SENT = f"""
UPDATE outbound_message AS o
   SET status = 'sent', sent_at = now(), locked_until = NULL, last_error = NULL
 WHERE {_FENCE}
RETURNING o.id
"""

_RETRY = f"""
UPDATE outbound_message AS o
   SET status = 'pending', locked_until = NULL, lease_token = NULL, last_error = %(error)s,
       available_at = now() + %(delay_ms)s * interval '1 millisecond'
 WHERE {_FENCE}
RETURNING o.id
"""

_FAIL = f"""
UPDATE outbound_message AS o
   SET status = 'failed', locked_until = NULL, last_error = %(error)s
 WHERE {_FENCE}
RETURNING o.id
"""

# Expired sending leases: back to pending (another try) or failed (no tries left). WhatsApp rows
# are not the sweep's: only the account's owner may decide a row's fate (see channel_outbox).
_REQUEUE_EXPIRED = """
WITH expired AS (
    SELECT o.id FROM outbound_message AS o
     WHERE o.status = 'sending' AND o.locked_until < now() AND o.channel <> 'whatsapp'
     ORDER BY o.id LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE outbound_message AS o
   SET status = CASE WHEN o.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
       available_at = now(), locked_until = NULL, lease_token = NULL,
       last_error = coalesce(o.last_error, 'sending lease of ' || coalesce(o.processor_id, '?') || ' expired')
  FROM expired WHERE o.id = expired.id
RETURNING o.id, o.conversation_id, o.status, o.attempts
"""

# The oldest pending row of each conversation that nobody picked up within the grace period
# (a lost or refused delivery nudge). Its available_at moves to now, so it is re-published once
# per grace period, not on every sweep.
_STUCK_PENDING = """
WITH heads AS (
    SELECT o.id FROM outbound_message AS o
     WHERE o.status = 'pending'
       AND o.available_at < now() - %(grace_ms)s * interval '1 millisecond'
       AND NOT EXISTS (
            SELECT 1 FROM outbound_message AS older
             WHERE older.conversation_id = o.conversation_id AND older.id < o.id
               AND older.status IN ('pending', 'sending'))
     ORDER BY o.available_at LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE outbound_message AS o SET available_at = now()
  FROM heads WHERE o.id = heads.id
RETURNING o.id, o.channel
"""

_NEXT_PENDING = """
SELECT o.id, o.channel, o.status FROM outbound_message AS o
 WHERE o.conversation_id = %s AND o.status IN ('pending', 'sending')
 ORDER BY o.id LIMIT 1
"""


@dataclass(frozen=True)
class OutboundLease:
    """A claimed outbox row: what to send, and the token every later write must name."""

    outbound_id: int
    conversation_id: int
    job_id: int | None
    in_reply_to: int | None
    channel: str
    account_id: str
    chat_id: str
    text: str
    attempt: int  # 1-based: this is the attempt-th try
    provider_message_id: str
    token: str
    worker_id: str
    resends: int = 0  # times sent again after an unknown outcome (owner-polled channels)
    # The message this row answers, as the provider knows it (read marks before the reply).
    reply_to_provider_id: str | None = None
    reply_to_sender: str | None = None


@dataclass(frozen=True)
class OutboundClaimRefused:
    """Why a row was not claimed: not_found | sent | failed | held | not_yet_available | behind_older."""

    outbound_id: int
    reason: str


@dataclass(frozen=True)
class OutboundFailOutcome:
    """What :func:`retry_or_fail` did."""

    final: bool  # True: the row is failed for good
    attempts: int
    delay_ms: int = 0
    fenced: bool = True  # False: the lease was gone and nothing was written


def _settings():
    from zenthor.settings import get_settings

    return get_settings()


def provider_message_id(outbound_id: int) -> str:
    """The provider message id of outbox row ``outbound_id`` (stable across retries)."""
    return f"{PROVIDER_ID_PREFIX}{outbound_id}"


def claim_outbound(
    outbound_id: int, worker_id: str, *, lock_ms: int | None = None
) -> OutboundLease | OutboundClaimRefused:
    """Take row ``outbound_id`` for sending, or say why not (nothing written then).

    Refuses a row already sent or failed, one held by a live lease, one waiting out its backoff,
    and one with an older unsent row in its conversation.
    """
    settings = _settings()
    params = {
        "id": outbound_id,
        "worker": worker_id,
        "token": str(uuid.uuid4()),
        "lock_ms": lock_ms or settings.OUTBOUND_LOCK_MS,
        "max_attempts": settings.OUTBOUND_MAX_ATTEMPTS,
        "prefix": PROVIDER_ID_PREFIX,
    }
    rows = execute(_CLAIM, params)
    if not rows:
        return _why_refused(outbound_id)
    row = rows[0]
    return OutboundLease(
        *row[:8], attempt=row[8], provider_message_id=row[9], token=params["token"], worker_id=worker_id
    )


def _why_refused(outbound_id: int) -> OutboundClaimRefused:
    rows = execute(_WHY_REFUSED, (outbound_id,))
    if not rows:
        return OutboundClaimRefused(outbound_id, "not_found")
    status, available, expired, behind = rows[0]
    if status in ("sent", "failed"):
        reason = status
    elif behind:
        reason = "behind_older"
    elif status == "sending" and not expired:
        reason = "held"
    elif status == "sending":
        reason = "attempts_exhausted"
    elif not available:
        reason = "not_yet_available"
    else:
        reason = "raced"
    return OutboundClaimRefused(outbound_id, reason)


def mark_sent(lease: OutboundLease) -> bool:
    """Record that the row was delivered; False when the lease was lost (another sender has it).

    The row is already delivered: a session cut here is retried on a fresh connection, or the row
    would stay ``sending`` until its lease expired and then be sent again.
    """
    params = {"id": lease.outbound_id, "token": lease.token}
    return bool(on_live_session(lambda: execute(_MARK_SENT, params), operation="outbound_mark_sent"))


def retry_delay_ms(attempts: int) -> int:
    """Exponential backoff with jitter after the ``attempts``-th failed try."""
    settings = _settings()
    base = settings.OUTBOUND_RETRY_BASE_MS * (2 ** max(attempts - 1, 0))
    return int(min(base, settings.OUTBOUND_RETRY_MAX_MS) * random.uniform(0.8, 1.2))


def retry_or_fail(lease: OutboundLease, error: str, *, retryable: bool = True) -> OutboundFailOutcome:
    """After a failed send: back to pending after a backoff, or ``failed`` once attempts ran out
    (or the error cannot be fixed by retrying). Token-fenced."""
    max_attempts = _settings().OUTBOUND_MAX_ATTEMPTS
    params = {"id": lease.outbound_id, "token": lease.token, "error": error[:1000]}
    if retryable and lease.attempt < max_attempts:
        params["delay_ms"] = retry_delay_ms(lease.attempt)
        if not on_live_session(lambda: execute(_RETRY, params), operation="outbound_retry"):
            return OutboundFailOutcome(final=False, attempts=lease.attempt, fenced=False)
        emit(
            ev.OUTBOUND_RETRY,
            outbound_id=lease.outbound_id,
            attempts=lease.attempt,
            delay_ms=params["delay_ms"],
            error=error[:200],
        )
        return OutboundFailOutcome(final=False, attempts=lease.attempt, delay_ms=params["delay_ms"])
    if not on_live_session(lambda: execute(_FAIL, params), operation="outbound_fail"):
        return OutboundFailOutcome(final=True, attempts=lease.attempt, fenced=False)
    emit(ev.OUTBOUND_FAILED, outbound_id=lease.outbound_id, attempts=lease.attempt, error=error[:200])
    return OutboundFailOutcome(final=True, attempts=lease.attempt)


def requeue_expired(*, limit: int = 500) -> list[tuple[int, int, str]]:
    """Take back rows whose sending lease expired; returns (id, conversation_id, new status).

    The sender may have delivered the row before dying; the retry sends the same provider id, so
    the receiver can drop the copy (I5: at-least-once to the provider, once to the user).
    """
    with database.atomic():
        rows = execute(_REQUEUE_EXPIRED, {"limit": limit, "max_attempts": _settings().OUTBOUND_MAX_ATTEMPTS})
    for outbound_id, _conversation_id, status, attempts in rows:
        if status == "failed":
            emit(
                ev.OUTBOUND_FAILED, outbound_id=outbound_id, attempts=attempts, error="sending lease expired"
            )
        else:
            emit(ev.OUTBOUND_REQUEUED, outbound_id=outbound_id, attempts=attempts, reason="lease_expired")
    return [(row[0], row[1], row[2]) for row in rows]


def stuck_pending(*, grace_ms: int | None = None, limit: int = 1000) -> list[tuple[int, str]]:
    """Oldest pending rows per conversation nobody picked up in the grace period: (id, channel)."""
    grace = _settings().OUTBOUND_REPUBLISH_GRACE_MS if grace_ms is None else grace_ms
    with database.atomic():
        rows = execute(_STUCK_PENDING, {"grace_ms": grace, "limit": limit})
    return [(row[0], row[1]) for row in rows]


def next_pending_outbound(conversation_id: int) -> tuple[int, str] | None:
    """The conversation's next row to deliver, as (id, channel), if the oldest unsent is pending."""
    rows = execute(_NEXT_PENDING, (conversation_id,))
    return (rows[0][0], rows[0][1]) if rows and rows[0][2] == "pending" else None


def pending_for_conversation(conversation_id: int, *, limit: int = 50) -> list[int]:
    """Ids of the conversation's pending rows, oldest first (a polling channel's inbox)."""
    return [
        row[0]
        for row in execute(
            "SELECT id FROM outbound_message WHERE conversation_id = %s AND status = 'pending' "
            "AND available_at <= now() ORDER BY id LIMIT %s",
            (conversation_id, limit),
        )
    ]
