"""The core-time tools: ``now``, ``add`` and ``diff``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from zenthor.plugins.builtin.timeutil import describe, parse_datetime, zone
from zenthor.plugins.tools import ToolContext, ToolError


def activate(config: dict[str, Any]) -> dict[str, Any]:
    """Check the configured timezone and return the handlers."""
    default_tz = config["default_timezone"]
    zone(default_tz)  # a bad timezone in plugins.toml fails activation, with the reason

    def tz_of(arguments: dict[str, Any]) -> Any:
        return zone(arguments.get("timezone") or default_tz)

    def now(arguments: dict[str, Any], context: ToolContext) -> dict[str, str]:
        return describe(datetime.now(UTC).astimezone(tz_of(arguments)))

    def add(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        tz = tz_of(arguments)
        start = parse_datetime(arguments["start"], tz) if arguments.get("start") else datetime.now(tz)
        try:
            calendar = timedelta(weeks=arguments.get("weeks", 0), days=arguments.get("days", 0))
            clock = timedelta(hours=arguments.get("hours", 0), minutes=arguments.get("minutes", 0))
            # Days and weeks move the calendar ("+1 day" keeps 09:00 across a DST change);
            # hours and minutes are elapsed time.
            local = (start.astimezone(tz).replace(tzinfo=None) + calendar).replace(tzinfo=tz)
            result = (local.astimezone(UTC) + clock).astimezone(tz)
        except OverflowError:
            raise ToolError("the result is outside the supported date range (years 1-9999)") from None
        return {"start": describe(start.astimezone(tz)), "result": describe(result)}

    def diff(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        tz = tz_of(arguments)
        start = parse_datetime(arguments["start"], tz) if arguments.get("start") else datetime.now(tz)
        end = parse_datetime(arguments["end"], tz)
        delta = end - start
        seconds = int(delta.total_seconds())
        sign = "-" if seconds < 0 else ""
        days, rest = divmod(abs(seconds), 86_400)
        hours, rest = divmod(rest, 3_600)
        minutes = rest // 60
        return {
            "total_seconds": seconds,
            "total_hours": round(seconds / 3600, 2),
            "days": days,
            "hours": hours,
            "minutes": minutes,
            "human": f"{sign}{days} days, {hours} hours, {minutes} minutes",
        }

    return {"now": now, "add": add, "diff": diff}
