"""The core-memory tools: ``remember``, ``recall`` and ``forget``, per contact, in ``memory_note``.

A note belongs to the contact (channel, account_id, sender_id); a conversation without a sender
(a channel that does not report one) keys the notes by its chat id instead.

``remember`` is idempotent by content: a contact keeps one note per text, so a retried turn that
runs the call again (tools that need no approval get no idempotency key) returns the note it
stored the first time instead of a second copy.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import Any

from peewee import fn

from zenthor.db import database
from zenthor.models.memory import MemoryNote
from zenthor.plugins.tools import ToolContext, ToolError


def _owner(context: ToolContext) -> Any:
    sender = context.sender_id or context.chat_id
    return (
        (MemoryNote.channel == context.channel)
        & (MemoryNote.account_id == context.account_id)
        & (MemoryNote.sender_id == sender)
    )


def _matching(query: str) -> Any:
    """Every word of ``query`` appears in the note (case-insensitive; strpos, so no wildcards)."""
    words = query.lower().split()
    return reduce(operator.and_, [fn.strpos(fn.lower(MemoryNote.text), word) > 0 for word in words])


def activate(config: dict[str, Any]) -> dict[str, Any]:
    """Return the handlers, bound to the configured limits."""
    max_notes = config["max_notes_per_contact"]
    max_chars = config["max_note_chars"]

    def remember(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        text = arguments["text"].strip()
        if not text:
            raise ToolError("the note is empty")
        if len(text) > max_chars:
            raise ToolError(f"the note is {len(text)} characters long; the limit is {max_chars}")
        with database.atomic():
            # Serialise writers of one contact, so the limit holds under concurrent calls.
            database.execute_sql(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"memory:{context.channel}:{context.account_id}:{context.sender_id or context.chat_id}",),
            )
            same = (
                MemoryNote.select(MemoryNote.id)
                .where(_owner(context) & (MemoryNote.text == text))
                .order_by(MemoryNote.id)
                .first()
            )
            if same is not None:
                # Checked before the limit: a repeat at the limit still succeeds, with no new row.
                return {"remembered": True, "note_id": same.id}
            count = MemoryNote.select().where(_owner(context)).count()
            if count >= max_notes:
                raise ToolError(
                    f"already {count} notes kept for this person (limit {max_notes}); forget some first"
                )
            note = MemoryNote.create(
                channel=context.channel,
                account_id=context.account_id,
                sender_id=context.sender_id or context.chat_id,
                text=text,
            )
        return {"remembered": True, "note_id": note.id}

    def recall(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        query = MemoryNote.select().where(_owner(context))
        if arguments.get("query", "").strip():
            query = query.where(_matching(arguments["query"]))
        notes = query.order_by(MemoryNote.id.desc()).limit(arguments.get("limit", 20))
        return {
            "notes": [
                {"note_id": n.id, "text": n.text, "created_at": n.created_at.isoformat(timespec="seconds")}
                for n in notes
            ]
        }

    def forget(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        note_id = arguments.get("note_id")
        query = (arguments.get("query") or "").strip()
        if note_id is None and not query:
            raise ToolError("say which notes to forget: a note_id, or a query")
        condition = _owner(context)
        if note_id is not None:
            condition = condition & (MemoryNote.id == note_id)
        if query:
            condition = condition & _matching(query)
        deleted = MemoryNote.delete().where(condition).execute()
        if deleted == 0:
            raise ToolError("no note of this person matches; nothing was forgotten")
        return {"forgotten": deleted}

    return {"remember": remember, "recall": recall, "forget": forget}
