"""I1 and I2 under contention: 2 processes x 8 threads race for 2,000 jobs over 100 conversations;
I5's commit order and the lock order of the writers of a conversation under contention."""

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
from zenthor.queue.conversations import lock_conversation

CONVERSATIONS = 100
JOBS = 2000


@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode", ["followup", "collect"])
def test_two_processes_never_hold_a_job_twice_and_keep_each_conversations_order(mode, settings_env):
    """In collect mode a lease holds its head and the jobs merged into it: no job is held by two
    leases, no conversation by two, and every job is answered once, by its own turn or the one it
    was merged into, in order. Half the jobs arrive while the workers run, and batches are small
    (QUEUE_COLLECT_MAX=3), so batches form, end and race with new arrivals all along."""
    settings_env(QUEUE_MODE=mode, QUEUE_COLLECT_MAX="3")
    execute(
        "CREATE TABLE contention_probe (job_id BIGINT NOT NULL, conversation_id BIGINT NOT NULL, token UUID NOT NULL)"
    )
    try:
        conversations = [make_conversation(f"race-{i}") for i in range(CONVERSATIONS)]

        def arrive(numbers: range) -> None:
            for n in numbers:  # interleaved arrival across conversations, as accept writes it
                conversation = conversations[n % CONVERSATIONS]
                with database.atomic():
                    lock_conversation(conversation)
                    message = Message.create(conversation=conversation, role="user", content=f"m{n}")
                    enqueue_job(conversation, message.id)

        with database.connection_context():
            arrive(range(JOBS // 2))

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
                        "HAVING count(DISTINCT token) > 1"
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
                [sys.executable, "-m", "tests.support.contention", f"proc{p}", "8", str(JOBS)], env=os.environ
            )
            for p in range(2)
        ]
        late_errors: list[str] = []
        late = threading.Thread(
            target=lambda: _in_session(arrive, range(JOBS // 2, JOBS), errors=late_errors)
        )
        late.start()
        try:
            late.join(360)
            assert late_errors == []  # else the workers would wait for jobs that never come
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
        answered_by: dict[int, list[int]] = defaultdict(list)  # head -> the jobs merged into it
        for job in AgentJob.select(AgentJob.id, AgentJob.merged_into).where(
            AgentJob.merged_into.is_null(False)
        ):
            answered_by[job.merged_into].append(job.id)
        heads = [m.job_id for m in replies]
        assert len(set(heads)) == len(heads)  # each turn completed exactly once
        answered = [job_id for head in heads for job_id in (head, *sorted(answered_by.get(head, ())))]
        assert sorted(answered) == sorted(set(answered)) and len(answered) == JOBS  # every job once
        assert set(answered_by) <= set(heads)  # merged only into a turn that completed
        if mode == "followup":
            assert answered_by == {}
        else:
            assert answered_by, "some turns must have answered a batch"
        finished_order: dict[int, list[int]] = defaultdict(list)
        for message in replies:
            finished_order[message.conversation_id].extend(
                (message.job_id, *sorted(answered_by.get(message.job_id, ())))
            )
        for conversation_id, job_ids in finished_order.items():
            assert job_ids == sorted(job_ids), f"conversation {conversation_id} finished out of order"
        # A merged job never had a holder of its own (its head's lease answered it).
        holders = {
            j.processor_id.split("-")[0]
            for j in AgentJob.select(AgentJob.processor_id).where(AgentJob.processor_id.is_null(False))
        }
        assert holders == {"proc0", "proc1"}, "both processes must have won claims"
    finally:
        execute("DROP TABLE IF EXISTS contention_probe")


def _in_session(work, *args, errors: list[str]) -> None:
    try:
        with database.connection_context():
            work(*args)
    except Exception as error:  # noqa: BLE001 - reported by the test
        errors.append(f"{type(error).__name__}: {error}")


REMINDERS = 40
TURNS_PER_CHAT = 15


@pytest.mark.timeout(120)
def test_reminder_sweeps_and_completing_turns_over_two_chats_never_deadlock_and_go_out_in_id_order():
    """Item 8 under contention: two reminder sweeps (small batches over both chats, due in
    alternating order) and a completing turn per chat write outbox rows while a sender claims
    every visible row. Nobody deadlocks, and each chat's rows are sent in id order: every writer
    holds its conversation, so no row commits before an older one of its chat."""
    import time
    from functools import partial

    from tests.support.workers import DbThread
    from zenthor.agent.replies import write_replies
    from zenthor.plugins.builtin.core_schedule.delivery import deliver_due_reminders
    from zenthor.queue import Lease, claim, complete
    from zenthor.queue.outbox import OutboundLease, claim_outbound, mark_sent, pending_for_conversation

    chats = [make_conversation(f"mix-{i}") for i in range(2)]
    with database.atomic():
        # Due in bursts of six over ~1 s, alternating chats: of two sweeps that share a burst (three
        # each), one meets the chats in id order and the other against it.
        for n in range(REMINDERS):
            execute(
                "INSERT INTO reminder (conversation_id, channel, account_id, chat_id, text, due_at) "
                "SELECT id, channel, account_id, chat_id, %s, now() + %s * interval '1 millisecond' "
                "FROM conversation WHERE id = %s",
                (f"reminder {n}", n // 6 * 150, chats[(n + 1) % 2]),
            )
        jobs = {
            chat: [
                enqueue_job(chat, Message.create(conversation=chat, role="user", content="hi").id)
                for _ in range(TURNS_PER_CHAT)
            ]
            for chat in chats
        }
    errors: list[str] = []
    sent: dict[int, list[int]] = defaultdict(list)
    writers_done = threading.Event()

    def guarded(work):
        def run() -> None:
            try:
                work()
            except Exception as error:  # noqa: BLE001 - reported by the test
                errors.append(f"{type(error).__name__}: {error}")

        return DbThread(target=run)

    def turns(chat: int) -> None:
        for job_id in jobs[chat]:
            lease = claim(job_id, f"turn-{chat}")
            assert isinstance(lease, Lease), lease

            def write(held: Lease):
                written = write_replies(
                    chat, held.job_id, [f"reply {held.job_id}"], in_reply_to=held.message_id
                )
                execute("SELECT pg_sleep(0.02)")  # a completion that takes a moment to commit
                return written

            complete(lease, write=write)

    def sweep() -> None:
        while execute("SELECT count(*) FROM reminder WHERE delivered_at IS NULL")[0][0]:
            deliver_due_reminders(partial(write_replies, kind="reminder"), lambda ids: None, limit=3)
            time.sleep(0.005)  # pacing between sweeps, as the sweep's own re-check does

    def send_visible_rows() -> None:
        while True:
            last_pass = writers_done.is_set()
            for chat in chats:
                for outbound_id in pending_for_conversation(chat, limit=500):
                    lease = claim_outbound(outbound_id, "sender")
                    if isinstance(lease, OutboundLease):
                        assert mark_sent(lease)
                        sent[chat].append(outbound_id)
            if last_pass:
                return
            time.sleep(0.002)  # pacing: a sender polls, it does not spin

    writers = [guarded(partial(turns, chat)) for chat in chats] + [guarded(sweep) for _ in range(2)]
    sender = guarded(send_visible_rows)
    sender.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(60)
    writers_done.set()
    sender.join(60)
    assert not any(t.is_alive() for t in [*writers, sender]), "a writer or the sender is stuck"
    assert errors == []
    for chat in chats:
        rows = [
            row[0]
            for row in execute(
                "SELECT id FROM outbound_message WHERE conversation_id = %s ORDER BY id", (chat,)
            )
        ]
        assert len(rows) == TURNS_PER_CHAT + REMINDERS // 2
        assert sent[chat] == rows, f"chat {chat}: rows went out of id order"


def test_a_completion_that_supersedes_a_question_and_the_askers_yes_to_it_never_deadlock():
    """The lock order: a completing turn takes its job, then the conversation, then the asker's
    older question (``supersede_earlier_questions``); accept takes the conversation, then the
    question. Were the conversation taken only when the reply is written (after the question),
    the asker's "yes" arriving meanwhile would deadlock with the completion."""
    import zenthor.actors  # noqa: F401 - registers the approval answer handler
    from tests.support.workers import DbThread, wait_for
    from zenthor.agent.approvals import supersede_earlier_questions
    from zenthor.agent.replies import write_replies
    from zenthor.ingress import InboundMessage, accept
    from zenthor.queue import Lease, claim, complete

    chat = make_conversation("group", channel="webhook", account_id="acct")

    def message(text: str) -> int:
        with database.atomic():
            message_id = Message.create(conversation=chat, role="user", content=text, sender_id="user-1").id
            job_id = enqueue_job(chat, message_id)
            execute("UPDATE message SET job_id = %s WHERE id = %s", (job_id, message_id))
        return job_id

    def ask(job_id: int) -> None:
        execute(
            "INSERT INTO tool_approval (conversation_id, job_id, tool_name, tool_call_id, expires_at,"
            " asked_sender_id) VALUES (%s, %s, 'core_schedule_remind', %s, now() + interval '10 minutes',"
            " 'user-1')",
            (chat, job_id, f"call-{job_id}"),
        )

    earlier, later = message("remind me"), message("and also this")
    asked = claim(earlier, "w")
    complete(asked, status="awaiting_approval", write=lambda held: ask(held.job_id))
    lease = claim(later, "w")
    assert isinstance(lease, Lease)
    outcomes: dict[str, object] = {}
    errors: list[str] = []
    superseded, release = threading.Event(), threading.Event()

    def completion() -> None:
        def write(held: Lease) -> None:
            ask(held.job_id)
            supersede_earlier_questions(chat, held.job_id, "user-1")  # locks the earlier question
            superseded.set()
            assert release.wait(10)
            write_replies(chat, held.job_id, ["May I set it?"], kind="approval_question")

        try:
            complete(lease, status="awaiting_approval", write=write)
            outcomes["completion"] = "done"
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(f"completion: {type(error).__name__}: {error}")

    def answer() -> None:
        yes = InboundMessage(
            channel="webhook",
            account_id="acct",
            chat_id="group",
            sender_id="user-1",
            text="yes",
            provider_message_id="yes-1",
        )
        try:
            outcomes["answer"] = accept(yes, publish=lambda job_id: True)
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(f"answer: {type(error).__name__}: {error}")

    completing, answering = DbThread(target=completion), DbThread(target=answer)
    try:
        completing.start()
        assert superseded.wait(10)
        answering.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        wait_for(lambda: execute(waiting)[0][0] > 0, 10, message="the answer waits for a lock")
    finally:
        release.set()
        completing.join(15)
        answering.join(15)
    assert errors == []
    assert outcomes["completion"] == "done"
    # The yes came after the newer question: it answers that one, and the earlier one is closed.
    assert outcomes["answer"].status == "answer" and outcomes["answer"].job_id == later
    statuses = dict(execute("SELECT id, status FROM agent_job WHERE id IN (%s, %s)", (earlier, later)))
    assert statuses == {earlier: "done", later: "pending"}
