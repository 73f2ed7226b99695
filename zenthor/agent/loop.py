"""The tool loop: ask the model, run the tools it asks for, until it answers (at most N steps).

Nothing is written while the loop runs: the messages it produces (the assistant's tool calls,
the tool results) are collected and stored by ``TurnResult.write`` in the transaction that
completes the job, token-fenced, so a turn whose lease was lost writes nothing.

A tool that requires approval is not run: the loop stops, and the turn ends as
``awaiting_approval`` with a ``tool_approval`` row. The ``resume`` job later answers that call
(the tool's result, or the refusal) and any calls after it, then asks the model again. A reply
that is not a yes or no closes the question instead (:func:`zenthor.agent.approvals.handle_reply`):
the calls get "not run" results and the reply is answered as a new turn.

Idempotency across retries. A tool commits its side effect at once (in its own thread, outside
the job's lease), while the turn's messages are written only when the job completes; a turn that
fails after a tool ran (a model error, a lost lease) is retried and runs the tool again. The
approved call is named by its ``tool_approval`` row, which every retry of the resume job reads
again, so it runs with ``ToolContext.idempotency_key = "tool_approval:<id>"`` and a tool that
honours the key (core-schedule ``remind``) does its work once. Calls that need no approval get
no key: a retry asks the model again, and a new ``tool_call_id`` or new arguments name nothing
stable; such tools must be safe to repeat (read-only, or idempotent by content).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg2.extras import Json

from zenthor.agent.approval_question import approval_question
from zenthor.agent.approvals import (
    APPROVED,
    EXPIRED,
    REJECTED,
    idempotency_key,
    supersede_earlier_questions,
    waiting_call_ids,
)
from zenthor.agent.context import (
    HISTORY_MAX_MESSAGES,
    fit_to_window,
    load_conversation,
    load_history,
    message_texts,
    report_compaction,
)
from zenthor.agent.errors import ModelError, TurnError
from zenthor.agent.language import guess_language
from zenthor.agent.model_client import ModelClient, ToolCall
from zenthor.agent.prompts import system_prompt
from zenthor.agent.toolbox import (
    BadToolCall,
    ToolRegistryLike,
    make_tool_context,
    parse_arguments,
    tool_schemas,
)
from zenthor.db import execute, give_back
from zenthor.models import Message, ToolApproval
from zenthor.observability import emit
from zenthor.observability import events as ev

TOOL_RESULT_MAX_CHARS = 8000
STEP_LIMIT_REPLY = (
    "Sorry, I couldn't finish this: it needed more steps than I'm allowed for one message. "
    "Could you ask for a smaller part of it?"
)
DECISION_RESULTS = {
    REJECTED: "The user rejected this tool call; it was not run. Do not retry it unless they ask.",
    EXPIRED: "The user did not answer the approval request in time; the tool was not run.",
}
# An answer that came after expires_at (before the sweep expired it): the turn tells the user.
LATE_ANSWER_RESULT = (
    "The user answered after the approval request had expired; the tool was not run. Tell them, "
    "and ask again if they still want it."
)


@dataclass
class PendingApproval:
    """A tool call waiting for the user's approval."""

    call: ToolCall
    arguments: dict


@dataclass
class LoopOutcome:
    """What the loop ended with: a reply, or a question for the user."""

    replies: list[str]
    new_messages: list[dict] = field(default_factory=list)
    approval: PendingApproval | None = None


@dataclass
class TurnSettings:
    """The knobs the loop reads (from settings)."""

    context_window: int
    system_prompt: str | None
    max_steps: int
    tool_timeout_s: float
    approval_ttl_s: int
    history_max_messages: int = HISTORY_MAX_MESSAGES
    # The approval question's language when the user's message does not tell (en or pt).
    approval_default_language: str = "en"


