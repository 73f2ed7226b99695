"""Reading the round trips ``zenthor.db.round_trips`` counted."""

from __future__ import annotations


def executed(trips: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Round trips with the one-off ``PREPARE`` of a prepared statement taken out (whether this
    thread's pooled connection prepared it in an earlier test is not this test's business)."""
    return [tuple(kind for kind in trip if kind != "PREPARE") for trip in trips]
