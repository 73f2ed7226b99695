"""Turning a webhook request body into an :class:`InboundMessage`, naming whatever is wrong.

``BodyError`` (HTTP 400) is for a body that is not a JSON object; ``FieldError`` (HTTP 422) names
the missing or mistyped field. Text is kept exactly as sent (emoji, right-to-left, combining marks).
"""

from __future__ import annotations

import json
from typing import Any

from zenthor.channels.webhook import CHANNEL
from zenthor.ingress import InboundMessage, InvalidInbound, parse_sent_at

REQUIRED_STRINGS = ("message_id", "chat_id", "sender_id", "text")


class BodyError(ValueError):
    """The body is not JSON, or not a JSON object (HTTP 400)."""


class FieldError(ValueError):
    """A field is missing or has the wrong type or value (HTTP 422)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``; :class:`BodyError` naming the problem otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(f"body is not valid UTF-8 (byte {error.start})") from None
    if not text.strip():
        raise BodyError("body is empty; expected a JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BodyError(
            f"body is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise BodyError("body is nested too deeply") from None
    except ValueError as error:
        # Python refuses an integer of more than 4300 digits (a denial-of-service guard).
        raise BodyError(f"body is not usable JSON: {str(error)[:120]}") from None
    if not isinstance(data, dict):
        raise BodyError(f"body must be a JSON object, got {_json_type(data)}")
    return data


def to_inbound(account_id: str, data: dict[str, Any]) -> InboundMessage:
    """Validate the fields of a webhook message; :class:`FieldError` names the first bad one."""
    for name in REQUIRED_STRINGS:
        if name not in data or data[name] is None:
            raise FieldError(name, "is required")
        if not isinstance(data[name], str):
            raise FieldError(name, f"must be a string, got {_json_type(data[name])}")
    if not data["text"].strip():
        raise FieldError("text", "must not be empty")
    sender_name = data.get("sender_name")
    if sender_name is not None and not isinstance(sender_name, str):
        raise FieldError("sender_name", f"must be a string, got {_json_type(sender_name)}")
    try:
        kwargs: dict[str, Any] = {}
        if data.get("sent_at") is not None:
            kwargs["sent_at"] = parse_sent_at(data["sent_at"])
        return InboundMessage(
            channel=CHANNEL,
            account_id=account_id,
            chat_id=data["chat_id"],
            sender_id=data["sender_id"],
            sender_name=sender_name,
            provider_message_id=data["message_id"],
            text=data["text"],
            raw=data,
            **kwargs,
        )
    except InvalidInbound as error:
        name = "message_id" if error.field == "provider_message_id" else error.field
        raise FieldError(name, error.problem) from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
