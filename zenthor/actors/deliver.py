"""The deliver actor: claim an outbox row with a lease, send it through its channel, mark it sent.

A message is only a nudge naming a row. The claim refuses a row already sent (I5), one held by a
live lease, one waiting out its backoff and one behind an older unsent row of its conversation;
then the message is acked and nothing happens. A failed send goes back to pending with backoff
(a delayed nudge is published), or to ``failed`` after ``OUTBOUND_MAX_ATTEMPTS``. The sweep
re-publishes rows whose nudge was lost and takes back rows whose sender died mid-send.

Routing: :func:`publish_delivery` sends the nudge to the queue the channel's sender names (see
:mod:`zenthor.channels`): ``outbound`` for webhook rows (any worker), a channel's own queue such
for a channel that has one, none for channels whose owning process polls (terminal, WhatsApp).
"""

from __future__ import annotations

import logging
import time

import dramatiq

from zenthor.actors.publish import DELIVER_ACTOR, publish_delivery
from zenthor.actors.retry_policy import is_infrastructure_error
from zenthor.actors.sweep import register_step
from zenthor.channels import DEFAULT_OUTBOUND_QUEUE, SendError, get_sender, load_builtin_senders, queue_for
from zenthor.db import give_back
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.observability.metrics import DELIVERIES_TOTAL, DELIVERY_SECONDS, LEASE_LOSSES
from zenthor.queue.outbox import (
    OutboundClaimRefused,
    OutboundLease,
    claim_outbound,
    mark_sent,
    next_pending_outbound,
    requeue_expired,
    retry_or_fail,
    stuck_pending,
)
from zenthor.settings import worker_id

_logger = logging.getLogger(__name__)

load_builtin_senders()


@dramatiq.actor(
    actor_name=DELIVER_ACTOR,
    queue_name=DEFAULT_OUTBOUND_QUEUE,
    max_retries=10,
    retry_when=is_infrastructure_error,
)
def deliver(outbound_id: int) -> None:
    """Deliver outbox row ``outbound_id`` if this worker may take it now."""
    if isinstance(outbound_id, bool) or not isinstance(outbound_id, int) or outbound_id <= 0:
        emit(ev.OUTBOUND_CLAIM_REFUSED, outbound_id=None, reason="bad_message")
        return
    deliver_row(outbound_id)


def deliver_row(outbound_id: int) -> str:
    """Claim, send and mark one row; returns what happened (for logs and tests)."""
    lease = claim_outbound(outbound_id, worker_id())
    if isinstance(lease, OutboundClaimRefused):
        # Not a delivery: a duplicate or early nudge (counted in zenthor_events_total).
        emit(ev.OUTBOUND_CLAIM_REFUSED, outbound_id=outbound_id, reason=lease.reason)
        return f"refused:{lease.reason}"
    outcome = _send_claimed(lease)
    DELIVERIES_TOTAL.labels(channel=lease.channel, outcome=outcome).inc()
    if outcome == "lease_lost":
        LEASE_LOSSES.labels(lease="outbound").inc()
    return outcome


def _send_claimed(lease: OutboundLease) -> str:
    sender = get_sender(lease.channel)
    if sender is None or sender.send is None:
        emit(ev.OUTBOUND_NO_SENDER, outbound_id=lease.outbound_id, channel=lease.channel)
        return _after_failure(lease, f"no sender for channel {lease.channel!r} in this process", True)
    failure: tuple[str, bool] | None = None
    started = time.monotonic()
    give_back()  # no connection held through the channel's send (a sender reads what it needs)
    try:
        sender.send(lease)
    except SendError as error:
        failure = (str(error), error.retryable)
    except Exception as error:  # noqa: BLE001 - a bug in a sender must not lose the row
        _logger.exception(
            "sender of channel %s raised", lease.channel, extra={"event": "outbound.sender_error"}
        )
        failure = (f"{type(error).__name__}: {error}", True)
    # The send alone, not the database work after it.
    DELIVERY_SECONDS.labels(channel=lease.channel).observe(time.monotonic() - started)
    if failure is not None:
        return _after_failure(lease, *failure)
    return finish_sent(lease)


def finish_sent(lease: OutboundLease) -> str:
    """Mark the row sent (token-fenced) and nudge the conversation's next row."""
    if not mark_sent(lease):
        emit(ev.OUTBOUND_LEASE_LOST, outbound_id=lease.outbound_id, operation="mark_sent")
        return "lease_lost"
    emit(
        ev.OUTBOUND_SENT,
        outbound_id=lease.outbound_id,
        conversation_id=lease.conversation_id,
        channel=lease.channel,
        account_id=lease.account_id,
        attempts=lease.attempt,
    )
    _nudge_next(lease.conversation_id)
    return "sent"


def _after_failure(lease: OutboundLease, error: str, retryable: bool) -> str:
    outcome = retry_or_fail(lease, error, retryable=retryable)
    if not outcome.fenced:
        emit(ev.OUTBOUND_LEASE_LOST, outbound_id=lease.outbound_id, operation="retry_or_fail")
        return "lease_lost"
    if outcome.final:
        _nudge_next(lease.conversation_id)  # a failed row no longer holds its chat's line
        return "failed"
    publish_delivery(lease.outbound_id, channel=lease.channel, delay_ms=outcome.delay_ms)
    return "retry_scheduled"


def _nudge_next(conversation_id: int) -> None:
    following = next_pending_outbound(conversation_id)
    if following is not None:
        publish_delivery(following[0], channel=following[1])


def queue_for_channel(channel: str) -> str | None:
    """The queue delivery nudges for ``channel`` go to; None when its own process polls."""
    return queue_for(channel)


def sweep_outbox() -> dict[str, int]:
    """Sweep step: take back rows whose sender died, re-publish rows whose nudge was lost."""
    requeued = failed = republished = 0
    for outbound_id, conversation_id, status in requeue_expired():
        if status == "failed":
            failed += 1
            _nudge_next(conversation_id)
        else:
            requeued += 1
            publish_delivery(outbound_id)
    for outbound_id, channel in stuck_pending():
        if queue_for_channel(channel) is None:
            continue
        if publish_delivery(outbound_id, channel=channel):
            republished += 1
            emit(ev.OUTBOUND_REPUBLISHED, outbound_id=outbound_id, reason="unclaimed")
    return {"outbox_requeued": requeued, "outbox_failed": failed, "outbox_republished": republished}


register_step("outbox", sweep_outbox)
