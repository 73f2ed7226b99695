"""Collect (issue 14) with real `dramatiq zenthor.actors` processes: a burst gets one more turn,
and a crash or a pause of the worker that holds a batch loses nothing and answers nothing twice.

Workers run with short leases (``processes`` in conftest.py), as in test_recovery.py.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.ingress.helpers import inbound
from tests.queue.conftest import LOCK_MS
from tests.support.factories import assistant_messages
from tests.support.workers import wait_for
from zenthor.actors.publish import publish_dispatch
from zenthor.db import execute
from zenthor.ingress import accept
from zenthor.models import AgentJob

pytestmark = pytest.mark.timeout(180)

COLLECT = {"QUEUE_MODE": "collect"}


def say(chat: str, text: str, n: int, *, publish=None) -> tuple[int, int]:
    """Accept one message of the burst through ingress; (conversation id, job id)."""
    result = accept(
        inbound(text, message_id=f"{chat}-{n}", chat_id=chat, channel="test"),
        publish=publish or publish_dispatch,
    )
    assert result.status == "accepted", result
    return result.conversation_id, result.job_id


def states(job_ids: list[int]) -> list[tuple[str, int | None]]:
    jobs = {j.id: j for j in AgentJob.select().where(AgentJob.id.in_(job_ids))}
    return [(jobs[i].status, jobs[i].merged_into) for i in job_ids]


def test_five_messages_during_a_turn_get_one_more_turn_that_reads_them_all(processes, tmp_path):
    gate = tmp_path / "first-turn"
    worker = processes("worker-collect", threads=2, env=COLLECT)
    conversation, first = say("burst", f"gate:{gate}", 0)
    wait_for(lambda: states([first])[0][0] == "processing", 30, message="the first turn runs")
    burst = [say("burst", f"m{n}", n)[1] for n in range(1, 6)]
    gate.touch()  # the first turn ends only once the whole burst waits behind it
    wait_for(
        lambda: all(s == "done" for s, _ in states([first, *burst])), 40, message="every message answered"
    )
    assert assistant_messages(conversation) == [f"done: gate:{gate}", "done: m1 | m2 | m3 | m4 | m5"]
    assert states(burst) == [("done", None)] + [("done", burst[0])] * 4
    # The reply answers the newest message it read.
    ((in_reply_to, last_message),) = execute(
        "SELECT o.in_reply_to, (SELECT message_id FROM agent_job WHERE id = %s) FROM outbound_message AS o"
        " WHERE o.job_id = %s",
        (burst[-1], burst[0]),
    )
    assert in_reply_to == last_message
    completed = {e["job_id"]: e["answered"] for e in worker.events("queue.job.completed")}
    assert completed == {first: 1, burst[0]: 5}
    claims = {e["job_id"]: (e["merged"], e["mode"]) for e in worker.events("queue.job.claimed")}
    assert claims[burst[0]] == (4, "collect")


def test_a_killed_holder_of_a_batch_loses_nothing_and_the_batch_is_answered_once(processes, tmp_path):
    gate = tmp_path / "batch-turn"
    jobs = []
    for n, text in enumerate((f"gate:{gate}", "b", "c")):
        conversation, job_id = say("killed", text, n, publish=lambda *args, **kwargs: True)
        jobs.append(job_id)
    victim = processes("worker-victim", threads=2, env=COLLECT)
    publish_dispatch(jobs[0])
    wait_for(
        lambda: states(jobs) == [("processing", None), ("pending", jobs[0]), ("pending", jobs[0])],
        30,
        message="the victim holds the batch",
    )
    victim.kill9()
    killed_at = time.monotonic()

    processes("worker-after", threads=2, env=COLLECT)
    wait_for(
        lambda: AgentJob.get_by_id(jobs[0]).processor_id == "worker-after",
        LOCK_MS / 1000 + 25,
        interval=0.2,
        message="the batch is taken again",
    )
    elapsed = time.monotonic() - killed_at
    assert elapsed <= LOCK_MS / 1000 + 15, f"taken again {elapsed:.1f}s after the kill"
    assert states(jobs) == [("processing", None), ("pending", jobs[0]), ("pending", jobs[0])]
    gate.touch()
    wait_for(lambda: all(s == "done" for s, _ in states(jobs)), 30, interval=0.2)
    assert states(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]
    assert assistant_messages(conversation) == [f"done: gate:{gate} | b | c"]
    head = AgentJob.get_by_id(jobs[0])
    assert (head.processor_id, head.attempts) == ("worker-after", 1)  # the killed attempt counts once


def test_a_paused_holder_of_a_batch_writes_nothing_for_any_of_its_jobs(processes):
    jobs = []
    for n, text in enumerate(("blind:5", "b", "c")):
        conversation, job_id = say("paused", text, n, publish=lambda *args, **kwargs: True)
        jobs.append(job_id)
    paused = processes("worker-paused-batch", threads=2, env=COLLECT)
    publish_dispatch(jobs[0])
    wait_for(lambda: states(jobs)[1] == ("pending", jobs[0]), 30, message="the paused worker holds the batch")
    paused.signal_all(signal.SIGSTOP)
    try:
        healthy = processes("worker-healthy-batch", threads=2, env=COLLECT)
        wait_for(lambda: all(s == "done" for s, _ in states(jobs)), 60, interval=0.2)
    finally:
        paused.signal_all(signal.SIGCONT)
    wait_for(
        lambda: paused.events("queue.lease.lost"), 30, message="the paused worker reports its lease lost"
    )
    assert paused.events("queue.job.completed") == []
    assert [e["answered"] for e in healthy.events("queue.job.completed")] == [3]
    assert assistant_messages(conversation) == ["done: blind:5 | b | c"]
    assert states(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]


def test_a_debounced_burst_gets_one_turn_after_the_quiet(processes, settings_env):
    """Three messages 300 ms apart with a 1 s debounce: one turn, which starts once 1 s passed
    after the last (database times: created_at, available_at and started_at are its now())."""
    settings_env(QUEUE_DEBOUNCE_MS="1000", QUEUE_DEBOUNCE_MAX_MS="15000")  # accept reads them here
    worker = processes("worker-debounce", threads=2, env=COLLECT)
    jobs = []
    for n, text in enumerate(("hi", "can you remind me", "to call mom at 6")):
        if n:
            time.sleep(0.3)  # the user typing
        conversation, job_id = say("debounced", text, n)
        jobs.append(job_id)
    wait_for(lambda: all(s == "done" for s, _ in states(jobs)), 30, message="the burst is answered")
    assert assistant_messages(conversation) == ["done: hi | can you remind me | to call mom at 6"]
    ((quiet_ms,),) = execute(
        "SELECT extract(epoch FROM h.started_at - l.created_at) * 1000 FROM agent_job AS h, agent_job AS l"
        " WHERE h.id = %s AND l.id = %s",
        (jobs[0], jobs[-1]),
    )
    assert quiet_ms >= 1000, quiet_ms
    assert [e["answered"] for e in worker.events("queue.job.completed")] == [3]