class AgentLoop:
    """One turn of the assistant for one job."""

    def __init__(
        self,
        ctx: Any,
        *,
        client: ModelClient,
        registry: ToolRegistryLike,
        settings: TurnSettings,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.registry = registry
        self.settings = settings
        self.conversation = load_conversation(ctx.conversation_id)
        self.tools = registry.openai_tools()
        self.schemas = tool_schemas(self.tools)
        self.names = set(registry.tool_names())
        self.new: list[dict] = []
        self._tool_context = None
        self._message: Message | None = None

    # --- entry points -----------------------------------------------------------------------------
    def run(self) -> LoopOutcome:
        """A fresh turn: answer the job's message."""
        history = load_history(
            self.ctx.conversation_id,
            self.ctx.job_id,
            self.ctx.message_id,
            window=self.settings.context_window,
            max_messages=self.settings.history_max_messages,
            batch=getattr(self.ctx, "merged_job_ids", ()),
        )
        return self._steps(history)

    def resume(self, payload: Any) -> LoopOutcome:
        """A resumed turn: answer the approved (or refused) call and the calls after it, go on."""
        approval, decision = self._approval_from(payload)
        history = load_history(
            self.ctx.conversation_id,
            self.ctx.job_id,
            self.ctx.message_id,
            window=self.settings.context_window,
            max_messages=self.settings.history_max_messages,
            batch=getattr(self.ctx, "merged_job_ids", ()),
        )
        open_calls = self._open_calls(history)
        for index, call in enumerate(open_calls):
            if call.id != approval.tool_call_id:
                continue
            if decision == APPROVED:
                # The same key on every retry of this resume: the tool does its work once.
                self._run_tool(call, dict(approval.tool_input or {}), idempotency_key(approval.id))
            elif decision == EXPIRED and payload.get("late"):
                self._add_result(call, LATE_ANSWER_RESULT)
            else:
                self._add_result(call, DECISION_RESULTS[decision])
            pending = self._answer_calls(open_calls[index + 1 :])
            if pending is not None:
                return self._ask(pending)
            break
        else:
            # The call is not open any more (a retried resume after a partial write): go on.
            pass
        return self._steps(history)

    # --- the loop ---------------------------------------------------------------------------------
    def _steps(self, history: list[dict]) -> LoopOutcome:
        window = self.settings.context_window
        system = system_prompt(self.conversation.channel, self.settings.system_prompt)
        shrunk = False
        step = 0
        # Calls of other jobs still waiting for their asker (a group member's question): the
        # model reads them as waiting, not as failed.
        waiting = waiting_call_ids(self.ctx.conversation_id, self.ctx.job_id)
        while step < self.settings.max_steps:
            messages, compaction = fit_to_window(
                system, history, self.new, window=window, tools=self.tools, waiting_call_ids=waiting
            )
            report_compaction(
                compaction, job_id=self.ctx.job_id, conversation_id=self.ctx.conversation_id, window=window
            )
            give_back()  # no connection held while the model thinks (issue 13, item 4)
            try:
                reply = self.client.complete(
                    messages, tools=self.tools or None, checkpoint=self.ctx.checkpoint, job_id=self.ctx.job_id
                )
            except ModelError as error:
                if error.kind == "context_overflow" and not shrunk:
                    # The server counts tokens differently from our estimate: try once with half.
                    shrunk, window = True, max(window // 2, 256)
                    continue
                raise
            step += 1
            if not reply.tool_calls:
                return LoopOutcome(replies=[reply.content.strip()], new_messages=self.new)
            self.new.append(
                {
                    "role": "assistant",
                    "content": reply.content or "",
                    "tool_calls": [call.as_openai() for call in reply.tool_calls],
                }
            )
            pending = self._answer_calls(reply.tool_calls)
            if pending is not None:
                return self._ask(pending)
        emit(ev.TURN_STEP_LIMIT, job_id=self.ctx.job_id, steps=step)
        return LoopOutcome(replies=[STEP_LIMIT_REPLY], new_messages=self.new)

    def _answer_calls(self, calls: list[ToolCall]) -> PendingApproval | None:
        """Run each call in order; stop at the first one that needs the user's approval."""
        for call in calls:
            if call.name not in self.names:
                emit(
                    ev.TOOL_CALL_REFUSED, job_id=self.ctx.job_id, tool=call.name[:100], reason="unknown_tool"
                )
                available = ", ".join(sorted(self.names)) or "none"
                self._add_result(
                    call, f"error: there is no tool named {call.name!r}. Available tools: {available}."
                )
                continue
            try:
                arguments = parse_arguments(call.name, call.arguments, self.schemas.get(call.name))
            except BadToolCall as error:
                emit(ev.TOOL_CALL_REFUSED, job_id=self.ctx.job_id, tool=call.name, reason="invalid_arguments")
                self._add_result(call, f"error: {error}. Fix the arguments and call the tool again.")
                continue
            if self.registry.requires_approval(call.name):
                return PendingApproval(call, arguments)
            self._run_tool(call, arguments)
        return None

    def _run_tool(self, call: ToolCall, arguments: dict, key: str | None = None) -> None:
        self.ctx.checkpoint("tool_call")
        started = time.monotonic()
        context = self._context()
        if key is not None:
            context = dataclasses.replace(context, idempotency_key=key)
        # The tool runs on a thread of its own with its own connection: holding ours meanwhile
        # could leave it none (hold-and-wait on a small pool).
        give_back()
        try:
            result = self.registry.call(call.name, arguments, context, timeout_s=self.settings.tool_timeout_s)
            ok, content, error = bool(result.ok), str(result.content or ""), result.error
        except Exception as raised:  # noqa: BLE001 - the registry promises not to raise; be safe anyway
            ok, content, error = False, "", f"{type(raised).__name__}: {raised}"
        emit(
            ev.AGENT_TOOL_CALLED,
            job_id=self.ctx.job_id,
            tool=call.name,
            ok=ok,
            duration_ms=int((time.monotonic() - started) * 1000),
            error=(error or None) and str(error)[:200],
        )
        if not ok:
            content = f"error: {error or content or 'the tool failed'}"
        self._add_result(call, content)

    def _add_result(self, call: ToolCall, content: str) -> None:
        if len(content) > TOOL_RESULT_MAX_CHARS:
            content = content[:TOOL_RESULT_MAX_CHARS] + " …[truncated]"
        self.new.append({"role": "tool", "tool_call_id": call.id, "content": content})

    def _ask(self, pending: PendingApproval) -> LoopOutcome:
        # A registry without describe() (a test's stand-in, an older one) still gets a question.
        describe = getattr(self.registry, "describe", None)
        question = approval_question(
            pending.call.name,
            pending.arguments,
            description=describe(pending.call.name) if callable(describe) else None,
            language=self._language(),
            valid_for_s=self.settings.approval_ttl_s,
        )
        return LoopOutcome(replies=[question], new_messages=self.new, approval=pending)

    # --- helpers ----------------------------------------------------------------------------------
    def _language(self) -> str:
        """The language of the job's user message (for a resume, the message that started it,
        which the job keeps; in collect mode, all the messages the turn answers, since "hi"
        alone tells little); the configured default when it does not tell."""
        message_ids = tuple(getattr(self.ctx, "message_ids", ()))
        if len(message_ids) > 1:
            text = "\n".join(message_texts(message_ids))
        else:
            message = self._user_message()
            text = message.content if message is not None else None
        return guess_language(text) or self.settings.approval_default_language

    def _user_message(self) -> Message | None:
        if self._message is None and self.ctx.message_id:
            self._message = Message.get_or_none(Message.id == self.ctx.message_id)
        return self._message

    def _context(self) -> Any:
        if self._tool_context is None:
            message = self._user_message()
            self._tool_context = make_tool_context(
                conversation_id=self.conversation.id,
                channel=self.conversation.channel,
                account_id=self.conversation.account_id,
                chat_id=self.conversation.chat_id,
                sender_id=message.sender_id if message is not None else None,
                job_id=self.ctx.job_id,
            )
        return self._tool_context

    def _approval_from(self, payload: Any) -> tuple[ToolApproval, str]:
        if not isinstance(payload, dict) or "approval_id" not in payload:
            raise TurnError(
                "format", f"resume job without an approval in its payload: {payload!r}", retryable=False
            )
        decision = payload.get("decision")
        if decision not in (APPROVED, REJECTED, EXPIRED):
            raise TurnError("format", f"resume job with an unknown decision {decision!r}", retryable=False)
        approval = ToolApproval.get_or_none(ToolApproval.id == payload["approval_id"])
        if approval is None or approval.job_id != self.ctx.job_id:
            raise TurnError(
                "format", f"approval {payload['approval_id']} does not belong to this job", retryable=False
            )
        return approval, decision

    @staticmethod
    def _open_calls(history: list[dict]) -> list[ToolCall]:
        """Calls of the last assistant tool-call message that have no result yet."""
        answered = {m.get("tool_call_id") for m in history if m.get("role") == "tool"}
        for message in reversed(history):
            if message.get("role") == "assistant" and message.get("tool_calls"):
                return [
                    ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
                    for c in message["tool_calls"]
                    if c.get("id") not in answered
                ]
        return []


def store_outcome(
    outcome: LoopOutcome, *, conversation_id: int, job_id: int, approval_ttl_s: int
) -> Callable[[Any], None]:
    """The ``TurnResult.write`` callback: the turn's tool messages and its approval row, if any.

    The approval names the sender of the job's message as the one asked; an earlier question of
    theirs still open in this conversation is superseded (one open question per member)."""

    def write(lease: Any) -> None:
        for message in outcome.new_messages:
            Message.create(
                conversation=conversation_id,
                role=message["role"],
                content=message.get("content") or "",
                tool_calls=message.get("tool_calls"),
                tool_call_id=message.get("tool_call_id"),
                job_id=job_id,
            )
        if outcome.approval is not None:
            pending = outcome.approval
            # expires_at on the database clock, like every lease, so hosts' clocks cannot disagree.
            rows = execute(
                "INSERT INTO tool_approval (conversation_id, job_id, tool_name, tool_input, tool_call_id,"
                " expires_at, asked_sender_id) VALUES (%s, %s, %s, %s, %s, now() + %s * interval '1 second',"
                " (SELECT m.sender_id FROM agent_job AS j JOIN message AS m ON m.id = j.message_id"
                " WHERE j.id = %s)) RETURNING id, asked_sender_id",
                (
                    conversation_id,
                    job_id,
                    pending.call.name,
                    Json(pending.arguments),
                    pending.call.id,
                    approval_ttl_s,
                    job_id,
                ),
            )
            supersede_earlier_questions(conversation_id, job_id, rows[0][1])
            emit(
                ev.APPROVAL_REQUESTED,
                job_id=job_id,
                conversation_id=conversation_id,
                approval_id=rows[0][0],
                tool=pending.call.name,
                expires_in_s=approval_ttl_s,
            )

    return write
