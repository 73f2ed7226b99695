"""``accept``: the one entry point that turns an inbound message into work, exactly once (I3).

One transaction: dedupe key ▸ contact policy ▸ conversation ▸ user message ▸ chat command ▸ answer
hook ▸ job (none when the message was a ``/queue`` or ``/debounce`` command, whose reply goes to the
outbox instead, or answered a question; one when it is a turn, also when it closed one).
The dedupe key, the message and the job commit together, so a crash (or an error anywhere in
between) leaves nothing behind and a retry of the same message is accepted, not skipped. After
commit the dispatch nudge (or a command reply's delivery nudge) is published; if that publish
fails the job (or outbox row) stays pending and the sweep re-publishes it (I6).

Round trips (issue 13): the caller's precondition, the dedupe key and the contact upsert are one
statement (the transaction's ``BEGIN`` rides on it), and an existing conversation is locked and
the user message stored by another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from peewee import InterfaceError, OperationalError

from zenthor.db import database, drop_session, execute, session_dropped
from zenthor.ingress.answers import AnswerRequest, find_answer
from zenthor.ingress.commands import (
    Command,
    ConversationModes,
    answer_command,
    effective_debounce_ms,
    parse_command,
)
from zenthor.ingress.dedupe import record_key
from zenthor.ingress.message import InboundMessage
from zenthor.ingress.policy import ContactPolicy, policy_for
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue import enqueue
from zenthor.queue.conversations import lock_conversation
from zenthor.settings import Settings, get_settings

Publisher = Callable[..., object]
"""Publishes a job's dispatch nudge: ``publish(job_id)``, or ``publish(job_id, delay_ms=...)`` for a
debounced job (``actors.publish.publish_dispatch``)."""
DeliveryPublisher = Callable[..., object]
"""Publishes an outbox row's delivery nudge: ``deliver(outbound_id, channel=...)``
(``actors.publish.publish_delivery``; a channel whose owner polls its rows gets none)."""
Admit = Callable[[InboundMessage], None]
Precondition = tuple[str, dict[str, Any]]
"""A SQL boolean expression with its named parameters (``%(name)s``), checked by :func:`accept`."""

ACCEPTED, DUPLICATE, ANSWER, IGNORED, NOTICE = "accepted", "duplicate", "answer", "ignored", "notice"
COMMAND = "command"

_UPSERT_CONTACT = """
INSERT INTO contact (channel, account_id, sender_id, display_name) VALUES (%s, %s, %s, %s)
ON CONFLICT ON CONSTRAINT contact_channel_account_sender_key DO UPDATE
   SET last_seen_at = now(), display_name = coalesce(EXCLUDED.display_name, contact.display_name)
RETURNING allowed
"""

# The caller's precondition, the dedupe key and the contact in one round trip. The key goes in only
# when the precondition holds, the contact only when the key went in (a duplicate touches nothing):
# the contact's INSERT reads the key's RETURNING rows, so Postgres runs the key's INSERT first,
# and a concurrent insert of the same key is waited for exactly as by record_key().
_KEY_AND_CONTACT = """
WITH pre AS (SELECT ({precondition}) AS ok),
key AS (
    INSERT INTO inbound_dedupe (channel, account_id, provider_message_id)
    SELECT %(channel)s, %(account)s, %(key)s FROM pre WHERE pre.ok
    ON CONFLICT ON CONSTRAINT inbound_dedupe_key DO NOTHING
    RETURNING id
),
upserted AS (
    INSERT INTO contact (channel, account_id, sender_id, display_name)
    SELECT %(channel)s, %(account)s, %(sender)s, %(name)s::text FROM key
    ON CONFLICT ON CONSTRAINT contact_channel_account_sender_key DO UPDATE
       SET last_seen_at = now(), display_name = coalesce(EXCLUDED.display_name, contact.display_name)
    RETURNING allowed
)
SELECT pre.ok, EXISTS (SELECT 1 FROM key), (SELECT allowed FROM upserted) FROM pre
"""


class PreconditionFailed(Exception):
    """:func:`accept`'s precondition was false: nothing was written (the caller decides again
    with fresh data, e.g. a webhook account that changed since it was cached)."""


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
    written), ``answer`` (an answer handler took it; ``job_id`` is the job it resumed, if any),
    ``command`` (a ``/queue`` or ``/debounce`` command: no job; ``outbound_id`` is its reply's
    outbox row, ``reason`` the command and what it did, e.g. ``queue_set``) or ``ignored`` (the
    contact policy does not allow the sender; the key and contact are recorded).
    """

    status: str
    conversation_id: int | None = None
    message_id: int | None = None
    job_id: int | None = None
    reason: str | None = None
    published: bool | None = None
    # The job waits behind another job of its conversation, which nudges or hands it over when it
    # finishes: no dispatch nudge of its own is published (issue 13, item 3).
    behind: bool = False
    # With a debounce: the job may be claimed this long from now; its nudge is published as late.
    delay_ms: int = 0
    # A command's reply (status ``command``): the outbox row whose delivery is nudged after commit.
    outbound_id: int | None = None


