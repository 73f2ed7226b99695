"""The echo responder: answers when no model is configured, so the pipeline can be seen working."""

from __future__ import annotations

from typing import Any

from zenthor.agent.context import message_texts
from zenthor.observability import emit
from zenthor.observability import events as ev

ECHO_PREFIX = "[echo responder: no AI model configured] You said: "


def missing_model_settings(settings: Any) -> list[str]:
    """Names of the settings a model needs that are unset."""
    return [name for name in ("AI_BASE_URL", "AI_MODEL") if not getattr(settings, name)]


def warn_if_unconfigured(settings: Any) -> bool:
    """Log ``config.warning`` naming the missing model settings; True when the echo will answer."""
    missing = missing_model_settings(settings)
    if missing:
        emit(
            ev.CONFIG_WARNING,
            setting=",".join(missing),
            detail=f"no AI model configured ({', '.join(missing)} unset): replies come from the echo responder",
        )
    return bool(missing)


def echo_reply(ctx: Any) -> str:
    """The echo of the job's user message (of every message the turn answers, one per line, in
    collect mode)."""
    message_ids = getattr(ctx, "message_ids", None) or ([ctx.message_id] if ctx.message_id else [])
    texts = message_texts(message_ids)
    emit(ev.ECHO_RESPONDER, job_id=ctx.job_id, conversation_id=ctx.conversation_id)
    return ECHO_PREFIX + "\n".join(texts)
