"""The transport interface of the WhatsApp runtime: what it needs from a WhatsApp connection.

The runtime never touches neonize directly; it talks to a :class:`Transport` (the neonize adapter
in production, the file-driven fake in tests and rehearsals). Events come in through the two
callbacks given to :meth:`Transport.connect`; sends go out through :meth:`Transport.send_text`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class IncomingMessage:
    """One message as WhatsApp delivered it, before any policy (transport-neutral).

    JIDs are strings ``user@server`` without the device suffix (``15551234567@s.whatsapp.net``,
    ``123456789@lid``, ``12036…@g.us``). ``text`` is None for a message with no text (media without
    a caption, a sticker, a reaction); ``kind`` then says what it was.
    """

    message_id: str
    chat: str
    sender: str
    text: str | None
    sent_at: datetime
    sender_alt: str | None = None  # the other form of the sender (phone JID for a LID, or LID)
    push_name: str | None = None
    from_me: bool = False
    is_group: bool = False
    kind: str = "text"  # text | image | video | audio | document | sticker | reaction | other
    mentions: tuple[str, ...] = ()  # JIDs mentioned in the message (group mention gating)


@dataclass(frozen=True)
class ConnectionEvent:
    """A change of the connection's state, as the runtime needs to act on it.

    ``kind`` is one of:
    ``connected``, ``disconnected`` (whatsmeow reconnects by itself), ``keepalive_timeout``,
    ``keepalive_restored``, ``stream_replaced`` (another connection of this device: end the term),
    ``logged_out`` (the session is gone for every host), ``temporary_ban`` (``code``, ``expires_at``),
    ``client_outdated``, ``connect_failure`` (``code``, ``reason``), ``stream_error`` (``code``),
    ``pair_success`` (``jid``), ``pair_error`` (``reason``), ``qr`` (``reason`` holds the code).
    """

    kind: str
    code: int | None = None
    reason: str | None = None
    expires_at: datetime | None = None
    jid: str | None = None
    on_connect: bool = False


@dataclass(frozen=True)
class SendResult:
    """What WhatsApp gave back for a send: its message id and server timestamp."""

    message_id: str
    timestamp: datetime | None = None


class TransportError(Exception):
    """A send, mark or connect that failed; ``retryable`` says whether another try may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotOnWhatsApp(TransportError):
    """The recipient is not a WhatsApp user (or blocked us): retrying will not help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class ConnectFailed(TransportError):
    """The first dial failed (whatsmeow never retries it: the runtime does, with backoff)."""


MessageHandler = Callable[[IncomingMessage], None]
ConnectionHandler = Callable[[ConnectionEvent], None]
MalformedHandler = Callable[[str, str], None]  # (what, why): an event the transport could not map


@dataclass
class TransportHandlers:
    """The runtime's callbacks. They are called on the transport's event thread, one at a time,
    and must be quick (neonize has already acknowledged a message to WhatsApp)."""

    on_message: MessageHandler
    on_connection: ConnectionHandler
    on_malformed: MalformedHandler = field(default=lambda what, why: None)


class Transport(ABC):
    """One WhatsApp connection of one account. Start and stop it from one thread."""

    account_id: str

    @abstractmethod
    def connect(self, handlers: TransportHandlers) -> None:
        """Open the connection and start delivering events; returns once the dial has started.

        Raises :class:`ConnectFailed` when the first dial fails (the caller retries).
        """

    @abstractmethod
    def stop(self) -> None:
        """Close the connection. May block (neonize's can take a minute): call it off the
        runtime's main path."""

    @abstractmethod
    def send_text(self, to: str, text: str) -> SendResult:
        """Send ``text`` to chat ``to``; raise :class:`TransportError` (or :class:`NotOnWhatsApp`)."""

    @abstractmethod
    def mark_read(self, chat: str, sender: str, message_ids: list[str]) -> None:
        """Send read receipts for ``message_ids`` of ``sender`` in ``chat``."""

    @abstractmethod
    def set_typing(self, chat: str, typing: bool) -> None:
        """Show (or clear) "typing…" in ``chat``."""

    def start_pairing(self) -> None:
        """Begin pairing a new device after :meth:`connect` (QR codes arrive as ``qr`` events).
        neonize shows QR codes by itself on connect when the store has no device."""
        return None

    def pair_phone(self, phone: str) -> str:
        """Ask for a pair code for ``phone`` (after :meth:`connect`); returns the code to type."""
        raise TransportError("this transport cannot pair with a phone number", retryable=False)

    def own_jids(self) -> tuple[str, ...]:
        """This device's own JIDs (phone JID and LID, without device), when known."""
        return ()

    def phone_for_lid(self, lid: str) -> str | None:
        """The phone JID whatsmeow's LID map has for ``lid``, if any."""
        return None

    def lid_for_phone(self, phone: str) -> str | None:
        """The LID whatsmeow's LID map has for ``phone``, if any."""
        return None

    def has_session(self) -> bool:
        """Whether the session store holds this account's device, so :meth:`connect` can resume it.

        A transport without a stored session (the fake) always has one.
        """
        return True


def bare_jid(user: str, server: str) -> str:
    """``user@server`` (no device part), the form every JID takes in our tables."""
    return f"{user}@{server}" if server else user
