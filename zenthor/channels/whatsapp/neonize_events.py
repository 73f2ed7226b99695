"""Pure mappings from neonize 0.5.2 protobuf events to the transport's types.

Nothing here touches neonize's client or the network: each function takes a parsed neonize event
(or a JID string) and returns a transport value, or raises :class:`MalformedEvent` when a field the
runtime relies on is missing or garbage. The adapter (:mod:`.neonize_transport`) catches that and
reports it through ``on_malformed``.

Units, read in the disassembly of the ``neonize-linux-amd64.so`` bundled with neonize 0.5.2
(whatsmeow v0.0.0-20260921121126-35ae40906e74), not in neonize's docs:

- ``MessageInfo.Timestamp`` is Unix **milliseconds** (``utils.EncodeMessageInfo`` inlines
  ``time.Time.UnixMilli``: ``× 1000`` plus ``nsec / 10⁶``);
- ``TemporaryBan.Expire`` is a **duration in seconds** from now (``utils.EncodeTemporaryBan`` converts
  whatsmeow's ``time.Duration`` with ``Duration.Seconds()``); 0 means WhatsApp gave no expiry;
- ``SendResponse.Timestamp`` is Unix **seconds** (``utils.EncodeSendResponse`` uses ``Unix()``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message as ProtoMessage
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    KeepAliveRestoredEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    PairStatusEv,
    StreamErrorEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
from neonize.utils.jid import Jid2String
from neonize.utils.message import extract_text

from .transport import ConnectionEvent, IncomingMessage, bare_jid

log = logging.getLogger(__name__)

STATUS_BROADCAST = "status@broadcast"  # the chat of status updates ("stories"): the runtime skips it

# Below this a MessageInfo.Timestamp cannot be milliseconds of a real message (it would be 1973):
# it is seconds, as hand-built events and older neonize encoders give.
_SECONDS_CEILING = 100_000_000_000

# neonize's enums renumber whatsmeow's codes; the runtime gets WhatsApp's numbers back.
CONNECT_FAILURE_CODES: dict[int, int] = {
    npb.GENERIC: 400,
    npb.LOGGED_OUT: 401,
    npb.TEMP_BANNED: 402,
    npb.MAIN_DEVICE_GONE: 403,
    npb.UNKNOWN_LOGOUT: 406,
    npb.CLIENT_OUTDATED: 405,
    npb.BAD_USER_AGENT: 409,
    npb.INTERNAL_SERVER_ERROR: 500,
    npb.EXPERIMENTAL: 501,
    npb.SERVICE_UNAVAILABLE: 503,
}
TEMP_BAN_CODES: dict[int, int] = {
    npb.TemporaryBan.SEND_TO_TOO_MANY_PEOPLE: 101,
    npb.TemporaryBan.BLOCKED_BY_USERS: 102,
    npb.TemporaryBan.CREATED_TOO_MANY_GROUPS: 103,
    npb.TemporaryBan.SENT_TOO_MANY_SAME_MESSAGE: 104,
    npb.TemporaryBan.BROADCAST_LIST: 106,
}

# Message fields in the order their kind is decided (a message may carry several fields).
_KIND_BY_FIELD: tuple[tuple[str, str], ...] = (
    ("conversation", "text"),
    ("extendedTextMessage", "text"),
    ("imageMessage", "image"),
    ("videoMessage", "video"),
    ("ptvMessage", "video"),
    ("audioMessage", "audio"),
    ("documentMessage", "document"),
    ("stickerMessage", "sticker"),
    ("lottieStickerMessage", "sticker"),
    ("reactionMessage", "reaction"),
    ("encReactionMessage", "reaction"),
)

# The lifecycle events the adapter subscribes to, with the kind each one always maps to
# (PairStatus is pair_success or pair_error, decided by its payload).
LIFECYCLE_KINDS: dict[type[ProtoMessage], str] = {
    ConnectedEv: "connected",
    DisconnectedEv: "disconnected",
    KeepAliveTimeoutEv: "keepalive_timeout",
    KeepAliveRestoredEv: "keepalive_restored",
    StreamReplacedEv: "stream_replaced",
    LoggedOutEv: "logged_out",
    TemporaryBanEv: "temporary_ban",
    ClientOutdatedEv: "client_outdated",
    ConnectFailureEv: "connect_failure",
    StreamErrorEv: "stream_error",
    PairStatusEv: "pair_status",
}
LIFECYCLE_EVENT_TYPES: tuple[type[ProtoMessage], ...] = tuple(LIFECYCLE_KINDS)


class MalformedEvent(ValueError):
    """An event lacks (or garbles) a field the runtime needs; it is reported, never delivered."""


# ---- JIDs -------------------------------------------------------------------------------------


def jid_is_empty(jid: npb.JID) -> bool:
    """Whether a neonize JID is unset (whatsmeow's ``EmptyJID`` encodes as empty user and server)."""
    return not jid.Server or not jid.User


def bare_jid_of(jid: npb.JID) -> str:
    """``user@server`` of a neonize JID, without agent or device; raises on an empty JID."""
    if jid_is_empty(jid):
        raise MalformedEvent("empty JID")
    return bare_jid(jid.User, jid.Server)


def device_jid_of(jid: npb.JID) -> str:
    """The full string of a device JID (``user:device@server``), the form whatsmeow keys its store on."""
    if jid_is_empty(jid):
        raise MalformedEvent("empty JID")
    return Jid2String(jid)


def parse_jid(value: str) -> npb.JID:
    """A neonize JID from ``user[.agent][:device]@server`` (whatsmeow's ``ParseJID``, strict).

    Works for phone JIDs, ``@lid``, ``@g.us``, ``status@broadcast`` and device JIDs; raises
    :class:`ValueError` on anything else.
    """
    user_part, at, server = value.strip().partition("@")
    if not at or not user_part or not server or "@" in server:
        raise ValueError(f"not a JID: {value!r}")
    user, agent, device = user_part, 0, 0
    if ":" in user_part:
        user, _, device_text = user_part.partition(":")
        device = _small_int(device_text, value, 65535)
    if "." in user:
        user, _, agent_text = user.partition(".")
        agent = _small_int(agent_text, value, 255)
    if not user:
        raise ValueError(f"not a JID: {value!r}")
    return npb.JID(User=user, RawAgent=agent, Device=device, Integrator=0, Server=server, IsEmpty=False)


def _small_int(text: str, value: str, ceiling: int) -> int:
    if not text.isdigit() or int(text) > ceiling:
        raise ValueError(f"bad device part in JID {value!r}")
    return int(text)


def bare_from_string(value: str) -> str:
    """``user@server`` of a JID string, dropping any agent/device part; raises ValueError if not a JID."""
    jid = parse_jid(value)
    return bare_jid(jid.User, jid.Server)


def is_status_broadcast(chat: str) -> bool:
    """Whether ``chat`` is WhatsApp's status feed rather than a conversation."""
    return chat == STATUS_BROADCAST


# ---- times ------------------------------------------------------------------------------------


def datetime_from_millis(value: int) -> datetime | None:
    """An aware UTC datetime from ``MessageInfo.Timestamp`` (milliseconds; seconds tolerated), else None."""
    if value <= 0:
        return None
    seconds = value if value < _SECONDS_CEILING else value / 1000
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def datetime_from_seconds(value: int) -> datetime | None:
    """An aware UTC datetime from a Unix-seconds field (``SendResponse.Timestamp``); None when unset."""
    if value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


# ---- messages ---------------------------------------------------------------------------------


def message_kind(message: WAMessage) -> str:
    """``text``, ``image``, ``video``, ``audio``, ``document``, ``sticker``, ``reaction`` or ``other``."""
    for field_name, kind in _KIND_BY_FIELD:
        if message.HasField(field_name):
            return kind
    return "other"


def message_text(message: WAMessage) -> str | None:
    """The text of a message (plain, extended, or a media caption), None when it has none."""
    return extract_text(message) or None


def message_mentions(message: WAMessage) -> tuple[str, ...]:
    """Bare JIDs in ``contextInfo.mentionedJID`` of any part of the message that has one."""
    mentions: list[str] = []
    for field, value in message.ListFields():
        if field.message_type is None or "contextInfo" not in field.message_type.fields_by_name:
            continue
        if not value.HasField("contextInfo"):
            continue
        for mentioned in value.contextInfo.mentionedJID:
            try:
                bare = bare_from_string(mentioned)
            except ValueError:
                log.debug("ignoring mention that is not a JID: %r", mentioned)
                continue
            if bare not in mentions:
                mentions.append(bare)
    return tuple(mentions)


def incoming_message_from(ev: npb.Message, *, received_at: datetime | None = None) -> IncomingMessage:
    """Map neonize's ``MessageEv`` to an :class:`IncomingMessage`.

    Raises :class:`MalformedEvent` without an id, chat or sender. A missing or absurd timestamp
    does not drop the message: ``sent_at`` falls back to ``received_at`` (now) and is logged.
    An edit (``IsEdit``) or a protocol message maps to kind ``other`` without text, so it is never
    taken for a new message.
    """
    info = ev.Info
    source = info.MessageSource
    if not info.ID:
        raise MalformedEvent("message without an ID")
    try:
        chat = bare_jid_of(source.Chat)
        sender = bare_jid_of(source.Sender)
    except MalformedEvent as exc:
        raise MalformedEvent(f"message {info.ID}: chat or sender missing") from exc
    sent_at = datetime_from_millis(info.Timestamp)
    if sent_at is None:
        sent_at = received_at or datetime.now(UTC)
        log.warning(
            "message %s has no usable timestamp (%r); using its arrival time", info.ID, info.Timestamp
        )
    message = ev.Message
    if ev.IsEdit:
        kind, text = "other", None
    else:
        kind = message_kind(message)
        text = message_text(message) if kind in ("text", "image", "video", "document") else None
    return IncomingMessage(
        message_id=info.ID,
        chat=chat,
        sender=sender,
        text=text,
        sent_at=sent_at,
        sender_alt=None if jid_is_empty(source.SenderAlt) else bare_jid_of(source.SenderAlt),
        push_name=info.Pushname or None,
        from_me=source.IsFromMe,
        is_group=source.IsGroup,
        kind=kind,
        mentions=message_mentions(message),
    )


def undecryptable_summary(ev: npb.UndecryptableMessage) -> tuple[str, str]:
    """``(what, why)`` for ``on_malformed`` about a message whatsmeow could not decrypt."""
    info = ev.Info
    source = info.MessageSource
    sender = "unknown sender" if jid_is_empty(source.Sender) else bare_jid_of(source.Sender)
    what = f"undecryptable message {info.ID or '?'} from {sender}"
    why = "whatsmeow could not decrypt it" + (" (unavailable)" if ev.IsUnavailable else "")
    return what, why


# ---- lifecycle --------------------------------------------------------------------------------


def connection_event_from(ev: ProtoMessage, *, received_at: datetime | None = None) -> ConnectionEvent:
    """Map a neonize lifecycle event to a :class:`ConnectionEvent`; raises MalformedEvent otherwise.

    ``pair_success`` carries the new device's full JID (``user:device@server``): that, not the bare
    JID, is what the account must store to resume the session later.
    """
    now = received_at or datetime.now(UTC)
    if isinstance(ev, LoggedOutEv):
        return ConnectionEvent(
            kind="logged_out",
            on_connect=ev.OnConnect,
            code=CONNECT_FAILURE_CODES.get(ev.Reason) if ev.HasField("Reason") else None,
            reason=_enum_name(npb.ConnectFailureReason, ev, "Reason"),
        )
    if isinstance(ev, TemporaryBanEv):
        expires_at = now + timedelta(seconds=ev.Expire) if ev.Expire > 0 else None
        return ConnectionEvent(
            kind="temporary_ban",
            code=TEMP_BAN_CODES.get(ev.Code) if ev.HasField("Code") else None,
            reason=_enum_name(npb.TemporaryBan.TempBanReason, ev, "Code"),
            expires_at=expires_at,
        )
    if isinstance(ev, ConnectFailureEv):
        name = _enum_name(npb.ConnectFailureReason, ev, "Reason")
        reason = ": ".join(part for part in (name, ev.Message) if part) or None
        code = CONNECT_FAILURE_CODES.get(ev.Reason) if ev.HasField("Reason") else None
        return ConnectionEvent(kind="connect_failure", code=code, reason=reason)
    if isinstance(ev, StreamErrorEv):
        # 515 ("restart required", right after pairing) is whatsmeow's to handle: not a logout.
        code_text = ev.Code.strip()
        return ConnectionEvent(
            kind="stream_error",
            code=int(code_text) if code_text.isdigit() else None,
            reason=code_text or None,
        )
    if isinstance(ev, KeepAliveTimeoutEv):
        return ConnectionEvent(kind="keepalive_timeout", code=ev.ErrorCount)
    if isinstance(ev, PairStatusEv):
        return _pair_event(ev)
    kind = LIFECYCLE_KINDS.get(type(ev))
    if kind is None:
        raise MalformedEvent(f"{type(ev).__name__} is not a lifecycle event")
    if isinstance(ev, ClientOutdatedEv):
        return ConnectionEvent(kind=kind, code=405)
    return ConnectionEvent(kind=kind)


def _pair_event(ev: npb.PairStatus) -> ConnectionEvent:
    if not ev.HasField("Status"):
        raise MalformedEvent("pair status without a status")
    if ev.Status == npb.PairStatus.SUCCESS:
        if jid_is_empty(ev.ID):
            raise MalformedEvent("pair success without the device JID")
        return ConnectionEvent(kind="pair_success", jid=device_jid_of(ev.ID))
    if ev.Status == npb.PairStatus.ERROR:
        return ConnectionEvent(kind="pair_error", reason=ev.Error or "pairing failed")
    raise MalformedEvent(f"pair status {ev.Status!r} is neither success nor error")


def _enum_name(enum_type, ev: ProtoMessage, field: str) -> str | None:
    if not ev.HasField(field):
        return None
    value = getattr(ev, field)
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


def fallback_connection_event(event_type: type[ProtoMessage]) -> ConnectionEvent | None:
    """The event to deliver when a lifecycle payload does not parse at all: its kind, no details.

    A logout or a replaced stream must not vanish because its details are garbage. PairStatus has
    no payload-free meaning (success or error?), so it gets None.
    """
    kind = LIFECYCLE_KINDS.get(event_type)
    if kind is None or kind == "pair_status":
        return None
    return ConnectionEvent(kind=kind)


def qr_event(data: bytes) -> ConnectionEvent:
    """The ``qr`` event for one code neonize's QR callback gave (``reason`` holds the QR text)."""
    return ConnectionEvent(kind="qr", reason=data.decode("utf-8", "replace"))


def login_status_event(status: str) -> ConnectionEvent | None:
    """Map an event of whatsmeow's QR channel (neonize only prints them) to ``pair_error`` or None.

    ``success`` is None (``PairStatus`` brings ``pair_success``); ``timeout`` (the codes ran out) and
    ``err-…`` end a pairing attempt.
    """
    status = status.strip()
    if not status or status in ("code", "success"):
        return None
    return ConnectionEvent(kind="pair_error", reason=f"qr pairing ended: {status}")


def event_name(event_type: type[ProtoMessage] | None, code: int) -> str:
    """A readable name for an event code, for logs and ``on_malformed``."""
    return f"{event_type.__name__} event" if event_type is not None else f"event code {code}"


__all__ = [
    "CONNECT_FAILURE_CODES",
    "LIFECYCLE_EVENT_TYPES",
    "LIFECYCLE_KINDS",
    "STATUS_BROADCAST",
    "TEMP_BAN_CODES",
    "MalformedEvent",
    "bare_from_string",
    "bare_jid_of",
    "connection_event_from",
    "datetime_from_millis",
    "datetime_from_seconds",
    "device_jid_of",
    "event_name",
    "fallback_connection_event",
    "incoming_message_from",
    "is_status_broadcast",
    "jid_is_empty",
    "login_status_event",
    "message_kind",
    "message_mentions",
    "message_text",
    "parse_jid",
    "qr_event",
    "undecryptable_summary",
]
