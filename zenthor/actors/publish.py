"""Publishing nudges after commit. A failed publish is logged and left to the sweep (I6).

RabbitMQ only carries nudges: the rows in Postgres are the truth, so losing a publish delays a job
by at most the sweep's re-publish grace period, and never loses it.

Messages are sent by actor and queue *name* through the process's broker, so this module imports
no actor: dispatch, deliver and the sweep all publish through it without an import circle.
"""

from __future__ import annotations

import dramatiq

from zenthor.channels import queue_for
from zenthor.db import execute
from zenthor.observability import emit
from zenthor.observability import events as ev

DISPATCH_ACTOR = DISPATCH_QUEUE = "dispatch"
DELIVER_ACTOR = "deliver"


def _send(actor_name: str, queue_name: str, args: tuple, delay_ms: int | None) -> None:
    message = dramatiq.Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={})
    dramatiq.get_broker().enqueue(message, delay=delay_ms)


def publish_dispatch(job_id: int, *, delay_ms: int | None = None) -> bool:
    """Nudge the dispatch actor about ``job_id``; False (and an event) when the broker refused."""
    try:
        _send(DISPATCH_ACTOR, DISPATCH_QUEUE, (job_id,), delay_ms)
        return True
    except Exception as error:  # noqa: BLE001 - any broker failure leaves the job to the sweep
        emit(ev.PUBLISH_FAILED, actor="dispatch", job_id=job_id, error=str(error)[:200])
        return False


def publish_delivery(outbound_id: int, *, channel: str | None = None, delay_ms: int | None = None) -> bool:
    """Nudge delivery of row ``outbound_id`` on its channel's queue; False (and an event) when the
    broker refused (the outbox sweep re-publishes it). A channel whose owning process polls its
    rows (terminal, WhatsApp) gets no nudge."""
    if channel is None:
        rows = execute("SELECT channel FROM outbound_message WHERE id = %s", (outbound_id,))
        if not rows:
            return False
        channel = rows[0][0]
    queue_name = queue_for(channel)
    if queue_name is None:
        return True  # delivered by the owning process's own polling
    try:
        _send(DELIVER_ACTOR, queue_name, (outbound_id,), delay_ms)
        return True
    except Exception as error:  # noqa: BLE001 - any broker failure leaves the row to the sweep
        emit(ev.OUTBOUND_PUBLISH_FAILED, outbound_id=outbound_id, queue=queue_name, error=str(error)[:200])
        return False


def publish_deliveries(outbound_ids: list[int], channel: str | None = None) -> None:
    """Nudge delivery for each outbox row (the outbox sweep re-publishes what this misses)."""
    for outbound_id in outbound_ids:
        publish_delivery(outbound_id, channel=channel)
