"""The terminal chat session: send what the person types through ingress, show replies as the
outbox gets them.

This process owns the terminal conversation's delivery (see :mod:`.sender`): it claims each
pending outbox row of its conversation with the outbox lease, shows it, then marks it sent.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from zenthor.channels.terminal import CHANNEL
from zenthor.db import database, execute
from zenthor.ingress import AcceptResult, InboundMessage, accept
from zenthor.queue.outbox import OutboundLease, claim_outbound, mark_sent, pending_for_conversation
from zenthor.settings import worker_id


class TerminalChat:
    """One person's chat in a terminal: ``send`` their lines, ``poll_once`` for replies."""

    def __init__(
        self,
        account_id: str,
        chat_id: str,
        sender_id: str,
        show: Callable[[str], None],
        *,
        sender_name: str | None = None,
        publish: Callable[[int], object] | None = None,
    ) -> None:
        self.account_id = account_id
        self.chat_id = chat_id
        self.sender_id = sender_id
        self.sender_name = sender_name
        self.show = show
        self.publish = publish
        self.conversation_id: int | None = None

    def send(self, text: str) -> AcceptResult:
        """Hand one typed line to ingress (a fresh provider id: every line is a new message)."""
        message = InboundMessage(
            channel=CHANNEL,
            account_id=self.account_id,
            chat_id=self.chat_id,
            sender_id=self.sender_id,
            sender_name=self.sender_name,
            provider_message_id=f"terminal-{uuid.uuid4()}",
            text=text,
            sent_at=datetime.now(UTC),  # the person typed it just now: that is the sender's time
        )
        with database.connection_context():
            result = accept(message, publish=self.publish)
        if result.conversation_id is not None:
            self.conversation_id = result.conversation_id
        return result

    def poll_once(self) -> int:
        """Show every reply waiting in the outbox, oldest first; returns how many were shown."""
        with database.connection_context():
            conversation_id = self._conversation()
            if conversation_id is None:
                return 0
            shown = 0
            for outbound_id in pending_for_conversation(conversation_id):
                lease = claim_outbound(outbound_id, worker_id())
                if not isinstance(lease, OutboundLease):
                    break  # another chat window of the same conversation took it, or it waits its turn
                self.show(lease.text)
                mark_sent(lease)
                shown += 1
            return shown

    def poll_forever(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Poll until ``stop`` is set (run in a background thread)."""
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the chat; try again
                stop.wait(2.0)
            stop.wait(interval_s)

    def _conversation(self) -> int | None:
        if self.conversation_id is None:
            rows = execute(
                "SELECT id FROM conversation WHERE channel = %s AND account_id = %s AND chat_id = %s",
                (CHANNEL, self.account_id, self.chat_id),
            )
            self.conversation_id = rows[0][0] if rows else None
        return self.conversation_id
