"""Wiring of the agent's tool approvals into ingress and the sweep (imported by ``zenthor.actors``).

Lives with the actors because it joins layers the agent must not import: the ingress answer hook
(the asker's yes/no resolves the pending approval and resumes its job instead of starting a turn;
any other message of theirs closes the question as superseded and starts its turn; another
member's message is an ordinary turn) and the
sweep (approvals past ``APPROVAL_TTL_S`` resume their job with ``expired``). Also warns once, at
start, when no model is configured and the echo responder will answer.
"""

from __future__ import annotations

from zenthor.actors.publish import publish_dispatch
from zenthor.actors.sweep import register_step
from zenthor.agent.approvals import SUPERSEDED, SUPERSEDED_REASON, expire_due_approvals, handle_reply
from zenthor.agent.echo import warn_if_unconfigured
from zenthor.db import database
from zenthor.ingress.answers import AnswerOutcome, AnswerRequest, register_answer_handler
from zenthor.settings import get_settings


def approval_answer(request: AnswerRequest) -> AnswerOutcome | None:
    """Ingress's answer handler: the asker's yes or no to a pending approval resumes the waiting
    job (``approval_expired`` when it came too late); any other message of theirs closes the
    question (superseded) and is answered as an ordinary turn. Others' messages are not answers."""
    resolved = handle_reply(
        request.conversation_id, request.message_id, request.text, sender_id=request.sender_id
    )
    if resolved is None:
        return None
    if resolved.decision == SUPERSEDED:
        return AnswerOutcome(job_id=None, reason=SUPERSEDED_REASON, start_turn=True)
    return AnswerOutcome(job_id=resolved.job_id, reason=f"approval_{resolved.decision}")


def expire_approvals_step() -> dict[str, int]:
    """Sweep step: expire overdue approvals, then nudge their resumed jobs after commit."""
    with database.atomic():
        resolved = expire_due_approvals()
    for approval in resolved:
        publish_dispatch(approval.job_id)
    return {"expired_approvals": len(resolved)}


register_answer_handler(approval_answer)
register_step("approvals", expire_approvals_step)
warn_if_unconfigured(get_settings())
