"""Writing the assistant's replies: an assistant message plus its outbox rows.

Called inside the transaction that completes (or finally fails) a job, so a reply exists exactly
when the job is finished (I5 starts here: one outbox row per reply, sent once by delivery).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zenthor.models import Conversation, Message, OutboundMessage

FAILURE_REPLY = (
    "Sorry, something went wrong on my side and I couldn't answer your last message. "
    "Please try again in a little while."
)


@dataclass
class WrittenReplies:
    """Ids of what a turn wrote, so the caller can publish deliveries after commit."""

    message_ids: list[int] = field(default_factory=list)
    outbound_ids: list[int] = field(default_factory=list)


def write_replies(
    conversation_id: int, job_id: int | None, texts: list[str], *, in_reply_to: int | None = None
) -> WrittenReplies:
    """Store each text as an assistant message and queue it in the outbox (caller's transaction)."""
    written = WrittenReplies()
    if not texts:
        return written
    conversation = Conversation.get_by_id(conversation_id)
    for text in texts:
        message = Message.create(conversation=conversation_id, role="assistant", content=text, job_id=job_id)
        written.message_ids.append(message.id)
        outbound = OutboundMessage.create(
            conversation_id=conversation_id,
            job_id=job_id,
            in_reply_to=in_reply_to,
            channel=conversation.channel,
            account_id=conversation.account_id,
            chat_id=conversation.chat_id,
            text=text,
        )
        written.outbound_ids.append(outbound.id)
    return written


def write_failure_reply(conversation_id: int, job_id: int, *, in_reply_to: int | None) -> WrittenReplies:
    """The short, honest reply a user gets when their message could not be answered."""
    return write_replies(conversation_id, job_id, [FAILURE_REPLY], in_reply_to=in_reply_to)
