"""The core-schedule tools: ``remind`` (needs approval: it sends a message later), ``list``, ``cancel``.

A reminder is a row in ``reminder``; the reminders sweep step (:mod:`.delivery`) sends it when due.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from zenthor.models.reminder import Reminder
from zenthor.plugins.builtin.timeutil import describe, parse_datetime, zone
from zenthor.plugins.tools import ToolContext, ToolError

# A time a little in the past ("remind me now") is still accepted and sent at the next sweep.
PAST_TOLERANCE = timedelta(minutes=2)


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
        reminder = Reminder.create(
            conversation_id=context.conversation_id,
            channel=context.channel,
            account_id=context.account_id,
            chat_id=context.chat_id,
            sender_id=context.sender_id,
            job_id=context.job_id,
            text=config["message_prefix"] + text,
            due_at=due.astimezone(UTC),
            timezone=tz_name,
        )
        return {"scheduled": True, "reminder_id": reminder.id, "due": describe(due.astimezone(tz))}

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
            raise ToolError(f"no reminder {arguments['reminder_id']} waiting in this chat")
        return {"cancelled": True, "reminder_id": arguments["reminder_id"]}

    return {"remind": remind, "list": list_, "cancel": cancel}
