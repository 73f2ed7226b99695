"""Inbound dedupe keys: record one per accepted inbound, prune them after their retention.

A key is kept ``INBOUND_DEDUPE_TTL_S`` (default 7 days): longer than any provider retries or an
operator replays an outage, short enough that the table stays small. The sweep prunes old keys in
bounded batches so one run never holds long locks or a long transaction.
"""

from __future__ import annotations

from zenthor.db import execute
from zenthor.observability import emit
from zenthor.observability import events as ev

PRUNE_BATCH = 5_000
PRUNE_MAX_BATCHES = 20

_INSERT_KEY = """
INSERT INTO inbound_dedupe (channel, account_id, provider_message_id) VALUES (%s, %s, %s)
ON CONFLICT ON CONSTRAINT inbound_dedupe_key DO NOTHING
RETURNING id
"""

_PRUNE = """
DELETE FROM inbound_dedupe WHERE id IN (
    SELECT id FROM inbound_dedupe
     WHERE created_at < now() - %(ttl_s)s * interval '1 second'
     ORDER BY created_at
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED)
"""


def record_key(channel: str, account_id: str, key: str) -> bool:
    """Insert the key in the caller's transaction; False when it was already there (a duplicate).

    A concurrent insert of the same key waits for the first transaction: if that one commits,
    this returns False; if it rolls back, this one records the key (nothing is skipped wrongly).
    """
    return bool(execute(_INSERT_KEY, (channel, account_id, key)))


def prune_dedupe_keys(
    ttl_s: int | None = None, *, batch: int = PRUNE_BATCH, max_batches: int = PRUNE_MAX_BATCHES
) -> dict[str, int]:
    """Delete keys older than the TTL, ``batch`` rows per statement, at most ``max_batches``
    statements per call (the next sweep continues). Returns ``{"pruned_dedupe": n}``.
    """
    if ttl_s is None:
        from zenthor.settings import get_settings

        ttl_s = get_settings().INBOUND_DEDUPE_TTL_S
    total = 0
    for _ in range(max_batches):
        cursor_rows = execute(_PRUNE + " RETURNING 1", {"ttl_s": ttl_s, "batch": batch})
        total += len(cursor_rows)
        if len(cursor_rows) < batch:
            break
    if total:
        emit(ev.INBOUND_DEDUPE_PRUNED, count=total, ttl_s=ttl_s)
    return {"pruned_dedupe": total}
