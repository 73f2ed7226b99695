"""Tool approvals without holding a worker: ask, end the job, resume it when the user answers.

A turn that wants a tool which requires approval stores a ``tool_approval`` row and ends its job
as ``awaiting_approval`` (the lease is released; the job keeps its conversation's place in line).
:func:`take_answer`, called by ingress inside its transaction, reads the user's YES or NO and
puts the same job back in line as a ``resume``; :func:`expire_due_approvals`, a sweep step, does
the same with ``expired`` once ``APPROVAL_TTL_S`` has passed.

A message that is neither YES nor NO is not taken as an answer: it becomes a normal turn that
queues behind the waiting job and is answered, in order, once the approval is resolved.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

from zenthor.db import execute
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue import resume_job

APPROVED, REJECTED, EXPIRED = "approved", "rejected", "expired"

_YES = {
    "yes",
    "y",
    "yeah",
    "yep",
    "yup",
    "ok",
    "okay",
    "k",
    "sure",
    "approve",
    "approved",
    "go",
    "go ahead",
    "do it",
    "confirm",
    "yes please",
    "please do",
    "of course",
    "sim",
    "s",
    "pode",
    "claro",
    "isso",
    "confirmo",
    "confirmar",
    "aprovo",
    "aprovar",
    "aprovado",
    "sim pode",
    "pode sim",
    "ok pode",
    "pode fazer",
    "manda",
    "manda ver",
    "bora",
    "com certeza",
    "👍",
    "✅",
}
_NO = {
    "no",
    "n",
    "nope",
    "nah",
    "reject",
    "rejected",
    "deny",
    "denied",
    "cancel",
    "stop",
    "dont",
    "don't",
    "do not",
    "no thanks",
    "no thank you",
    "nao",
    "não",
    "nao pode",
    "não pode",
    "negativo",
    "cancela",
    "cancelar",
    "rejeito",
    "rejeitar",
    "recuso",
    "nem",
    "de jeito nenhum",
    "👎",
    "❌",
}


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"[.!?,;:]+", " ", text)
    return " ".join(text.split())


def _fold(text: str) -> str:
    """Drop accents so 'não' and 'nao' read the same."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


_YES_FOLDED = {_fold(w) for w in _YES}
_NO_FOLDED = {_fold(w) for w in _NO}


def parse_answer(text: str | None) -> str | None:
    """``approved``, ``rejected``, or None when ``text`` is not a YES/NO answer (English, Portuguese)."""
    if not text:
        return None
    normal = _fold(_normalise(text))
    if not normal:
        return None
    for candidate in (normal, normal.split(" ", 1)[0]):
        is_yes, is_no = candidate in _YES_FOLDED, candidate in _NO_FOLDED
        if is_yes != is_no:
            # "yes, do it" / "não, obrigado": a short reply led by the answer word counts.
            if candidate is normal or len(normal.split()) <= 4:
                return APPROVED if is_yes else REJECTED
    return None


def approval_prompt(tool_name: str, arguments: dict) -> str:
    """What the user reads when a tool needs their approval."""
    shown = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    if len(shown) > 300:
        shown = shown[:297] + "..."
    detail = f" with {shown}" if arguments else ""
    return f"I'd like to use {tool_name}{detail}. {APPROVAL_PROMPT_SUFFIX}"


APPROVAL_PROMPT_SUFFIX = "Reply YES to approve or NO to reject."


def idempotency_key(approval_id: int) -> str:
    """The key an approved call runs with: the same on every retry of its resume job."""
    return f"tool_approval:{approval_id}"


@dataclass(frozen=True)
class ResolvedApproval:
    """An approval the user (or the clock) resolved, and the job now back in line."""

    approval_id: int
    job_id: int
    conversation_id: int
    decision: str


_PENDING_FOR_CONVERSATION = """
SELECT a.id, a.job_id FROM tool_approval AS a
  JOIN agent_job AS j ON j.id = a.job_id AND j.status = 'awaiting_approval'
 WHERE a.conversation_id = %s AND a.status = 'pending'
 ORDER BY a.id LIMIT 1
   FOR UPDATE OF a
"""

_RESOLVE = """
UPDATE tool_approval SET status = %s, resolved_at = now()
 WHERE id = %s AND status = 'pending'
RETURNING id
"""


def _resume(approval_id: int, job_id: int, conversation_id: int, decision: str) -> ResolvedApproval | None:
    if not execute(_RESOLVE, (decision, approval_id)):
        return None  # someone else resolved it first
    if not resume_job(job_id, {"approval_id": approval_id, "decision": decision}):
        return None
    emit(
        ev.APPROVAL_RESOLVED,
        job_id=job_id,
        conversation_id=conversation_id,
        approval_id=approval_id,
        decision=decision,
    )
    return ResolvedApproval(approval_id, job_id, conversation_id, decision)


def take_answer(conversation_id: int, message_id: int, text: str) -> ResolvedApproval | None:
    """Resolve the conversation's pending approval if ``text`` answers it (caller's transaction).

    Returns None when nothing is pending or the text is not a YES/NO; then the message is an
    ordinary turn, queued behind the waiting job.
    """
    rows = execute(_PENDING_FOR_CONVERSATION, (conversation_id,))
    if not rows:
        return None
    decision = parse_answer(text)
    if decision is None:
        return None
    approval_id, job_id = rows[0]
    return _resume(approval_id, job_id, conversation_id, decision)


_DUE = """
SELECT a.id, a.job_id, a.conversation_id FROM tool_approval AS a
 WHERE a.status = 'pending' AND a.expires_at < now()
 ORDER BY a.id LIMIT %s
   FOR UPDATE SKIP LOCKED
"""


def expire_due_approvals(limit: int = 500) -> list[ResolvedApproval]:
    """Expire approvals past ``expires_at`` and resume their jobs with ``expired`` (caller's txn).

    Idempotent and safe to run concurrently: rows are locked and resolved once.
    """
    resolved = []
    for approval_id, job_id, conversation_id in execute(_DUE, (limit,)):
        if job_id is None:
            execute(_RESOLVE, (EXPIRED, approval_id))
            continue
        done = _resume(approval_id, job_id, conversation_id, EXPIRED)
        if done is not None:
            resolved.append(done)
    return resolved
