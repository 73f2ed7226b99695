"""A WhatsApp message ▸ :class:`~zenthor.ingress.InboundMessage` ▸ ``accept()``, in the handler.

neonize has already acknowledged the message to WhatsApp when Python sees it, and a slow handler
stalls whatsmeow: so the handler does the one short ingress transaction (dedupe key, contact
policy, message and job) and nothing slow. If that transaction cannot run (the database is down),
the message is appended to a local spool and accepted at the next term, never dropped.

Skipped: our own messages, status broadcasts, group messages (unless ``WHATSAPP_GROUPS=mentions``
and the message mentions the assistant). A message without text is recorded once and, in a direct
chat, answered with one short reply that only text is understood.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zenthor.channels.whatsapp import CHANNEL
from zenthor.channels.whatsapp.identity import IdentityBook, strip_device
from zenthor.channels.whatsapp.transport import IncomingMessage
from zenthor.db import database
from zenthor.ingress import AcceptResult, InboundMessage, InvalidInbound, accept, accept_notice
from zenthor.observability import emit
from zenthor.observability import events as ev

STATUS_BROADCAST = "status@broadcast"
_ACCEPT_TRIES = 3


@dataclass(frozen=True)
class InboundConfig:
    """What the handler needs from the settings."""

    account_id: str
    groups: str  # ignore | mentions
    unsupported_reply: str | None
    spool_path: Path


class InboundHandler:
    """Turns each :class:`IncomingMessage` into at most one accepted message (I3)."""

    def __init__(
        self,
        config: InboundConfig,
        identities: IdentityBook,
        *,
        own_jids: Callable[[], tuple[str, ...]],
        publish: Callable[[int], object] | None = None,
    ) -> None:
        self.config = config
        self.identities = identities
        self.own_jids = own_jids
        self.publish = publish
        self.last_inbound_at: float | None = None  # wall clock, flushed with the heartbeat
        self._spool_lock = threading.Lock()

    def __call__(self, incoming: IncomingMessage) -> str:
        """Handle one message; returns what happened (for tests): accepted, duplicate, ignored,
        answer, notice, skipped:<reason>, spooled or invalid:<field>."""
        skip = self._skip_reason(incoming)
        if skip is not None:
            emit(
                ev.WA_INBOUND_SKIPPED,
                account_id=self.config.account_id,
                provider_message_id=incoming.message_id,
                reason=skip,
            )
            return f"skipped:{skip}"
        try:
            with database.connection_context():
                message = self._to_inbound(incoming)
                return self._accept(incoming, message)
        except InvalidInbound as error:
            emit(ev.WA_INBOUND_MALFORMED, account_id=self.config.account_id, what="message", error=str(error))
            return f"invalid:{error.field}"
        except Exception as error:  # noqa: BLE001 - the database is down: keep the message locally
            return self._spool(incoming, error)

    # --- decisions ------------------------------------------------------------------------
    def _skip_reason(self, incoming: IncomingMessage) -> str | None:
        if incoming.from_me:
            return "own_message"
        if incoming.chat == STATUS_BROADCAST or incoming.chat.endswith("@broadcast"):
            return "status_broadcast"
        if incoming.chat.endswith("@newsletter"):
            return "newsletter"
        if incoming.is_group:
            if self.config.groups != "mentions":
                return "group_ignored"
            mine = {strip_device(j) for j in self.own_jids()}
            if not mine.intersection(strip_device(m) for m in incoming.mentions):
                return "group_not_mentioned"
        return None

    def _to_inbound(self, incoming: IncomingMessage) -> InboundMessage:
        sender, _source = self.identities.canonical(incoming.sender, incoming.sender_alt)
        chat = strip_device(incoming.chat)
        # A direct chat is the person: one conversation whichever form they wrote from.
        chat_id = chat if incoming.is_group else sender
        self.identities.remember_route(chat_id, chat)
        return InboundMessage(
            channel=CHANNEL,
            account_id=self.config.account_id,
            chat_id=chat_id,
            sender_id=sender,
            text=incoming.text if incoming.text is not None else "",
            provider_message_id=incoming.message_id,
            sender_name=incoming.push_name or None,
            sent_at=incoming.sent_at,
        )

    def _accept(self, incoming: IncomingMessage, message: InboundMessage) -> str:
        self.last_inbound_at = time.time()
        if incoming.text is None or not incoming.text.strip():
            reply = self.config.unsupported_reply if not incoming.is_group else None
            result = self._with_retries(lambda: accept_notice(message, reply))
            if result.status == "notice":
                emit(
                    ev.WA_INBOUND_UNSUPPORTED,
                    account_id=self.config.account_id,
                    provider_message_id=incoming.message_id,
                    kind=incoming.kind,
                    replied=result.message_id is not None,
                )
            return result.status
        return self._with_retries(lambda: accept(message, publish=self.publish)).status

    @staticmethod
    def _with_retries(call: Callable[[], AcceptResult]) -> AcceptResult:
        # A few quick tries ride out a failover of the database or a dropped pooled connection;
        # more would stall whatsmeow's event queue.
        for attempt in range(_ACCEPT_TRIES):
            try:
                return call()
            except InvalidInbound:
                raise
            except Exception:
                if attempt == _ACCEPT_TRIES - 1:
                    raise
                if not database.is_closed():
                    database.close()
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- the spool ------------------------------------------------------------------------
    def _spool(self, incoming: IncomingMessage, error: Exception) -> str:
        record = {
            "id": incoming.message_id,
            "chat": incoming.chat,
            "sender": incoming.sender,
            "sender_alt": incoming.sender_alt,
            "text": incoming.text,
            "timestamp": incoming.sent_at.timestamp(),
            "push_name": incoming.push_name,
            "is_group": incoming.is_group,
            "kind": incoming.kind,
            "mentions": list(incoming.mentions),
        }
        with self._spool_lock:
            self.config.spool_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.config.spool_path, "a", encoding="utf-8") as spool:
                spool.write(json.dumps(record, ensure_ascii=False) + "\n")
                spool.flush()
                os.fsync(spool.fileno())
        emit(
            ev.WA_INBOUND_SPOOLED,
            account_id=self.config.account_id,
            provider_message_id=incoming.message_id,
            path=str(self.config.spool_path),
            error=f"{type(error).__name__}: {str(error)[:200]}",
        )
        return "spooled"

    def replay_spool(self, parse: Callable[[bytes], IncomingMessage]) -> int:
        """Accept what an earlier term spooled (duplicates are skipped by dedupe); the spool is
        removed only when every line was handled. Returns how many lines were replayed."""
        path = self.config.spool_path
        with self._spool_lock:
            if not path.exists():
                return 0
            working = path.with_suffix(path.suffix + f".replay-{os.getpid()}")
            os.replace(path, working)
        lines = [line for line in working.read_bytes().splitlines() if line.strip()]
        duplicates = 0
        for raw in lines:
            outcome = self(parse(raw))  # a failure spools the line again
            duplicates += outcome == "duplicate"
        working.unlink()
        emit(
            ev.WA_INBOUND_SPOOL_REPLAYED,
            account_id=self.config.account_id,
            count=len(lines),
            duplicates=duplicates,
        )
        return len(lines)
