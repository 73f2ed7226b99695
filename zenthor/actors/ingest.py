"""The ingest actor: a channel adapter that cannot call :func:`~zenthor.ingress.accept` itself
(or wants to hand off fast) sends the inbound here as :meth:`InboundMessage.to_dict`.

Dramatiq retries only infrastructure errors (database or broker down); accept is idempotent
through the dedupe key, so a redelivered or retried message is harmless. A payload that cannot be
accepted (a bad field, or neither a provider id nor a sent time, so a redelivery could not be
recognised) is dead-lettered: it lands in ``ingest.XQ`` for an operator, never retried, never
accepted. Also registers the sweep step that prunes old dedupe keys.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from zenthor.actors.publish import publish_dispatch
from zenthor.actors.retry_policy import is_infrastructure_error
from zenthor.actors.sweep import register_step
from zenthor.ingress import InboundMessage, InvalidInbound, accept, prune_dedupe_keys
from zenthor.observability import emit
from zenthor.observability import events as ev


class InboundRefused(Exception):
    """An ingest payload that cannot be accepted; raised so Dramatiq dead-letters it.

    It is in the actor's ``throws``: Dramatiq's Retries middleware fails the message at once
    (into ``ingest.XQ``) and logs it at INFO instead of an error with a traceback.
    """


@dramatiq.actor(
    queue_name="ingest", max_retries=10, retry_when=is_infrastructure_error, throws=(InboundRefused,)
)
def ingest(payload: dict[str, Any]) -> str:
    """Accept one inbound message; returns accept's status. Raises :class:`InboundRefused` for a
    payload that cannot be accepted, after emitting ``inbound.dead_lettered``."""
    try:
        message = InboundMessage.from_dict(payload)
    except InvalidInbound as error:
        channel = payload.get("channel") if isinstance(payload, dict) else None
        account = payload.get("account_id") if isinstance(payload, dict) else None
        reason = str(error)[:200]
        emit(
            ev.INBOUND_DEAD_LETTERED,
            channel=channel if isinstance(channel, str) else None,
            account_id=account if isinstance(account, str) else None,
            reason=reason,
        )
        # Acking would lose it without a trace; a retry would fail the same way.
        raise InboundRefused(reason) from None
    return accept(message, publish=publish_dispatch).status


def send_inbound(message: InboundMessage) -> None:
    """Hand ``message`` to the ingest actor (raises when the broker refuses it)."""
    ingest.send(message.to_dict())


register_step("dedupe", prune_dedupe_keys)
