"""Channel accounts and their ownership lease (one active runtime per WhatsApp account)."""

from __future__ import annotations

from peewee import SQL, BigAutoField, BigIntegerField, IntegerField, TextField, UUIDField

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
    device_jid = TextField(null=True)
    lease_term = BigIntegerField(default=0)
    client_version = TextField(null=True)
    last_error = TextField(null=True)
    ban_code = IntegerField(null=True)
    banned_until = DateTimeTZField(null=True)
    hold_until = DateTimeTZField(null=True)
    connected_at = DateTimeTZField(null=True)
    last_inbound_at = DateTimeTZField(null=True)
    last_outbound_at = DateTimeTZField(null=True)
    resends_total = BigIntegerField(default=0)
    rate_limited_total = BigIntegerField(default=0)
    updated_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "channel_account"
