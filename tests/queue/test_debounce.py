"""Debounce (issue 14, item 2): a burst of messages waits for a quiet period, bounded.

The times checked are the database's own (``created_at``, ``available_at`` and ``started_at`` are
all ``now()`` of their transactions), so they are exact, not guesses about this machine's speed.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from tests.ingress.helpers import inbound
from tests.support.factories import assistant_messages, make_conversation, make_job
from tests.support.workers import wait_for
from zenthor.db import execute
from zenthor.ingress import accept
from zenthor.models import AgentJob


def recording(published: list[tuple[int, int | None]]):
    def publish(job_id: int, delay_ms: int | None = None) -> bool:
        published.append((job_id, delay_ms))
        return True

    return publish


def jobs_of(job_ids: list[int]) -> list[AgentJob]:
    rows = {j.id: j for j in AgentJob.select().where(AgentJob.id.in_(job_ids))}
    return [rows[job_id] for job_id in job_ids]


def test_each_new_message_pushes_the_burst_back_and_only_its_head_is_nudged(settings_env):
    settings_env(QUEUE_DEBOUNCE_MS="1000", QUEUE_DEBOUNCE_MAX_MS="60000")
    published: list[tuple[int, int | None]] = []
    results = [accept(inbound(f"m{n}", message_id=f"d-{n}"), publish=recording(published)) for n in range(3)]
    jobs = jobs_of([r.job_id for r in results])
    last = jobs[-1]
    # Every job of the burst waits for 1 s of quiet after the last message.
    assert {j.available_at for j in jobs} == {last.created_at + timedelta(milliseconds=1000)}
    # Only the head is nudged, with the delay it had when it was accepted; the head's claim asks
    # again when the pushed time comes (tests/queue/test_lease_ops.py: not_yet_available).
    assert [job_id for job_id, _ in published] == [results[0].job_id]
    assert 0 < published[0][1] <= 1000
    assert [r.behind for r in results] == [False, True, True]


def test_a_chatty_user_still_gets_a_turn_by_the_max_wait(settings_env):
    """1 s of quiet, at most 1.5 s after the burst began: three messages at least 300 ms apart
    would push the quiet past 1.6 s; the bound holds it at 1.5 s after the first."""
    settings_env(QUEUE_DEBOUNCE_MS="1000", QUEUE_DEBOUNCE_MAX_MS="1500")
    results = []
    for n in range(3):
        if n:
            time.sleep(0.3)  # the user typing (at least 0.3 s: the bound below does not depend on it)
        results.append(accept(inbound(f"m{n}", message_id=f"c-{n}"), publish=recording([])))
    jobs = jobs_of([r.job_id for r in results])
    first = jobs[0]
    assert jobs[-1].created_at + timedelta(milliseconds=1000) > first.created_at + timedelta(
        milliseconds=1500
    )
    assert {j.available_at for j in jobs} == {first.created_at + timedelta(milliseconds=1500)}


def test_a_retry_waiting_for_its_backoff_is_never_pulled_earlier(settings_env):
    settings_env(QUEUE_DEBOUNCE_MS="1000", QUEUE_DEBOUNCE_MAX_MS="5000")
    conversation = accept(inbound("first", message_id="r-0"), publish=recording([])).conversation_id
    (head,) = execute("SELECT id FROM agent_job WHERE conversation_id = %s", (conversation,))[0]
    execute("UPDATE agent_job SET available_at = now() + interval '1 hour' WHERE id = %s", (head,))
    later = execute("SELECT available_at FROM agent_job WHERE id = %s", (head,))[0][0]
    accept(inbound("second", message_id="r-1"), publish=recording([]))
    assert jobs_of([head])[0].available_at == later


def test_without_a_debounce_a_turn_is_available_at_once_and_other_kinds_are_never_delayed(settings_env):
    settings_env(QUEUE_DEBOUNCE_MS="0")
    published: list[tuple[int, int | None]] = []
    result = accept(inbound("now", message_id="n-0"), publish=recording(published))
    job = jobs_of([result.job_id])[0]
    assert job.available_at == job.created_at
    assert published == [(result.job_id, None)]
    settings_env(QUEUE_DEBOUNCE_MS="1000")
    from zenthor.db import database
    from zenthor.queue import enqueue

    with database.atomic():
        resume = enqueue(
            make_conversation("kinds"), None, kind="resume", debounce_ms=1000, debounce_max_ms=5000
        )
    assert resume.delay_ms == 0


@pytest.mark.timeout(60)
def test_three_messages_300_ms_apart_start_one_second_after_the_last(settings_env, worker):
    """Real RabbitMQ and a real worker: the burst's first turn starts no earlier than 1 s after
    the last message (the database's clock), and each message is answered once, in order."""
    from zenthor.actors.publish import publish_dispatch

    settings_env(
        QUEUE_DEBOUNCE_MS="1000",
        QUEUE_DEBOUNCE_MAX_MS="10000",
        AGENT_TURN="tests.support.turns:scripted_turn",
    )
    results = []
    for n in range(3):
        if n:
            time.sleep(0.3)  # the user typing: part of the scenario, not a wait for a condition
        results.append(accept(inbound(f"m{n}", message_id=f"w-{n}"), publish=publish_dispatch))
    job_ids = [r.job_id for r in results]
    wait_for(
        lambda: {j.status for j in jobs_of(job_ids)} == {"done"},
        30,
        message="the burst answered",
    )
    jobs = jobs_of(job_ids)
    quiet_until = jobs[-1].created_at + timedelta(milliseconds=1000)
    assert jobs[0].started_at >= quiet_until, (jobs[0].started_at, quiet_until)
    assert assistant_messages(results[0].conversation_id) == [f"done: m{n}" for n in range(3)]


def test_make_job_is_unaffected_by_the_setting(settings_env):
    """enqueue_job (operators' retries, tests) takes no debounce unless asked."""
    settings_env(QUEUE_DEBOUNCE_MS="1000")
    job = jobs_of([make_job(make_conversation("plain"))])[0]
    assert job.available_at == job.created_at
