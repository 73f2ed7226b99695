"""Fixtures of the queue tests: round trips counted, nudges recorded instead of published."""

from __future__ import annotations

import pytest

from zenthor.db import execute, round_trips


@pytest.fixture
def counting():
    # This thread's connection is open first: a checkout of a connection idle for more than a few
    # seconds is checked with a round trip of its own (Peewee's pool), not what these tests count.
    execute("SELECT 1")
    round_trips.reset()
    round_trips.enabled = True
    yield round_trips
    round_trips.enabled = False
    round_trips.reset()


@pytest.fixture
def published(monkeypatch):
    """Record every nudge instead of publishing it: (actor, row id, delay)."""
    from zenthor.actors import publish

    nudges: list[tuple[str, int, int | None]] = []
    monkeypatch.setattr(
        publish, "_send", lambda actor, queue, args, delay: nudges.append((actor, args[0], delay))
    )
    return nudges
