"""Read-only views of the queue for operators: ``zenthor ops status``, /healthz and /metrics."""

from __future__ import annotations

from typing import Any

from zenthor.db import execute


def queue_snapshot() -> dict[str, Any]:
    """Jobs per status, oldest pending age, expired leases, busy conversations, last sweep."""
    by_status = {status: 0 for status in ("pending", "processing", "awaiting_approval", "done", "failed")}
    for status, count in execute("SELECT status, count(*) FROM agent_job GROUP BY status"):
        by_status[status] = count
    (oldest_pending_s,) = execute(
        "SELECT extract(epoch FROM now() - min(created_at)) FROM agent_job WHERE status = 'pending'"
    )[0]
    (expired,) = execute(
        "SELECT count(*) FROM agent_job WHERE status = 'processing' AND locked_until < now()"
    )[0]
    (duplicates,) = execute(
        "SELECT count(*) FROM (SELECT conversation_id FROM agent_job WHERE status = 'processing' "
        "GROUP BY conversation_id HAVING count(*) > 1) AS busy"
    )[0]
    holders = [
        {"processor_id": holder, "processing": count}
        for holder, count in execute(
            "SELECT coalesce(processor_id, '?'), count(*) FROM agent_job WHERE status = 'processing' "
            "GROUP BY 1 ORDER BY 2 DESC LIMIT 20"
        )
    ]
    sweep = execute(
        "SELECT last_started_at, last_finished_at, last_trigger, last_result, "
        "extract(epoch FROM now() - last_finished_at) FROM sweep_state WHERE name = 'sweep'"
    )
    outbox = {
        status: count
        for status, count in execute("SELECT status, count(*) FROM outbound_message GROUP BY status")
    }
    return {
        "jobs": by_status,
        "oldest_pending_age_s": round(float(oldest_pending_s), 1) if oldest_pending_s is not None else None,
        "expired_leases": expired,
        "processing_conversations": by_status["processing"],
        "conversations_with_two_processing": duplicates,
        "lease_holders": holders,
        "outbox": outbox,
        "last_sweep": None
        if not sweep
        else {
            "started_at": sweep[0][0].isoformat() if sweep[0][0] else None,
            "finished_at": sweep[0][1].isoformat() if sweep[0][1] else None,
            "trigger": sweep[0][2],
            "result": sweep[0][3],
            "age_s": round(float(sweep[0][4]), 1) if sweep[0][4] is not None else None,
        },
    }


def whatsapp_outbox_counts(account_id: str) -> dict[str, int]:
    """The account's open outbox rows by status (through the partial index on open rows)."""
    return {
        status: count
        for status, count in execute(
            "SELECT status, count(*) FROM outbound_message WHERE channel = 'whatsapp' AND account_id = %s "
            "AND status IN ('pending', 'sending') GROUP BY status",
            (account_id,),
        )
    }
