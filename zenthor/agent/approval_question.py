"""The approval question: what the user reads when a tool call needs their YES.

The tool's summary in the user's words and language (the manifest's template rendered with the
call's arguments), or its title and a readable list of the arguments; never the tool's internal
name or JSON. Then how long the question stays open and how to answer, in words the answer
grammar (:func:`zenthor.agent.approvals.parse_answer`) accepts: YES/NO, SIM/NÃO.
"""

from __future__ import annotations

import re
import string
from datetime import datetime
from typing import Any, Protocol

LANGUAGES = ("en", "pt")
QUESTION_SUFFIX = {
    "en": "Reply YES to go ahead or NO to cancel.",
    "pt": "Responda SIM para confirmar ou NÃO para cancelar.",
}
_INTRO = {"en": "I'd like to use", "pt": "Quero usar"}
_WITH = {"en": "with", "pt": "com"}
_VALID_FOR = {"en": "(valid for {})", "pt": "(vale por {})"}
_UNITS = {
    "en": {"hour": ("hour", "hours"), "minute": ("minute", "minutes"), "second": ("second", "seconds")},
    "pt": {"hour": ("hora", "horas"), "minute": ("minuto", "minutos"), "second": ("segundo", "segundos")},
}
_BOOLEANS = {"en": ("yes", "no"), "pt": ("sim", "não")}
# Our own tables, not the process locale: a worker's locale must not change what a user reads.
_WEEKDAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "pt": ("seg", "ter", "qua", "qui", "sex", "sáb", "dom"),
}
_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ISO_8601 = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?P<time>[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
)
VALUE_MAX_CHARS = 120  # one argument in a summary
ARGUMENTS_MAX_CHARS = 300  # the whole list of arguments when there is no summary


class ToolDescriptionLike(Protocol):
    """What the question needs to know about a tool (``zenthor.plugins.tools.ToolDescription``)."""

    title: str | None
    summary: dict[str, str]
    plugin_name: str
    tool_name: str


def approval_question(
    tool_name: str,
    arguments: dict,
    *,
    description: ToolDescriptionLike | None = None,
    language: str = "en",
    valid_for_s: int | None = None,
) -> str:
    """What the user reads when the call ``tool_name(arguments)`` needs their approval.

    With a summary template: ``Set a reminder "call mom" for Sat 14 Mar 2026, 17:00?`` (in the
    user's ``language`` when the manifest has it, else in English). Without: ``I'd like to use
    "Set a reminder" with when: …; text: "call mom".`` Then how long the question is open (from
    ``valid_for_s``) and how to answer, in ``language``.
    """
    language = language if language in LANGUAGES else "en"
    head = _summary_sentence(description, arguments, language) or _fallback_sentence(
        tool_name, description, arguments, language
    )
    validity = _valid_for(valid_for_s, language)
    return " ".join(part for part in (head, validity, QUESTION_SUFFIX[language]) if part)


def _summary_sentence(description: ToolDescriptionLike | None, arguments: dict, language: str) -> str | None:
    """The manifest's template rendered with the arguments, as a question; None without one (or
    when it cannot be rendered: a template from an older manifest, say)."""
    summary = getattr(description, "summary", None) or {}
    template_language = (
        language if language in summary else ("en" if "en" in summary else next(iter(summary), None))
    )
    if template_language is None:
        return None
    try:
        rendered = _SafeFormatter(template_language if template_language in LANGUAGES else "en").vformat(
            summary[template_language], (), arguments
        )
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    text = " ".join(rendered.split()).rstrip(" .:;,")
    if not text:
        return None
    return text if text.endswith(("?", "!")) else text + "?"


def _fallback_sentence(
    tool_name: str, description: ToolDescriptionLike | None, arguments: dict, language: str
) -> str:
    """``I'd like to use "<title>" with a: 1; b: "two".``: the title (or plugin and tool name) and a
    readable list of the arguments."""
    listed = "; ".join(
        f"{_readable_key(key)}: {shown}"
        for key, value in arguments.items()
        if (shown := _readable(value, language, quote=True))
    )
    listed = _cut(listed, ARGUMENTS_MAX_CHARS)
    detail = f" {_WITH[language]} {listed}" if listed else ""
    return f'{_INTRO[language]} "{_tool_title(tool_name, description)}"{detail}.'


