"""Outbox statements of a channel whose account one process owns (WhatsApp): every claim is fenced
by the *account's* lease token, not only the row's.

The owner claims the oldest sendable row of its account (no older unsent row in its conversation,
backoff waited out, its chat not held back by the rate limit) only while its account lease is live
on the database clock, and writes that token on the row. So a process that lost the account —
paused, partitioned, replaced — cannot claim anything, even with its socket still open.

A row the owner marked ``sending`` and never marked ``sent`` (it died between WhatsApp taking the
send and the row recording it) has an unknown outcome: the next owner sends it once more and
counts it (``resends``). WhatsApp cannot be given an id of ours through neonize 0.5.2, so this is
the one place a reply can appear twice: at least once, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from zenthor.db import database, execute
from zenthor.queue.channel_leases import AccountLease
from zenthor.queue.outbox import OutboundLease

_LEASE_LIVE = """EXISTS (
    SELECT 1 FROM channel_account AS a
     WHERE a.channel = %(channel)s AND a.account_id = %(account)s
       AND a.lease_token = %(token)s::uuid AND a.expires_at > now())"""

_CLAIM_NEXT = f"""
UPDATE outbound_message AS o
   SET status = 'sending', processor_id = %(owner)s, lease_token = %(token)s::uuid,
       locked_until = now() + %(lock_ms)s * interval '1 millisecond', attempts = o.attempts + 1
 WHERE o.id = (
        SELECT c.id FROM outbound_message AS c
         WHERE c.channel = %(channel)s AND c.account_id = %(account)s
           AND c.status = 'pending' AND c.available_at <= now()
           AND NOT (c.chat_id = ANY(%(held_chats)s::text[]))
           AND NOT EXISTS (
                SELECT 1 FROM outbound_message AS older
                 WHERE older.conversation_id = c.conversation_id AND older.id < c.id
                   AND older.status IN ('pending', 'sending'))
         ORDER BY c.id LIMIT 1
           FOR UPDATE SKIP LOCKED)
   AND {_LEASE_LIVE}
RETURNING o.id, o.conversation_id, o.job_id, o.in_reply_to, o.channel, o.account_id, o.chat_id,
          o.text, o.attempts, coalesce(o.provider_message_id, ''), o.resends,
          (SELECT m.provider_message_id FROM message AS m WHERE m.id = o.in_reply_to),
          (SELECT m.sender_id FROM message AS m WHERE m.id = o.in_reply_to)
"""

_HAS_SENDABLE = """
SELECT EXISTS (
    SELECT 1 FROM outbound_message AS c
     WHERE c.channel = %(channel)s AND c.account_id = %(account)s
       AND c.status = 'pending' AND c.available_at <= now()
       AND NOT EXISTS (
            SELECT 1 FROM outbound_message AS older
             WHERE older.conversation_id = c.conversation_id AND older.id < c.id
               AND older.status IN ('pending', 'sending')))
"""

_MARK_SENT = """
UPDATE outbound_message
   SET status = 'sent', sent_at = now(), locked_until = NULL, last_error = NULL,
       provider_message_id = %(provider_id)s
 WHERE id = %(id)s AND lease_token = %(token)s::uuid AND status = 'sending'
RETURNING id
"""

# Not sent after all (the lease went away between the claim and the call): hand the row back as
# it was, attempt uncounted. Safe without the account lease: nothing left this process.
_UNCLAIM = """
UPDATE outbound_message
   SET status = 'pending', locked_until = NULL, lease_token = NULL, attempts = greatest(attempts - 1, 0)
 WHERE id = %(id)s AND lease_token = %(token)s::uuid AND status = 'sending'
