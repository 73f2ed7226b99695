"""Connections are held only while a thread uses the database (issue 13, item 4).

A worker thread gives its connection back before each model call and after each message, so a
process's Postgres sessions are bounded by ``DATABASE_POOL_SIZE``, not by ``--threads``; the lease
heartbeat has a pool of its own and keeps beating while the main pool is taken. Sessions are
counted from ``pg_stat_activity`` (each names its process: ``application_name = 'zenthor <pid>'``).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.factories import assistant_messages, make_conversation, make_job
from tests.support.fake_model import FakeModel, Reply
from tests.support.workers import DbThread, WorkerProcess, wait_for
from zenthor.actors.publish import publish_dispatch
from zenthor.db import database, execute
from zenthor.middleware.heartbeat import LeaseHeartbeat
from zenthor.models import AgentJob
from zenthor.queue import claim

pytestmark = pytest.mark.timeout(180)


def sessions(application_name: str) -> int:
    return execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
        (application_name,),
    )[0][0]


def test_thirty_two_slow_turns_at_once_hold_at_most_the_pools_connections():
    """32 threads, 32 turns waiting for the model at the same time, a pool of 4: every turn is in
    its model call at once (a thread holding its connection through the call would leave 28 of
    them waiting for one), the process never has more than 4 main sessions, and the heartbeat
    extends every lease meanwhile."""
    gate = threading.Event()

    def slow(body: dict) -> Reply:
        gate.wait(120)
        return Reply(content="answered")

    model = FakeModel(default=slow).start()
    conversations = [make_conversation(f"pool-{n}") for n in range(32)]
    jobs = [make_job(c, "hello") for c in conversations]
    worker = WorkerProcess(
        "worker-pool",
        threads=32,
        env={
            "DATABASE_POOL_SIZE": "4",
            "AI_BASE_URL": model.base_url,
            "AI_API_KEY": "test-key",
            "AI_MODEL": "fake-model",
            "AI_TIMEOUT_S": "150",
            "AGENT_JOB_LOCK_MS": "4000",
            "AGENT_JOB_HEARTBEAT_MS": "500",
        },
    )
    try:
        for job_id in jobs:
            publish_dispatch(job_id)
        wait_for(lambda: len(model.requests) == 32, 60, message="32 turns in their model call at once")
        (pid,) = worker.child_pids()
        most = 0
        started = {j.id: j.last_heartbeat_at for j in AgentJob.select().where(AgentJob.id.in_(jobs))}
        # Two lease lengths of waiting: every lease must have been extended (else it expired).
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            most = max(most, sessions(f"zenthor {pid}"))
            time.sleep(0.2)
        assert 1 <= most <= 4, f"{most} main-pool sessions"
        assert sessions(f"zenthor {pid} heartbeat") == 1
        beats = {j.id: j.last_heartbeat_at for j in AgentJob.select().where(AgentJob.id.in_(jobs))}
        assert all(beats[job_id] > started[job_id] for job_id in jobs)
        assert {j.status for j in AgentJob.select().where(AgentJob.id.in_(jobs))} == {"processing"}
        gate.set()
        wait_for(
            lambda: {j.status for j in AgentJob.select().where(AgentJob.id.in_(jobs))} == {"done"},
            60,
            message="every turn completed",
        )
        assert all(assistant_messages(c) == ["answered"] for c in conversations)
        assert worker.events("queue.lease.lost") == []
    finally:
        gate.set()
        worker.stop()
        model.stop()


def test_the_heartbeat_extends_leases_while_every_connection_of_the_main_pool_is_taken():
    job_id = make_job(make_conversation("exhausted"), "hello")
    lease = claim(job_id, "worker-x", lock_ms=60_000)
    before = AgentJob.get_by_id(job_id).locked_until
    holders: list[DbThread] = []
    release = threading.Event()
    taken = threading.Semaphore(0)

    def hold_one() -> None:
        with database.atomic():
            execute("SELECT 1")
            taken.release()
            release.wait(60)

    beater = LeaseHeartbeat(interval_ms=1000)
    beater._leases[0] = lease  # held by some thread of this process
    try:
        for _ in range(database.obj._max_connections - len(database.obj._in_use)):
            holder = DbThread(target=hold_one)
            holder.start()
            holders.append(holder)
        for _ in holders:
            assert taken.acquire(timeout=20)
        done = threading.Event()
        lost: list = []
        DbThread(target=lambda: (lost.extend(beater.beat()), done.set())).start()
        assert done.wait(20), "the heartbeat waited for the main pool"
        assert lost == []
    finally:
        release.set()
        for holder in holders:
            holder.join(20)
        if beater._db is not None:
            beater._db.close_all()
    assert AgentJob.get_by_id(job_id).locked_until > before
