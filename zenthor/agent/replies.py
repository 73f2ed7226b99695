"""Writing the assistant's replies: an assistant message plus its outbox rows.

Called inside the transaction that completes (or finally fails) a job, so a reply exists exactly
when the job is finished (I5 starts here: one outbox row per reply part, sent once by delivery).

A reply longer than its channel's limit is split on paragraph, line or sentence boundaries
(falling back to a space, then to a hard cut that never separates a combining mark from its base)
into several outbox rows, sent in order. The conversation keeps one assistant message per reply.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from zenthor.db import execute
from zenthor.queue.conversations import lock_route

FAILURE_REPLY = (
    "Sorry, something went wrong on my side and I couldn't answer your last message. "
    "Please try again in a little while."
)

# Characters per outbox row, by channel; None means no limit. Channels add theirs with
# register_text_limit (a channel module knows its provider's limit; this module imports none).
_TEXT_LIMITS: dict[str, int | None] = {"whatsapp": 4096, "webhook": 4000, "terminal": None}

# A sentence ends with . ! ? … (or their CJK forms), maybe closing quotes/brackets, then space.
_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)\]]*\s+")


@dataclass
class WrittenReplies:
    """Ids of what a turn wrote, so the caller can publish deliveries after commit."""

    message_ids: list[int] = field(default_factory=list)
    outbound_ids: list[int] = field(default_factory=list)
    channel: str | None = None  # lets delivery route the nudges without reading the rows back


def register_text_limit(channel: str, limit: int | None) -> None:
    """Set the longest text one outbox row of ``channel`` may carry (None: unlimited)."""
    if limit is not None and limit < 16:
        raise ValueError(f"text limit of channel {channel!r} must be at least 16, got {limit}")
    _TEXT_LIMITS[channel] = limit


def text_limit(channel: str) -> int | None:
    """The text limit of ``channel`` (None: unlimited)."""
    return _TEXT_LIMITS.get(channel)


def split_text(text: str, limit: int | None) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters; ``"".join(parts) == text``.

    Boundaries, best first: a blank line or line break, a sentence end, a space (each searched in
    the second half of the window first, so parts are not needlessly short), then a hard cut.
    """
    if limit is None or len(text) <= limit:
        return [text]
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _cut_position(rest, limit)
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        parts.append(rest)
    return parts


def _cut_position(text: str, limit: int) -> int:
    window = text[:limit]
    half = limit // 2
    for floor in (half, 1):
        for finder in (_last_paragraph, _last_line, _last_sentence, _last_space):
            position = finder(window)
            if position >= floor:
                return position
    return _hard_cut(text, limit)


def _last_paragraph(window: str) -> int:
    index = window.rfind("\n\n")
    return index + 2 if index >= 0 else -1


def _last_line(window: str) -> int:
    index = window.rfind("\n")
    return index + 1 if index >= 0 else -1


def _last_sentence(window: str) -> int:
    last = -1
    for match in _SENTENCE_END.finditer(window):
        last = match.end()
    return last


def _last_space(window: str) -> int:
    for index in range(len(window) - 1, -1, -1):
        if window[index].isspace():
            return index + 1
    return -1


def _hard_cut(text: str, limit: int) -> int:
    # Never start a part with a combining mark, a zero-width joiner or a variation selector: it
    # belongs to the character before it.
    cut = limit
    while cut > 1 and (_attaches_to_previous(text[cut]) or _joins_next(text[cut - 1])):
        cut -= 1
    return cut


def _joins_next(char: str) -> bool:
    # A zero-width joiner (emoji sequences) or a virama (Indic conjuncts, combining class 9)
    # binds the following character to the one before it.
    return char == "\u200d" or unicodedata.combining(char) == 9


def _attaches_to_previous(char: str) -> bool:
    return (
        unicodedata.combining(char) != 0
        or char in ("\u200d", "\u200c")
        or "\ufe00" <= char <= "\ufe0f"
        or "\U0001f3fb" <= char <= "\U0001f3ff"  # skin-tone modifiers
    )


# One statement per reply: the assistant message and its outbox parts, in order.
_INSERT_REPLY = """
WITH reply AS (
    INSERT INTO message (conversation_id, role, content, job_id, kind)
    VALUES (%(conversation)s, 'assistant', %(text)s, %(job)s, %(kind)s)
    RETURNING id
)
INSERT INTO outbound_message (conversation_id, job_id, in_reply_to, channel, account_id, chat_id, text)
SELECT %(conversation)s, %(job)s, %(in_reply_to)s, %(channel)s, %(account)s, %(chat)s, part.text
  FROM unnest(%(parts)s::text[]) WITH ORDINALITY AS part(text, n)
 ORDER BY part.n
RETURNING id, (SELECT id FROM reply)
"""


def write_replies(
    conversation_id: int,
    job_id: int | None,
    texts: list[str],
    *,
    in_reply_to: int | None = None,
    kind: str | None = None,
) -> WrittenReplies:
    """Store each text as an assistant message and queue it in the outbox, split to the channel's
    limit (caller's transaction, which holds the conversation row from here until it commits).
    ``kind`` marks the messages (``message.kind``: an ``approval_question``, a ``failure`` reply,
    a ``reminder``; None for an ordinary reply). A caller that writes to several conversations
    locks them first, in id order (``queue.conversations.lock_conversations``)."""
    written = WrittenReplies()
    if not texts:
        return written
    # The conversation row first (held until commit): outbox ids of one conversation are then
    # drawn in commit order, so the claim's "no older unsent row" sees every older row (I5).
    channel, account_id, chat_id = lock_route(conversation_id)
    written.channel = channel
    limit = text_limit(channel)
    for text in texts:
        rows = execute(
            _INSERT_REPLY,
            {
                "conversation": conversation_id,
                "text": text,
                "job": job_id,
                "in_reply_to": in_reply_to,
                "kind": kind,
                "channel": channel,
                "account": account_id,
                "chat": chat_id,
                "parts": list(split_text(text, limit)),
            },
        )
        written.message_ids.append(rows[0][1])
        written.outbound_ids.extend(sorted(row[0] for row in rows))  # ids follow the part order
    return written


def write_failure_reply(conversation_id: int, job_id: int, *, in_reply_to: int | None) -> WrittenReplies:
    """The short, honest reply a user gets when their message could not be answered."""
    return write_replies(conversation_id, job_id, [FAILURE_REPLY], in_reply_to=in_reply_to, kind="failure")
