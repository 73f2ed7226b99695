"""Crashes, pauses and long turns with real `dramatiq zenthor.actors` processes (I1, I4, I6).

Workers run with short leases (``processes`` in conftest.py: 4 s, heartbeat 1 s, 1 s sweep
re-checks) so the tests take seconds, not minutes; the bound checked is the one DESIGN.md
promises: lease TTL + 15 s.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.queue.conftest import LOCK_MS
from tests.support.factories import assistant_messages, make_conversation, make_job
from tests.support.workers import WorkerProcess, wait_for
from zenthor.actors.publish import publish_dispatch
from zenthor.models import AgentJob
from zenthor.queue import requeue_stale

pytestmark = pytest.mark.timeout(180)


def statuses(job_ids: list[int]) -> dict[int, tuple[str, str | None]]:
    return {j.id: (j.status, j.processor_id) for j in AgentJob.select().where(AgentJob.id.in_(job_ids))}


def test_a_killed_workers_jobs_complete_elsewhere_within_lease_ttl_plus_15s(processes):
    conversations = [make_conversation(f"crash-{i}") for i in range(4)]
    jobs = [make_job(c, "sleep:2") for c in conversations]
    victim = processes("worker-a", threads=4)
    for job_id in jobs:
        publish_dispatch(job_id)
    wait_for(
        lambda: all(s == ("processing", "worker-a") for s in statuses(jobs).values()),
        30,
        message="worker-a holds every job",
    )
    victim.kill9()
    killed_at = time.monotonic()

    processes("worker-b", threads=4)
    wait_for(lambda: all(s[0] == "done" for s in statuses(jobs).values()), LOCK_MS / 1000 + 25, interval=0.2)
    elapsed = time.monotonic() - killed_at
    print(f"kill -9 to all jobs done elsewhere: {elapsed:.1f}s (lease TTL {LOCK_MS / 1000:.0f}s)")
    assert elapsed <= LOCK_MS / 1000 + 15, f"recovered in {elapsed:.1f}s"
    for conversation, job_id in zip(conversations, jobs, strict=True):
        row = AgentJob.get_by_id(job_id)
        assert (row.processor_id, row.attempts) == ("worker-b", 1)  # the killed attempt counts once
        assert assistant_messages(conversation) == ["done: sleep:2"]


def test_a_paused_worker_is_fenced_and_the_job_completes_once(processes):
    conversation = make_conversation("paused")
    job_id = make_job(conversation, "blind:5")
    paused = processes("worker-paused", threads=2)
    publish_dispatch(job_id)
    wait_for(lambda: statuses([job_id])[job_id] == ("processing", "worker-paused"), 30)
    time.sleep(0.3)
    paused.signal_all(signal.SIGSTOP)
    try:
        processes("worker-healthy", threads=2)
        wait_for(lambda: statuses([job_id])[job_id] == ("done", "worker-healthy"), 40, interval=0.2)
    finally:
        paused.signal_all(signal.SIGCONT)
    # The paused worker wakes up and tries to complete: Postgres refuses its stale token (or its
    # heartbeat finds the lease gone first), and it writes nothing.
    wait_for(
        lambda: paused.events("queue.lease.lost"),
        30,
        message="the paused worker reports its lease lost",
    )
    assert {e["operation"] for e in paused.events("queue.lease.lost")} <= {"complete", "heartbeat"}
    assert paused.events("queue.job.completed") == []
    time.sleep(1)
    assert assistant_messages(conversation) == ["done: blind:5"]
    row = AgentJob.get_by_id(job_id)
    assert (row.status, row.processor_id, row.attempts) == ("done", "worker-healthy", 1)


def test_a_long_turn_on_a_healthy_worker_is_never_taken_over(processes):
    """A turn three lease lengths long keeps its lease; no heartbeat after completion or failure."""
    conversation = make_conversation("long")
    long_job = make_job(conversation, f"sleep:{3 * LOCK_MS / 1000}")
    failing_job = make_job(make_conversation("failing"), "fail", max_attempts=1)
    worker = processes("worker-steady", threads=2)
    publish_dispatch(long_job)
    publish_dispatch(failing_job)
    deadline = time.monotonic() + 60
    while AgentJob.get_by_id(long_job).status != "done":
        assert time.monotonic() < deadline, "long turn did not finish"
        assert requeue_stale() == []  # a second sweeper finds nothing to take back
        time.sleep(0.5)
    row = AgentJob.get_by_id(long_job)
    assert (row.attempts, row.processor_id) == (0, "worker-steady")
    assert len([e for e in worker.events("queue.job.claimed") if e.get("job_id") == long_job]) == 1
    assert worker.events("queue.job.requeued") == [] and worker.events("queue.lease.lost") == []
    assert assistant_messages(conversation) == [f"done: sleep:{3 * LOCK_MS / 1000}"]

    failed = AgentJob.get_by_id(failing_job)
    assert failed.status == "failed"
    beats = {job_id: AgentJob.get_by_id(job_id).last_heartbeat_at for job_id in (long_job, failing_job)}
    time.sleep(3)  # three heartbeat periods
    assert {job_id: AgentJob.get_by_id(job_id).last_heartbeat_at for job_id in beats} == beats


def test_a_lost_dispatch_message_is_republished_by_the_sweep(processes):
    """The publish after commit never happened (broker down, message dropped): the sweep re-publishes."""
    conversation = make_conversation("lost")
    job_id = make_job(conversation, "hello")  # committed, never published
    worker = processes("worker-sweeper", threads=2)
    wait_for(lambda: AgentJob.get_by_id(job_id).status == "done", 30, interval=0.2)
    assert assistant_messages(conversation) == ["done: hello"]
    assert [e["job_id"] for e in worker.events("queue.job.republished")] == [job_id]


def chained_claims(worker: WorkerProcess, job_id: int) -> list[dict]:
    return [e for e in worker.events("queue.job.claimed") if e.get("job_id") == job_id and e.get("chained")]


def test_a_worker_killed_in_the_middle_of_a_chain_loses_nothing(processes):
    """kill -9 while a job handed over by the previous completion runs: that job is taken back
    within lease TTL + 15 s, and the rest of the conversation follows, each answered once, in order."""
    conversation = make_conversation("chain-crash")
    jobs = [make_job(conversation, text) for text in ("first", "sleep:3", "third")]
    victim = processes("worker-chain", threads=2)
    publish_dispatch(jobs[0])
    wait_for(lambda: chained_claims(victim, jobs[1]), 30, message="the second job is handed over in a chain")
    assert statuses(jobs) == {
        jobs[0]: ("done", "worker-chain"),
        jobs[1]: ("processing", "worker-chain"),
        jobs[2]: ("pending", None),
    }
    victim.kill9()
    killed_at = time.monotonic()

    processes("worker-after", threads=2)
    wait_for(
        lambda: statuses(jobs)[jobs[1]] != ("processing", "worker-chain"), LOCK_MS / 1000 + 25, interval=0.2
    )
    elapsed = time.monotonic() - killed_at
    assert elapsed <= LOCK_MS / 1000 + 15, f"taken back in {elapsed:.1f}s"
    wait_for(lambda: all(s[0] == "done" for s in statuses(jobs).values()), 40, interval=0.2)
    assert assistant_messages(conversation) == ["done: first", "done: sleep:3", "done: third"]
    assert (AgentJob.get_by_id(jobs[1]).attempts, AgentJob.get_by_id(jobs[2]).attempts) == (1, 0)


def test_a_worker_paused_in_the_middle_of_a_chain_is_fenced(processes):
    """SIGSTOP past the lease while a chained job runs: another worker takes it and the rest of
    the line; the paused one wakes up, writes nothing, and answers nothing twice."""
    conversation = make_conversation("chain-paused")
    jobs = [make_job(conversation, text) for text in ("first", "blind:5", "third")]
    paused = processes("worker-chain-paused", threads=2)
    publish_dispatch(jobs[0])
    wait_for(lambda: chained_claims(paused, jobs[1]), 30, message="the second job is handed over in a chain")
    paused.signal_all(signal.SIGSTOP)
    try:
        processes("worker-chain-healthy", threads=2)
        wait_for(lambda: all(s[0] == "done" for s in statuses(jobs).values()), 60, interval=0.2)
    finally:
        paused.signal_all(signal.SIGCONT)
    wait_for(
        lambda: paused.events("queue.lease.lost"), 30, message="the paused worker reports its lease lost"
    )
    assert [e["job_id"] for e in paused.events("queue.job.completed")] == [jobs[0]]
    assert assistant_messages(conversation) == ["done: first", "done: blind:5", "done: third"]
    assert statuses(jobs)[jobs[1]] == ("done", "worker-chain-healthy")


def test_a_chained_job_longer_than_two_leases_is_heartbeated_and_never_taken_over(processes):
    conversation = make_conversation("chain-long")
    long_text = f"sleep:{2.5 * LOCK_MS / 1000}"
    jobs = [make_job(conversation, "first"), make_job(conversation, long_text)]
    worker = processes("worker-chain-long", threads=2)
    publish_dispatch(jobs[0])
    wait_for(lambda: chained_claims(worker, jobs[1]), 30, message="the long job is handed over in a chain")
    deadline = time.monotonic() + 60
    while AgentJob.get_by_id(jobs[1]).status != "done":
        assert time.monotonic() < deadline, "the chained long turn did not finish"
        assert requeue_stale() == []  # its lease never expires: the heartbeat extends it
        time.sleep(0.5)
    row = AgentJob.get_by_id(jobs[1])
    assert (row.attempts, row.processor_id) == (0, "worker-chain-long")
    assert worker.events("queue.lease.lost") == []
    assert assistant_messages(conversation) == ["done: first", f"done: {long_text}"]
