"""Chat commands that set how a conversation's messages are queued (issue 14): ``/queue`` and
``/debounce``.

A message whose first word (after leading ``@`` mentions, as a WhatsApp group message to the
assistant starts) is ``/queue`` or ``/debounce`` (any case) is a command: :func:`accept`
stores the conversation's new setting and queues the reply in the same transaction, and no turn
runs. Everything else is an ordinary message. This module only parses and words the replies; the
caller reads and writes the conversation row.

- ``/queue`` shows the mode in force and where it comes from; ``/queue collect|followup`` sets the
  conversation's own mode; ``/queue default`` clears it (``conversation.queue_mode`` NULL: the
  channel's ``QUEUE_MODE_<CHANNEL>``, else ``QUEUE_MODE``).
- ``/debounce`` shows the wait; ``/debounce 2s|1500ms|1.5s|1min`` sets it (0 to 10 min, the
  column's check); ``/debounce 0|off`` turns it off for this conversation even when
  ``QUEUE_DEBOUNCE_MS`` is set; ``/debounce default`` clears it (``QUEUE_DEBOUNCE_MS``).

The wait a conversation asks for is stored as asked but held to ``QUEUE_DEBOUNCE_MAX_MS``
(:func:`effective_debounce_ms`): that is the operator's promise that a chatty user still gets an
answer, and the settings already refuse a global ``QUEUE_DEBOUNCE_MS`` above it, so a user's own
value may not widen it either. The reply says so when the cap applies; a later, higher max
honours the stored value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from zenthor.settings import Settings

QUEUE, DEBOUNCE = "queue", "debounce"
SET, SHOWN, HELP = "set", "shown", "help"
"""What a command did (``inbound.command``'s ``outcome``)."""

DEBOUNCE_LIMIT_MS = 600_000
"""The longest wait a conversation may ask for (``conversation_debounce_ms_check``)."""

_QUEUE_MODES = ("collect", "followup")
_OFF_WORDS = ("off", "0")
_DEFAULT_WORD = "default"
_QUOTED_CHARS = 40  # a help reply quotes what was wrong, not a whole pasted paragraph

_DURATION = re.compile(
    r"(?P<number>\d{1,9}(?:\.\d{1,3})?)\s*(?P<unit>ms|s|sec|secs|seconds?|m|min|mins|minutes?)?",
    re.IGNORECASE,
)
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000}

_QUEUE_USAGE = (
    "Use /queue to see the mode, /queue collect to have messages sent while I am answering "
    "answered together in one reply, /queue followup to have each message answered on its own, "
    "or /queue default to go back to the default."
)
_DEBOUNCE_USAGE = (
    "Use /debounce to see the wait, /debounce 2s or /debounce 1500ms (up to 10 min) to have me "
    "wait for that long a quiet before I answer, /debounce off to answer at once, or "
    "/debounce default to go back to the default."
)
_MODE_MEANS = {
    "collect": "Messages you send while I am answering are answered together, in one reply.",
    "followup": "Every message gets an answer of its own.",
}


@dataclass(frozen=True)
class Command:
    """A parsed ``/queue`` or ``/debounce`` message.

    ``action`` is ``show``, ``set`` (``value`` is the new mode or wait in ms; None clears the
    conversation's own setting) or ``help`` (``problem`` says what was wrong).
    """

    name: str
    action: str
    value: str | int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class ConversationModes:
    """A conversation's own choices (NULL columns: the defaults apply)."""

    queue_mode: str | None = None
    debounce_ms: int | None = None


@dataclass(frozen=True)
class CommandReply:
    """What to store and what to answer.

    ``column`` is the conversation column to set to ``value`` (None as ``value``: back to NULL),
    or None when nothing is stored (a show or a help reply).
    """

    outcome: str
    text: str
    column: str | None = None
    value: str | int | None = None


def parse_command(text: str) -> Command | None:
    """The command ``text`` holds, or None when its first word (after any leading ``@`` mentions)
    is not exactly ``/queue`` or ``/debounce`` (case-insensitive; surrounding whitespace ignored)."""
    words = text.split()
    # In a WhatsApp group only a message that mentions the assistant reaches a turn, so the
    # command follows the mention ("@assistant /queue followup"): leading mentions are skipped.
    while words and words[0].startswith("@") and len(words) > 1:
        words = words[1:]
    if not words:
        return None
    name = words[0].lower()
    if name not in ("/queue", "/debounce"):
        return None
    rest = " ".join(words[1:])
    return _parse_queue(rest) if name == "/queue" else _parse_debounce(rest)


def _parse_queue(rest: str) -> Command:
    if not rest:
        return Command(QUEUE, "show")
    word = rest.lower()
    if " " in word:
        return Command(QUEUE, "help", problem=f"/queue takes one word, not {_quote(rest)}")
    if word in _QUEUE_MODES:
        return Command(QUEUE, "set", word)
    if word == _DEFAULT_WORD:
        return Command(QUEUE, "set", None)
    return Command(QUEUE, "help", problem=f"{_quote(rest)} is not a queue mode")


