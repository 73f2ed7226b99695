"""Read-only views of the queue for operators: ``zenthor ops status``, /healthz and /metrics."""

from __future__ import annotations

from typing import Any

from zenthor.db import execute
from zenthor.queue.retention import last_run

# Every count names one open status, so each reads only that status's index entries however
# many done jobs and sent rows the tables keep (the plan is checked in
# tests/queue/test_worker_metrics.py): jobs pending ▸ agent_job_pending_available_at, processing ▸
# agent_job_processing_locked_until, awaiting_approval ▸ agent_job_open_fifo (all partial); outbox
# pending ▸ outbound_message_status_channel_account (a range on its leading status column) or
# outbound_message_pending_available_at, sending ▸ outbound_message_sending_locked_until.
# One statement: one round trip per scrape.
_QUEUE_DEPTH = """
SELECT
    (SELECT count(*) FROM agent_job WHERE status = 'pending'),
    (SELECT count(*) FROM agent_job WHERE status = 'processing'),
    (SELECT count(*) FROM agent_job WHERE status = 'awaiting_approval'),
    (SELECT count(*) FROM agent_job WHERE status = 'processing' AND locked_until < now()),
    (SELECT extract(epoch FROM now() - min(created_at)) FROM agent_job WHERE status = 'pending'),
    (SELECT count(*) FROM outbound_message WHERE status = 'pending'),
    (SELECT count(*) FROM outbound_message WHERE status = 'sending'),
    (SELECT extract(epoch FROM now() - last_finished_at) FROM sweep_state WHERE name = 'sweep')
"""


def queue_depth() -> dict[str, Any]:
    """Open rows only, cheap enough for every scrape: jobs and outbox rows per open status,
    expired leases, the oldest pending job's age and the last sweep's age (seconds, or None)."""
    row = execute(_QUEUE_DEPTH)[0]
    pending, processing, awaiting, expired, oldest_s, out_pending, out_sending, sweep_age_s = row
    return {
        "jobs": {"pending": pending, "processing": processing, "awaiting_approval": awaiting},
        "outbox": {"pending": out_pending, "sending": out_sending},
        "expired_leases": expired,
        "oldest_pending_age_s": round(float(oldest_s), 1) if oldest_s is not None else None,
        "last_sweep_age_s": round(float(sweep_age_s), 1) if sweep_age_s is not None else None,
    }


def queue_snapshot() -> dict[str, Any]:
    """Jobs per status, oldest pending age, expired leases, busy conversations, last sweep, and
    the last retention run that deleted something (one row of ``sweep_state``).

    For ``zenthor ops status``, run by hand: on top of :func:`queue_depth` it counts finished
    jobs and outbox rows, which reads the whole tables (``/metrics`` uses :func:`queue_depth`).
    """
    depth = queue_depth()
    by_status = {**depth["jobs"], "done": 0, "failed": 0}
    for status, count in execute(
        "SELECT status, count(*) FROM agent_job WHERE status IN ('done', 'failed') GROUP BY status"
    ):
        by_status[status] = count
    oldest_pending_s = depth["oldest_pending_age_s"]
    expired = depth["expired_leases"]
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
    outbox = {status: count for status, count in depth["outbox"].items() if count}
    for status, count in execute(
        "SELECT status, count(*) FROM outbound_message WHERE status IN ('sent', 'failed') GROUP BY status"
    ):
        outbox[status] = count
    return {
        "jobs": by_status,
        "oldest_pending_age_s": oldest_pending_s,
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
        "last_retention": last_run(),
    }


# Conversations that chose their own queue mode or debounce (/queue, /debounce), by value: one
# pass over the conversation table (no index on these columns; ops status reads whole tables anyway).
_CHOSEN_MODES = """
SELECT queue_mode, debounce_ms, count(*) FROM conversation
 WHERE queue_mode IS NOT NULL OR debounce_ms IS NOT NULL
 GROUP BY queue_mode, debounce_ms
"""


def queue_modes(settings: Any) -> dict[str, Any]:
    """The queue modes in force (issue 14): ``QUEUE_MODE``, the per-channel overrides, the collect
    cap and the debounce settings, and how many conversations chose their own mode and debounce
    (counts by value; debounce values are milliseconds, as strings, so the dict is JSON as is)."""
    by_mode: dict[str, int] = {}
    by_debounce: dict[int, int] = {}
    for mode, debounce_ms, count in execute(_CHOSEN_MODES):
        if mode is not None:
            by_mode[mode] = by_mode.get(mode, 0) + count
        if debounce_ms is not None:
            by_debounce[debounce_ms] = by_debounce.get(debounce_ms, 0) + count
    return {
        "mode": settings.QUEUE_MODE,
        "channel_modes": dict(sorted(settings.channel_queue_modes.items())),
        "collect_max": settings.QUEUE_COLLECT_MAX,
        "debounce_ms": settings.QUEUE_DEBOUNCE_MS,
        "debounce_max_ms": settings.QUEUE_DEBOUNCE_MAX_MS,
        "conversations": {
            "queue_mode": dict(sorted(by_mode.items())),
            "debounce_ms": {str(ms): n for ms, n in sorted(by_debounce.items())},
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
