"""The model's context: the conversation's messages, in order, within ``AI_CONTEXT_WINDOW``.

Tokens are estimated (about four characters a token, plus a few per message), which is close
enough for budgeting and needs no tokenizer. When the history does not fit, the oldest messages
leave it: they are compacted into a short extractive summary when room allows, else dropped, and
an ``agent.context.compacted`` event says which. A tool call and its results always stay or
leave together, and the newest messages are always kept.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from zenthor.db import execute
from zenthor.models import Conversation
from zenthor.observability import emit
from zenthor.observability import events as ev

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
SUMMARY_LINE_CHARS = 120


def estimate_text_tokens(text: str | None) -> int:
    """Estimated tokens of a text."""
    return math.ceil(len(text or "") / CHARS_PER_TOKEN)


def estimate_message_tokens(message: dict) -> int:
    """Estimated tokens of one chat message, tool calls included."""
    tokens = MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(message.get("content"))
    if message.get("tool_calls"):
        tokens += estimate_text_tokens(json.dumps(message["tool_calls"]))
    return tokens


# The tool schemas' estimate, kept for the process: every turn sends the same schemas, and
# encoding them only to count their characters cost ~30 us, twice per step. The key is a deep copy
# compared by content (~2 us), so a list that changed, even in place, is counted again.
_tools_estimate: tuple[list[dict], int] | None = None


def estimate_tools_tokens(tools: list[dict] | None) -> int:
    """Estimated tokens of a request's tool schemas (0 without tools)."""
    global _tools_estimate
    if not tools:
        return 0
    cached = _tools_estimate  # one read: another thread may replace it meanwhile
    if cached is not None and cached[0] == tools:
        return cached[1]
    tokens = estimate_text_tokens(json.dumps(tools))
    _tools_estimate = (copy.deepcopy(tools), tokens)
    return tokens


def estimate_tokens(messages: list[dict], tools: list[dict] | None = None) -> int:
    """Estimated tokens of a whole request: its messages and its tool schemas."""
    return sum(estimate_message_tokens(m) for m in messages) + estimate_tools_tokens(tools)


