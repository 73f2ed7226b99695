"""I1 and I2 under contention: 2 processes x 8 threads race for 2,000 jobs over 100 conversations."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import defaultdict

import pytest

from tests.support.factories import make_conversation
from zenthor.db import database, execute
from zenthor.models import AgentJob, Message
from zenthor.queue import enqueue_job

CONVERSATIONS = 100
JOBS = 2000


@pytest.mark.timeout(400)
def test_two_processes_never_hold_a_job_twice_and_keep_each_conversations_order():
    execute(
        "CREATE TABLE contention_probe (job_id BIGINT NOT NULL, conversation_id BIGINT NOT NULL, token UUID NOT NULL)"
    )
    try:
        conversations = [make_conversation(f"race-{i}") for i in range(CONVERSATIONS)]
        with database.atomic():
            for n in range(JOBS):  # interleaved arrival across conversations
                conversation = conversations[n % CONVERSATIONS]
                message = Message.create(conversation=conversation, role="user", content=f"m{n}")
                enqueue_job(conversation, message.id)

        violations: list[str] = []
        samples = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal samples
            with database.connection_context():
                while not stop.is_set():
                    for (job_id,) in execute(
                        "SELECT job_id FROM contention_probe GROUP BY job_id HAVING count(*) > 1"
                    ):
                        violations.append(f"job {job_id} held twice")
                    for (conversation_id,) in execute(
                        "SELECT conversation_id FROM contention_probe GROUP BY conversation_id "
                        "HAVING count(DISTINCT job_id) > 1"
                    ):
                        violations.append(f"conversation {conversation_id} ran two jobs at once")
                    for (conversation_id,) in execute(
                        "SELECT conversation_id FROM agent_job WHERE status = 'processing' "
                        "GROUP BY conversation_id HAVING count(*) > 1"
                    ):
                        violations.append(f"conversation {conversation_id} has two processing jobs")
                    samples += 1

        sampler = threading.Thread(target=sample)
        sampler.start()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.support.contention", f"proc{p}", "8"], env=os.environ
            )
            for p in range(2)
        ]
        try:
            codes = [proc.wait(timeout=360) for proc in procs]
        finally:
            stop.set()
            sampler.join()
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        assert codes == [0, 0]
        assert samples > 10, "the sampler must have looked while the workers ran"
        assert violations == []

        assert AgentJob.select().where(AgentJob.status != "done").count() == 0
        replies = list(
            Message.select(Message.conversation, Message.job_id)
            .where(Message.role == "assistant")
            .order_by(Message.id)
        )
        assert len(replies) == JOBS  # each job completed exactly once
        assert len({m.job_id for m in replies}) == JOBS
        finished_order: dict[int, list[int]] = defaultdict(list)
        for message in replies:
            finished_order[message.conversation_id].append(message.job_id)
        for conversation_id, job_ids in finished_order.items():
            assert job_ids == sorted(job_ids), f"conversation {conversation_id} finished out of order"
        holders = {j.processor_id.split("-")[0] for j in AgentJob.select(AgentJob.processor_id)}
        assert holders == {"proc0", "proc1"}, "both processes must have won claims"
    finally:
        execute("DROP TABLE IF EXISTS contention_probe")
