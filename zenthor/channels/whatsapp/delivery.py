"""The owner's outbox loop: only the process that holds the account's lease sends its replies.

Each send: check the term (local lease deadline) ▸ claim the account's next row, fenced by the
account lease on the database clock, which marks it ``sending`` under the lease token ▸ check the
term again ▸ send through the transport ▸ store WhatsApp's id and ``sent`` at once, on this thread.
The window in which a crash leaves a reply sent but unrecorded is that one call; the next owner
sends such a row once more (see :mod:`zenthor.queue.channel_outbox`).

Transient failures go back to pending with backoff; "not on WhatsApp" fails the row with its
reason. The rate limit holds a busy chat's replies back, in order, while others go on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from zenthor.channels.whatsapp.db_hiccup import database_hiccup
from zenthor.channels.whatsapp.identity import IdentityBook
from zenthor.channels.whatsapp.presence import ReadMarks, reader_of
from zenthor.channels.whatsapp.rate_limit import SendRateLimit
from zenthor.channels.whatsapp.term import Term, TermCounters
from zenthor.channels.whatsapp.transport import Transport, TransportError
from zenthor.db import database
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue.channel_outbox import (
    claim_next_owned,
    has_sendable,
    mark_sent_owned,
    recent_sends,
    unclaim_owned,
)
from zenthor.queue.outbox import OutboundLease, retry_or_fail


@dataclass(frozen=True)
class DeliveryConfig:
    """What the loop needs from the settings."""

    poll_s: float
    lock_ms: int
    per_chat_per_min: int
    per_account_per_min: int


class OutboxSender(threading.Thread):
    """Sends the account's outbox rows for as long as the term lasts."""

    def __init__(
        self,
        term: Term,
        transport: Transport,
        identities: IdentityBook,
        config: DeliveryConfig,
        counters: TermCounters,
        read_marks: ReadMarks,
    ) -> None:
        super().__init__(name=f"wa-outbox-{term.lease.account_id}", daemon=True)
        self.term = term
        self.transport = transport
        self.identities = identities
        self.config = config
        self.counters = counters
        self.read_marks = read_marks
        self.limit = SendRateLimit(config.per_chat_per_min, config.per_account_per_min)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._limited_reported: set[str] = set()
        self.sent = 0

    def wake(self) -> None:
        """Look at the outbox now (a reply was probably just written)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current send (the term's end stops it too)."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        try:
            with database.connection_context():
                self.limit.seed(recent_sends(self.term.lease))
            while self._running():
                try:
                    progressed = self._send_one()
                except Exception as error:  # noqa: BLE001 - a database hiccup: wait and try again
                    database_hiccup("whatsapp_outbox", error)
                    progressed = False
                if not progressed:
                    self._wake.wait(self.config.poll_s)
                    self._wake.clear()
        finally:
            if not database.is_closed():
                database.close()

    def _running(self) -> bool:
        return not self._stopping.is_set() and not self.term.ended

    def _send_one(self) -> bool:
        if not self.term.may_send():
            return False
        account_wait = self.limit.account_wait_s()
        if account_wait > 0:
            self._report_limited("account", account_wait)
            self._wake.wait(min(account_wait, self.config.poll_s * 4))
            return False
        held = self.limit.held_chats()
        lease = claim_next_owned(self.term.lease, lock_ms=self.config.lock_ms, held_chats=held)
        if lease is None:
            if held:
                self._report_limited("chat", 0)
            return False
        self._limited_reported.clear()
        self._deliver(lease)
        return True

    def _report_limited(self, scope: str, wait_s: float) -> None:
        # Count a limited moment once per stretch, and only when a reply really waits.
        if scope in self._limited_reported or not has_sendable(self.term.lease):
            return
        self._limited_reported.add(scope)
        self.counters.count_rate_limited()
        emit(ev.WA_OUTBOUND_RATE_LIMITED, account_id=self.term.lease.account_id, scope=scope, waiting=True)

    def _deliver(self, lease: OutboundLease) -> None:
        account_id = self.term.lease.account_id
        if not self.term.may_send():  # the lease ran out between the claim and here
            unclaim_owned(lease)
            emit(ev.WA_OUTBOUND_REFUSED, account_id=account_id, outbound_id=lease.outbound_id, reason="lease")
            return
        to = self.identities.reply_jid(lease.chat_id)
        self._mark_answered_read(lease, to)
        try:
            result = self.transport.send_text(to, lease.text)
        except TransportError as error:
            self._failed(lease, str(error), error.retryable)
            return
        except Exception as error:  # noqa: BLE001 - an adapter bug must not lose the row
            self._failed(lease, f"{type(error).__name__}: {error}", True)
            return
        self.limit.record(lease.chat_id)
        self.counters.last_outbound = time.time()
        recorded = self._record_sent(lease, result.message_id)
        self.sent += 1
        emit(
            ev.WA_OUTBOUND_SENT,
            account_id=account_id,
            outbound_id=lease.outbound_id,
            conversation_id=lease.conversation_id,
            whatsapp_id=result.message_id,
            attempts=lease.attempt,
            resend=lease.resends > 0,
        )
        if not recorded:
            emit(ev.OUTBOUND_LEASE_LOST, outbound_id=lease.outbound_id, operation="mark_sent")

    def _record_sent(self, lease: OutboundLease, whatsapp_id: str) -> bool:
        """Mark the row sent, riding out a database hiccup: WhatsApp has it, so until this
        succeeds the row would stall its chat (and be sent again by the next owner)."""
        delay = 0.1
        while True:
            try:
                return mark_sent_owned(lease, whatsapp_id)
            except Exception as error:  # noqa: BLE001 - keep the id in memory and try again
                database_hiccup("whatsapp_mark_sent", error)
                if self.term.wait_ended(delay):
                    return False  # the next owner sends it once more (outcome unknown to it)
                delay = min(delay * 2, 5.0)

    def _mark_answered_read(self, lease: OutboundLease, chat: str) -> None:
        message_id = lease.reply_to_provider_id
        if not message_id or not self.read_marks.first_time(message_id):
            return
        try:
            self.transport.mark_read(chat, reader_of(chat, lease.reply_to_sender), [message_id])
        except Exception as error:  # noqa: BLE001 - a read mark is never worth a reply
            emit(
                ev.WA_PRESENCE_FAILED,
                account_id=self.term.lease.account_id,
                operation="mark_read",
                error=f"{type(error).__name__}: {str(error)[:200]}",
            )

    def _failed(self, lease: OutboundLease, error: str, retryable: bool) -> None:
        emit(
            ev.WA_OUTBOUND_FAILED,
            account_id=self.term.lease.account_id,
            outbound_id=lease.outbound_id,
            error=error[:200],
            retryable=retryable,
        )
        outcome = retry_or_fail(lease, error, retryable=retryable)
        if not outcome.fenced:
            emit(ev.OUTBOUND_LEASE_LOST, outbound_id=lease.outbound_id, operation="retry_or_fail")
