"""Warm shutdown hands leases over at once; two real periodiq schedulers are harmless."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.factories import assistant_messages, make_conversation, make_job
from tests.support.workers import WorkerProcess, wait_for
from zenthor.actors.publish import publish_dispatch
from zenthor.db import execute
from zenthor.models import AgentJob
from zenthor.queue import claim

pytestmark = pytest.mark.timeout(180)

SLOW_LEASE = {
    "AGENT_JOB_LOCK_MS": "30000",  # long: the handover must not wait for expiry
    "AGENT_JOB_HEARTBEAT_MS": "1000",
    "SWEEP_RECHECK_MS": "1000",
    "AGENT_TURN": "tests.support.turns:scripted_turn",
}


def test_a_warm_shutdown_releases_the_lease_and_another_worker_continues_at_once():
    conversation = make_conversation("handover")
    job_id = make_job(conversation, "sleep:4")
    leaving = WorkerProcess("worker-leaving", threads=2, env=SLOW_LEASE)
    staying = None
    try:
        publish_dispatch(job_id)
        wait_for(lambda: AgentJob.get_by_id(job_id).processor_id == "worker-leaving", 30)
        staying = WorkerProcess("worker-staying", threads=2, env=SLOW_LEASE)
        time.sleep(3)  # let the second worker boot
        stopped_at = time.monotonic()
        leaving.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: AgentJob.get_by_id(job_id).processor_id == "worker-staying", 20, interval=0.1)
        handover = time.monotonic() - stopped_at
        assert handover < 15, f"handover took {handover:.1f}s: it waited for the 30 s lease to expire"
        wait_for(lambda: AgentJob.get_by_id(job_id).status == "done", 30, interval=0.2)
        assert leaving.proc.wait(timeout=20) is not None
        assert [e["job_id"] for e in leaving.events("queue.job.released")] == [job_id]
        assert assistant_messages(conversation) == ["done: sleep:4"]
        assert AgentJob.get_by_id(job_id).attempts == 0  # a handover is not a failed attempt
    finally:
        leaving.stop()
        if staying is not None:
            staying.stop()


def test_two_periodiq_schedulers_at_once_requeue_each_stale_job_once():
    jobs = [make_job(make_conversation(f"stale-{i}"), "hi") for i in range(10)]
    for job_id in jobs:
        claim(job_id, "dead-worker")
    execute("UPDATE agent_job SET locked_until = now() - interval '5 seconds'")
    logs = []
    schedulers = []
    for n in range(2):
        log = tempfile.NamedTemporaryFile(prefix=f"periodiq-{n}-", suffix=".log", delete=False)
        logs.append(log)
        # periodiq sends the every-minute sweep as soon as it starts, then once a minute.
        schedulers.append(
            subprocess.Popen(
                [str(Path(sys.executable).parent / "periodiq"), "zenthor.actors"],
                env={**os.environ, "TZ": "UTC"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    # DEBUG: a periodic sweep that finds nothing logs its queue.sweep.completed at DEBUG.
    worker = WorkerProcess(
        "worker-swept",
        threads=4,
        env={"AGENT_TURN": "tests.support.turns:scripted_turn", "LOG_LEVEL": "DEBUG"},
    )
    try:
        wait_for(lambda: all(AgentJob.get_by_id(j).status == "done" for j in jobs), 60, interval=0.2)
        assert {AgentJob.get_by_id(j).attempts for j in jobs} == {1}  # requeued exactly once each
        sweeps = [e for e in worker.events("queue.sweep.completed")]
        assert sum(e["requeued"] for e in sweeps) == len(jobs)
        wait_for(
            lambda: [e for e in worker.events("queue.sweep.completed") if e["trigger"] == "periodic"], 30
        )
        assert all(s.poll() is None for s in schedulers), "both schedulers keep running"
    finally:
        for scheduler in schedulers:
            scheduler.terminate()
            scheduler.wait(timeout=10)
        worker.stop()
        for log in logs:
            log.close()
