"""The one shape every channel hands to ingress: :class:`InboundMessage`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_ID_LENGTH = 256


class InvalidInbound(ValueError):
    """An inbound message that cannot be accepted; the message names the field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class InboundMessage:
    """A message a person sent on a channel, as the channel adapter received it.

    ``provider_message_id`` may be None for a provider that gives none; :meth:`dedupe_key` then
    derives one from the content and ``sent_at``, the sender's (provider's) time, so a message
    needs at least one of the two: without either, a repeat cannot be recognised and the message
    is refused (:class:`InvalidInbound` naming ``sent_at``). ``sent_at`` is stored with the
    message for context and audit; it never orders turns (acceptance order does). ``raw`` keeps
    the provider's payload for debugging (never logged).
    """

    channel: str
    account_id: str
    chat_id: str
    sender_id: str
    text: str
    provider_message_id: str | None = None
    sender_name: str | None = None
    sent_at: datetime | None = None
    raw: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("channel", "account_id", "chat_id", "sender_id"):
            _require_id(name, getattr(self, name))
        if self.provider_message_id is not None:
            _require_id("provider_message_id", self.provider_message_id)
        if not isinstance(self.text, str):
            raise InvalidInbound("text", f"must be a string, got {type(self.text).__name__}")
        if self.sender_name is not None and not isinstance(self.sender_name, str):
            raise InvalidInbound("sender_name", f"must be a string, got {type(self.sender_name).__name__}")
        # Postgres text cannot hold NUL, nor a lone surrogate (JSON's "\ud800" parses to one):
        # refuse both here with the field's name, not as an error at INSERT time.
        for name in ("text", "sender_name"):
            value = getattr(self, name)
            if value is not None and "\x00" in value:
                raise InvalidInbound(name, "must not contain NUL characters")
            if value is not None:
                _require_utf8(name, value)
        if self.sent_at is None:
            if self.provider_message_id is None:
                # Inventing a time here would make every redelivery a new message (issue 11, item 6).
                raise InvalidInbound(
                    "sent_at",
                    "is required when the message has no provider_message_id "
                    "(without either, a repeat cannot be recognised)",
                )
            return
        if not isinstance(self.sent_at, datetime):
            raise InvalidInbound("sent_at", f"must be a datetime, got {type(self.sent_at).__name__}")
        if self.sent_at.tzinfo is None:
            # A naive time from a provider is taken as UTC, so keys and ordering agree across hosts.
            object.__setattr__(self, "sent_at", self.sent_at.replace(tzinfo=UTC))

    def dedupe_key(self) -> str:
        """The provider's message id, or one derived from the content and the send time.

        Why derive: a provider that gives no id still re-sends the same payload (same chat,
        sender, text and send time) when it retries, so the hash recognises the retry. The send
        time is part of the key so the same short text ("ok") sent twice is two messages.
        """
        if self.provider_message_id is not None:
            return self.provider_message_id
        assert self.sent_at is not None  # __post_init__ refuses a message with neither
        material = "\x1f".join(
            (self.chat_id, self.sender_id, self.sent_at.astimezone(UTC).isoformat(), self.text)
        )
        return "derived:" + hashlib.sha256(material.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (the ``ingest`` actor's message body, a replay file's line)."""
        return {
            "channel": self.channel,
            "account_id": self.account_id,
            "chat_id": self.chat_id,
            "sender_id": self.sender_id,
            "sender_name": self.sender_name,
            "provider_message_id": self.provider_message_id,
            "text": self.text,
            "sent_at": self.sent_at.isoformat() if self.sent_at is not None else None,
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, data: Any) -> InboundMessage:
        """Build from :meth:`to_dict`'s shape; :class:`InvalidInbound` names a bad field."""
        if not isinstance(data, dict):
            raise InvalidInbound("message", f"must be a JSON object, got {type(data).__name__}")
        for name in ("channel", "account_id", "chat_id", "sender_id", "text"):
            if name not in data or data[name] is None:
                raise InvalidInbound(name, "is required")
        raw = data.get("raw")
        if raw is not None and not isinstance(raw, dict):
            raise InvalidInbound("raw", f"must be an object, got {type(raw).__name__}")
        sent_at = data.get("sent_at")
        return cls(
            channel=data["channel"],
            account_id=data["account_id"],
            chat_id=data["chat_id"],
            sender_id=data["sender_id"],
            text=data["text"],
            provider_message_id=data.get("provider_message_id"),
            sender_name=data.get("sender_name"),
            # No time is invented: a missing one stays missing (see __post_init__).
            sent_at=parse_sent_at(sent_at) if sent_at is not None else None,
            raw=raw,
        )


def parse_sent_at(value: Any, field_name: str = "sent_at") -> datetime:
    """An ISO 8601 string or epoch seconds as an aware datetime; :class:`InvalidInbound` otherwise."""
    if isinstance(value, bool):
        raise InvalidInbound(field_name, "must be an ISO 8601 string or epoch seconds, got a boolean")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInbound(field_name, f"epoch seconds out of range: {value!r}") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInbound(field_name, f"not an ISO 8601 time: {value[:40]!r}") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise InvalidInbound(
        field_name, f"must be an ISO 8601 string or epoch seconds, got {type(value).__name__}"
    )


def _require_id(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidInbound(name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInbound(name, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInbound(name, f"is longer than {MAX_ID_LENGTH} characters")
    if "\x00" in value:
        raise InvalidInbound(name, "must not contain NUL characters")
    _require_utf8(name, value)


def _require_utf8(name: str, value: str) -> None:
    # A lone surrogate (half of a UTF-16 pair, e.g. JSON "\ud800") is a valid Python str but no
    # Unicode text: UTF-8 cannot encode it, so Postgres (and every reader) would fail on it.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInbound(
            name, f"must be valid Unicode text (a lone surrogate at character {error.start})"
        ) from None