def accept(
    message: InboundMessage,
    *,
    publish: Publisher | None = None,
    policy: ContactPolicy | None = None,
    admit: Admit | None = None,
    precondition: Precondition | None = None,
    deliver: DeliveryPublisher | None = None,
) -> AcceptResult:
    """Accept ``message`` once; publish its job's dispatch nudge after commit.

    ``publish`` defaults to the publisher registered with :func:`set_default_publisher` (the
    dispatch nudge, once ``zenthor.actors`` is imported); tests pass their own. ``deliver``
    nudges delivery of a command's reply (default: the one registered with
    :func:`set_default_publisher`, if any). Must not run
    inside an open transaction: the publish has to follow the commit. ``policy`` replaces the
    channel's contact policy (a webhook account's own); ``admit`` runs in the transaction once the
    message is known to be new and allowed by the policy (ignored messages never reach it; turns
    and approval answers do), and may raise to refuse it with nothing stored (a cost limit).
    ``precondition`` is checked by the transaction's first statement, before the dedupe key (so
    before a duplicate is recognised): when false, :class:`PreconditionFailed` is raised and
    nothing is written (the gateway checks that the account it verified the signature with is
    still the stored one).
    """
    if database.in_transaction():
        raise RuntimeError("accept() must run outside a transaction: it commits before publishing")
    key = message.dedupe_key()
    policy = policy or policy_for(message.channel, get_settings())
    committing = False
    try:
        with database.atomic():
            result = _accept_in_transaction(message, key, policy, admit, precondition)
            committing = True
    except (OperationalError, InterfaceError):
        # The session died around the COMMIT. If it went through, a retry would find the dedupe
        # key and answer "duplicate" without ever publishing this job's nudge: ask the database.
        if not committing or result.message_id is None or not _stored(result.message_id):
            raise
    _emit(message, key, result)
    if result.status == COMMAND:
        return _deliver_reply(message, result, deliver)
    if result.job_id is None or result.behind:
        return result
    publisher = publish or _default_publisher()
    # A debounced job's nudge waits as long as the job does (every publisher in the product is
    # publish_dispatch or passes its delay on).
    published = (
        publisher(result.job_id, delay_ms=result.delay_ms) if result.delay_ms else publisher(result.job_id)
    )
    return replace(result, published=published is not False)


def _deliver_reply(
    message: InboundMessage, result: AcceptResult, deliver: DeliveryPublisher | None
) -> AcceptResult:
    """Nudge delivery of a command's reply, committed just now."""
    deliverer = deliver or (_default[1] if len(_default) > 1 else None)
    if deliverer is None or result.outbound_id is None:
        # Nobody to nudge it (a caller that registered no delivery publisher): the row is pending
        # and the outbox sweep publishes it after its grace period; a polling channel's owner
        # (terminal, WhatsApp) claims it on its own.
        return result
    published = deliverer(result.outbound_id, channel=message.channel)
    return replace(result, published=published is not False)


def _stored(message_id: int) -> bool:
    """Whether the user message ``message_id`` is committed, asked on a live session."""
    if session_dropped():
        drop_session()  # dead: not back to the pool
    try:
        return bool(execute("SELECT 1 FROM message WHERE id = %s", (message_id,)))
    except (OperationalError, InterfaceError):
        return False  # still away: the caller's error stands, and a retry decides afresh


