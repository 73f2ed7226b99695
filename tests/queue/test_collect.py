"""Collect (issue 14, item 1): one turn answers the turn jobs queued behind the one it claims.

The lease statements are driven directly (claim, complete, fail, the sweep's requeue) on the real
database; the processes tests (a real worker, kill -9, SIGSTOP) are in test_collect_processes.py.
"""

from __future__ import annotations

import pytest

from tests.support.factories import make_conversation
from zenthor.agent.context import load_history
from zenthor.db import database, execute
from zenthor.models import AgentJob, Message
from zenthor.queue import ClaimRefused, Lease, LeaseLost, claim, complete, enqueue_job, fail


@pytest.fixture
def collect(settings_env):
    """Collect mode, as the product's default."""
    return settings_env(QUEUE_MODE="collect", QUEUE_COLLECT_MAX="20")


def turn(conversation: int, text: str, *, sender: str = "alice", kind: str = "turn") -> int:
    """A user message of ``sender`` and its pending job, as accept writes them; the job id."""
    with database.atomic():
        message = Message.create(conversation=conversation, role="user", content=text, sender_id=sender)
        job_id = enqueue_job(conversation, message.id, kind=kind)
        Message.update(job_id=job_id).where(Message.id == message.id).execute()
    return job_id


def rows(job_ids: list[int]) -> list[tuple[str, int | None]]:
    jobs = {j.id: j for j in AgentJob.select().where(AgentJob.id.in_(job_ids))}
    return [(jobs[i].status, jobs[i].merged_into) for i in job_ids]


def claimed(job_id: int, worker: str = "w") -> Lease:
    lease = claim(job_id, worker)
    assert isinstance(lease, Lease), lease
    return lease


def reply(text: str):
    def write(held: Lease) -> None:
        Message.create(conversation=held.conversation_id, role="assistant", content=text, job_id=held.job_id)

    return write


def test_a_claim_merges_the_turns_behind_it_and_the_completion_answers_them_together(collect):
    conversation = make_conversation("burst")
    jobs = [turn(conversation, text) for text in ("hi", "can you remind me", "to call mom at 6")]
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == tuple(jobs[1:])
    assert lease.queue_mode == "collect"
    messages = [j.message_id for j in AgentJob.select().where(AgentJob.id.in_(jobs)).order_by(AgentJob.id)]
    assert lease.message_ids == tuple(messages) and lease.reply_to == messages[-1]
    # The merged jobs stay pending, marked with the head and its token: nobody else may claim them.
    assert rows(jobs) == [("processing", None), ("pending", jobs[0]), ("pending", jobs[0])]
    tokens = {str(j.lease_token) for j in AgentJob.select().where(AgentJob.id.in_(jobs))}
    assert tokens == {lease.token}
    assert isinstance(claim(jobs[1], "other"), ClaimRefused)

    history = load_history(conversation, lease.job_id, lease.message_id, batch=lease.merged_job_ids)
    assert [m["content"] for m in history] == ["hi", "can you remind me", "to call mom at 6"]

    complete(lease, write=reply("I will remind you to call mom at 6"))
    assert lease.answered_merged == 2
    assert rows(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]
    # Their messages joined the head's job: a later turn reads the burst, then the one answer.
    assert {m.job_id for m in Message.select().where(Message.id.in_(messages))} == {jobs[0]}
    later = turn(conversation, "thanks")
    later_lease = claimed(later)
    assert later_lease.merged_job_ids == ()
    history = load_history(conversation, later, later_lease.message_id)
    assert [m["content"] for m in history] == [
        "hi",
        "can you remind me",
        "to call mom at 6",
        "I will remind you to call mom at 6",
        "thanks",
    ]


def test_followup_merges_nothing_and_the_conversations_own_mode_goes_first(settings_env):
    settings_env(QUEUE_MODE="followup", QUEUE_MODE_WEBHOOK="collect")
    plain = make_conversation("plain", channel="test")
    jobs = [turn(plain, f"m{n}") for n in range(3)]
    lease = claimed(jobs[0])
    assert (lease.merged_job_ids, lease.queue_mode) == ((), "followup")
    complete(lease)
    assert rows(jobs)[1:] == [("pending", None), ("pending", None)]

    webhook = make_conversation("by-channel", channel="webhook")
    jobs = [turn(webhook, f"m{n}") for n in range(3)]
    assert claimed(jobs[0]).merged_job_ids == tuple(jobs[1:])  # QUEUE_MODE_WEBHOOK

    chosen = make_conversation("chose-followup", channel="webhook")
    execute("UPDATE conversation SET queue_mode = 'followup' WHERE id = %s", (chosen,))
    jobs = [turn(chosen, f"m{n}") for n in range(3)]
    assert claimed(jobs[0]).merged_job_ids == ()  # the conversation's own choice


