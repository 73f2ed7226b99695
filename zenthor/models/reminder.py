"""Reminders the assistant promised to send (the core-schedule plugin).

Pending means ``delivered_at`` and ``cancelled_at`` are both NULL; the reminders sweep step
delivers a due reminder and stamps ``delivered_at`` in the transaction that writes its reply.
"""

from __future__ import annotations

from peewee import SQL, BigAutoField, BigIntegerField, TextField

from zenthor.models.base import BaseModel, DateTimeTZField


class Reminder(BaseModel):
    """One reminder: what to say, in which conversation, and when."""

    id = BigAutoField()
    conversation_id = BigIntegerField()
    channel = TextField()
    account_id = TextField()
    chat_id = TextField()
    sender_id = TextField(null=True)
    job_id = BigIntegerField(null=True)
    text = TextField()
    due_at = DateTimeTZField()
    timezone = TextField(default="UTC")
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    delivered_at = DateTimeTZField(null=True)
    cancelled_at = DateTimeTZField(null=True)
    outbound_id = BigIntegerField(null=True)

    class Meta:
        table_name = "reminder"
