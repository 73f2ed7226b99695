"""Publishing nudges after commit. A failed publish is logged and left to the sweep (I6).

RabbitMQ only carries nudges: the rows in Postgres are the truth, so losing a publish delays a job
by at most the sweep's re-publish grace period, and never loses it.
"""

from __future__ import annotations

from zenthor.observability import emit
from zenthor.observability import events as ev


def publish_dispatch(job_id: int, *, delay_ms: int | None = None) -> bool:
    """Nudge the dispatch actor about ``job_id``; False (and an event) when the broker refused."""
    from zenthor.actors.dispatch import dispatch

    try:
        dispatch.send_with_options(args=(job_id,), delay=delay_ms)
        return True
    except Exception as error:  # noqa: BLE001 - any broker failure leaves the job to the sweep
        emit(ev.PUBLISH_FAILED, actor="dispatch", job_id=job_id, error=str(error)[:200])
        return False


def publish_deliveries(outbound_ids: list[int], channel: str | None = None) -> None:
    """Nudge delivery for each outbox row (the outbox sweep re-publishes what this misses)."""
    from zenthor.actors.deliver import publish_delivery

    for outbound_id in outbound_ids:
        publish_delivery(outbound_id, channel=channel)
