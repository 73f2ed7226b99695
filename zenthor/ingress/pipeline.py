"""``accept``: the one entry point that turns an inbound message into work, exactly once (I3).

One transaction: dedupe key ▸ contact policy ▸ conversation ▸ user message ▸ answer hook ▸ job
(none when the message answered a question; one when it is a turn, also when it closed one).
The dedupe key, the message and the job commit together, so a crash (or an error anywhere in
between) leaves nothing behind and a retry of the same message is accepted, not skipped. After
commit the dispatch nudge is published; if that publish fails the job stays pending and the sweep
re-publishes it (I6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zenthor.db import database, execute
from zenthor.ingress.answers import AnswerRequest, find_answer
from zenthor.ingress.dedupe import record_key
from zenthor.ingress.message import InboundMessage
from zenthor.ingress.policy import ContactPolicy, policy_for
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue import enqueue_job
from zenthor.queue.conversations import lock_conversation
from zenthor.settings import get_settings

Publisher = Callable[[int], object]
Admit = Callable[[InboundMessage], None]

ACCEPTED, DUPLICATE, ANSWER, IGNORED, NOTICE = "accepted", "duplicate", "answer", "ignored", "notice"

_UPSERT_CONTACT = """
INSERT INTO contact (channel, account_id, sender_id, display_name) VALUES (%s, %s, %s, %s)
ON CONFLICT ON CONSTRAINT contact_channel_account_sender_key DO UPDATE
   SET last_seen_at = now(), display_name = coalesce(EXCLUDED.display_name, contact.display_name)
