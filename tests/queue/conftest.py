"""Fixtures of the queue tests: round trips counted, nudges recorded instead of published, real
worker processes with short leases."""

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


# Worker processes with short leases (4 s, heartbeat 1 s) and 1 s sweep re-checks, so crash and
# pause tests take seconds, not minutes; the bound they check is DESIGN.md's: lease TTL + 15 s.
LOCK_MS = 4000
FAST = {
    "AGENT_JOB_LOCK_MS": str(LOCK_MS),
    "AGENT_JOB_HEARTBEAT_MS": "1000",
    "SWEEP_RECHECK_MS": "1000",
    "DISPATCH_REPUBLISH_GRACE_MS": "2000",
    "AGENT_TURN": "tests.support.turns:scripted_turn",
}


@pytest.fixture
def processes():
    """Start real ``zenthor worker`` processes with :data:`FAST` leases (``env`` adds settings);
    all stopped after the test."""
    from tests.support.workers import WorkerProcess

    started: list[WorkerProcess] = []

    def start(name: str, **kwargs) -> WorkerProcess:
        process = WorkerProcess(name, env={**FAST, **kwargs.pop("env", {})}, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
