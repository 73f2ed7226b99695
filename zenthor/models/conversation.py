"""Conversations, the contacts who speak in them, and their messages."""

from __future__ import annotations

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    ForeignKeyField,
    IntegerField,
    TextField,
)
from playhouse.postgres_ext import BinaryJSONField

from zenthor.models.base import BaseModel, DateTimeTZField


class Conversation(BaseModel):
    """One chat on one channel account; unique (channel, account_id, chat_id)."""

    id = BigAutoField()
    channel = TextField()
    account_id = TextField()
    chat_id = TextField()
    title = TextField(null=True)
    # The user's choices (0016, ``/queue`` and ``/debounce``); NULL: the configured default.
    queue_mode = TextField(null=True)
    debounce_ms = IntegerField(null=True)
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "conversation"


class Contact(BaseModel):
    """A sender seen on a channel account, and whether it may talk to the assistant."""

    id = BigAutoField()
    channel = TextField()
    account_id = TextField()
    sender_id = TextField()
    display_name = TextField(null=True)
    allowed = BooleanField(default=False)
    first_seen_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    last_seen_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "contact"


class Message(BaseModel):
    """A message in a conversation: user, assistant, system or tool."""

    id = BigAutoField()
    conversation = ForeignKeyField(Conversation, column_name="conversation_id", backref="messages")
    role = CharField()
    content = TextField(default="")
    sender_id = TextField(null=True)
    provider_message_id = TextField(null=True)
    # A plain column, not a ForeignKeyField, so this module need not import the job model.
    job_id = BigIntegerField(null=True)
    tool_calls = BinaryJSONField(null=True)
    tool_call_id = TextField(null=True)
    # What a message is besides its role (0007): approval_question, approval_answer, failure,
    # reminder; None for ordinary messages.
    kind = TextField(null=True)
    # The provider's (sender's) time of a user message, when known (0010); audit only: turns
    # follow acceptance order, never this.
    sent_at = DateTimeTZField(null=True)
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "message"
