"""Reading what a turn wrote."""

from __future__ import annotations

from zenthor.db import execute
from zenthor.models import AgentJob, Message, OutboundMessage


def job(job_id: int) -> AgentJob:
    return AgentJob.get_by_id(job_id)


def messages(conversation_id: int) -> list[Message]:
    return list(Message.select().where(Message.conversation == conversation_id).order_by(Message.id))


def outbox_texts(conversation_id: int) -> list[str]:
    return [
        o.text
        for o in OutboundMessage.select()
        .where(OutboundMessage.conversation_id == conversation_id)
        .order_by(OutboundMessage.id)
    ]


def count(table: str) -> int:
    return execute(f"SELECT count(*) FROM {table}")[0][0]