def _tool_title(tool_name: str, description: ToolDescriptionLike | None) -> str:
    """The manifest's title, else "Plugin: tool", else the model's name made readable."""
    title = getattr(description, "title", None)
    if title:
        return title
    plugin, tool = getattr(description, "plugin_name", None), getattr(description, "tool_name", None)
    if plugin and tool:
        return f"{plugin}: {_readable_key(tool)}"
    return _readable_key(tool_name).capitalize()


class _SafeFormatter(string.Formatter):
    """Renders a summary template with the model's arguments: names only (no attribute or index
    lookups, no conversions), a missing argument as nothing, each value readable and cut."""

    def __init__(self, language: str) -> None:
        self.language = language

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        return kwargs.get(field_name), field_name

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        return value

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "datetime" and isinstance(value, str):
            return render_datetime(value, self.language) or _cut(" ".join(value.split()), VALUE_MAX_CHARS)
        return _readable(value, self.language, quote=False)


def _readable(value: Any, language: str, *, quote: bool, depth: int = 0) -> str:
    """One argument value as a person reads it: text (quoted in a list, cut), yes/no, a date as
    a date, a list joined with ", ", a dict one level deep; nothing for a missing value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return _BOOLEANS[language][0 if value else 1]
    if isinstance(value, int | float):
        return format(value, "g") if isinstance(value, float) else str(value)
    if isinstance(value, str):
        if quote and (when := render_datetime(value, language)):
            return when
        text = _cut(" ".join(value.split()), VALUE_MAX_CHARS)
        return f'"{text}"' if quote else text
    if depth > 0:
        return "…"  # only one level: deeper structure is the model's business, not the user's
    if isinstance(value, list | tuple):
        return ", ".join(
            shown for item in value if (shown := _readable(item, language, quote=quote, depth=1))
        )
    if isinstance(value, dict):
        inner = ", ".join(
            f"{_readable_key(str(key))}: {shown}"
            for key, item in value.items()
            if (shown := _readable(item, language, quote=quote, depth=1))
        )
        return f"({inner})" if inner else ""
    return _cut(str(value), VALUE_MAX_CHARS)


def _readable_key(key: str) -> str:
    return key.replace("_", " ").strip()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def render_datetime(value: str, language: str = "en") -> str | None:
    """An ISO 8601 date or date-time as a person reads it: "Sat 14 Mar 2026, 17:00" (en) or
    "sáb 14/03/2026 às 17:00" (pt); an offset is named ("… 17:00 UTC+01:00"); None when
    ``value`` is no ISO 8601 date."""
    match = _ISO_8601.match(value.strip())
    if match is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None  # "2026-02-30": looks like a date, is none
    weekday = _WEEKDAYS[language][moment.weekday()]
    if language == "pt":
        day = f"{weekday} {moment.day:02d}/{moment.month:02d}/{moment.year}"
        time_of_day = f" às {moment:%H:%M}"
    else:
        day = f"{weekday} {moment.day} {_MONTHS_EN[moment.month - 1]} {moment.year}"
        time_of_day = f", {moment:%H:%M}"
    if match.group("time") is None:
        return day
    return day + time_of_day + _offset(moment)


def _offset(moment: datetime) -> str:
    offset = moment.utcoffset()
    if offset is None:
        return ""
    minutes = int(offset.total_seconds()) // 60
    if minutes == 0:
        return " UTC"
    sign = "+" if minutes > 0 else "-"
    return f" UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _valid_for(seconds: int | None, language: str) -> str:
    """ "(valid for 10 minutes)": how long the question stays open; nothing when unknown."""
    if not seconds or seconds <= 0:
        return ""
    if seconds % 3600 == 0:
        count, unit = seconds // 3600, "hour"
    elif seconds >= 60:
        count, unit = max(1, round(seconds / 60)), "minute"
    else:
        count, unit = seconds, "second"
    singular, plural = _UNITS[language][unit]
    return _VALID_FOR[language].format(f"{count} {singular if count == 1 else plural}")
