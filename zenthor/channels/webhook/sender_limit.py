"""A cost limit per webhook sender: a token bucket per (account, sender) in Postgres.

``WEBHOOK_SENDER_BURST`` messages at once, refilled at ``WEBHOOK_SENDER_RATE_PER_MIN`` a minute
(either 0: no limit). The bucket row is taken inside the transaction that accepts the message
(:func:`~zenthor.ingress.accept`'s ``admit``, after the dedupe key showed the message is new), so
a duplicate never counts, a refused message rolls back with nothing stored, and the row lock
makes the limit hold across every gateway process. The sweep deletes buckets that have refilled
(:func:`prune_buckets`, zenthor/actors/webhook_buckets.py), so the table holds active senders only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from zenthor.db import database, execute
from zenthor.ingress import InboundMessage

# clock_timestamp(), not now(): now() is the transaction's start, and concurrent transactions take
# the row lock in any order. greatest() keeps the refill from going negative all the same.
_TAKE = """
INSERT INTO webhook_sender_bucket AS b (account_id, sender_id, tokens, updated_at)
VALUES (%(account)s, %(sender)s, %(burst)s - 1, clock_timestamp())
ON CONFLICT (account_id, sender_id) DO UPDATE SET
    tokens = least(
        %(burst)s,
        b.tokens + greatest(0, extract(epoch FROM clock_timestamp() - b.updated_at)) * %(per_s)s
    ) - 1,
    updated_at = greatest(b.updated_at, clock_timestamp())
RETURNING tokens
"""


class SenderOverLimit(Exception):
    """The sender spent its bucket: refuse with 429 and ``Retry-After: retry_after_s``."""

    def __init__(self, retry_after_s: int, rate_per_min: int, burst: int) -> None:
        super().__init__(
            f"sender_id: this sender is over its limit of {rate_per_min} messages a minute "
            f"(burst {burst}); retry after {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


def sender_limit(rate_per_min: int, burst: int) -> Callable[[InboundMessage], None] | None:
    """The ``admit`` hook that takes one token for the message's (account, sender), raising
    :class:`SenderOverLimit` when there is none; None when the limit is off."""
    if rate_per_min <= 0 or burst <= 0:
        return None
    per_s = rate_per_min / 60.0

    def admit(message: InboundMessage) -> None:
        params = {"account": message.account_id, "sender": message.sender_id, "burst": burst, "per_s": per_s}
        ((tokens,),) = execute(_TAKE, params)
        if tokens < 0:
            # One whole token is missing -tokens of it; the caller's rollback undoes the take.
            raise SenderOverLimit(max(1, math.ceil(-tokens / per_s)), rate_per_min, burst)

    return admit


# A bucket left alone for burst / rate has refilled to burst: deleting it changes nothing, since
# the next take inserts a full bucket again. Committed buckets never hold less than 0 tokens (a
# refused take rolls back), so burst / rate is the longest refill. SKIP LOCKED: never wait behind
# an accept that holds the row (that sender is active, its row is not idle).
_PRUNE = """
DELETE FROM webhook_sender_bucket AS b
 USING (
     SELECT account_id, sender_id FROM webhook_sender_bucket
      WHERE updated_at < now() - make_interval(secs => %(idle_s)s)
      ORDER BY updated_at
      LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED
 ) AS idle
 WHERE b.account_id = idle.account_id AND b.sender_id = idle.sender_id
"""

# With the limit off here, a bucket is kept this long all the same: a gateway configured with the
# limit on (settings should agree, but a deploy may be half done) still finds recent ones.
IDLE_WHEN_OFF_S = 86_400.0


def idle_after_s(rate_per_min: int, burst: int) -> float:
    """Seconds after which an untouched bucket is full again (burst / rate), so it can go."""
    if rate_per_min <= 0 or burst <= 0:
        return IDLE_WHEN_OFF_S
    return burst * 60.0 / rate_per_min


def prune_buckets(rate_per_min: int, burst: int, *, batch: int, max_batches: int) -> int:
    """Delete idle buckets (:func:`idle_after_s`), at most ``max_batches`` batches of ``batch``
    rows through the ``updated_at`` index, each batch its own transaction; returns rows deleted."""
    params = {"idle_s": idle_after_s(rate_per_min, burst), "batch": batch}
    deleted = 0
    for _ in range(max_batches):
        with database.atomic():
            count = database.execute_sql(_PRUNE, params).rowcount
        deleted += count
        if count < batch:
            break
    return deleted