def _parse_debounce(rest: str) -> Command:
    if not rest:
        return Command(DEBOUNCE, "show")
    word = rest.lower()
    if word == _DEFAULT_WORD:
        return Command(DEBOUNCE, "set", None)
    if word in _OFF_WORDS:
        return Command(DEBOUNCE, "set", 0)
    match = _DURATION.fullmatch(word)
    if match is None:
        first = word.split()[0]
        if first != word and (first in _OFF_WORDS or first == _DEFAULT_WORD or _DURATION.fullmatch(first)):
            problem = f"/debounce takes one value, not {_quote(rest)}"
        else:
            problem = f"{_quote(rest)} is not a duration"
        return Command(DEBOUNCE, "help", problem=problem)
    number = Decimal(match["number"])
    unit = match["unit"]
    if unit is None:
        if number == 0:
            return Command(DEBOUNCE, "set", 0)
        # "2" could be seconds or milliseconds: ask rather than guess.
        return Command(
            DEBOUNCE,
            "help",
            problem=f"{_quote(rest)} has no unit: write {match['number']}s or {match['number']}ms",
        )
    ms = int((number * _UNIT_MS["ms" if unit == "ms" else unit[0]]).quantize(Decimal(1), ROUND_HALF_UP))
    if ms > DEBOUNCE_LIMIT_MS:
        return Command(DEBOUNCE, "help", problem=f"{_quote(rest)} is too long: the most is 10 min")
    return Command(DEBOUNCE, "set", ms)


def effective_debounce_ms(chosen: int | None, settings: Settings) -> int:
    """The wait a conversation's new turn gets: its own ``chosen`` wait (else ``QUEUE_DEBOUNCE_MS``),
    at most ``QUEUE_DEBOUNCE_MAX_MS`` (see the module's docstring)."""
    wanted = settings.QUEUE_DEBOUNCE_MS if chosen is None else chosen
    return min(wanted, settings.QUEUE_DEBOUNCE_MAX_MS)


def answer_command(
    command: Command, channel: str, current: ConversationModes, settings: Settings
) -> CommandReply:
    """What ``command`` stores for a conversation of ``channel`` whose own choices are ``current``,
    and the reply to send."""
    if command.action == "help":
        usage = _QUEUE_USAGE if command.name == QUEUE else _DEBOUNCE_USAGE
        return CommandReply(HELP, f"Sorry, {command.problem}. {usage}")
    if command.name == QUEUE:
        return _answer_queue(command, channel, current, settings)
    return _answer_debounce(command, current, settings)


def _answer_queue(
    command: Command, channel: str, current: ConversationModes, settings: Settings
) -> CommandReply:
    if command.action == "show":
        mode = settings.queue_mode_for(channel, current.queue_mode)
        return CommandReply(
            SHOWN,
            f"Queue mode: {mode} ({_mode_source(channel, current.queue_mode, settings)}). {_MODE_MEANS[mode]} "
            "Change it with /queue collect, /queue followup or /queue default.",
        )
    chosen = command.value if isinstance(command.value, str) else None
    mode = settings.queue_mode_for(channel, chosen)
    if chosen is None:
        text = (
            f"Queue mode for this chat: back to the default, {mode} "
            f"({_mode_source(channel, None, settings)}). {_MODE_MEANS[mode]}"
        )
    else:
        text = f"Queue mode for this chat: {mode}. {_MODE_MEANS[mode]}"
    return CommandReply(SET, text, "queue_mode", chosen)


def _mode_source(channel: str, chosen: str | None, settings: Settings) -> str:
    if chosen is not None:
        return "set for this chat"
    if channel in settings.channel_queue_modes:
        return f"the default for {channel}"
    return "the default"


def _answer_debounce(command: Command, current: ConversationModes, settings: Settings) -> CommandReply:
    if command.action == "show":
        source = "set for this chat" if current.debounce_ms is not None else "the default"
        return CommandReply(
            SHOWN,
            f"Debounce: {_wait(current.debounce_ms, settings)} ({source}). "
            "Change it with /debounce 2s, /debounce off or /debounce default.",
        )
    chosen = command.value if isinstance(command.value, int) else None
    if chosen is None:
        text = f"Debounce for this chat: back to the default, {_wait(None, settings)}."
    else:
        text = f"Debounce for this chat: {_wait(chosen, settings)}."
    return CommandReply(SET, text, "debounce_ms", chosen)


def _wait(chosen: int | None, settings: Settings) -> str:
    """The wait in force, in words, with the server's cap when it cuts what was asked."""
    wait = effective_debounce_ms(chosen, settings)
    limit = settings.QUEUE_DEBOUNCE_MAX_MS
    if wait == 0:
        words = "off, I answer as soon as a message arrives"
    else:
        words = (
            f"{format_ms(wait)}, I answer once you have written nothing for {format_ms(wait)} "
            f"(at most {format_ms(limit)} after the first message I have not answered yet)"
        )
    if chosen is not None and chosen > limit:
        cap = f"this server waits at most {format_ms(limit)}" if limit else "this server does not wait"
        words += f"; you asked for {format_ms(chosen)}, but {cap} (QUEUE_DEBOUNCE_MAX_MS)"
    return words


def format_ms(ms: int) -> str:
    """A wait for people: ``1500 ms`` ▸ ``1.5 s``, ``120000`` ▸ ``2 min``, ``250`` ▸ ``250 ms``."""
    if ms >= 60_000 and ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    if ms >= 1_000 or ms == 0:
        seconds, millis = divmod(ms, 1_000)
        return f"{seconds}.{millis:03d}".rstrip("0") + " s" if millis else f"{seconds} s"
    return f"{ms} ms"


def _quote(text: str) -> str:
    if len(text) > _QUOTED_CHARS:
        text = text[: _QUOTED_CHARS - 1] + "…"
    return f'"{text}"'
