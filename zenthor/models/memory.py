"""Notes the assistant keeps about one contact (the core-memory plugin)."""

from __future__ import annotations

from peewee import SQL, BigAutoField, TextField

from zenthor.models.base import BaseModel, DateTimeTZField


class MemoryNote(BaseModel):
    """One remembered note, owned by the contact (channel, account_id, sender_id)."""

    id = BigAutoField()
    channel = TextField()
    account_id = TextField()
    sender_id = TextField()
    text = TextField()
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "memory_note"
