"""The core-schedule tools: ``remind`` (needs approval: it sends a message later), ``list``, ``cancel``.

A reminder is a row in ``reminder``; the reminders sweep step (:mod:`.delivery`) sends it when due.

``remind`` commits its row at once, outside the job's lease, so a turn retried after it ran (the
next model call failed, the lease was lost) runs it again. An approved call carries the approval's
``ToolContext.idempotency_key``; the row stores it under a unique index, and a call whose key is
already stored returns that reminder instead of creating another (``INSERT ... ON CONFLICT DO
NOTHING``, then ``SELECT``: two concurrent runs create one row too). ``cancel`` is idempotent by
content: cancelling a reminder that is already cancelled succeeds again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from zenthor.db import execute
from zenthor.models.reminder import Reminder
from zenthor.plugins.builtin.timeutil import describe, parse_datetime, zone
from zenthor.plugins.tools import ToolContext, ToolError

# A time a little in the past ("remind me now") is still accepted and sent at the next sweep.
PAST_TOLERANCE = timedelta(minutes=2)

_INSERT = """
INSERT INTO reminder (conversation_id, channel, account_id, chat_id, sender_id, job_id, text, due_at,
                      timezone, idempotency_key)
VALUES (%(conversation_id)s, %(channel)s, %(account_id)s, %(chat_id)s, %(sender_id)s, %(job_id)s,
        %(text)s, %(due_at)s, %(timezone)s, %(key)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, due_at, timezone
"""

# Scoped to the conversation: a key never reveals another chat's reminder.
_BY_KEY = """
SELECT id, due_at, timezone FROM reminder WHERE idempotency_key = %s AND conversation_id = %s
"""


def _scheduled(reminder_id: int, due_at: datetime, tz_name: str) -> dict[str, Any]:
    """What ``remind`` answers, the same for the first run and for a repeat of the same call."""
    return {"scheduled": True, "reminder_id": reminder_id, "due": describe(due_at.astimezone(zone(tz_name)))}


def _pending(conversation_id: int) -> Any:
    return (
        (Reminder.conversation_id == conversation_id)
        & Reminder.delivered_at.is_null()
        & Reminder.cancelled_at.is_null()
    )


def activate(config: dict[str, Any]) -> dict[str, Any]:
    """Check the configured timezone and return the handlers."""
    default_tz = config["default_timezone"]
    zone(default_tz)
    max_ahead = timedelta(days=config["max_days_ahead"])
    max_pending = config["max_pending_per_conversation"]

    def remind(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        key = context.idempotency_key
        if key is not None:
            # Checked first: a repeat after the time passed or the chat filled up still succeeds.
            rows = execute(_BY_KEY, (key, context.conversation_id))
            if rows:
                return _scheduled(*rows[0])
        tz_name = arguments.get("timezone") or default_tz
        tz = zone(tz_name)
        due = parse_datetime(arguments["when"], tz)
        now = datetime.now(UTC)
        if due < now - PAST_TOLERANCE:
            raise ToolError(
                f"{arguments['when']!r} is in the past (now is {describe(now.astimezone(tz))['iso']})"
            )
        if due > now + max_ahead:
            raise ToolError(f"reminders can be at most {max_ahead.days} days ahead")
        text = arguments["text"].strip()
        if not text:
            raise ToolError("the reminder text is empty")
        pending = Reminder.select().where(_pending(context.conversation_id)).count()
        if pending >= max_pending:
            raise ToolError(f"this chat already has {pending} reminders waiting (limit {max_pending})")
        rows = execute(
            _INSERT,
            {
                "conversation_id": context.conversation_id,
                "channel": context.channel,
                "account_id": context.account_id,
                "chat_id": context.chat_id,
                "sender_id": context.sender_id,
                "job_id": context.job_id,
                "text": config["message_prefix"] + text,
                "due_at": due.astimezone(UTC),
                "timezone": tz_name,
                "key": key,
            },
        )
        if not rows:
            # A concurrent run of the same call inserted first (only a non-NULL key conflicts).
            rows = execute(_BY_KEY, (key, context.conversation_id))
            if not rows:
                raise ToolError("this call's idempotency key belongs to another conversation")
        return _scheduled(*rows[0])

    def list_(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        rows = (
            Reminder.select()
            .where(_pending(context.conversation_id))
            .order_by(Reminder.due_at, Reminder.id)
            .limit(100)
        )
        return {
            "reminders": [
                {
                    "reminder_id": r.id,
                    "due": describe(r.due_at.astimezone(zone(r.timezone)))["iso"],
                    "text": r.text,
                }
                for r in rows
            ]
        }

    def cancel(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        cancelled = (
            Reminder.update(cancelled_at=datetime.now(UTC))
            .where(_pending(context.conversation_id) & (Reminder.id == arguments["reminder_id"]))
            .execute()
        )
        if not cancelled:
            already = Reminder.get_or_none(
                (Reminder.conversation_id == context.conversation_id)
                & (Reminder.id == arguments["reminder_id"])
                & Reminder.cancelled_at.is_null(False)
            )
            if already is not None:
                # A retried turn cancelling again: the same answer as the first time.
                return {"cancelled": True, "reminder_id": arguments["reminder_id"]}
            raise ToolError(f"no reminder {arguments['reminder_id']} waiting in this chat")
        return {"cancelled": True, "reminder_id": arguments["reminder_id"]}

    return {"remind": remind, "list": list_, "cancel": cancel}
