"""Re-submitting recorded inbound events (``zenthor replay FILE.jsonl``) after an outage.

Each line is one JSON object in :meth:`InboundMessage.to_dict`'s shape (``message_id`` is taken
as ``provider_message_id`` when that is absent). Every line goes through :func:`accept`, so a
message that was already accepted is skipped as a duplicate and counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from zenthor.ingress.message import InboundMessage, InvalidInbound
from zenthor.ingress.pipeline import accept


@dataclass
class ReplayReport:
    """Counts per outcome, and the first problems with their line numbers."""

    accepted: int = 0
    duplicate: int = 0
    answer: int = 0
    command: int = 0  # a /queue or /debounce command (issue 14): its reply was queued again
    ignored: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)

    def count(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


MAX_REPORTED_ERRORS = 20


def replay_lines(lines: Iterable[str], *, publish: Callable[[int], object] | None = None) -> ReplayReport:
    """Accept every recorded inbound in ``lines``; blank lines are skipped."""
    report = ReplayReport()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if isinstance(data, dict) and "provider_message_id" not in data and "message_id" in data:
                data = {**data, "provider_message_id": data["message_id"]}
                data.pop("message_id")
            message = InboundMessage.from_dict(data)
        except json.JSONDecodeError as error:
            _invalid(report, number, f"not JSON: {error.msg}")
            continue
        except (InvalidInbound, TypeError) as error:
            _invalid(report, number, str(error))
            continue
        report.count(accept(message, publish=publish).status)
    return report


def _invalid(report: ReplayReport, number: int, problem: str) -> None:
    report.invalid += 1
    if len(report.errors) < MAX_REPORTED_ERRORS:
        report.errors.append(f"line {number}: {problem}")