def test_a_batch_stops_at_a_resume_at_another_sender_and_at_the_cap(collect, settings_env):
    conversation = make_conversation("group")
    jobs = [
        turn(conversation, "a1"),
        turn(conversation, "a2"),
        turn(conversation, "b1", sender="bob"),
        turn(conversation, "a3"),
    ]
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == (jobs[1],)  # bob's message keeps its own turn, and a3 waits behind it
    complete(lease)
    assert claimed(jobs[2]).merged_job_ids == ()

    other = make_conversation("resume-behind")
    jobs = [turn(other, "x"), turn(other, "y"), turn(other, "z")]
    execute("UPDATE agent_job SET kind = 'resume' WHERE id = %s", (jobs[1],))
    assert claimed(jobs[0]).merged_job_ids == ()  # a resume is never merged, nor what follows it

    settings_env(QUEUE_COLLECT_MAX="2")
    capped = make_conversation("capped")
    jobs = [turn(capped, f"m{n}") for n in range(5)]
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == tuple(jobs[1:3])
    complete(lease)
    assert claimed(jobs[3]).merged_job_ids == (jobs[4],)


def test_a_resume_claimed_as_head_merges_nothing(collect):
    conversation = make_conversation("resume-head")
    jobs = [turn(conversation, "approve?"), turn(conversation, "later")]
    execute("UPDATE agent_job SET kind = 'resume' WHERE id = %s", (jobs[0],))
    assert claimed(jobs[0]).merged_job_ids == ()


def test_a_lost_lease_writes_nothing_for_any_job_of_its_batch(collect):
    conversation = make_conversation("lost")
    jobs = [turn(conversation, f"m{n}") for n in range(3)]
    stale = claimed(jobs[0], "stale")
    # The lease expires (the worker was paused) and another worker takes the head, and the batch.
    execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (jobs[0],))
    fresh = claimed(jobs[0], "fresh")
    assert fresh.merged_job_ids == tuple(jobs[1:]) and fresh.attempt == 2
    with pytest.raises(LeaseLost):
        complete(stale, write=reply("stale answer"))
    assert rows(jobs) == [("processing", None), ("pending", jobs[0]), ("pending", jobs[0])]
    complete(fresh, write=reply("fresh answer"))
    assert rows(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]
    assert [
        m.content
        for m in Message.select().where(Message.role == "assistant", Message.conversation == conversation)
    ] == ["fresh answer"]


def test_a_message_arriving_after_the_claim_waits_for_the_next_turn(collect):
    conversation = make_conversation("late")
    jobs = [turn(conversation, "a"), turn(conversation, "b")]
    lease = claimed(jobs[0])
    late = turn(conversation, "c")  # accepted while the turn runs: not read by it
    history = load_history(conversation, lease.job_id, lease.message_id, batch=lease.merged_job_ids)
    assert [m["content"] for m in history] == ["a", "b"]
    complete(lease, chain_to="w")
    assert rows([*jobs, late]) == [("done", None), ("done", jobs[0]), ("processing", None)]
    assert lease.chained is not None and lease.chained.job_id == late


def test_the_hand_over_merges_the_next_batch(collect):
    conversation = make_conversation("chain")
    first = turn(conversation, "first")
    execute("UPDATE conversation SET queue_mode = 'followup' WHERE id = %s", (conversation,))
    lease = claimed(first)
    jobs = [turn(conversation, f"m{n}") for n in range(3)]  # a burst while the first turn runs
    execute("UPDATE conversation SET queue_mode = NULL WHERE id = %s", (conversation,))
    complete(lease, chain_to="w")
    chained = lease.chained
    assert chained is not None and chained.job_id == jobs[0]
    assert chained.merged_job_ids == tuple(jobs[1:])
    complete(chained)
    assert rows(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]


def test_a_final_failure_answers_the_head_only_and_the_batch_gets_its_own_turn(collect):
    conversation = make_conversation("failed-head")
    jobs = [turn(conversation, f"m{n}") for n in range(3)]
    lease = claimed(jobs[0])
    fail(lease, reason="auth", message="the model rejected our key", retry=False)
    assert [s for s, _ in rows(jobs)] == ["failed", "pending", "pending"]
    again = claimed(jobs[1])  # the head's old mark is cleared, the rest marked for the new head
    assert again.merged_job_ids == (jobs[2],)
    complete(again)
    assert rows(jobs)[1:] == [("done", None), ("done", jobs[1])]


def test_a_question_asked_by_a_batchs_turn_answers_the_whole_batch(collect):
    conversation = make_conversation("asks")
    jobs = [turn(conversation, "delete my files"), turn(conversation, "all of them")]
    lease = claimed(jobs[0])
    complete(lease, status="awaiting_approval")
    assert rows(jobs) == [("awaiting_approval", None), ("done", jobs[0])]
