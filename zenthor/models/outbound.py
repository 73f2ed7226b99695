"""The outbox: replies owed to a chat, each claimed before it is sent and marked after (I5)."""

from __future__ import annotations

from peewee import SQL, BigAutoField, BigIntegerField, IntegerField, TextField, UUIDField

from zenthor.models.base import BaseModel, DateTimeTZField

OUTBOUND_STATUSES = ("pending", "sending", "sent", "failed")


class OutboundMessage(BaseModel):
    """One reply row; its lease columns are written only through :mod:`zenthor.queue`."""

    id = BigAutoField()
    conversation_id = BigIntegerField()
    job_id = BigIntegerField(null=True)
    in_reply_to = BigIntegerField(null=True)
    channel = TextField()
    account_id = TextField()
    chat_id = TextField()
    text = TextField()
    status = TextField(default="pending")
    attempts = IntegerField(default=0)
    available_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    processor_id = TextField(null=True)
    lease_token = UUIDField(null=True)
    locked_until = DateTimeTZField(null=True)
    provider_message_id = TextField(null=True)
    last_error = TextField(null=True)
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    sent_at = DateTimeTZField(null=True)
    resends = IntegerField(default=0)

    class Meta:
        table_name = "outbound_message"
