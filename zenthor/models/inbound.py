"""Inbound dedupe keys: one row per (channel, account_id, provider_message_id) ever accepted (I3)."""

from __future__ import annotations

from peewee import SQL, BigAutoField, TextField

from zenthor.models.base import BaseModel, DateTimeTZField


class InboundDedupe(BaseModel):
    """A provider message id already turned into a user message."""

    id = BigAutoField()
    channel = TextField()
    account_id = TextField()
    provider_message_id = TextField()
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "inbound_dedupe"