def _accept_in_transaction(
    message: InboundMessage, key: str, policy, admit: Admit | None, precondition: Precondition | None
) -> AcceptResult:
    condition, condition_params = precondition or ("TRUE", {})
    params = {
        **condition_params,
        "channel": message.channel,
        "account": message.account_id,
        "key": key,
        "sender": message.sender_id,
        "name": message.sender_name,
    }
    ((holds, new, operator_allowed),) = execute(_KEY_AND_CONTACT.format(precondition=condition), params)
    if not holds:
        raise PreconditionFailed(f"accept() precondition does not hold (nothing written): {condition}")
    if not new:
        return AcceptResult(DUPLICATE)
    if not policy.allows(message.sender_id, already_allowed=operator_allowed):
        # The key stays recorded, so the provider's retries of this message are duplicates.
        return AcceptResult(IGNORED, reason=f"policy_{policy.mode}")
    if admit is not None:
        # Only a message that will be accepted (a turn, or an approval's answer, which resumes a
        # turn) pays: an ignored sender costs no model call, so it spends no token and keeps
        # getting 202 ignored. Raising rolls back the dedupe key and the contact with it.
        admit(message)
    conversation_id, message_id, modes = _store_message(message)
    settings = get_settings()
    command = parse_command(message.text)
    if command is not None:
        # Under the conversation's lock (taken by _store_message), so the setting and the reply's
        # outbox id commit in order with every other writer of the conversation. The user's
        # message stays stored without a job: no turn reads it (context.load_history).
        return _run_command(message, conversation_id, message_id, command, modes, settings)
    # The one place where a message can be the answer to a pending question (tool approvals)
    # instead of the start of a turn. The handler writes in this same transaction.
    outcome = find_answer(AnswerRequest(conversation_id, message_id, message.sender_id, message.text))
    if outcome is not None and not outcome.start_turn:
        return AcceptResult(ANSWER, conversation_id, message_id, outcome.job_id, outcome.reason)
    # A turn, also when a handler settled a question this message did not answer (superseded).
    # Under the conversation's lock (taken by _store_message): a job behind another is certain to
    # be nudged or handed over by it (queue.Enqueued), so it needs no nudge of its own.
    # The conversation's own wait (/debounce) goes before QUEUE_DEBOUNCE_MS; both are held to
    # QUEUE_DEBOUNCE_MAX_MS (commands.effective_debounce_ms), so enqueue's own rule, which would
    # widen the max to a longer wait, never applies here.
    enqueued = enqueue(
        conversation_id,
        message_id,
        debounce_ms=effective_debounce_ms(modes.debounce_ms, settings),
        debounce_max_ms=settings.QUEUE_DEBOUNCE_MAX_MS,
    )
    execute("UPDATE message SET job_id = %s WHERE id = %s", (enqueued.job_id, message_id))
    return AcceptResult(
        ACCEPTED,
        conversation_id,
        message_id,
        enqueued.job_id,
        outcome.reason if outcome else None,
        behind=enqueued.behind,
        delay_ms=enqueued.delay_ms,
    )


_SELECT_CONVERSATION = "SELECT id FROM conversation WHERE channel = %s AND account_id = %s AND chat_id = %s"

# The column names come from commands.CommandReply (never from the message).
_SET_MODE = {
    "queue_mode": "UPDATE conversation SET queue_mode = %s WHERE id = %s",
    "debounce_ms": "UPDATE conversation SET debounce_ms = %s WHERE id = %s",
}

_INSERT_NOTICE = """
INSERT INTO outbound_message (conversation_id, channel, account_id, chat_id, text)
VALUES (%s, %s, %s, %s, %s)
RETURNING id
"""


def _run_command(
    message: InboundMessage,
    conversation_id: int,
    message_id: int,
    command: Command,
    modes: ConversationModes,
    settings: Settings,
) -> AcceptResult:
    """Store what ``command`` sets on the (locked) conversation and queue its reply: one outbox
    row, no job, and no assistant message (the exchange is not part of the chat a turn reads)."""
    reply = answer_command(command, message.channel, modes, settings)
    if reply.column is not None:
        execute(_SET_MODE[reply.column], (reply.value, conversation_id))
    ((outbound_id,),) = execute(
        _INSERT_NOTICE, (conversation_id, message.channel, message.account_id, message.chat_id, reply.text)
    )
    return AcceptResult(
        COMMAND,
        conversation_id,
        message_id,
        reason=f"{command.name}_{reply.outcome}",
        outbound_id=outbound_id,
    )


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


