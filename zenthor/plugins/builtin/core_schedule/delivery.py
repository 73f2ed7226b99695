"""Delivering due reminders: the reminders sweep step.

In ONE transaction, the due rows are locked (``FOR UPDATE SKIP LOCKED``: two sweeps never take the
same row), then their conversations (in id order, as every outbox writer holds its conversation:
a reminder never overtakes a reply that commits at the same moment), each gets its reply written
(assistant message + outbox row) and ``delivered_at`` stamped; after commit the outbox rows are published. A crash before commit leaves the reminder
pending (the next sweep sends it); after commit the outbox owns it (I5), so it is sent once.

The functions that write replies and publish them live above this layer and are passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from zenthor.db import database, execute
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue.conversations import lock_conversations

WriteReplies = Callable[..., Any]  # write_replies(conversation_id, job_id, [text]) -> WrittenReplies
Publish = Callable[[list[int]], None]

_DUE = """
    SELECT id, conversation_id, text, due_at
      FROM reminder
     WHERE delivered_at IS NULL AND cancelled_at IS NULL AND due_at <= now()
     ORDER BY due_at, id
     LIMIT %s
       FOR UPDATE SKIP LOCKED
"""


def deliver_due_reminders(
    write_replies: WriteReplies, publish: Publish, *, limit: int = 200
) -> dict[str, int]:
    """Send every reminder that is due (up to ``limit`` per call); returns ``{"reminders_delivered": n}``."""
    outbound_ids: list[int] = []
    delivered: list[tuple[int, int, int, int]] = []
    with database.atomic():
        due = execute(_DUE, (limit,))
        # Every conversation of the batch before the first reply, in id order: the outbox rows then
        # commit in id order within each conversation (I5), and two sweeps cannot deadlock.
        lock_conversations(row[1] for row in due)
        for reminder_id, conversation_id, text, due_at in due:
            written = write_replies(conversation_id, None, [text])
            outbound_id = written.outbound_ids[0] if written.outbound_ids else None
            execute(
                "UPDATE reminder SET delivered_at = now(), outbound_id = %s WHERE id = %s",
                (outbound_id, reminder_id),
            )
            outbound_ids.extend(written.outbound_ids)
            late_ms = int((datetime.now(UTC) - due_at).total_seconds() * 1000)
            delivered.append((reminder_id, conversation_id, outbound_id, late_ms))
    for reminder_id, conversation_id, outbound_id, late_ms in delivered:
        emit(
            ev.REMINDER_DELIVERED,
            reminder_id=reminder_id,
            conversation_id=conversation_id,
            outbound_id=outbound_id,
            late_ms=late_ms,
        )
    if outbound_ids:
        publish(outbound_ids)
    return {"reminders_delivered": len(delivered)}