RETURNING id
"""

# On taking the account: rows an earlier term left 'sending'. Only a live owner may do this, and
# no other process can be sending for the account while this term owns it.
_RECLAIM_UNKNOWN = f"""
UPDATE outbound_message AS o
   SET status = CASE WHEN o.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
       available_at = now(), locked_until = NULL, lease_token = NULL,
       resends = o.resends + CASE WHEN o.attempts >= %(max_attempts)s THEN 0 ELSE 1 END,
       last_error = 'outcome unknown: ' || coalesce(o.processor_id, '?') || ' did not record the send'
 WHERE o.channel = %(channel)s AND o.account_id = %(account)s AND o.status = 'sending'
   AND o.lease_token IS DISTINCT FROM %(token)s::uuid
   AND {_LEASE_LIVE}
RETURNING o.id, o.status, o.processor_id
"""

_COUNT_RESENDS = """
UPDATE channel_account SET resends_total = resends_total + %(count)s
 WHERE channel = %(channel)s AND account_id = %(account)s AND lease_token = %(token)s::uuid
"""

_RECENT_SENDS = """
SELECT chat_id, extract(epoch FROM now() - sent_at) FROM outbound_message
 WHERE channel = %(channel)s AND account_id = %(account)s AND status = 'sent'
   AND sent_at > now() - %(window_s)s * interval '1 second'
"""


@dataclass(frozen=True)
class UnknownOutcome:
    """Rows found ``sending`` when this term began: sent once more (or failed: no attempts left)."""

    resend_ids: list[int]
    failed_ids: list[int]
    previous_owners: list[str]


def _params(account: AccountLease, **extra) -> dict:
    return {"channel": account.channel, "account": account.account_id, "token": account.token, **extra}


def claim_next_owned(
    account: AccountLease, *, lock_ms: int, held_chats: list[str] | tuple[str, ...] = ()
) -> OutboundLease | None:
    """Claim the account's next sendable row while this process owns the account, or None."""
    rows = execute(
        _CLAIM_NEXT, _params(account, owner=account.owner_id, lock_ms=lock_ms, held_chats=list(held_chats))
    )
    if not rows:
        return None
    row = rows[0]
    return OutboundLease(
        *row[:8],
        attempt=row[8],
        provider_message_id=row[9],
        token=account.token,
        worker_id=account.owner_id,
        resends=row[10],
        reply_to_provider_id=row[11],
        reply_to_sender=row[12],
    )


def has_sendable(account: AccountLease) -> bool:
    """True when the account has a row that could be sent now but for the rate limit (its backoff
    is over and nothing older in its conversation is unsent): rate-limit accounting."""
    return bool(execute(_HAS_SENDABLE, _params(account))[0][0])


def mark_sent_owned(lease: OutboundLease, provider_message_id: str) -> bool:
    """Record the send and WhatsApp's id for it; False when the row was taken back meanwhile."""
    return bool(
        execute(_MARK_SENT, {"id": lease.outbound_id, "token": lease.token, "provider_id": provider_message_id})
    )


def unclaim_owned(lease: OutboundLease) -> bool:
    """Hand a claimed row back unsent (nothing left this process)."""
    return bool(execute(_UNCLAIM, {"id": lease.outbound_id, "token": lease.token}))


def reclaim_unknown_outcome(account: AccountLease, *, max_attempts: int) -> UnknownOutcome:
    """At the start of a term: rows an earlier owner left ``sending`` go back to pending, counted
    as resends on the rows and on the account (one transaction)."""
    with database.atomic():
        rows = execute(_RECLAIM_UNKNOWN, _params(account, max_attempts=max_attempts))
        resent = sum(1 for row in rows if row[1] == "pending")
        if resent:
            execute(_COUNT_RESENDS, _params(account, count=resent))
    return UnknownOutcome(
        resend_ids=[r[0] for r in rows if r[1] == "pending"],
        failed_ids=[r[0] for r in rows if r[1] == "failed"],
        previous_owners=sorted({r[2] for r in rows if r[2]}),
    )


def recent_sends(account: AccountLease, *, window_s: int = 60) -> list[tuple[str, float]]:
    """(chat_id, seconds ago) of the account's sends in the last ``window_s`` seconds (the rate
    limiter's memory after a takeover)."""
    return [(r[0], float(r[1])) for r in execute(_RECENT_SENDS, _params(account, window_s=window_s))]
