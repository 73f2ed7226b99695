"""Rows for tests, written the way ingress writes them."""

from __future__ import annotations

from zenthor.db import database
from zenthor.models import Conversation, Message
from zenthor.queue import enqueue_job


def make_conversation(chat_id: str = "chat-1", channel: str = "test", account_id: str = "acct") -> int:
    """A conversation row; returns its id."""
    conversation, _ = Conversation.get_or_create(channel=channel, account_id=account_id, chat_id=chat_id)
    return conversation.id


def make_job(conversation_id: int, text: str = "hello", **job_options) -> int:
    """A user message and its pending job, in one transaction; returns the job id."""
    with database.atomic():
        message = Message.create(conversation=conversation_id, role="user", content=text)
        job_id = enqueue_job(conversation_id, message.id, **job_options)
        Message.update(job_id=job_id).where(Message.id == message.id).execute()
    return job_id


def assistant_messages(conversation_id: int) -> list[str]:
    """The assistant's replies in a conversation, oldest first."""
    return [
        m.content
        for m in Message.select()
        .where((Message.conversation == conversation_id) & (Message.role == "assistant"))
        .order_by(Message.id)
    ]
