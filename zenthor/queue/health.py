"""Is anything being served? The one verdict ``/healthz`` and ``zenthor ops status`` both give.

Each check is named, and each threshold is a setting:

- ``postgres``: the database answers;
- ``rabbitmq``: the broker answers;
- ``dispatch_consumers``: at least one worker consumes the ``dispatch`` queue (asked of RabbitMQ:
  with every worker stopped, jobs would wait with nobody to run them);
- ``pending``: the oldest pending job has waited at most ``HEALTH_PENDING_MAX_AGE_S``;
- ``sweep``: the last sweep finished at most ``HEALTH_SWEEP_MAX_AGE_S`` ago.

The broker is passed in (this module sits below the actors that declare it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from zenthor.db import database, execute
from zenthor.queue.sweep_state import last_finished_at

DISPATCH_QUEUE = "dispatch"

_OLDEST_PENDING = (
    "SELECT extract(epoch FROM now() - min(available_at)) FROM agent_job "
    "WHERE status = 'pending' AND available_at <= now()"
)


def _why(error: Exception) -> str:
    return f"unreachable: {type(error).__name__}: {str(error).strip()[:150]}"


def health_checks(broker: Any, *, sweep_max_age_s: int, pending_max_age_s: int) -> tuple[bool, dict[str, str]]:
    """(all ok, a line per check: ``ok`` or what is wrong)."""
    checks: dict[str, str] = {}
    last_sweep: datetime | None = None
    oldest: float | None = None
    try:
        with database.connection_context():
            execute("SELECT 1")
            last_sweep = last_finished_at()
            (oldest,) = execute(_OLDEST_PENDING)[0]
        checks["postgres"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure is the reason we report
        checks["postgres"] = _why(error)
    try:
        broker.declare_queue(DISPATCH_QUEUE, ensure=True)
        declared = broker.channel.queue_declare(queue=DISPATCH_QUEUE, passive=True)
        consumers = declared.method.consumer_count
        checks["rabbitmq"] = "ok"
        checks["dispatch_consumers"] = (
            "ok"
            if consumers > 0
            else "none: no worker consumes the dispatch queue (is `zenthor worker` running?)"
        )
    except Exception as error:  # noqa: BLE001
        checks["rabbitmq"] = _why(error)
        checks["dispatch_consumers"] = "unknown (rabbitmq unreachable)"
    if checks["postgres"] != "ok":
        checks["pending"] = checks["sweep"] = "unknown (postgres unreachable)"
    else:
        checks["pending"] = (
            "ok"
            if oldest is None or float(oldest) <= pending_max_age_s
            else f"the oldest pending job has waited {float(oldest):.0f}s (over {pending_max_age_s}s)"
        )
        if last_sweep is None:
            checks["sweep"] = "never ran (is `zenthor scheduler` running?)"
        else:
            age = (datetime.now(UTC) - last_sweep).total_seconds()
            checks["sweep"] = "ok" if age <= sweep_max_age_s else f"stale: last finished {age:.0f}s ago"
    return all(value == "ok" for value in checks.values()), checks
