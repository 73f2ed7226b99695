"""Bookkeeping of the sweep: when it last ran, and the single chain of sub-minute re-checks.

periodiq ticks once a minute, but a dead worker's job must be taken again within lease TTL + 15 s.
So every sweep run asks for one delayed re-check ``SWEEP_RECHECK_MS`` later. The row's
``next_check_at`` keeps that to one chain however many schedulers, workers or ticks ask: a run
schedules the next re-check only when none is already due in the future. A lost re-check message
lets ``next_check_at`` pass, and the next tick starts a new chain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from zenthor.db import execute

SWEEP = "sweep"


def record_start(trigger: str, name: str = SWEEP) -> None:
    """Note that a sweep run started (``trigger``: periodic, recheck, manual, boot)."""
    execute(
        "INSERT INTO sweep_state (name, last_started_at, last_trigger) VALUES (%s, now(), %s) "
        "ON CONFLICT (name) DO UPDATE SET last_started_at = now(), last_trigger = EXCLUDED.last_trigger",
        (name, trigger),
    )


def record_finish(result: dict[str, Any], name: str = SWEEP) -> None:
    """Note that a sweep run finished, with its counts."""
    execute(
        "UPDATE sweep_state SET last_finished_at = now(), last_result = %s WHERE name = %s",
        (Json(result), name),
    )


def claim_next_check(delay_ms: int, name: str = SWEEP) -> bool:
    """Reserve the next re-check ``delay_ms`` from now; False when one is already due later.

    The small tolerance lets the re-check that is due right now extend the chain.
    """
    rows = execute(
        """
        INSERT INTO sweep_state (name, next_check_at)
        VALUES (%(name)s, now() + %(delay)s * interval '1 millisecond')
        ON CONFLICT (name) DO UPDATE SET next_check_at = EXCLUDED.next_check_at
         WHERE sweep_state.next_check_at IS NULL
            OR sweep_state.next_check_at <= now() + interval '250 milliseconds'
        RETURNING name
        """,
        {"name": name, "delay": delay_ms},
    )
    return bool(rows)


def claim_overdue(interval_ms: int, name: str = SWEEP) -> bool:
    """True for exactly one caller when the re-check chain is half an interval overdue.

    The chain's messages can stall in a paused worker's prefetch buffer or be lost with the
    broker; every worker asks this on its heartbeat tick, and the one that wins runs the sweep
    itself, so lease recovery never depends on the sweep queue alone (nor on a free worker
    thread: every thread may be busy with a long turn). While the chain is stalled the watchdog
    runs every 1.5 intervals, so recovery stays within lease TTL + 15 s at the default 10 s.
    """
    rows = execute(
        """
        INSERT INTO sweep_state (name, next_check_at)
        VALUES (%(name)s, now() + %(interval)s * interval '1 millisecond')
        ON CONFLICT (name) DO UPDATE SET next_check_at = EXCLUDED.next_check_at
         WHERE sweep_state.next_check_at IS NULL
            OR sweep_state.next_check_at < now() - %(interval)s * interval '0.5 millisecond'
        RETURNING name
        """,
        {"name": name, "interval": interval_ms},
    )
    return bool(rows)


def last_finished_at(name: str = SWEEP) -> datetime | None:
    """When the sweep last finished, or None if it never ran."""
    rows = execute("SELECT last_finished_at FROM sweep_state WHERE name = %s", (name,))
    return rows[0][0] if rows else None