RETURNING allowed
"""

_INSERT_CONVERSATION = """
INSERT INTO conversation (channel, account_id, chat_id) VALUES (%s, %s, %s)
ON CONFLICT ON CONSTRAINT conversation_channel_account_chat_key DO NOTHING
RETURNING id
"""

_INSERT_MESSAGE = """
INSERT INTO message (conversation_id, role, content, sender_id, provider_message_id, sent_at, created_at)
VALUES (%s, 'user', %s, %s, %s, %s, now())
RETURNING id
"""


@dataclass(frozen=True)
class AcceptResult:
    """What :func:`accept` did.

    ``status``: ``accepted`` (a turn job was created; ``reason`` is ``approval_superseded`` when
    the message also closed a question it did not answer), ``duplicate`` (seen before, nothing
    written), ``answer`` (an answer handler took it; ``job_id`` is the job it resumed, if any) or
    ``ignored`` (the contact policy does not allow the sender; the key and contact are recorded).
    """

    status: str
    conversation_id: int | None = None
    message_id: int | None = None
    job_id: int | None = None
    reason: str | None = None
    published: bool | None = None


def accept(
    message: InboundMessage,
    *,
    publish: Publisher | None = None,
    policy: ContactPolicy | None = None,
    admit: Admit | None = None,
) -> AcceptResult:
    """Accept ``message`` once; publish its job's dispatch nudge after commit.

    ``publish`` defaults to the publisher registered with :func:`set_default_publisher` (the
    dispatch nudge, once ``zenthor.actors`` is imported); tests pass their own. Must not run
    inside an open transaction: the publish has to follow the commit. ``policy`` replaces the
    channel's contact policy (a webhook account's own); ``admit`` runs in the transaction once the
    message is known to be new and allowed by the policy (ignored messages never reach it; turns
    and approval answers do), and may raise to refuse it with nothing stored (a cost limit).
    """
    if database.in_transaction():
        raise RuntimeError("accept() must run outside a transaction: it commits before publishing")
    key = message.dedupe_key()
    policy = policy or policy_for(message.channel, get_settings())
    with database.atomic():
        result = _accept_in_transaction(message, key, policy, admit)
    _emit(message, key, result)
    if result.job_id is None:
        return result
    publisher = publish or _default_publisher()
    published = publisher(result.job_id)
    return AcceptResult(
        result.status,
        result.conversation_id,
        result.message_id,
        result.job_id,
        result.reason,
        published=published is not False,
    )


def _accept_in_transaction(message: InboundMessage, key: str, policy, admit: Admit | None) -> AcceptResult:
    if not record_key(message.channel, message.account_id, key):
        return AcceptResult(DUPLICATE)
    (operator_allowed,) = execute(
        _UPSERT_CONTACT, (message.channel, message.account_id, message.sender_id, message.sender_name)
    )[0]
    if not policy.allows(message.sender_id, already_allowed=operator_allowed):
        # The key stays recorded, so the provider's retries of this message are duplicates.
        return AcceptResult(IGNORED, reason=f"policy_{policy.mode}")
    if admit is not None:
        # Only a message that will be accepted (a turn, or an approval's answer, which resumes a
        # turn) pays: an ignored sender costs no model call, so it spends no token and keeps
        # getting 202 ignored. Raising rolls back the dedupe key and the contact with it.
        admit(message)
    conversation_id = _conversation_id(message)
    # Serialise accepts of one conversation until commit, so ids (the FIFO order of its jobs)
    # follow commit order even when several senders write to one group chat at once. NO KEY
    # UPDATE does not block the foreign-key checks of other writers to this conversation.
    lock_conversation(conversation_id)
    # sent_at is the sender's time, kept for context and audit; turns follow acceptance order.
    (message_id,) = execute(
        _INSERT_MESSAGE,
        (conversation_id, message.text, message.sender_id, message.provider_message_id, message.sent_at),
    )[0]
    # The one place where a message can be the answer to a pending question (tool approvals)
    # instead of the start of a turn. The handler writes in this same transaction.
    outcome = find_answer(AnswerRequest(conversation_id, message_id, message.sender_id, message.text))
    if outcome is not None and not outcome.start_turn:
        return AcceptResult(ANSWER, conversation_id, message_id, outcome.job_id, outcome.reason)
    # A turn, also when a handler settled a question this message did not answer (superseded).
    job_id = enqueue_job(conversation_id, message_id)
    execute("UPDATE message SET job_id = %s WHERE id = %s", (job_id, message_id))
    return AcceptResult(ACCEPTED, conversation_id, message_id, job_id, outcome.reason if outcome else None)


_SELECT_CONVERSATION = "SELECT id FROM conversation WHERE channel = %s AND account_id = %s AND chat_id = %s"

_INSERT_NOTICE = """
INSERT INTO outbound_message (conversation_id, channel, account_id, chat_id, text)
VALUES (%s, %s, %s, %s, %s)
RETURNING id
"""


def accept_notice(message: InboundMessage, reply: str | None) -> AcceptResult:
    """Accept a message no turn can answer (a sticker, media without text) once: record its
    dedupe key and, when ``reply`` is given and the sender is allowed, queue that short reply in
    the outbox, in one transaction. No user message and no job are written. ``status`` is
    ``notice`` (``message_id`` holds the outbox row, None without a reply), ``duplicate`` or
    ``ignored``.
    """
    if database.in_transaction():
        raise RuntimeError("accept_notice() must run outside a transaction")
    key = message.dedupe_key()
    policy = policy_for(message.channel, get_settings())
    with database.atomic():
        if not record_key(message.channel, message.account_id, key):
            return AcceptResult(DUPLICATE)
        (operator_allowed,) = execute(
            _UPSERT_CONTACT, (message.channel, message.account_id, message.sender_id, message.sender_name)
        )[0]
        if not policy.allows(message.sender_id, already_allowed=operator_allowed):
            return AcceptResult(IGNORED, reason=f"policy_{policy.mode}")
        conversation_id = _conversation_id(message)
        outbound_id = None
        if reply:
            # Like every outbox writer: the conversation first, so its outbox ids commit in order.
            lock_conversation(conversation_id)
            ((outbound_id,),) = execute(
                _INSERT_NOTICE,
                (conversation_id, message.channel, message.account_id, message.chat_id, reply),
            )
    return AcceptResult(NOTICE, conversation_id, outbound_id)


def _conversation_id(message: InboundMessage) -> int:
    key = (message.channel, message.account_id, message.chat_id)
    # Most messages belong to an existing chat: look first, insert only when missing.
    rows = execute(_SELECT_CONVERSATION, key) or execute(_INSERT_CONVERSATION, key)
    if rows:
        return rows[0][0]
    # Another transaction created it meanwhile; ON CONFLICT waited for its commit, so it is visible.
    return execute(_SELECT_CONVERSATION, key)[0][0]


def _emit(message: InboundMessage, key: str, result: AcceptResult) -> None:
    if result.status == DUPLICATE:
        emit(
            ev.INBOUND_DEDUPE_SKIPPED,
            channel=message.channel,
            account_id=message.account_id,
            provider_message_id=key,
        )
    elif result.status == IGNORED:
        emit(
            ev.INBOUND_IGNORED,
            channel=message.channel,
            account_id=message.account_id,
            sender_id=message.sender_id,
            reason=result.reason,
        )
    elif result.status == ANSWER:
        emit(
            ev.INBOUND_ANSWERED,
            channel=message.channel,
            account_id=message.account_id,
            conversation_id=result.conversation_id,
            message_id=result.message_id,
            job_id=result.job_id,
            reason=result.reason,
        )
    else:
        emit(
            ev.INBOUND_ACCEPTED,
            channel=message.channel,
            account_id=message.account_id,
            conversation_id=result.conversation_id,
            message_id=result.message_id,
            job_id=result.job_id,
            provider_message_id=key,
            reason=result.reason,
        )


_default: list[Publisher] = []


def set_default_publisher(publish: Publisher) -> None:
    """The publisher :func:`accept` uses when none is passed (``zenthor.actors`` registers the
    dispatch nudge at import), so ingress never imports the layer above it."""
    _default[:] = [publish]


def _default_publisher() -> Publisher:
    if not _default:
        raise RuntimeError(
            "accept() has no publisher: pass publish=..., or import zenthor.actors (which registers "
            "the dispatch nudge) before accepting messages"
        )
    return _default[0]
