"""The ingest actor: a channel adapter that cannot call :func:`~zenthor.ingress.accept` itself
(or wants to hand off fast) sends the inbound here as :meth:`InboundMessage.to_dict`.

Dramatiq retries only infrastructure errors (database or broker down); accept is idempotent
through the dedupe key, so a redelivered or retried message is harmless. Also registers the
sweep step that prunes old dedupe keys.
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


@dramatiq.actor(queue_name="ingest", max_retries=10, retry_when=is_infrastructure_error)
def ingest(payload: dict[str, Any]) -> str:
    """Accept one inbound message; returns accept's status (or ``invalid``)."""
    try:
        message = InboundMessage.from_dict(payload)
    except InvalidInbound as error:
        channel = payload.get("channel") if isinstance(payload, dict) else None
        account = payload.get("account_id") if isinstance(payload, dict) else None
        emit(
            ev.INBOUND_REJECTED,
            channel=channel if isinstance(channel, str) else None,
            account_id=account if isinstance(account, str) else None,
            reason=str(error)[:200],
        )
        return "invalid"
    return accept(message, publish=publish_dispatch).status


def send_inbound(message: InboundMessage) -> None:
    """Hand ``message`` to the ingest actor (raises when the broker refuses it)."""
    ingest.send(message.to_dict())


register_step("dedupe", prune_dedupe_keys)
