"""Webhook accounts (``zenthor webhook``): secrets (encrypted), callback URL, contact policy."""

from __future__ import annotations

from peewee import SQL, TextField
from playhouse.postgres_ext import BinaryJSONField

from zenthor.models.base import BaseModel, DateTimeTZField


class WebhookAccount(BaseModel):
    """One webhook account. ``secrets`` is a list of ``{"secret", "created_at", "expires_at"}``,
    newest first; ``secret`` is a Fernet token (never the secret itself)."""

    account_id = TextField(primary_key=True)
    secrets = BinaryJSONField(default=list)
    callback_url = TextField(null=True)
    contact_policy = TextField(default="open")
    allow_from = TextField(default="")
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    updated_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "webhook_account"
