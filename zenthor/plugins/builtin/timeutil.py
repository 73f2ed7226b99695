"""Timezones and ISO-8601 parsing shared by the built-in plugins; errors are :class:`ToolError`."""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from zenthor.plugins.tools import ToolError


def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``, or a clear error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown timezone {name!r}: use an IANA name such as Europe/Berlin or UTC") from None


def parse_datetime(text: str, tz: ZoneInfo) -> datetime:
    """An aware datetime from ISO-8601 ``text``; a value without offset is read in ``tz``.

    A bare date means midnight of that day.
    """
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), time())
        except ValueError:
            raise ToolError(
                f"{text!r} is not an ISO-8601 date or date-time (e.g. 2025-03-14T09:00 or 2025-03-14)"
            ) from None
    if parsed.tzinfo is None:
        # fold=0: an ambiguous wall time (DST fall-back) means its first occurrence.
        parsed = parsed.replace(tzinfo=tz)
    return parsed


def describe(moment: datetime) -> dict[str, str]:
    """The fields the model reads back about a moment."""
    return {
        "iso": moment.isoformat(timespec="seconds"),
        "date": moment.date().isoformat(),
        "time": moment.strftime("%H:%M:%S"),
        "weekday": moment.strftime("%A"),
        "utc_offset": moment.strftime("%z")[:3] + ":" + moment.strftime("%z")[3:],
        "timezone": str(moment.tzinfo),
    }
