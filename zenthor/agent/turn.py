"""The turn boundary the dispatch actor calls: :class:`TurnContext` in, :class:`TurnResult` out.

The dispatch actor claims the lease, calls the configured turn (``AGENT_TURN``, by default
:func:`run_turn` here) and completes the job with the result, token-fenced, in one transaction.
A turn must call ``ctx.checkpoint(...)`` before each slow step (model call, tool call): once the
lease is lost it raises :class:`~zenthor.queue.LeaseLost` and the turn writes nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from zenthor.agent.errors import TurnError
from zenthor.queue import Lease

__all__ = ["TurnContext", "TurnError", "TurnResult", "load_turn", "run_turn"]


@dataclass
class TurnContext:
    """What a turn knows about its job, and the lease it must keep checking."""

    lease: Lease

    @property
    def job_id(self) -> int:
        return self.lease.job_id

    @property
    def conversation_id(self) -> int:
        return self.lease.conversation_id

    @property
    def message_id(self) -> int | None:
        return self.lease.message_id

    @property
    def merged_job_ids(self) -> tuple[int, ...]:
        """The jobs queued behind this one that this turn answers too (collect mode)."""
        return self.lease.merged_job_ids

    @property
    def message_ids(self) -> tuple[int, ...]:
        """Every user message this turn answers, in order (its own first)."""
        return self.lease.message_ids

    def checkpoint(self, name: str) -> None:
        """Raise :class:`~zenthor.queue.LeaseLost` if the lease is gone."""
        self.lease.check(name)


@dataclass
class TurnResult:
    """The turn's outcome, written in the completing transaction.

    ``replies`` become assistant messages with outbox rows; ``write`` (optional) adds more rows in
    the same transaction (tool messages, an approval request); ``status`` is ``done`` or
    ``awaiting_approval``; ``reply_kind`` marks the reply messages (``approval_question`` when
    the turn asks for approval).
    """

    replies: list[str] = field(default_factory=list)
    status: str = "done"
    write: Callable[[Lease], Any] | None = None
    reply_kind: str | None = None


def run_turn(ctx: TurnContext) -> TurnResult:
    """The assistant's turn: the model, the tools, approvals; the echo responder without a model.

    Raises :class:`TurnError` when the model cannot answer: retryable for rate limits, timeouts,
    server and format errors (the job's next attempt may succeed), not for auth and billing.
    """
    from zenthor.agent.echo import echo_reply
    from zenthor.agent.errors import ModelError
    from zenthor.agent.loop import AgentLoop, TurnSettings, store_outcome
    from zenthor.agent.model_client import ModelClient, ModelConfig
    from zenthor.agent.toolbox import get_registry
    from zenthor.settings import get_settings

    settings = get_settings()
    ctx.checkpoint("turn_start")
    if not settings.ai_configured:
        return TurnResult(replies=[echo_reply(ctx)])
    loop = AgentLoop(
        ctx,
        client=ModelClient(ModelConfig.from_settings(settings)),
        registry=get_registry(),
        settings=TurnSettings(
            context_window=settings.AI_CONTEXT_WINDOW,
            system_prompt=settings.AI_SYSTEM_PROMPT,
            max_steps=settings.AI_MAX_STEPS,
            tool_timeout_s=settings.AI_TOOL_TIMEOUT_S,
            approval_ttl_s=settings.APPROVAL_TTL_S,
            history_max_messages=settings.AI_HISTORY_MAX_MESSAGES,
            approval_default_language=settings.APPROVAL_DEFAULT_LANGUAGE,
        ),
    )
    try:
        outcome = loop.resume(ctx.lease.payload) if ctx.lease.kind == "resume" else loop.run()
    except ModelError as error:
        raise TurnError(error.kind, str(error), retryable=error.retryable) from error
    asking = outcome.approval is not None
    return TurnResult(
        replies=outcome.replies,
        status="awaiting_approval" if asking else "done",
        reply_kind="approval_question" if asking else None,
        write=store_outcome(
            outcome,
            conversation_id=ctx.conversation_id,
            job_id=ctx.job_id,
            approval_ttl_s=settings.APPROVAL_TTL_S,
        ),
    )


@lru_cache(maxsize=8)
def load_turn(spec: str) -> Callable[[TurnContext], TurnResult]:
    """Resolve ``module:function`` (the ``AGENT_TURN`` setting) to the turn function."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"AGENT_TURN must look like module:function, not {spec!r}")
    return getattr(importlib.import_module(module_name), attr)
