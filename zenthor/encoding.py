"""Dramatiq's JSON encoding, with a typed event for a broker message that is not one of ours.

Dramatiq dead-letters a message it cannot decode and logs a traceback; this encoder adds the
``queue.message.undecodable`` event so an operator's alert sees it, and checks the envelope's
fields so a JSON body of the wrong shape is reported the same way.
"""

from __future__ import annotations

from dramatiq.encoder import JSONEncoder, MessageData

from zenthor.observability import emit
from zenthor.observability import events as ev

_ENVELOPE = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp")


class GuardedJSONEncoder(JSONEncoder):
    """JSON encoder that reports undecodable or malformed envelopes before Dramatiq drops them."""

    def decode(self, data: bytes) -> MessageData:
        try:
            fields = super().decode(data)
        except Exception as error:
            emit(ev.MESSAGE_UNDECODABLE, size=len(data), error=str(error)[:200])
            raise
        if not isinstance(fields, dict) or any(key not in fields for key in _ENVELOPE):
            missing = [key for key in _ENVELOPE if not isinstance(fields, dict) or key not in fields]
            error = f"not a Dramatiq message: missing {', '.join(missing)}"
            emit(ev.MESSAGE_UNDECODABLE, size=len(data), error=error)
            raise ValueError(error)
        return fields