def output_reserve(window: int) -> int:
    """Tokens kept free for the model's answer."""
    return min(1024, window // 4)


# --- the conversation ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationInfo:
    """The columns of a conversation a turn reads (its prompt's channel, its tools' context)."""

    id: int
    channel: str
    account_id: str
    chat_id: str


# Plain SQL: Peewee's ``Conversation.get_by_id`` spent ~0.2 ms of CPU per turn building this query.
_CONVERSATION = "SELECT channel, account_id, chat_id FROM conversation WHERE id = %s"


def load_conversation(conversation_id: int) -> ConversationInfo | Conversation:
    """The turn's conversation; ``Conversation.DoesNotExist`` when there is none (as ``get_by_id``)."""
    rows = execute(_CONVERSATION, (conversation_id,))
    if not rows:
        return Conversation.get_by_id(conversation_id)  # raises the model's own DoesNotExist
    channel, account_id, chat_id = rows[0]
    return ConversationInfo(conversation_id, channel, account_id, chat_id)


# Plain SQL: building the same query through Peewee cost ~0.3 ms of CPU per turn, this ~0.05 ms.
_MESSAGE_TEXTS = "SELECT content FROM message WHERE id = ANY(%s::bigint[]) ORDER BY id"


def message_texts(message_ids: Iterable[int]) -> list[str]:
    """The contents of the messages ``message_ids``, in id order (a turn's own user messages:
    one, or a collected burst's)."""
    ids = list(message_ids)
    return [row[0] or "" for row in execute(_MESSAGE_TEXTS, (ids,))] if ids else []


# --- loading the history --------------------------------------------------------------------

# Newest first, one keyset page at a time. The row comparison is on purpose: only the composite
# ``message_conversation_id_idx`` can serve it, so the planner cannot walk ``message_pkey``
# backwards through every newer row of every other chat (a plain ``m.id < %s`` lets it; see
# docs/plans/issue-11.md S3). A user message's job comes from ``agent_job_message_id`` (0009).
_HISTORY_PAGE = """
SELECT m.id, m.role, m.content, m.tool_calls, m.tool_call_id,
       coalesce(m.job_id, (SELECT j.id FROM agent_job AS j WHERE j.message_id = m.id
                            ORDER BY j.id LIMIT 1)) AS job
  FROM message AS m
 WHERE m.conversation_id = %(conversation)s
   AND (m.conversation_id, m.id) < (%(conversation)s, %(before)s)
 ORDER BY m.id DESC
 LIMIT %(limit)s
"""

HISTORY_PAGE_ROWS = 200
# The rows a turn reads without a window. With one, the bound comes from the window (the most
# messages that could fit it and its summary), so it never cuts a chat that fits; either way a
# turn's cost follows the window, not the chat's length (issue 11, item 9).
HISTORY_MAX_MESSAGES = 1000
_NO_ROW_ID = 2**63 - 1  # "before" of the first page: newer than any message id


class History(list):
    """The messages of :func:`load_history`; ``truncated`` says older ones were not read."""

    truncated: bool = False


def _summary_line(message: dict) -> str | None:
    """The line :func:`_summary` would write for ``message`` (None: it writes none)."""
    text = " ".join((message.get("content") or "").split())
    if not text or message.get("role") not in ("user", "assistant"):
        return None
    if len(text) > SUMMARY_LINE_CHARS:
        text = text[: SUMMARY_LINE_CHARS - 1] + "…"
    return f"- {message['role']}: {text}"


def load_history(
    conversation_id: int,
    job_id: int,
    message_id: int | None,
    *,
    window: int | None = None,
    max_messages: int = HISTORY_MAX_MESSAGES,
    batch: Collection[int] = (),
) -> History:
    """The conversation as chat messages, as this job should see it: its newest part.

    Messages of later jobs are left out (they wait their turn). Each job's messages stay
    together, so a turn that waited for approval reads as one piece: the user's message, the
    call, its result (the tool's, a refusal, or "not run" when the user wrote something else),
    the question and the user's answer (:func:`repair_tool_pairs` puts each result right after
    its call). User messages that belong to no job exist only from before approval answers
    joined their job (migration 0007); they are skipped.

    Only the tail that can reach the model is read, newest first: rows until their estimate
    fills ``window`` (minus the output reserve), then rows until their summary lines fill the
    summary's room (so :func:`fit_to_window` summarizes as it would over the whole chat). Kept
    rows are capped by what could fit the window (or ``max_messages`` without one, or when it is
    larger). Rows of later jobs are skipped, not counted: a resumed old job reads past them.
    A result whose call was not read is dropped later by :func:`repair_tool_pairs`.

    ``batch`` names the later jobs merged into this one (collect mode, issue 14): their messages
    are this job's, read after its own. (Once the turn completes, they join its job for good.)
    """
    batch = frozenset(batch)
    room = summary_room = None
    per_message = 0
    if window is not None:
        room = window - output_reserve(window)
        per_message = max(room // 2, 16)  # as fit_to_window cuts a single huge message
        summary_room = max(window // 10, 32)
        # Every kept message costs at least its overhead and a token, every summary line two:
        # more rows than this cannot fit, so the cap never binds before the window does.
        max_messages = max(max_messages, room // (MESSAGE_OVERHEAD_TOKENS + 1) + summary_room // 2 + 1)
    newest_first: list[tuple[int, str, str | None, object, str | None, int | None]] = []
    used = summary_used = 0
    before = _NO_ROW_ID
    truncated = False
    full = False
    while not full:
        page = execute(
            _HISTORY_PAGE,
            {"conversation": conversation_id, "before": before, "limit": HISTORY_PAGE_ROWS},
        )
        for row in page:
            row_id, role, content, _, _, job = row
            before = row_id
            if job is None and (role == "user" or (message_id is not None and row_id > message_id)):
                continue
            if job in batch:
                row = (*row[:5], job_id)
            elif job is not None and job > job_id:
                continue
            if full:  # a kept row beyond the budget: older messages exist that we did not read
                truncated = True
                break
            newest_first.append(row)
            if len(newest_first) >= max_messages:
                full = True
            elif room is not None:
                if used < room:
                    # estimate_message_tokens, without building a message per row read
                    tokens = MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(content)
                    if row[3]:
                        tokens += estimate_text_tokens(json.dumps(row[3]))
                    used += min(tokens, per_message)
                else:
                    line = _summary_line({"role": role, "content": content})
                    summary_used += estimate_text_tokens(line) + 1 if line else 0
                    full = summary_used > summary_room
        if len(page) < HISTORY_PAGE_ROWS:
            break
        if full and not truncated:
            # The budget filled on a page's last kept row: one more row tells if older ones exist.
            truncated = bool(
                execute(_HISTORY_PAGE, {"conversation": conversation_id, "before": before, "limit": 1})
            )
            break
    keyed: list[tuple[int, int, dict]] = []
    anchor = 0
    for row_id, role, content, tool_calls, tool_call_id, job in reversed(newest_first):
        if job is None:
            job = anchor  # a jobless assistant/system note stays where it was written
        anchor = job
        message: dict = {"role": role, "content": content or ""}
        if role == "assistant" and tool_calls:
            message["tool_calls"] = tool_calls
        if role == "tool":
            message["tool_call_id"] = tool_call_id
        keyed.append((job, row_id, message))
    keyed.sort(key=lambda item: (item[0], item[1]))
    history = History(message for _, _, message in keyed)
    history.truncated = truncated
    return history


WAITING_RESULT = "Waiting for the user's approval; not run yet."


def repair_tool_pairs(
    messages: list[dict],
    *,
    open_call_ids: set[str] | None = None,
    waiting_call_ids: set[str] | None = None,
) -> list[dict]:
    """Put each tool result right after the assistant message that called it, as the API requires.

    Results nobody called are dropped; a call without a result (a turn that failed after the
    call) gets a placeholder result, except for ``open_call_ids`` (calls this turn is still
    answering, whose results come later in ``messages``). A call in ``waiting_call_ids`` (another
    job's, waiting for its asker's approval) reads :data:`WAITING_RESULT` instead.
    """
    open_call_ids = open_call_ids or set()
    waiting_call_ids = waiting_call_ids or set()
    results: dict[str, dict] = {}
    for message in messages:
        if message.get("role") == "tool" and message.get("tool_call_id"):
            results[message["tool_call_id"]] = message
    repaired: list[dict] = []
    placed: set[str] = set()
    for message in messages:
        role = message.get("role")
        if role == "tool":
            continue
        repaired.append(message)
        if role == "assistant" and message.get("tool_calls"):
            for call in message["tool_calls"]:
                call_id = call.get("id")
                if call_id in results and call_id not in placed:
                    repaired.append(results[call_id])
                    placed.add(call_id)
                elif call_id not in open_call_ids:
                    content = (
                        WAITING_RESULT if call_id in waiting_call_ids else "error: no result was recorded"
                    )
                    repaired.append({"role": "tool", "tool_call_id": call_id, "content": content})
    return repaired


# --- fitting the window -----------------------------------------------------------------------


@dataclass(frozen=True)
class Compaction:
    """What :func:`fit_to_window` did to the history."""

    mode: str  # none | summarized | dropped
    dropped_messages: int
    kept_messages: int
    estimated_tokens: int
    history_truncated: bool = False  # load_history left older messages unread


def _units(history: list[dict]) -> list[list[dict]]:
    """Group messages so a tool call and its results are never split."""
    units: list[list[dict]] = []
    for message in history:
        if message.get("role") == "tool" and units:
            units[-1].append(message)
        else:
            units.append([message])
    return units


def _summary(dropped: list[dict], budget_tokens: int) -> str | None:
    """An extractive summary of dropped messages, newest lines kept, within ``budget_tokens``."""
    # No count in the header: only the history's tail is read, so the count would be a guess.
    header = "Summary of earlier messages of this conversation (oldest first):"
    lines: list[str] = []
    used = estimate_text_tokens(header) + MESSAGE_OVERHEAD_TOKENS
    for message in reversed(dropped):
        line = _summary_line(message)
        if line is None:
            continue
        cost = estimate_text_tokens(line) + 1
        if used + cost > budget_tokens:
            break
        lines.append(line)
        used += cost
    if not lines:
        return None
    return "\n".join([header, *reversed(lines)])


def _truncate(message: dict, max_tokens: int) -> dict:
    content = message.get("content") or ""
    limit = max(max_tokens, 16) * CHARS_PER_TOKEN
    if len(content) <= limit:
        return message
    return {**message, "content": content[: limit - 40] + " …[truncated to fit the context]"}


def fit_to_window(
    system: str,
    history: list[dict],
    turn_messages: list[dict],
    *,
    window: int,
    tools: list[dict] | None = None,
    open_call_ids: set[str] | None = None,
    waiting_call_ids: set[str] | None = None,
    history_truncated: bool | None = None,
) -> tuple[list[dict], Compaction]:
    """The messages to send: system prompt, as much recent history as fits, this turn's messages.

    The estimate of the result (tools included) never exceeds ``window`` minus the output reserve.
    ``history_truncated`` (default: the :class:`History`'s own flag) says older messages were not
    read; when nothing else was dropped, that is reported as mode ``dropped``.
    """
    if history_truncated is None:
        history_truncated = getattr(history, "truncated", False)
    budget = window - output_reserve(window)
    tools_tokens = estimate_tools_tokens(tools)
    budget -= tools_tokens
    system_message = _truncate({"role": "system", "content": system}, budget // 4)
    system_tokens = estimate_message_tokens(system_message)
    budget -= system_tokens
    # A single huge message (a pasted document, a long tool result) is cut to leave room.
    per_message = max(budget // 2, 16)
    combined = repair_tool_pairs(
        history + turn_messages, open_call_ids=open_call_ids, waiting_call_ids=waiting_call_ids
    )
    combined = [_truncate(m, per_message - MESSAGE_OVERHEAD_TOKENS) for m in combined]
    units = _units(combined)
    kept: list[list[dict]] = []
    used = 0
    for unit in reversed(units):
        cost = sum(estimate_message_tokens(m) for m in unit)
        if used + cost > budget and kept:
            break
        if used + cost > budget:  # even the newest unit alone does not fit: cut it harder
            unit = [_truncate(m, (budget // len(unit)) - MESSAGE_OVERHEAD_TOKENS) for m in unit]
            cost = sum(estimate_message_tokens(m) for m in unit)
        kept.append(unit)
        used += cost
    kept.reverse()
    dropped = [m for unit in units[: len(units) - len(kept)] for m in unit]
    messages = [system_message]
    # estimate_tokens(messages, tools), from the estimates made above: each message counted once.
    estimate = tools_tokens + system_tokens + used
    mode = "none"
    if dropped:
        summary = _summary(dropped, min(budget - used, max(window // 10, 32)))
        if summary is not None:
            messages.append({"role": "system", "content": summary})
            estimate += estimate_message_tokens(messages[-1])
            mode = "summarized"
        else:
            mode = "dropped"
    elif history_truncated:
        mode = "dropped"  # the row cap left older messages unread; nothing else was dropped
    kept_messages = [m for unit in kept for m in unit]
    messages.extend(kept_messages)
    return messages, Compaction(mode, len(dropped), len(kept_messages), estimate, history_truncated)


def report_compaction(compaction: Compaction, *, job_id: int, conversation_id: int, window: int) -> None:
    """Emit ``agent.context.compacted`` when older messages left the context."""
    if compaction.mode == "none":
        return
    emit(
        ev.CONTEXT_COMPACTED,
        job_id=job_id,
        conversation_id=conversation_id,
        mode=compaction.mode,
        dropped_messages=compaction.dropped_messages,
        kept_messages=compaction.kept_messages,
        estimated_tokens=compaction.estimated_tokens,
        history_truncated=compaction.history_truncated,
        window=window,
    )
