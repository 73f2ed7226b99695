"""Channel accounts and their ownership lease (one active runtime per WhatsApp account)."""

from __future__ import annotations

from peewee import SQL, BigAutoField, TextField, UUIDField

from zenthor.models.base import BaseModel, DateTimeTZField


class ChannelAccount(BaseModel):
    """Which runtime owns a channel account, until when, and in what state."""

    id = BigAutoField()
    channel = TextField()
    account_id = TextField()
    owner_id = TextField(null=True)
    lease_token = UUIDField(null=True)
    expires_at = DateTimeTZField(null=True)
    heartbeat_at = DateTimeTZField(null=True)
    auth_mode = TextField(default="local")
    state = TextField(default="idle")
    updated_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "channel_account"