# An existing conversation locked and the user message stored in one round trip (no row: the
# conversation is new), with the conversation's own queue settings (/queue, /debounce) read under
# the lock. sent_at is the sender's time, kept for context and audit; turns follow acceptance order.
_LOCK_AND_INSERT_MESSAGE = """
WITH conv AS (
    SELECT id, queue_mode, debounce_ms FROM conversation
     WHERE channel = %(channel)s AND account_id = %(account)s AND chat_id = %(chat)s
       FOR NO KEY UPDATE
), stored AS (
    INSERT INTO message (conversation_id, role, content, sender_id, provider_message_id, sent_at, created_at)
    SELECT conv.id, 'user', %(text)s::text, %(sender)s::text, %(provider_id)s::text,
           %(sent_at)s::timestamptz, now()
      FROM conv
    RETURNING conversation_id, id
)
SELECT stored.conversation_id, stored.id, conv.queue_mode, conv.debounce_ms FROM stored, conv
"""

# The lock of lock_conversation(), and the conversation's settings under it: a conversation that
# another accept created a moment ago may already have them.
_LOCK_WITH_MODES = "SELECT queue_mode, debounce_ms FROM conversation WHERE id = %s FOR NO KEY UPDATE"


def _store_message(message: InboundMessage) -> tuple[int, int, ConversationModes]:
    """The conversation (held ``FOR NO KEY UPDATE`` until commit, as
    :func:`~zenthor.queue.conversations.lock_conversation` holds it), the stored user message, and
    the conversation's own queue settings as of the lock.

    The lock serialises accepts of one conversation until commit, so ids (the FIFO order of its
    jobs) follow commit order even when several senders write to one group chat at once. NO KEY
    UPDATE does not block the foreign-key checks of other writers to this conversation.
    """
    rows = execute(
        _LOCK_AND_INSERT_MESSAGE,
        {
            "channel": message.channel,
            "account": message.account_id,
            "chat": message.chat_id,
            "text": message.text,
            "sender": message.sender_id,
            "provider_id": message.provider_message_id,
            "sent_at": message.sent_at,
        },
    )
    if rows:
        conversation_id, message_id, queue_mode, debounce_ms = rows[0]
        return conversation_id, message_id, ConversationModes(queue_mode, debounce_ms)
    # No such conversation a moment ago: create it (or, if another transaction just did, take its id).
    key = (message.channel, message.account_id, message.chat_id)
    created = execute(_INSERT_CONVERSATION, key) or execute(_SELECT_CONVERSATION, key)
    conversation_id = created[0][0]
    ((queue_mode, debounce_ms),) = execute(_LOCK_WITH_MODES, (conversation_id,))
    (message_id,) = execute(
        _INSERT_MESSAGE,
        (conversation_id, message.text, message.sender_id, message.provider_message_id, message.sent_at),
    )[0]
    return conversation_id, message_id, ConversationModes(queue_mode, debounce_ms)


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
    elif result.status == COMMAND:
        command, _, outcome = (result.reason or "_").partition("_")
        emit(
            ev.INBOUND_COMMAND,
            channel=message.channel,
            account_id=message.account_id,
            conversation_id=result.conversation_id,
            message_id=result.message_id,
            outbound_id=result.outbound_id,
            command=command,
            outcome=outcome,
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


# [dispatch publisher] or [dispatch publisher, delivery publisher].
_default: list[Publisher] = []


def set_default_publisher(publish: Publisher, *, deliver: DeliveryPublisher | None = None) -> None:
    """The publishers :func:`accept` uses when none is passed (``zenthor.actors`` registers the
    dispatch nudge and the delivery nudge at import), so ingress never imports the layer above it.
    ``deliver`` nudges a command reply's outbox row; without it the outbox sweep sends the row."""
    _default[:] = [publish] if deliver is None else [publish, deliver]


def _default_publisher() -> Publisher:
    if not _default:
        raise RuntimeError(
            "accept() has no publisher: pass publish=..., or import zenthor.actors (which registers "
            "the dispatch nudge) before accepting messages"
        )
    return _default[0]
